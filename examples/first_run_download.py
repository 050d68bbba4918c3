"""An app that fetches the best llama.cpp for the user's machine on first run, with a progress bar.

    LLAMA_RUNTIME_SKIP_DOWNLOAD=1 pip install llama-runtime   # or a wheel built without a binary
    python examples/first_run_download.py model.gguf "Once upon a time"

The second run finds the library in the versioned cache and opens no connection.
"""

from __future__ import annotations

import sys
import time

import llama_runtime


def progress_bar(done: int, total: int | None) -> None:
    if total:
        filled = int(30 * done / total)
        sys.stderr.write(f"\rdownloading llama.cpp [{'#' * filled}{'.' * (30 - filled)}] {done / 2**20:6.1f} MiB")
    else:
        sys.stderr.write(f"\rdownloading llama.cpp {done / 2**20:6.1f} MiB")
    if total and done >= total:
        sys.stderr.write("\n")


def main() -> None:
    model, prompt = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "Hello"
    start = time.perf_counter()
    folder = llama_runtime.download_best(progress=progress_bar)  # cached after the first run
    print(f"llama.cpp ready in {folder} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    with llama_runtime.Llama(model) as llm:
        print(llm.generate(prompt, max_tokens=32, temperature=0))


if __name__ == "__main__":
    main()
