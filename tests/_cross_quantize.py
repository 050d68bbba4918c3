"""Quantize a GGUF with one variant folder's libllama (``llama_runtime.quantize``, llama.cpp's
own ``llama_model_quantize``), in a child process, so this test process keeps the one libllama
it opened and the quantizer is exactly the x86 build named.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys
from pathlib import Path
import llama_runtime
from llama_runtime.native import Native
folder, src, dst, kind = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
meta = json.loads((folder / "variant.json").read_text())
native = Native.open([folder / n for n in meta["libraries"]],
                     backend_dir=folder if meta["backend_dl"] else None)
llama_runtime.quantize(src, dst, kind, n_threads=1, native=native)
"""


def quantize(folder: Path, src: Path, dst: Path, kind: str) -> Path:
    """``dst``: ``src`` quantized to ``kind`` (``Q4_0``, ``Q8_0``...) by ``folder``'s libllama."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(src), str(dst), kind],
                          capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0 or not dst.is_file():
        raise RuntimeError(f"quantize {src.name} -> {kind} with {folder.name} failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return dst
