"""Quantize a GGUF with a real x86 libllama's ``llama_model_quantize``, in a child process.

A stop-gap for the cross-CPU tests until ``llama_runtime.quantize()`` (branch ``quantize``)
is on main: the child loads the variant folder's libraries by path (so this test process keeps
the one libllama it opened) and calls llama.cpp's own quantizer; the struct is the pinned
``llama_model_quantize_params`` (llama_runtime/native/include/llama.h).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15}  # enum llama_ftype

_CHILD = r"""
import ctypes, json, sys
from pathlib import Path
folder, src, dst, ftype = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
meta = json.loads((folder / "variant.json").read_text())
libs = [ctypes.CDLL(str(folder / n), mode=ctypes.RTLD_GLOBAL) for n in meta["libraries"]]
llama = libs[-1]
if meta["backend_dl"]:
    llama.ggml_backend_load_all_from_path(str(folder).encode())

class Params(ctypes.Structure):
    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("output_tensor_type", ctypes.c_int),
                ("token_embedding_type", ctypes.c_int), ("allow_requantize", ctypes.c_bool),
                ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool),
                ("pure", ctypes.c_bool), ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool),
                ("imatrix", ctypes.c_void_p), ("kv_overrides", ctypes.c_void_p),
                ("tt_overrides", ctypes.c_void_p), ("prune_layers", ctypes.c_void_p),
                ("max_buf_size", ctypes.c_size_t)]

llama.llama_model_quantize_default_params.restype = Params
llama.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Params)]
llama.llama_model_quantize.restype = ctypes.c_uint32
params = llama.llama_model_quantize_default_params()
params.ftype, params.nthread = ftype, 1
sys.exit(llama.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
"""


def quantize(folder: Path, src: Path, dst: Path, kind: str) -> Path:
    """``dst``: ``src`` quantized to ``kind`` (a key of ``FTYPES``) by ``folder``'s libllama."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(src), str(dst),
                           str(FTYPES[kind])], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not dst.is_file():
        raise RuntimeError(f"llama_model_quantize {src.name} -> {kind} with {folder.name} failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return dst
