"""The pinned llama.cpp source (vendored in the llama-cpp-python 0.3.36 sdist), from the dev cache,
and C plugins compiled against its ggml headers for the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from scripts import build_variants
from scripts import devrelease

BADKERNEL = Path(__file__).parent / "data" / "plugins" / "badkernel.c"


def pinned_ggml() -> Path:
    """``vendor/llama.cpp/ggml`` of the sdist, extracted the way build_variants does (src/<sha16>/)."""
    cache = devrelease.dev_cache()
    sdist = build_variants.ensure_sdist(cache)
    return build_variants.extract_vendor(sdist, cache / "src" / build_variants.sha256(sdist)[:16]) / "ggml"


def compile_badkernel(out: Path, real: str, *, at_init: bool = False, wrong: int = 0,
                      cc: str | None = None, flags: tuple[str, ...] = ()) -> Path:
    """tests/data/plugins/badkernel.c as ``out``: SIGILL on the first decode (or in its init);
    ``wrong`` 1 or 2: no crash, wrong logits instead (noise, or every logit tripled).
    ``cc``: another compiler (``aarch64-linux-gnu-gcc``), ``flags`` added to its command."""
    cc = cc or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (apt-get install gcc) for the crashing test plugin")
    ggml = pinned_ggml()
    cmd = [cc, *flags, "-shared", "-fPIC", "-O1", "-I", str(ggml / "include"), "-I", str(ggml / "src"),
           f'-DREAL="{real}"', *(["-DCRASH_AT_INIT"] if at_init else []),
           *([f"-DWRONG_LOGITS={wrong}"] if wrong else []), str(BADKERNEL), "-o", str(out), "-ldl"]
    subprocess.run(cmd, check=True)
    return out
