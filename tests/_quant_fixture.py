"""A tiny llama that every quantization type applies to, its quantized copies, and the tensor
types each type must give (so a test knows what it ran).

Imported by ``test_quantize.py``, ``test_quantize_cli.py`` and ``test_quantize_oracle.py``;
its ``source`` fixture is registered for them by ``tests/conftest.py``. The model is
``scripts/tiny_model.py``'s with ``QUANTIZABLE`` rows (n_embd 256, n_ff 512): with the default
n_embd 64 llama.cpp would quietly give K-quant tensors other types.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import gguf
import pytest
from scripts.tiny_model import QUANTIZABLE, write_tiny_llama

# The types issue 14 asks every CPU variant to run, and what llama.cpp stores for most tensors.
REQUIRED = ("Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_NL", "BF16")
MAIN_TYPE = {"Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
             "Q8_0": "Q8_0", "IQ4_NL": "IQ4_NL", "BF16": "BF16"}
N_LAYER = 2  # write_tiny_llama's default
SEED = 3
PROMPT = "the llama runtime is a small model of the world"
N_GEN = 48


def write_quantizable(folder: Path) -> Path:
    """The F32 tiny llama with rows of 256 values, seed 3 (same bytes every time)."""
    return write_tiny_llama(Path(folder) / "tiny-q.gguf", seed=SEED, **QUANTIZABLE)


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``write_quantizable``'s model, written once per session (tests only read it)."""
    return write_quantizable(tmp_path_factory.mktemp("quant-src"))


def tensor_types(path: Path) -> dict[str, str]:
    """Tensor name -> ggml type name, read from the file with the ``gguf`` package."""
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def file_type(path: Path) -> int:
    """``general.file_type``: the ``enum llama_ftype`` llama.cpp wrote into the file."""
    field = gguf.GGUFReader(path).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


def expected_types(quant: str, names: Iterable[str]) -> dict[str, str]:
    """What llama.cpp's rules (``llama_tensor_get_type`` in src/llama-quant.cpp) give each
    tensor of the tiny model for ``quant``, one of :data:`REQUIRED`.

    Norms (1-D) are never quantized. ``output.weight`` becomes Q6_K in every quantized type
    but Q8_0 (Q6_K and Q8_0 keep their own; BF16 is not a mix). Q4_K_M and Q5_K_M give Q6_K to
    ``attn_v`` and ``ffn_down`` of the layers ``use_more_bits`` picks: with 2 layers, layer 1.
    """
    main = MAIN_TYPE[quant]
    out: dict[str, str] = {}
    for name in names:
        if name.endswith("norm.weight"):
            out[name] = "F32"
        elif name == "output.weight" and quant not in ("Q8_0", "BF16"):
            out[name] = "Q6_K"
        elif quant in ("Q4_K_M", "Q5_K_M") and name in (f"blk.{N_LAYER - 1}.attn_v.weight",
                                                        f"blk.{N_LAYER - 1}.ffn_down.weight"):
            out[name] = "Q6_K"
        else:
            out[name] = main
    return out
