"""Quantize a GGUF with llama.cpp's own ``llama_model_quantize`` through ctypes, in a child process.

A stopgap for tests/test_windows_build.py until ``llama_runtime.quantize()`` (branch
``quantize``) is on main; then this file goes and the test calls that. A child process, so the
test process never holds a second libllama beside the one ``Native.open`` keeps.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# enum llama_ftype of the pinned llama.h
FTYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}

_CHILD = r"""
import ctypes, sys
libs = [ctypes.CDLL(p) for p in sys.argv[4:]]
llama = libs[-1]

class Params(ctypes.Structure):  # struct llama_model_quantize_params of the pinned llama.h
    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int),
                ("output_tensor_type", ctypes.c_int), ("token_embedding_type", ctypes.c_int),
                ("allow_requantize", ctypes.c_bool), ("quantize_output_tensor", ctypes.c_bool),
                ("only_copy", ctypes.c_bool), ("pure", ctypes.c_bool), ("keep_split", ctypes.c_bool),
                ("dry_run", ctypes.c_bool), ("imatrix", ctypes.c_void_p),
                ("kv_overrides", ctypes.c_void_p), ("tt_overrides", ctypes.c_void_p),
                ("prune_layers", ctypes.c_void_p), ("max_buf_size", ctypes.c_size_t)]

llama.llama_model_quantize_default_params.restype = Params
llama.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Params)]
llama.llama_model_quantize.restype = ctypes.c_uint32
params = llama.llama_model_quantize_default_params()
params.ftype, params.nthread = int(sys.argv[3]), 1
sys.exit(llama.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def quantize(libraries: Sequence[Path], source: Path, dest: Path, kind: str) -> Path:
    """``source`` quantized to ``kind`` (a key of :data:`FTYPES`) at ``dest``, by ``libraries``
    (a Linux variant's libraries in load order, libllama last)."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(source), str(dest),
                           str(FTYPES[kind]), *map(str, libraries)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not dest.is_file():
        raise RuntimeError(f"llama_model_quantize {source} -> {kind} failed "
                           f"(exit {proc.returncode}): {proc.stderr[-2000:]}")
    return dest
