"""The NativeLibraryConfig proposal, in Python: every knob in one place.

| LLamaSharp proposal                               | llama-runtime                                   |
|---------------------------------------------------|-------------------------------------------------|
| WithLibrary(path)                                 | configure(library=path) / LLAMA_RUNTIME_LIB     |
| WithCuda() / WithAvx(...)                         | configure(backend="cuda12") / download(cpu="avx2") |
| WithAutoDownload(enable, cacheDir, endPoint, proxy, timeout) | configure(auto_download=, cache_dir=, endpoint=, proxy=, timeout=) |
| DownloadNativeLibrary(filename, version)          | download("linux-x86_64-cpu", version="v0.1.0")  |
| DownloadNativeLibrary(useCuda, avxLevel, os)      | download(backend="cuda", cpu="avx2", os="linux") |
| DownloadBestNativeLibrary()                       | download_best()                                 |
| new LLamaWeights("Facebook/LLaMA", "llama2.gguf") | Llama.from_pretrained("org/repo", "model.gguf") |
"""

from __future__ import annotations

import json
import sys

import llama_runtime

# Settings in code win over environment variables; call before the first load.
llama_runtime.configure(backend="auto", auto_download=True, timeout=120)

# Where would the library come from, and why that variant?
report = llama_runtime.doctor()
print(json.dumps({k: report[k] for k in ("selected", "library")}, indent=2))

# Fetch a specific build for another CPU level (e.g. to prepare a machine image).
if len(sys.argv) > 1 and sys.argv[1] == "--fetch-avx2":
    print(llama_runtime.download(backend="cpu", cpu="avx2"))

library = llama_runtime.load()  # the priority chain, once per process
print(f"loaded {library.variant} from {library.source}: {library.path}")
