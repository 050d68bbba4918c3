"""Sampling parameters, stop strings, chat with KV-cache reuse, embeddings — on a real libllama."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_runtime.chat import ChatTemplateError, PromptError, StopMatcher
from llama_runtime.errors import GenerationError
from llama_runtime.llama import Llama
from llama_runtime.native import Native
from llama_runtime.native.context import common_prefix
from llama_runtime.native.sampling import Sampling

GREEDY = {"temperature": 0.0}
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello the world"}]


# Each test that runs a model runs twice: on the toy f32 models (deterministic, with what a test
# needs declared in the GGUF), and on SmolLM2-135M-Instruct Q4_1 (real BPE vocabulary, real
# quantized kernels, its own ChatML template; embeddings need pooling="mean": it declares none).
@pytest.fixture(params=["tiny", "smollm2-q4_1"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _pick(request: pytest.FixtureRequest, kind: str, toy: str) -> Path:
    path: Path = request.getfixturevalue(toy if kind == "tiny" else "smollm2_gguf")
    return path


@pytest.fixture
def gen_model(request: pytest.FixtureRequest, kind: str) -> Path:
    return _pick(request, kind, "tiny_gguf")


@pytest.fixture
def chat_model(request: pytest.FixtureRequest, kind: str) -> Path:
    return _pick(request, kind, "chat_gguf")


@pytest.fixture
def embed_model(request: pytest.FixtureRequest, kind: str) -> tuple[Path, str | None]:
    return _pick(request, kind, "embed_gguf"), None if kind == "tiny" else "mean"


@pytest.fixture
def llm(native_lib: Native, gen_model: Path) -> Iterator[Llama]:
    with Llama(gen_model, n_ctx=256, n_threads=1, native=native_lib) as model:
        yield model


@pytest.fixture
def tiny_llm(native_lib: Native, tiny_gguf: Path) -> Iterator[Llama]:
    """The toy model only: it has no chat template."""
    with Llama(tiny_gguf, n_ctx=256, n_threads=1, native=native_lib) as model:
        yield model


@pytest.fixture
def chat_llm(native_lib: Native, chat_model: Path) -> Iterator[Llama]:
    with Llama(chat_model, n_ctx=512, n_threads=1, native=native_lib) as model:
        yield model


def _text(llm: Llama, ids: list[int]) -> str:
    # generated text keeps the leading space of its first SPM piece; detokenize strips it
    return b"".join(llm.token_to_piece(t) for t in ids).decode("utf-8", "replace")


# --- stop strings: pure text ------------------------------------------------------------------

@pytest.mark.parametrize(("pieces", "stops", "expected"), [
    (["hello", " wor", "ld"], ["world"], "hello "),
    (["ab", "cU", "ser:", "x"], ["User:"], "abc"),
    (["abc"], ["zz"], "abc"),
    (["a", "b"], ["b", "ab"], ""),
    (["wo", "w"], ["wow!"], "wow"),
], ids=["split-in-two", "split-in-three", "never", "earliest-wins", "prefix-released-at-end"])
def test_stop_matcher(pieces: list[str], stops: list[str], expected: str) -> None:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces if not m.stopped)
    out += "" if m.stopped else m.flush()
    assert out == expected


def test_stop_matcher_holds_back_only_possible_prefixes() -> None:
    m = StopMatcher(["\nUser"])
    assert m.feed("abc\nUs") == "abc"
    assert m.feed("x") == "\nUsx"


# --- generation parameters ----------------------------------------------------------------------

def test_stop_string_ends_generation_and_is_not_returned(llm: Llama) -> None:
    full = llm.generate("hello", 32, **GREEDY)
    word = full.split()[2]
    cut = llm.generate("hello", 32, stop=[word], **GREEDY)
    assert cut == full[: full.index(word)]
    assert "".join(llm.stream("hello", 32, stop=[word], **GREEDY)) == cut
    # a stop string spanning token boundaries: the last 3 characters of one piece + the next
    pieces = list(llm.stream("hello", 32, **GREEDY))
    spanning = pieces[2][-2:] + pieces[3][:2]
    assert llm.generate("hello", 32, stop=[spanning], **GREEDY) == full[: full.index(spanning)]


def test_sampling_parameters_reach_the_sampler_chain(llm: Llama) -> None:
    kw = {"temperature": 0.9, "seed": 7}
    base = llm.generate("hello", 24, **kw)
    assert base == llm.generate("hello", 24, **kw)  # same seed, same chain: same text
    assert llm.generate("hello", 24, top_k=1, **kw) == llm.generate("hello", 24, **GREEDY)
    assert llm.generate("hello", 24, min_p=1.0, **kw) == llm.generate("hello", 24, **GREEDY)
    variants = {llm.generate("hello", 24, top_k=0, top_p=1.0, min_p=0.0, **kw),
                llm.generate("hello", 24, repeat_penalty=1.5, **kw), base}
    assert len(variants) > 1


def test_repeat_penalty_changes_greedy_output(llm: Llama) -> None:
    plain = llm.generate_tokens("hello", 40, **GREEDY)
    penalised = llm.generate_tokens("hello", 40, repeat_penalty=2.0, **GREEDY)
    assert plain != penalised and penalised
    # it repeats less: a larger share of distinct ids (a real model may also end sooner:
    # SmolLM2 stops after 9 ids, all different, where it repeated 11 of 40 without the penalty)
    assert len(set(penalised)) / len(penalised) >= len(set(plain)) / len(plain)


@pytest.mark.parametrize("bad", [{"top_p": 1.5}, {"min_p": -0.1}, {"repeat_penalty": 0.0},
                                 {"temperature": math.nan}], ids=str)
def test_bad_sampling_parameters_are_refused(llm: Llama, bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        llm.generate("hello", 4, **bad)  # type: ignore[arg-type]
    assert Sampling().temperature > 0


def test_long_prompt_is_decoded_in_n_batch_chunks(native_lib: Native, gen_model: Path,
                                                  llm: Llama) -> None:
    prompt = "hello the world and the llama runtime " * 8
    expected = llm.generate_tokens(prompt, 8, **GREEDY)
    with Llama(gen_model, n_ctx=256, n_batch=16, n_threads=1, native=native_lib) as small:
        assert small.n_batch == 16 and len(small.tokenize(prompt)) > 4 * 16
        assert small.generate_tokens(prompt, 8, **GREEDY) == expected


def test_generate_tokens_matches_generate(llm: Llama) -> None:
    ids = llm.generate_tokens("the model", 16, **GREEDY)
    assert _text(llm, ids) == llm.generate("the model", 16, **GREEDY)
    assert llm.generate_tokens(llm.tokenize("the model"), 16, **GREEDY) == ids


# --- KV cache reuse -----------------------------------------------------------------------------

def test_a_prompt_that_extends_the_cache_decodes_only_its_suffix(llm: Llama, native_lib: Native,
                                                                  gen_model: Path) -> None:
    first = llm.tokenize("hello the world")
    llm.generate_tokens(first, 5, **GREEDY)
    cached = list(llm._context.tokens)
    assert cached[: len(first)] == first and len(cached) == len(first) + 4
    longer = cached + llm.tokenize(" and the llama", add_special=False)
    before = llm.n_decoded
    out = llm.generate_tokens(longer, 12, **GREEDY)
    assert llm.n_decoded - before == len(longer) - len(cached) + 11
    with Llama(gen_model, n_ctx=256, n_threads=1, native=native_lib) as fresh:
        assert fresh.generate_tokens(longer, 12, **GREEDY) == out


def test_a_divergent_prompt_drops_the_tail(llm: Llama) -> None:
    llm.generate_tokens("hello the world and the llama", 4, **GREEDY)
    before = llm.n_decoded
    prompt = llm.tokenize("hello the model")
    shared = common_prefix(llm._context.tokens, prompt)
    assert 1 < shared < len(prompt)
    llm.generate_tokens(prompt, 1, **GREEDY)
    assert llm.n_decoded - before == len(prompt) - shared
    assert llm._context.tokens == prompt
    # the same prompt again: only its last token is decoded again (for fresh logits)
    llm.generate_tokens(prompt, 1, **GREEDY)
    assert llm.n_decoded - before == len(prompt) - shared + 1
    llm.reset()  # and after a reset, all of it
    llm.generate_tokens(prompt, 1, **GREEDY)
    assert llm.n_decoded - before == 2 * len(prompt) - shared + 1


# --- chat ---------------------------------------------------------------------------------------

def test_chat_uses_the_model_template(chat_llm: Llama) -> None:
    assert chat_llm.chat_template is not None and "<|im_start|>" in chat_llm.chat_template
    prompt = chat_llm.format_chat(MESSAGES)
    assert prompt == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello the world"
                      "<|im_end|>\n<|im_start|>assistant\n")
    reply = chat_llm.chat(MESSAGES, 16, **GREEDY)
    assert reply
    assert reply == _text(chat_llm, chat_llm.generate_tokens(
        chat_llm.tokenize(prompt, special=True), 16, **GREEDY))


def test_chat_streams(chat_llm: Llama) -> None:
    pieces = list(chat_llm.chat(MESSAGES, 16, stream=True, **GREEDY))
    assert len(pieces) > 1 and "".join(pieces) == chat_llm.chat(MESSAGES, 16, **GREEDY)


def test_chat_reuses_the_kv_cache_across_turns(chat_llm: Llama, native_lib: Native,
                                               chat_model: Path) -> None:
    reply = chat_llm.chat(MESSAGES, 12, **GREEDY)
    turn2 = [*MESSAGES, {"role": "assistant", "content": reply},
             {"role": "user", "content": "and the llama"}]
    full = chat_llm.tokenize(chat_llm.format_chat(turn2), special=True)
    reused = common_prefix(chat_llm._context.tokens, full)
    assert reused > len(chat_llm.tokenize(chat_llm.format_chat(MESSAGES), special=True))
    before = chat_llm.n_decoded
    second = chat_llm.chat(turn2, 12, **GREEDY)
    n_out = len(chat_llm.tokenize(second, add_special=False))
    assert chat_llm.n_decoded - before <= len(full) - reused + n_out
    assert chat_llm.n_decoded - before < len(full)
    with Llama(chat_model, n_ctx=512, n_threads=1, native=native_lib) as fresh:
        assert fresh.chat(turn2, 12, **GREEDY) == second


def test_builtin_template_name_is_accepted(tiny_llm: Llama) -> None:
    # the model has no template: a built-in name works, nothing at all is a clear error
    assert tiny_llm.chat_template is None
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        tiny_llm.chat(MESSAGES)
    assert tiny_llm.format_chat(MESSAGES, template="llama3").startswith("<|start_header_id|>system")


def test_unknown_template_is_a_clear_error(chat_llm: Llama) -> None:
    with pytest.raises(ChatTemplateError, match="does not support this chat template.*chatml"):
        chat_llm.chat(MESSAGES, template="{{ not a known template }}")
    with pytest.raises(PromptError, match="role"):
        chat_llm.chat([{"content": "no role"}])


# --- embeddings ---------------------------------------------------------------------------------

@pytest.fixture
def embedder(native_lib: Native, embed_model: tuple[Path, str | None]) -> Iterator[Llama]:
    path, pooling = embed_model
    with Llama(path, n_ctx=256, n_threads=1, embeddings=True, pooling=pooling,
               native=native_lib) as model:
        yield model


def test_embedding_dimension_and_determinism(embedder: Llama, kind: str) -> None:
    # mean: from llama.pooling_type in the toy GGUF, from pooling="mean" for SmolLM2
    assert embedder._context.pooling_type == 1
    v = embedder.embed("hello world")
    assert len(v) == embedder.n_embd == {"tiny": 64, "smollm2-q4_1": 576}[kind]
    assert all(math.isfinite(x) for x in v)
    assert embedder.embed("hello world") == v
    assert embedder.embed("the llama runtime") != v


def test_normalized_embedding(embedder: Llama) -> None:
    raw = embedder.embed("hello world")
    unit = embedder.embed("hello world", normalize=True)
    assert math.isclose(sum(x * x for x in unit), 1.0, rel_tol=1e-5)
    norm = math.sqrt(sum(x * x for x in raw))
    assert all(math.isclose(u, r / norm, rel_tol=1e-5, abs_tol=1e-7) for u, r in zip(unit, raw))


def test_pooling_from_context_params(native_lib: Native, gen_model: Path) -> None:
    with Llama(gen_model, n_ctx=128, n_threads=1, embeddings=True, pooling="mean",
               native=native_lib) as model:
        assert model._context.pooling_type == 1
        mean = model.embed("hello world")
    with Llama(gen_model, n_ctx=128, n_threads=1, embeddings=True, pooling="last",
               native=native_lib) as model:
        assert model.embed("hello world") != mean
    with pytest.raises(ValueError, match="pooling"):
        Llama(gen_model, n_threads=1, pooling="max", native=native_lib)


def test_real_embeddings_put_similar_sentences_closer(native_lib: Native,
                                                      smollm2_gguf: Path) -> None:
    # a trained model's vectors carry meaning (a random toy's cannot): two sentences about a cat
    # on a mat, two about markets; each is nearer its pair than the other topic (measured with
    # mean pooling: 0.95 and 0.90 within, 0.75 and 0.76 across)
    with Llama(smollm2_gguf, n_ctx=128, n_threads=1, embeddings=True, pooling="mean",
               native=native_lib) as model:
        cat, cat2, market, market2 = (model.embed(t, normalize=True) for t in (
            "The cat sat on the mat.", "A cat was sitting on a rug.",
            "Stock markets fell sharply on Monday.", "Interest rates and inflation worry investors."))

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    assert cos(cat, cat2) > max(cos(cat, market), cos(cat, market2))
    assert cos(market, market2) > max(cos(cat2, market), cos(cat2, market2))


def test_embedding_model_still_generates(embedder: Llama, llm: Llama) -> None:
    embedder.embed("hello")
    assert embedder.generate("hello", 8, **GREEDY) == llm.generate("hello", 8, **GREEDY)
    embedder.embed("hello")


def test_embedding_text_longer_than_a_batch_is_refused(native_lib: Native,
                                                       embed_model: tuple[Path, str | None]) -> None:
    with Llama(embed_model[0], n_ctx=256, n_batch=16, n_threads=1, embeddings=True,
               pooling=embed_model[1], native=native_lib) as model, \
            pytest.raises(GenerationError, match="at most 16"):
        model.embed("hello the world " * 10)


# --- prompts llama.cpp must not see -----------------------------------------------------------

def test_prompt_bytes_must_be_utf8(llm: Llama) -> None:
    assert llm.generate(b"hello", 8, **GREEDY) == llm.generate("hello", 8, **GREEDY)
    with pytest.raises(PromptError, match="not valid UTF-8"):
        llm.generate(b"hello \xff\xfe", 8)
    with pytest.raises(PromptError, match="surrogates"):
        llm.generate("hello \udcff", 8)
    with pytest.raises(PromptError, match="NUL"):
        llm.tokenize("a\0b")
    with pytest.raises(TypeError, match="str or bytes"):
        llm.tokenize(42)  # type: ignore[arg-type]


def test_generation_abandoned_by_close_raises(native_lib: Native, gen_model: Path) -> None:
    model = Llama(gen_model, n_ctx=128, n_threads=1, native=native_lib)
    it = model.stream("hello", 16, **GREEDY)
    next(it)
    model.close()
    with pytest.raises(GenerationError, match="closed"):
        list(it)


def test_second_generation_invalidates_the_first(llm: Llama) -> None:
    first = llm.stream("hello", 16, **GREEDY)
    next(first)
    llm.generate("the model", 4, **GREEDY)
    with pytest.raises(GenerationError, match="another generation"):
        list(first)
