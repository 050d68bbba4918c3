"""``Llama(vocab_only=True)`` against llama.cpp's own tokenizer conformance files.

The files are ``models/ggml-vocab-*.gguf`` with ``.inp``/``.out`` in the llama.cpp that the
pinned llama-cpp-python sdist vendors (``scripts/build_variants.py`` downloads and extracts it,
once, into the dev cache). ``parse_cases`` reads them exactly as ``tests/test-tokenizer-0.cpp``
does, and each vocabulary must give llama.cpp's expected ids for every case with
``add_special=False`` and ``parse_special=False``. The round trips are those of
``tests/test-tokenizer-1-spm.cpp``, on the vocabularies llama.cpp's CMakeLists runs it on.

Tokenization is libllama code only (no ggml kernel runs with ``vocab_only``), so the suite runs
these on the one library of ``native_lib``; ``LLAMA_RUNTIME_TEST_LIBDIR=<variant folder>``
runs them on another. The terminal summary says how many files and cases passed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import pytest

try:
    from ._native_fixture import NativeLibs
except ImportError:
    from _native_fixture import NativeLibs

from test_llama import _in_subprocess, _load_in_subprocess

from llama_runtime.errors import GenerationError, PromptError
from llama_runtime.llama import Llama
from llama_runtime.native import Native

SEPARATOR = b"\n__ggml_vocab_test__\n"


def parse_cases(inp: bytes, out: bytes) -> dict[bytes, list[int]]:
    """The cases of a ``.inp``/``.out`` pair, read as ``read_tests()`` of test-tokenizer-0.cpp.

    Inputs are the raw bytes between separators, leading and trailing whitespace kept, an empty
    input included; a separator at the very end starts no further case. Each ``.out`` line is
    stripped and split on spaces (an empty line: no tokens). The C++ keeps them in a std::map,
    so a repeated input keeps its last ids.
    """
    inputs: list[bytes] = []
    pos = 0
    while pos < len(inp):
        end = inp.find(SEPARATOR, pos)
        if end < 0:
            inputs.append(inp[pos:])
            break
        inputs.append(inp[pos:end])
        pos = end + len(SEPARATOR)
    lines = out.split(b"\n")
    if lines and lines[-1] == b"":  # std::getline: a final newline ends the last line
        lines.pop()
    if len(inputs) != len(lines):
        raise ValueError(f"{len(inputs)} inputs but {len(lines)} output lines")
    return {text: [int(t) for t in line.strip().split(b" ")] if line.strip() else []
            for text, line in zip(inputs, lines)}


# --- where the files are ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def vendored_llama_cpp() -> Path:
    """``vendor/llama.cpp`` of the pinned sdist: downloaded and extracted once, like the builds."""
    from scripts import build_variants as bv

    cache = bv.cache_root(os.environ)
    sdist = bv.ensure_sdist(cache)
    return bv.extract_vendor(sdist, cache / "src" / bv.sha256(sdist)[:16])


def _name(model: Path) -> str:
    return model.name.removeprefix("ggml-vocab-").removesuffix(".gguf")


def _vocab_params() -> list[object]:
    """One parameter per vocabulary with conformance files, or one skip that says why."""
    try:
        models = vendored_llama_cpp() / "models"
        found = sorted(p for p in models.glob("ggml-vocab-*.gguf")
                       if p.with_name(p.name + ".inp").is_file()
                       and p.with_name(p.name + ".out").is_file())
    except Exception as exc:  # noqa: BLE001 - no sdist (offline, no pip): say so, run nothing
        return [pytest.param(None, id="no-vocabularies",
                             marks=pytest.mark.skip(reason=f"llama.cpp sources unavailable: {exc}"))]
    if not found:
        return [pytest.param(None, id="no-vocabularies", marks=pytest.mark.skip(
            reason=f"{models} holds no ggml-vocab-*.gguf with .inp/.out files"))]
    return [pytest.param(p, id=_name(p)) for p in found]


def _spm_round_trip_params() -> list[object]:
    """The vocabularies llama.cpp's tests/CMakeLists.txt runs test-tokenizer-1-spm on."""
    try:
        source = vendored_llama_cpp()
        cmake = (source / "tests" / "CMakeLists.txt").read_text()
    except Exception as exc:  # noqa: BLE001
        return [pytest.param(None, id="no-vocabularies",
                             marks=pytest.mark.skip(reason=f"llama.cpp sources unavailable: {exc}"))]
    names = re.findall(r"^\s*llama_test\(test-tokenizer-1-spm\b.*?models/ggml-vocab-([\w.-]+)\.gguf",
                       cmake, re.MULTILINE)  # commented-out lines start with '#': not matched
    if not names:
        return [pytest.param(None, id="none-enabled", marks=pytest.mark.skip(
            reason="llama.cpp's CMakeLists runs test-tokenizer-1-spm on no vocabulary"))]
    return [pytest.param(source / "models" / f"ggml-vocab-{n}.gguf", id=n) for n in names]


# --- the summary at the end of the run ----------------------------------------------------


@dataclass
class _Report:
    """Files and cases per vocabulary; pytest calls ``pytest_terminal_summary`` on it."""

    library: str = "?"
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (passed, cases)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.rows:
            return
        files = sum(passed == n for passed, n in self.rows.values())
        passed = sum(p for p, _ in self.rows.values())
        cases = sum(n for _, n in self.rows.values())
        terminalreporter.write_sep("-", "llama.cpp tokenizer conformance (vocab_only)")
        terminalreporter.write_line(
            f"{files}/{len(self.rows)} vocabularies, {passed}/{cases} cases passed "
            f"with {self.library}")
        for name, (p, n) in sorted(self.rows.items()):
            if p != n:
                terminalreporter.write_line(f"  {name}: {p}/{n} cases")


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest, native_libs: NativeLibs) -> _Report:
    found = _Report(library=f"{native_libs.folder.name}/{native_libs.libraries[-1].name}")
    request.config.pluginmanager.register(found, "llama-runtime-vocab-report")
    return found


# --- the conformance files ----------------------------------------------------------------


@pytest.mark.parametrize("model", _vocab_params())
def test_tokenize_matches_llama_cpp(model: Path, native_lib: Native, report: _Report) -> None:
    cases = parse_cases(model.with_name(model.name + ".inp").read_bytes(),
                        model.with_name(model.name + ".out").read_bytes())
    assert cases, f"{model.name}.inp holds no cases"
    with Llama(model, vocab_only=True, native=native_lib) as llm:
        got = {text: llm.tokenize(text.decode(), add_special=False, special=False)
               for text in cases}
    wrong = [text for text, ids in cases.items() if got[text] != ids]
    report.rows[_name(model)] = (len(cases) - len(wrong), len(cases))
    if wrong:
        text = wrong[0]
        pytest.fail(f"{model.name}: {len(wrong)} of {len(cases)} cases differ; first: "
                    f"{text.decode()!r}\n  llama.cpp expects {cases[text]}\n  we got         "
                    f"  {got[text]}")


def _tokenize_raw(llm: Llama, data: bytes) -> list[int]:
    # The bytes of a lone byte token are not UTF-8, and <0x00> is a NUL: Llama.tokenize
    # refuses both (a BPE vocabulary would throw through the C API on them). The SPM
    # tokenizer of this test takes them, so they go to llama_tokenize directly.
    buf = (ctypes.c_int32 * (len(data) + 8))()
    n = llm._native.llama_tokenize(llm._vocab, data, len(data), buf, len(buf), False, True)
    assert n >= 0, f"llama_tokenize needs {-n} tokens for {data!r}"
    return list(buf[:n])


@pytest.mark.parametrize("model", _spm_round_trip_params())
def test_spm_round_trips(model: Path, native_lib: Native) -> None:
    """test-tokenizer-1-spm.cpp: every token, then every code point, through text and back."""
    with Llama(model, vocab_only=True, native=native_lib) as llm:
        wrong_ids, raw = [], 0
        for token in range(llm.n_vocab):
            text = llm._detokenize_bytes([token], special=True)
            try:
                ids = llm.tokenize(text, add_special=False, special=True)
            except PromptError:
                raw += 1
                ids = _tokenize_raw(llm, text)
            if llm._detokenize_bytes(ids, special=True) != text:
                wrong_ids.append((token, text, ids))
        assert not wrong_ids, f"{len(wrong_ids)} tokens do not round-trip, first: {wrong_ids[0]}"
        assert raw < 300, f"{raw} tokens bypassed Llama.tokenize: more than the byte tokens"
        wrong_cps = []
        for cp in range(0x110000):
            if 0xD800 <= cp <= 0xDFFF or 0x40000 <= cp <= 0xE0000:  # as the C++: \p{Cs}, \p{Cn}
                continue
            text = chr(cp)
            ids = (_tokenize_raw(llm, b"\0") if cp == 0
                   else llm.tokenize(text, add_special=False, special=True))
            # U+2581 is SentencePiece's space marker: it comes back as " " (the C++ skips it)
            if cp != 0x2581 and llm.detokenize(ids, special=True) != text:
                wrong_cps.append(cp)
        assert not wrong_cps, (f"{len(wrong_cps)} code points do not round-trip, first: "
                               f"U+{wrong_cps[0]:04X}")


def test_parse_cases_follows_test_tokenizer_0() -> None:
    # leading/trailing whitespace is kept, an empty case counts, a final separator ends the list
    inp = b"\n__ggml_vocab_test__\n \n__ggml_vocab_test__\nHello world\n\n__ggml_vocab_test__\n"
    assert parse_cases(inp, b"\n 220 \n9906 1917 198\n") == {
        b"": [], b" ": [220], b"Hello world\n": [9906, 1917, 198]}
    # no final separator: the rest of the file is the last case; no final newline in .out
    assert parse_cases(b"a\n__ggml_vocab_test__\nb ", b"64\n65 220") == {b"a": [64], b"b ": [65, 220]}
    assert parse_cases(b"", b"") == {}
    with pytest.raises(ValueError, match="2 inputs but 1 output lines"):
        parse_cases(b"a\n__ggml_vocab_test__\nb", b"64\n")


# --- what vocab_only gives, and what it refuses -------------------------------------------


def test_vocab_only_tokenizes_like_a_full_load(native_lib: Native, tiny_gguf: Path) -> None:
    text = "hello world, the llama runtime! héllo ✓"
    with Llama(tiny_gguf, n_ctx=64, n_threads=1, native=native_lib) as full, \
            Llama(tiny_gguf, vocab_only=True, native=native_lib) as vocab:
        ids = vocab.tokenize(text)
        assert ids == full.tokenize(text) and ids[0] == vocab.token_bos() == 1
        assert vocab.detokenize(ids) == text
        assert [vocab.token_to_piece(t) for t in ids] == [full.token_to_piece(t) for t in ids]
        assert vocab.n_vocab == full.n_vocab == 300
        assert (vocab.token_eos(), vocab.token_eot(), vocab.token_nl()) == \
               (full.token_eos(), full.token_eot(), full.token_nl())
        assert vocab.token_eos() == 2 and vocab.n_ctx == vocab.n_embd == 0 < full.n_embd
        assert "vocab_only=True" in repr(vocab)


@pytest.mark.parametrize("code", [
    "llm.generate('hello', 4)", "llm.stream('hello', 4)", "llm.generate_tokens([1, 2], 4)",
    "llm.chat([{'role': 'user', 'content': 'hi'}], template='chatml')",
    "llm.embed('hello')", "llm.reset()",
], ids=["generate", "stream", "generate_tokens", "chat", "embed", "reset"])
def test_vocab_only_refuses_to_run_the_model(native_lib: Native, tiny_gguf: Path,
                                             code: str) -> None:
    with Llama(tiny_gguf, vocab_only=True, native=native_lib) as llm:
        before = llm.tokenize("hello")
        with pytest.raises(GenerationError, match="opened with vocab_only=True"):
            exec(code)
        assert llm.tokenize("hello") == before  # still usable afterwards
    with pytest.raises(GenerationError, match="closed"):
        exec(code)


def test_chat_template_of_a_vocab_only_model(native_lib: Native, tmp_path: Path) -> None:
    from scripts.tiny_model import write_tiny_llama

    try:
        from ._native_fixture import CHATML
    except ImportError:
        from _native_fixture import CHATML
    path = write_tiny_llama(tmp_path / "chat.gguf", chat_template=CHATML)
    with Llama(path, vocab_only=True, native=native_lib) as llm:
        assert llm.chat_template == CHATML
        prompt = llm.format_chat([{"role": "user", "content": "hi"}])
        assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("ids", [[999_999], [-1], [1, 300]], ids=["huge", "negative", "n_vocab"])
def test_token_ids_outside_the_vocabulary(native_lib: Native, tiny_gguf: Path,
                                          ids: list[int]) -> None:
    # llama.cpp throws std::out_of_range through its C API on these: the process would abort
    with Llama(tiny_gguf, vocab_only=True, native=native_lib) as llm:
        with pytest.raises(PromptError, match=f"token id {ids[-1]} is not in the vocabulary"):
            llm.detokenize(ids)
        with pytest.raises(PromptError, match="ids 0 to 299"):
            llm.token_to_piece(ids[-1])


_VOCAB_ONLY_SCRIPT = """
import json, sys
from pathlib import Path
from llama_runtime.errors import ModelError
from llama_runtime.llama import Llama
from llama_runtime.native import Native
libs, backend_dir, model = json.loads(sys.argv[1])
native = Native.open([Path(p) for p in libs], backend_dir=backend_dir and Path(backend_dir))
try:
    Llama(model, vocab_only=True, native=native).close()
except ModelError as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"type": None, "message": "loaded"}))
"""


def _bad_file(kind: str, tiny: Path, folder: Path) -> Path:
    path = folder / f"{kind}.gguf"
    if kind == "not-gguf":
        path.write_bytes(b"PK\x03\x04 a zip, not a model")
    elif kind.startswith("first-"):
        path.write_bytes(tiny.read_bytes()[:int(kind.split("-")[1])])
    elif kind != "missing":
        _write_without_vocabulary(path, None if kind == "no-tokenizer" else kind)
    return path


def _write_without_vocabulary(path: Path, tokenizer_model: str | None) -> None:
    """A llama GGUF with hyperparameters and no tensors; no tokenizer keys, or only its model."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    if tokenizer_model is not None:
        w.add_tokenizer_model(tokenizer_model)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("kind", ["missing", "not-gguf", "first-100", "first-4096",
                                  "first-200000", "no-tokenizer"])
def test_bad_files_fail_as_in_a_full_load(native_libs: NativeLibs, tiny_gguf: Path,
                                          tmp_path: Path, kind: str) -> None:
    path = _bad_file(kind, tiny_gguf, tmp_path)
    vocab_only = _in_subprocess(_VOCAB_ONLY_SCRIPT, native_libs, path)
    assert vocab_only["type"] == "ModelError", vocab_only
    assert str(path) in vocab_only["message"]
    if kind == "no-tokenizer":  # llama.cpp names the key it needs
        assert "tokenizer.ggml.model" in vocab_only["message"], vocab_only
    assert vocab_only == _load_in_subprocess(native_libs, path)


@pytest.mark.parametrize("tokenizer_model", ["none", "no_vocab"])
def test_vocab_only_without_a_vocabulary(native_libs: NativeLibs, tmp_path: Path,
                                         tokenizer_model: str) -> None:
    # llama.cpp loads such a file (vocabulary type NONE) and then aborts the process in
    # llama_tokenize: vocab_only, whose only use is tokenizing, refuses it at once
    path = _bad_file(tokenizer_model, Path(), tmp_path)
    result = _in_subprocess(_VOCAB_ONLY_SCRIPT, native_libs, path)
    assert result["type"] == "ModelError", result
    assert "has no vocabulary" in result["message"] and str(path) in result["message"]
    assert _load_in_subprocess(native_libs, path)["type"] == "ModelError"  # no weights either
