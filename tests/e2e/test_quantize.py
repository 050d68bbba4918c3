"""``llama_runtime.quantize`` through llama.cpp's own ``llama_model_quantize`` on a real libllama.

The tiny llama has rows of 256 values, so every type applies to every tensor; each output's
tensor types are read back with the ``gguf`` package. Bad input: one clear error, no file left.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest

try:
    from ._native_fixture import REPO, NativeLibs, run_oracle
    from ._quant_fixture import N_GEN, PROMPT, REQUIRED, expected_types, file_type, tensor_types
except ImportError:
    from _native_fixture import REPO, NativeLibs, run_oracle
    from _quant_fixture import N_GEN, PROMPT, REQUIRED, expected_types, file_type, tensor_types

from scripts.tiny_model import write_tiny_llama

from llama_runtime.errors import ModelError, QuantizeError
from llama_runtime.llama import Llama
from llama_runtime.native import Native
from llama_runtime.quant import (ALIASES, NEEDS_IMATRIX, QUANT_TYPES, Quantized, find_quant_type,
                                 quantize)

SENTINEL = b"an existing OUT: replaced only by a complete quantized model"


@pytest.fixture(scope="session")
def quantized(source: Path, native_lib: Native,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Quantized]:
    """Each required type, quantized once per session by the library of this process."""
    folder = tmp_path_factory.mktemp("quantized")
    return {t: quantize(source, folder / f"{t}.gguf", t, native=native_lib) for t in REQUIRED}


def _only(folder: Path, *names: str) -> None:
    """Nothing in ``folder`` but ``names``: no partial or temporary file was left behind."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_type_table_matches_the_pinned_header() -> None:
    header = (REPO / "llama_runtime" / "native" / "include" / "llama.h").read_text()
    enum = {name: int(value) for name, value in
            re.findall(r"^\s*LLAMA_FTYPE_(?:MOSTLY_|ALL_)(\w+)\s*=\s*(\d+)", header, re.M)}
    for name, spec in QUANT_TYPES.items():
        assert spec.name == name and enum[name] == spec.ftype, name
    for name, ftype in NEEDS_IMATRIX.items():
        assert enum[name] == ftype, name
    assert set(REQUIRED) <= set(QUANT_TYPES) and set(ALIASES.values()) <= set(QUANT_TYPES)
    assert not set(NEEDS_IMATRIX) & set(QUANT_TYPES)


@pytest.mark.parametrize("quant", REQUIRED)
def test_required_type_writes_its_tensor_types(quant: str, source: Path,
                                               quantized: dict[str, Quantized]) -> None:
    done = quantized[quant]
    assert done.quant_type == quant and done.path.name == f"{quant}.gguf"
    assert done.input_size == source.stat().st_size
    assert done.output_size == done.path.stat().st_size
    assert done.output_size < done.input_size  # even BF16 halves an F32 model
    assert done.fallbacks == 0
    names = tensor_types(source)
    assert set(names.values()) == {"F32"}  # the input really was unquantized
    got = tensor_types(done.path)
    assert got == expected_types(quant, names), f"{quant}: {got}"
    assert file_type(done.path) == QUANT_TYPES[quant].ftype


OTHER_TYPES = [t for t in QUANT_TYPES if t not in REQUIRED]


@pytest.mark.parametrize("quant", OTHER_TYPES)
def test_every_other_offered_type_quantizes_and_runs(quant: str, source: Path, tmp_path: Path,
                                                     native_lib: Native, native_libs: NativeLibs,
                                                     oracle: Path) -> None:
    done = quantize(source, tmp_path / "out.gguf", quant, native=native_lib)
    got = tensor_types(done.path)
    assert file_type(done.path) == QUANT_TYPES[quant].ftype
    assert all(t == "F32" for n, t in got.items() if n.endswith("norm.weight"))
    matrices = {t for n, t in got.items() if not n.endswith("norm.weight")}
    if quant != "F32":  # every matrix was converted: no F32 left, no "unusual shape" F16 fallback
        assert "F32" not in matrices and (quant == "F16" or "F16" not in matrices), got
    (expected,), _ = run_oracle(oracle, native_libs, done.path, PROMPT, N_GEN)
    assert len(expected) > 8
    with Llama(done.path, n_ctx=256, n_threads=1, native=native_lib) as llm:
        assert llm.generate_tokens(PROMPT, N_GEN, temperature=0) == expected


def test_rows_that_do_not_fit_are_a_warning_not_a_surprise(tmp_path: Path, native_lib: Native,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # the default tiny llama (n_embd 64) cannot hold Q4_K's 256-value blocks anywhere
    model = write_tiny_llama(tmp_path / "small.gguf", seed=0)
    with caplog.at_level(logging.WARNING, logger="llama_runtime"):
        done = quantize(model, tmp_path / "out.gguf", "Q4_K_M", native=native_lib)
    matrices = {n: t for n, t in tensor_types(done.path).items() if not n.endswith("norm.weight")}
    assert "Q4_K" not in matrices.values()
    # every matrix fell back, but output.weight: its own rule gives Q8_0 to rows that do not fit
    assert matrices["output.weight"] == "Q8_0" and done.fallbacks == len(matrices) - 1
    assert f"{done.fallbacks} tensor(s) of small.gguf could not take Q4_K_M" in caplog.text


def test_type_names_ignore_case_and_know_the_aliases(source: Path, tmp_path: Path,
                                                     native_lib: Native,
                                                     quantized: dict[str, Quantized]) -> None:
    assert find_quant_type("q4_k_m") is QUANT_TYPES["Q4_K_M"]
    assert find_quant_type(" Iq4_nl ") is QUANT_TYPES["IQ4_NL"]
    assert find_quant_type("q4_k") is QUANT_TYPES["Q4_K_M"]  # llama-quantize's alias
    done = quantize(source, tmp_path / "lower.gguf", "iq4_nl", native=native_lib)
    assert done.quant_type == "IQ4_NL"
    # llama.cpp's quantization is deterministic: the same library gives the same bytes
    assert done.path.read_bytes() == quantized["IQ4_NL"].path.read_bytes()


def test_threads_change_nothing_but_must_be_positive(source: Path, tmp_path: Path,
                                                     native_lib: Native,
                                                     quantized: dict[str, Quantized]) -> None:
    two = quantize(source, tmp_path / "two.gguf", "Q4_K_M", n_threads=2, native=native_lib)
    assert two.path.read_bytes() == quantized["Q4_K_M"].path.read_bytes()
    with pytest.raises(QuantizeError, match="n_threads must be at least 1"):
        quantize(source, tmp_path / "zero.gguf", "Q4_K_M", n_threads=0, native=native_lib)
    _only(tmp_path, "two.gguf")


def test_unknown_type_lists_the_valid_ones(source: Path, tmp_path: Path, native_lib: Native) -> None:
    with pytest.raises(QuantizeError) as info:
        quantize(source, tmp_path / "out.gguf", "Q4_K_X", native=native_lib)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "unknown quantization type 'Q4_K_X'" in message
    assert all(name in message for name in QUANT_TYPES)
    _only(tmp_path)


@pytest.mark.parametrize("quant", sorted(NEEDS_IMATRIX))
def test_types_needing_an_imatrix_are_refused_as_llama_cpp_refuses_them(
        quant: str, source: Path, tmp_path: Path, native_lib: Native) -> None:
    with pytest.raises(QuantizeError, match="needs an importance matrix") as info:
        quantize(source, tmp_path / "out.gguf", quant.lower(), native=native_lib)
    assert "Q4_K_M" in str(info.value)  # says what to use instead
    _only(tmp_path)
    # the table is right: llama.cpp itself refuses this type without an imatrix
    import ctypes

    params = native_lib.llama_model_quantize_default_params()
    params.ftype, params.nthread = NEEDS_IMATRIX[quant], 1
    with native_lib.capture_errors() as errors:
        failed = native_lib.llama_model_quantize(os.fsencode(source), os.fsencode(tmp_path / "c.gguf"),
                                                 ctypes.byref(params))
    assert failed and any("imatrix" in line for line in errors), errors


def _retype_first_tensor(model: Path, ggml_type: int) -> bytes:
    """``model``'s bytes with its first tensor's type id replaced (the GGUF tensor-info field)."""
    reader = gguf.GGUFReader(model)
    type_part = reader.tensors[0].field.parts[-2]  # name_len, name, n_dims, dims, type, offset
    offset = type_part.ctypes.data - reader.data.ctypes.data
    assert int(type_part[0]) == 0  # F32, where we expect it
    data = model.read_bytes()
    return data[:offset] + struct.pack("<I", ggml_type) + data[offset + 4:]


BAD_INPUTS: list[tuple[str, Callable[[Path], bytes] | None, type[Exception], str]] = [
    ("missing", None, ModelError, "does not exist"),
    ("zip", lambda m: b"PK\x03\x04 a zip, not a model" * 8, ModelError, "is not a GGUF model"),
    ("empty", lambda m: b"", ModelError, "is not a GGUF model"),
    ("truncated-half", lambda m: m.read_bytes()[: m.stat().st_size // 2], QuantizeError,
     "not within the file bounds"),
    ("header-only", lambda m: m.read_bytes()[:200], QuantizeError, "failed to load model"),
    ("unknown-tensor-type", lambda m: _retype_first_tensor(m, 99), QuantizeError,
     "has invalid ggml type 99"),
    ("removed-tensor-type", lambda m: _retype_first_tensor(m, 4), QuantizeError,
     "of type 4 (DEPRECATED)"),  # Q4_2, removed from ggml
]


@pytest.mark.parametrize(("make", "error", "fragment"), [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_clear_error_and_loses_nothing(
        make: Callable[[Path], bytes] | None, error: type[Exception], fragment: str,
        source: Path, tmp_path: Path, native_lib: Native) -> None:
    bad = tmp_path / "bad.gguf"
    if make is not None:
        bad.write_bytes(make(source))
    out = tmp_path / "out.gguf"
    out.write_bytes(SENTINEL)
    with pytest.raises(error) as info:
        quantize(bad, out, "Q4_K_M", native=native_lib)
    message = str(info.value)
    assert fragment in message and str(bad) in message, message
    assert isinstance(info.value, ValueError)
    assert out.read_bytes() == SENTINEL
    _only(tmp_path, *(["bad.gguf"] if make else []), "out.gguf")


def test_output_that_is_the_input_is_refused(source: Path, tmp_path: Path, native_lib: Native) -> None:
    model = tmp_path / "m.gguf"
    shutil.copy(source, model)
    (tmp_path / "link.gguf").symlink_to(model)
    os.link(model, tmp_path / "hard.gguf")
    for out in (model, tmp_path / "." / "m.gguf", tmp_path / "link.gguf", tmp_path / "hard.gguf"):
        with pytest.raises(QuantizeError, match="is the input model itself"):
            quantize(model, out, "Q8_0", native=native_lib)
    assert model.read_bytes() == source.read_bytes()
    _only(tmp_path, "m.gguf", "link.gguf", "hard.gguf")


def test_output_folder_problems_are_refused(source: Path, tmp_path: Path, native_lib: Native) -> None:
    with pytest.raises(QuantizeError, match="is a folder"):
        quantize(source, tmp_path, "Q8_0", native=native_lib)
    with pytest.raises(QuantizeError, match="does not exist; create it first"):
        quantize(source, tmp_path / "no" / "out.gguf", "Q8_0", native=native_lib)
    _only(tmp_path)


def _spy(native: Native, monkeypatch: pytest.MonkeyPatch, after: Exception | None = None) -> list[Any]:
    """Record (return code, folder listing) right after each real ``llama_model_quantize``,
    then raise ``after`` (CPython raises a SIGINT that came during a C call right after it)."""
    real, seen = native.llama_model_quantize, []

    def call(src: bytes, dest: bytes, params: Any) -> int:
        rc = real(src, dest, params)
        seen.append((rc, sorted(p.name for p in Path(os.fsdecode(dest)).parent.iterdir())))
        if after is not None:
            raise after
        return int(rc)

    monkeypatch.setattr(native, "llama_model_quantize", call)
    return seen


def test_a_failure_after_llama_cpp_began_writing_leaves_nothing(
        tmp_path: Path, native_lib: Native, quantized: dict[str, Quantized],
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, out = tmp_path / "q8.gguf", tmp_path / "out.gguf"
    shutil.copy(quantized["Q8_0"].path, model)
    out.write_bytes(SENTINEL)
    seen = _spy(native_lib, monkeypatch)
    with pytest.raises(QuantizeError) as info:  # requantizing is refused mid-way, per tensor
        quantize(model, out, "Q4_0", native=native_lib)
    assert "requantizing from type q8_0 is disabled" in str(info.value)
    assert "--allow-requantize" in str(info.value)
    (rc, listing), = seen
    assert rc == 1 and any(n.startswith(".out.gguf.") and n.endswith(".partial") for n in listing)
    assert out.read_bytes() == SENTINEL
    _only(tmp_path, "q8.gguf", "out.gguf")


def test_an_interrupted_quantization_leaves_nothing(source: Path, tmp_path: Path,
                                                    native_lib: Native,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.gguf"
    out.write_bytes(SENTINEL)
    seen = _spy(native_lib, monkeypatch, after=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        quantize(source, out, "Q4_K_M", native=native_lib)
    (rc, listing), = seen
    assert rc == 0 and len(listing) == 2  # llama.cpp had written the whole partial file
    assert out.read_bytes() == SENTINEL
    _only(tmp_path, "out.gguf")


def test_allow_requantize_quantizes_a_quantized_model(source: Path, tmp_path: Path,
                                                      native_lib: Native,
                                                      quantized: dict[str, Quantized]) -> None:
    done = quantize(quantized["Q8_0"].path, tmp_path / "q4.gguf", "Q4_0", allow_requantize=True,
                    native=native_lib)
    assert tensor_types(done.path) == expected_types("Q4_0", tensor_types(source))


def test_the_public_name_is_lazy_and_stays_the_function() -> None:
    code = ("import sys, llama_runtime\n"
            "assert 'llama_runtime.quant' not in sys.modules, 'imported eagerly'\n"
            "import llama_runtime.quant\n"  # a submodule import must not shadow the function
            "assert llama_runtime.quantize is llama_runtime.quant.quantize\n"
            "assert 'libllama' not in open('/proc/self/maps').read()\n"
            "print('ok')\n")
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
