"""Quantize a GGUF model with llama.cpp's own ``llama_model_quantize`` (``llama-runtime quantize``).

Nothing is re-implemented here: this module names the types, checks the paths, and makes the
write atomic. llama.cpp writes to a temporary name beside ``OUT``; only a complete file is
renamed to ``OUT``, so a failure (llama.cpp's, a full disk, Ctrl-C) leaves no partial model and
an existing ``OUT`` untouched. Ctrl-C takes effect when llama.cpp returns (it has no way to stop
a quantization early); a second Ctrl-C, or a SIGKILL, ends the process at once and may leave
its hidden ``.OUT.*.partial`` file behind, which nothing ever reads.

The type names and their ``enum llama_ftype`` values are those of llama.cpp's ``llama-quantize``
tool for the pinned ``llama.h`` (``tests/e2e/test_quantize.py`` checks the values against the header).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .errors import QuantizeError

if TYPE_CHECKING:
    from .native import Native

logger = logging.getLogger("llama_runtime")
# llama_model_quantize_impl's summary: "WARNING: 15 of 21 tensor(s) required fallback quantization"
_FALLBACKS = re.compile(r"(\d+) of \d+ tensor\(s\) required fallback quantization")


class QuantType(NamedTuple):
    name: str
    ftype: int  # enum llama_ftype of the pinned llama.h
    description: str


# Types that quantize a llama model without an importance matrix, in llama-quantize's order.
# Left out on purpose: TQ1_0/TQ2_0 (only for ternary-trained models; any other model becomes
# garbage), MXFP4_MOE (MoE experts), Q1_0/Q2_0 (experimental; the gguf package cannot read them).
# fmt: off
QUANT_TYPES: dict[str, QuantType] = {t.name: t for t in [
    QuantType("Q4_0", 2, "4.5 bpw, legacy"),
    QuantType("Q4_1", 3, "5.0 bpw, legacy"),
    QuantType("Q5_0", 8, "5.5 bpw, legacy"),
    QuantType("Q5_1", 9, "6.0 bpw, legacy"),
    QuantType("Q2_K", 10, "2.6 bpw mix of Q2_K/Q3_K"),
    QuantType("Q3_K_S", 11, "3.4 bpw"),
    QuantType("Q3_K_M", 12, "3.7 bpw mix of Q3_K/Q4_K/Q5_K"),
    QuantType("Q3_K_L", 13, "4.0 bpw mix of Q3_K/Q5_K"),
    QuantType("IQ3_S", 26, "3.4 bpw non-linear"),
    QuantType("IQ3_M", 27, "3.7 bpw non-linear mix"),
    QuantType("IQ4_NL", 25, "4.5 bpw non-linear"),
    QuantType("IQ4_XS", 30, "4.25 bpw non-linear"),
    QuantType("Q4_K_S", 14, "4.6 bpw mix of Q4_K/Q5_K"),
    QuantType("Q4_K_M", 15, "4.8 bpw mix of Q4_K/Q6_K (the usual choice)"),
    QuantType("Q5_K_S", 16, "5.5 bpw"),
    QuantType("Q5_K_M", 17, "5.7 bpw mix of Q5_K/Q6_K"),
    QuantType("Q6_K", 18, "6.6 bpw"),
    QuantType("Q8_0", 7, "8.5 bpw, nearly lossless"),
    QuantType("F16", 1, "16 bpw"),
    QuantType("BF16", 32, "16 bpw, bfloat16"),
    QuantType("F32", 0, "32 bpw, no quantization"),
]}
# fmt: on
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize has them

# llama.cpp refuses these without an importance matrix (``tensor_requires_imatrix`` in
# src/llama-quant.cpp: their IQ1/IQ2/IQ3_XXS tensors, or Q2_K in a Q2_K_S file, would be garbage).
NEEDS_IMATRIX: dict[str, int] = {
    "IQ1_S": 24, "IQ1_M": 31, "IQ2_XXS": 19, "IQ2_XS": 20, "IQ2_S": 28, "IQ2_M": 29,
    "IQ3_XXS": 23, "IQ3_XS": 22, "Q2_K_S": 21,
}


@dataclass(frozen=True)
class Quantized:
    """What :func:`quantize` wrote."""

    path: Path
    quant_type: str
    input_size: int
    output_size: int
    seconds: float
    fallbacks: int = 0  # tensors whose rows do not fit the type: llama.cpp gave them another


def find_quant_type(name: str) -> QuantType:
    """The type called ``name`` (any case; ``Q4_K`` means ``Q4_K_M``), or a :class:`QuantizeError`."""
    key = str(name).strip().upper()
    key = ALIASES.get(key, key)
    if key in QUANT_TYPES:
        return QUANT_TYPES[key]
    if key in NEEDS_IMATRIX:
        raise QuantizeError(
            f"{key} needs an importance matrix (imatrix), which llama-runtime quantize does not "
            "take: without one llama.cpp refuses it, because the result would be garbage. Use a "
            "type that needs none, e.g. Q4_K_M or IQ4_NL, or llama.cpp's llama-imatrix and "
            "llama-quantize tools"
        )
    raise QuantizeError(f"unknown quantization type {name!r}; valid types: {type_names()}")


def type_names() -> str:
    aliases = ", ".join(f"{alias}={target}" for alias, target in ALIASES.items())
    return f"{', '.join(QUANT_TYPES)} (aliases: {aliases}; any case)"


def _check_output(source: Path, dest: Path) -> None:
    if dest.is_dir():
        raise QuantizeError(f"the output {dest} is a folder; give the path of the .gguf file to write")
    if not dest.parent.is_dir():
        raise QuantizeError(f"the folder of the output {dest} does not exist; create it first")
    same = dest.resolve() == source.resolve()
    if not same and dest.exists():
        same = os.path.samefile(dest, source)  # a hard link is the same file too
    if same:
        raise QuantizeError(
            f"the output {dest} is the input model itself; write the quantized model to another "
            "path (llama.cpp reads the input while it writes the output)"
        )


def _run(native: Native, source: Path, partial: Path, spec: QuantType, n_threads: int,
         allow_requantize: bool) -> int:
    """Quantize into ``partial``; the number of tensors llama.cpp gave a fallback type."""
    params = native.llama_model_quantize_default_params()
    params.ftype = spec.ftype
    params.nthread = n_threads
    params.allow_requantize = allow_requantize
    from .native.context import why
    from .native.interrupt import deferred_interrupt

    with deferred_interrupt(f"quantizing {source}"), native.capture_errors() as errors:
        failed = native.llama_model_quantize(os.fsencode(source), os.fsencode(partial),
                                             ctypes.byref(params))
    if failed:
        requantize = not allow_requantize and any("requantizing" in e for e in errors)
        todo = ("the input is already quantized: pass --allow-requantize (allow_requantize=True) to "
                "quantize it again, though quality suffers (start from an F32/F16/BF16 model if you "
                "can)" if requantize else
                "the input may be truncated or corrupt (download it again), or use an architecture "
                "or tensor type this llama.cpp does not know")
        raise QuantizeError(f"llama.cpp could not quantize {source} to {spec.name}: {why(errors)}; "
                            f"{todo}")
    summary = next((m for m in map(_FALLBACKS.search, errors) if m), None)
    fallbacks = int(summary.group(1)) if summary else 0
    if fallbacks:
        # llama.cpp only logs this: a "Q4_K_M" file may then be mostly Q5_0 (SmolLM2's rows of
        # 576 values, for one), which a user comparing types would never guess
        logger.warning("%d tensor(s) of %s could not take %s (their rows are not a multiple of the "
                       "type's block of values) and got another type instead", fallbacks,
                       source.name, spec.name)
    return fallbacks


def quantize(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
             quant_type: str, *, n_threads: int | None = None,
             allow_requantize: bool = False, native: Native | None = None) -> Quantized:
    """Write ``input_path`` quantized to ``quant_type`` (e.g. ``"Q4_K_M"``) to ``output_path``.

    >>> llama_runtime.quantize("model-f16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")  # doctest: +SKIP

    ``n_threads``: default the CPUs this process may use, at most 4 (as :class:`Llama`).
    ``native``: a loaded library (default: the one the loader selects).
    """
    from .llama import _check_model_file, _default_threads

    spec = find_quant_type(quant_type)
    source, dest = Path(input_path), Path(output_path)
    _check_model_file(source)
    _check_output(source, dest)
    threads = _default_threads() if n_threads is None else int(n_threads)
    if threads < 1:
        raise QuantizeError(f"n_threads must be at least 1, got {n_threads}")
    if native is None:
        from .runtime.loader import load

        native = load().native
    partial = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.partial")
    start = time.monotonic()
    try:
        fallbacks = _run(native, source, partial, spec, threads, allow_requantize)
        os.replace(partial, dest)
    except BaseException:  # KeyboardInterrupt too: no half-written model may stay behind
        partial.unlink(missing_ok=True)
        raise
    return Quantized(dest, spec.name, source.stat().st_size, dest.stat().st_size,
                     time.monotonic() - start, fallbacks)
