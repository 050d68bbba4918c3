"""Make the proof model shipped in the package: llama_runtime/plugins/proof-q4_0.gguf.

The loader's test run of a CPU plugin (llama_runtime/plugins/prove.py) decodes this model in a
child process. It is the tiny llama of scripts/tiny_model.py (seeded, so the same bytes every
time) quantized to Q4_0 by llama.cpp's own ``llama_model_quantize`` (called through plain
ctypes here; the package's binding of it lives elsewhere). The sizes are chosen for the kernels
that crash in the wild: every matrix has rows and columns that are multiples of 32, so ggml
repacks the Q4_0 weights (AVX2/AVX-512 ``q4_0_8x8``) or puts them in AMX tiles, and the output
matrix (288 x 64) becomes Q8_0 (Q6_K needs columns that are multiples of 256), the type of the
AMX SIGILL of issue 14. About 60 KB.

    python -m scripts.make_proof_model [--lib LIBLLAMA] [--out PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from scripts.tiny_model import write_tiny_llama

OUT = ROOT / "llama_runtime" / "plugins" / "proof-q4_0.gguf"
SHAPE = {"seed": 14, "n_layer": 1, "n_embd": 64, "n_head": 4, "n_ff": 128, "n_ctx": 256, "vocab_size": 288}
LLAMA_FTYPE_MOSTLY_Q4_0 = 2


class QuantizeParams(ctypes.Structure):
    # struct llama_model_quantize_params of the pinned llama.h (llama.cpp v0.5.0)
    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("output_tensor_type", ctypes.c_int),
                ("token_embedding_type", ctypes.c_int), ("allow_requantize", ctypes.c_bool),
                ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool),
                ("pure", ctypes.c_bool), ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool),
                ("imatrix", ctypes.c_void_p), ("kv_overrides", ctypes.c_void_p),
                ("tt_overrides", ctypes.c_void_p), ("prune_layers", ctypes.c_void_p),
                ("max_buf_size", ctypes.c_size_t)]


def default_lib() -> Path:
    """libllama of the source build the dev cache holds (one CPU backend linked in, no plugins)."""
    from scripts import devrelease

    return devrelease.dev_cache() / "variants" / "linux-x86_64-cpu-v3" / "libllama.so"


def quantize(lib_path: Path, src: Path, dst: Path) -> None:
    for dep in ("libggml-base.so", "libggml-cpu.so", "libggml.so"):
        if (lib_path.parent / dep).is_file():
            ctypes.CDLL(str(lib_path.parent / dep))
    lib = ctypes.CDLL(str(lib_path))
    lib.llama_model_quantize_default_params.restype = QuantizeParams
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    lib.llama_backend_init()
    params = lib.llama_model_quantize_default_params()
    params.nthread, params.ftype = 1, LLAMA_FTYPE_MOSTLY_Q4_0
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")


def tensor_types(path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def make(out: Path, lib: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        f32 = write_tiny_llama(Path(tmp) / "proof-f32.gguf", **SHAPE)
        part = out.with_name(out.name + ".part")
        quantize(lib, f32, part)
        part.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", type=Path, default=None, help="libllama to quantize with")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    path = make(args.out, args.lib or default_lib())
    print(f"{path} ({path.stat().st_size} bytes)")
    for name, kind in tensor_types(path).items():
        print(f"  {name:28} {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
