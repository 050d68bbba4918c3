"""The high-level Llama API on a real libllama and a real (tiny) GGUF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from ._native_fixture import REPO, NativeLibs
except ImportError:
    from _native_fixture import REPO, NativeLibs

from scripts.tiny_model import write_tiny_llama

from llama_runtime.errors import GenerationError, ModelError
from llama_runtime.llama import Llama
from llama_runtime.native import Native


@pytest.fixture
def llm(native_lib: Native, tiny_gguf: Path) -> Llama:
    # one thread: the model is tiny, and spinning workers on a busy CI box cost seconds per token
    with Llama(tiny_gguf, n_ctx=256, n_threads=1, native=native_lib) as model:
        yield model


@pytest.fixture(params=["tiny_gguf", "smollm2_gguf"], ids=["tiny-f32", "smollm2-q4_1"])
def model(request: pytest.FixtureRequest) -> Path:
    """The toy f32 model, and a real quantized one (SmolLM2 Q4_1: BPE vocabulary, Q4_1 kernels)."""
    path: Path = request.getfixturevalue(request.param)
    return path


@pytest.fixture
def any_llm(native_lib: Native, model: Path) -> Iterator[Llama]:
    """A Llama for tests of behaviour any model must have: runs on each of ``model``."""
    with Llama(model, n_ctx=256, n_threads=1, native=native_lib) as loaded:
        yield loaded


def test_tokenize_detokenize_round_trip(llm: Llama) -> None:
    text = "hello world, the llama runtime!"
    tokens = llm.tokenize(text)
    assert tokens[0] == 1  # <s>
    assert 1 not in llm.tokenize(text, add_special=False)
    assert llm.detokenize(tokens) == text
    assert llm.detokenize(llm.tokenize(text, add_special=False)) == text


def test_round_trip_through_byte_fallback(llm: Llama) -> None:
    # letters outside the vocabulary fall back to <0xXX> byte tokens and come back intact
    text = "héllo ✓ 日本"
    tokens = llm.tokenize(text)
    assert any(3 <= t < 259 for t in tokens)  # byte tokens
    assert llm.detokenize(tokens) == text


def test_word_pieces_are_merged(llm: Llama) -> None:
    # SPM merges "▁t" + "h" + "e" into the vocabulary's "▁the": one token, not three
    assert len(llm.tokenize("the", add_special=False)) == 1


def test_real_vocabulary_round_trip(native_lib: Native, smollm2_gguf: Path) -> None:
    # a real byte-level BPE vocabulary (49152 tokens, no BOS added) gives every text back
    with Llama(smollm2_gguf, n_ctx=256, n_threads=1, native=native_lib) as real:
        for text in ["The capital of France is Paris.", "héllo ✓ 日本, naïve café 123"]:
            tokens = real.tokenize(text)
            assert 0 < len(tokens) < len(text.encode())  # merged, not one token per byte
            assert real.detokenize(tokens) == text


def test_greedy_generation_is_deterministic_and_varied(native_lib: Native, model: Path,
                                                       any_llm: Llama) -> None:
    first = any_llm.generate("hello", max_tokens=32, temperature=0)
    assert first and first == any_llm.generate("hello", max_tokens=32, temperature=0)
    assert len(set(first.split())) > 3, f"degenerate output: {first!r}"
    # a fresh model and context give the same text: no state leaks between generations
    with Llama(model, n_ctx=256, n_threads=1, native=native_lib) as other:
        assert other.generate("hello", max_tokens=32, temperature=0) == first
    assert any_llm.generate("the model", max_tokens=32, temperature=0) != first


def test_sampling_with_a_seed_is_reproducible(any_llm: Llama) -> None:
    a = any_llm.generate("hello", max_tokens=32, temperature=0.9, seed=1234)
    assert a and a == any_llm.generate("hello", max_tokens=32, temperature=0.9, seed=1234)
    others = {any_llm.generate("hello", max_tokens=32, temperature=0.9, seed=s) for s in range(4)}
    assert len(others) > 1


def test_stream_yields_the_generated_text(any_llm: Llama) -> None:
    pieces = list(any_llm.stream("hello", max_tokens=16, temperature=0))
    assert len(pieces) > 1
    assert "".join(pieces) == any_llm.generate("hello", max_tokens=16, temperature=0)


def test_max_tokens_bounds_the_output(any_llm: Llama) -> None:
    assert any_llm.generate("hello", max_tokens=0, temperature=0) == ""
    short = any_llm.generate("hello", max_tokens=3, temperature=0)
    assert 0 < len(any_llm.tokenize(short, add_special=False)) <= 4


def test_prompt_longer_than_the_context_is_refused(any_llm: Llama) -> None:
    prompt = "hello " * (any_llm.n_ctx + 10)
    with pytest.raises(GenerationError, match="context holds"):
        any_llm.generate(prompt, max_tokens=4)


def test_decode_failure_raises_generation_error(any_llm: Llama) -> None:
    with pytest.raises(GenerationError, match="invalid token"):
        any_llm._context.decode([10**6])  # llama_decode refuses a token id outside the vocabulary


def test_pieces_are_cached_per_mode(llm: Llama) -> None:
    # generation caches each token's bytes; a special token's text must not leak between modes
    bos = llm._native.llama_vocab_bos(llm._vocab)
    assert llm.token_to_piece(bos) == b""
    assert llm.token_to_piece(bos, special=True) == b"<s>"
    assert llm.token_to_piece(bos) == b""
    text = llm.generate("hello world", 12, temperature=0)
    assert llm._pieces, "generation did not use the piece cache"
    assert text == b"".join(llm._pieces[t] for t in llm.generate_tokens("hello world", 12, temperature=0)).decode()


def test_close_is_idempotent_and_final(native_lib: Native, model: Path) -> None:
    loaded = Llama(model, n_ctx=256, n_threads=1, native=native_lib)
    loaded.token_to_piece(5)
    loaded.close()
    with pytest.raises(GenerationError, match="closed"):
        loaded.token_to_piece(5)  # a cached piece is no way around close
    loaded.close()
    with pytest.raises(GenerationError, match="closed"):
        loaded.generate("hello", temperature=0)
    assert "closed" in repr(loaded)


def test_chat_template_is_stored(native_lib: Native, tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "chat.gguf", chat_template="{{ messages }}")
    with Llama(path, n_ctx=256, n_threads=1, native=native_lib) as model:
        raw = native_lib.llama_model_chat_template(model._model, None)
    assert raw == b"{{ messages }}"


def test_f16_weights_load_and_generate(native_lib: Native, tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "f16.gguf", f16=True)
    with Llama(path, n_ctx=256, n_threads=1, native=native_lib) as model:
        assert model.generate("hello", max_tokens=8, temperature=0)


def test_tiny_model_is_reproducible(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=7).read_bytes()
    assert a[:4] == b"GGUF"
    assert a == write_tiny_llama(tmp_path / "b.gguf", seed=7).read_bytes()
    assert a != write_tiny_llama(tmp_path / "c.gguf", seed=8).read_bytes()


# --- errors, each in a fresh process: a crash in C would kill it instead of raising -----------

_ERROR_SCRIPT = """
import json, sys
from pathlib import Path
from llama_runtime.errors import ModelError
from llama_runtime.llama import Llama
from llama_runtime.native import Native
libs, backend_dir, model = json.loads(sys.argv[1])
native = Native.open([Path(p) for p in libs], backend_dir=backend_dir and Path(backend_dir))
try:
    Llama(model, n_threads=1, native=native)
except ModelError as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"type": None, "message": "loaded"}))
"""


def _in_subprocess(script: str, native_libs: NativeLibs, model: Path, *extra: str) -> dict[str, str]:
    """Run ``script`` in a fresh Python with the libraries, model and ``extra``; its last JSON line."""
    arg = json.dumps([[str(p) for p in native_libs.libraries],
                      str(native_libs.folder) if native_libs.backend_dl else None, str(model), *extra])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script, arg], cwd=REPO, env=env,
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"crashed with {proc.returncode}: {proc.stderr[-2000:]}"
    result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _load_in_subprocess(native_libs: NativeLibs, model: Path) -> dict[str, str]:
    return _in_subprocess(_ERROR_SCRIPT, native_libs, model)


def test_missing_model_file(native_libs: NativeLibs, tmp_path: Path) -> None:
    result = _load_in_subprocess(native_libs, tmp_path / "nope.gguf")
    assert result["type"] == "ModelError"
    assert "does not exist" in result["message"] and "nope.gguf" in result["message"]


def test_file_that_is_not_gguf(native_libs: NativeLibs, tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 a zip, not a model")
    result = _load_in_subprocess(native_libs, path)
    assert result["type"] == "ModelError"
    assert "not a GGUF model" in result["message"] and str(path) in result["message"]


@pytest.mark.parametrize("size", [100, 4096, 200_000], ids=lambda n: f"first-{n}-bytes")
def test_truncated_gguf(native_libs: NativeLibs, tiny_gguf: Path, tmp_path: Path,
                        size: int) -> None:
    path = tmp_path / "truncated.gguf"
    path.write_bytes(tiny_gguf.read_bytes()[:size])
    result = _load_in_subprocess(native_libs, path)
    assert result["type"] == "ModelError"
    assert "could not load" in result["message"] and str(path) in result["message"]


@pytest.mark.parametrize("part", [1_000_000, 2], ids=["inside-the-vocabulary", "half-the-tensors"])
def test_truncated_quantized_gguf(native_libs: NativeLibs, smollm2_gguf: Path, tmp_path: Path,
                                  part: int) -> None:
    # a download cut short: the Q4_1 tensor data (or the metadata before it) ends early
    size = smollm2_gguf.stat().st_size
    path = tmp_path / "truncated.Q4_1.gguf"
    with smollm2_gguf.open("rb") as src, path.open("wb") as dst:
        dst.write(src.read(part if part > 2 else size // part))
    result = _load_in_subprocess(native_libs, path)
    assert result["type"] == "ModelError"
    assert "could not load" in result["message"] and str(path) in result["message"]


def test_missing_file_is_checked_before_any_library(tmp_path: Path) -> None:
    # no native given and no library loaded: the file check comes first
    with pytest.raises(ModelError, match="does not exist"):
        Llama(tmp_path / "nope.gguf")


_EXIT_SCRIPT = """
import json, sys
from pathlib import Path
from llama_runtime.llama import Llama
from llama_runtime.native import Native
libs, backend_dir, model = json.loads(sys.argv[1])
native = Native.open([Path(p) for p in libs], backend_dir=backend_dir and Path(backend_dir))
llm = Llama(model, n_ctx=256, n_threads=1, native=native)
stream = llm.stream("hello", 8, temperature=0)
print(next(stream))  # abandoned mid-generation; llm never closed: freed at exit
"""


def test_exit_without_close_does_not_crash(native_libs: NativeLibs, tiny_gguf: Path) -> None:
    arg = json.dumps([[str(p) for p in native_libs.libraries],
                      str(native_libs.folder) if native_libs.backend_dl else None, str(tiny_gguf)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, arg], cwd=REPO, env=env,
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


_CALL_SCRIPT = """
import json, sys
from pathlib import Path
from llama_runtime.errors import LlamaRuntimeError
from llama_runtime.llama import Llama
from llama_runtime.native import Native
libs, backend_dir, model, code = json.loads(sys.argv[1])
native = Native.open([Path(p) for p in libs], backend_dir=backend_dir and Path(backend_dir))
llm = Llama(model, n_ctx=64, n_threads=1, native=native)
try:
    exec(code)
except (LlamaRuntimeError, TypeError) as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"type": None, "message": "no error"}))
"""


def _call_in_subprocess(native_libs: NativeLibs, model: Path, code: str) -> dict[str, str]:
    return _in_subprocess(_CALL_SCRIPT, native_libs, model, code)


@pytest.mark.parametrize(("code", "error", "message"), [
    ("llm.generate('hello ' * 400, 4)", "GenerationError", "context holds"),
    ("llm.chat([{'role': 'user', 'content': 'hello ' * 400}], 4, template='chatml')",
     "GenerationError", "context holds"),
    ("llm.embed('hello ' * 400)", "GenerationError", "at most"),
    ("llm.chat([{'role': 'user', 'content': 'hi'}], template='{{ what is this }}')",
     "ChatTemplateError", "does not support this chat template"),
    ("llm.chat([{'role': 'user', 'content': 'hi'}])", "ChatTemplateError", "no chat template"),
    ("llm.generate(b'caf\\xe9', 4)", "PromptError", "not valid UTF-8"),
    ("llm.generate('caf\\udce9', 4)", "PromptError", "surrogates"),
    ("llm.generate(['hello'], 4)", "TypeError", "str or bytes"),
    ("llm.close(); llm.generate('hello', 4)", "GenerationError", "closed"),
    ("llm.close(); llm.chat([{'role': 'user', 'content': 'hi'}], template='chatml')",
     "GenerationError", "closed"),
    ("llm.close(); llm.embed('hello')", "GenerationError", "closed"),
    ("it = llm.stream('hello', 8, temperature=0); next(it); llm.close(); list(it)",
     "GenerationError", "closed"),
], ids=["prompt-too-long", "chat-too-long", "embed-too-long", "unknown-template", "no-template",
        "bytes-not-utf8", "lone-surrogate", "not-text", "generate-after-close",
        "chat-after-close", "embed-after-close", "stream-across-close"])
def test_errors_not_crashes(native_libs: NativeLibs, tiny_gguf: Path, code: str, error: str,
                            message: str) -> None:
    result = _call_in_subprocess(native_libs, tiny_gguf, code)
    assert result["type"] == error, result
    assert message in result["message"], result
