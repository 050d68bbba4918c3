"""The high-level API: load a GGUF model, tokenize, generate, chat, embed.

A thin layer over the C functions of :mod:`llama_runtime.native`: one ``llama_model`` and one
:class:`~llama_runtime.native.context.Context` per :class:`Llama`, a fresh sampler chain per
generation (built in C by :mod:`~llama_runtime.native.sampling`). Every failure of llama.cpp
becomes a :class:`~llama_runtime.errors.ModelError` or
:class:`~llama_runtime.errors.GenerationError`; a prompt llama.cpp must not see is a
:class:`~llama_runtime.chat.PromptError`.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import math
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from .chat import StopMatcher, encode_text, format_chat
from .errors import ChatTemplateError, GenerationError, ModelError, PromptError
from .native.buffer import call_sized, int32_array
from .native.context import Context, why
from .native.gate import Gate
from .native.sampling import LLAMA_DEFAULT_SEED, Sampling

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the checker reads it

    from .native import Native

_GGUF_MAGIC = b"GGUF"
_VOCAB_TYPE_NONE = 0  # enum llama_vocab_type: tokenizer.ggml.model "none" / "no_vocab"
_TOKEN_NULL = -1  # LLAMA_TOKEN_NULL: the vocabulary has no such special token


def _check_model_file(path: Path) -> None:
    """Refuse what llama.cpp would refuse, with a better message, before calling C."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; pass the path of a .gguf file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelError(
            f"{path} is not a GGUF model (it starts with {magic!r}, not {_GGUF_MAGIC!r}); "
            "llama.cpp only reads GGUF: convert the model with llama.cpp's convert_hf_to_gguf.py"
        )


def _default_threads() -> int:
    """The CPUs this process may use, at most 4 (llama.cpp's own default).

    llama.cpp's fixed default of 4 threads on a 2-CPU machine makes its spinning workers
    fight each other: a 2-layer test model then takes seconds per token instead of a millisecond.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(4, usable))


class Llama:
    """A GGUF model loaded into llama.cpp, with one context of ``n_ctx`` tokens.

    >>> with Llama("model.gguf", n_ctx=512) as llm:  # doctest: +SKIP
    ...     print(llm.generate("Once upon a time", max_tokens=32, temperature=0))

    ``embeddings=True`` makes a context for :meth:`embed` (``pooling``: ``"mean"``, ``"cls"``,
    ``"last"``, ``"none"``; default: the model's own); such a Llama generates too.

    Threads: one Llama may be shared. Generations, embeddings and resets run one at a time: a
    call from another thread waits until the one under way is over (a ``stream()`` counts until
    it is exhausted or closed), then runs as if alone. Tokenizing never waits. In the thread that
    consumes an open stream, starting another generation abandons that stream (its next step
    raises :class:`GenerationError`). See :mod:`llama_runtime.native.gate`.

    ``vocab_only=True`` reads the tokenizer and the metadata only (no weights, no context): the
    tokens, chat template and special ids work; :meth:`generate`, :meth:`stream`,
    :meth:`chat`, :meth:`embed` and :meth:`reset` raise :class:`GenerationError`, and
    ``n_ctx``, ``n_batch`` and ``n_embd`` are 0.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int = 512, n_batch: int = 512,
                 n_threads: int | None = None, n_gpu_layers: int = 0, seed: int = LLAMA_DEFAULT_SEED,
                 embeddings: bool = False, pooling: str | None = None, vocab_only: bool = False,
                 native: Native | None = None) -> None:
        self._gate = Gate()  # first: close() needs it, whatever fails below
        self._model: int | None = None
        self._context: Context | None = None
        self.model_path = Path(model_path)
        self.seed = seed
        self.vocab_only = vocab_only
        _check_model_file(self.model_path)
        if native is None:
            from .runtime.loader import load  # the loader resolves, fetches and opens the library

            native = load().native
        self._native = native
        self._model = self._load_model(n_gpu_layers)
        self._vocab = native.llama_model_get_vocab(self._model)
        self._pieces: dict[int, bytes] = {}  # token -> its bytes (special=False): one C call per id
        self.n_vocab = int(native.llama_vocab_n_tokens(self._vocab))
        self._has_vocab = native.llama_vocab_type(self._vocab) != _VOCAB_TYPE_NONE
        if vocab_only:
            if not self._has_vocab:
                self.close()
                raise self._no_vocab_error()
            self.n_ctx = self.n_batch = self.n_embd = 0  # llama.cpp read no hparams: none to give
            return
        self._context = Context(native, self._model, n_ctx=n_ctx, n_batch=n_batch,
                                n_threads=n_threads or _default_threads(),
                                embeddings=embeddings, pooling=pooling, gate=self._gate)
        self.n_ctx = self._context.n_ctx
        self.n_batch = self._context.n_batch
        self.n_embd = int(native.llama_model_n_embd(self._model))

    def _load_model(self, n_gpu_layers: int) -> int:
        params = self._native.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = self.vocab_only
        with self._native.capture_errors() as errors:
            model = self._native.llama_model_load_from_file(str(self.model_path).encode(), params)
        if not model:
            raise ModelError(
                f"llama.cpp could not load {self.model_path}: {why(errors)}. The file may be "
                "truncated or corrupt (download it again), or use an architecture or tensor type "
                "this llama.cpp does not know"
            )
        return int(model)

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, revision: str | None = None,
                        **kwargs: Any) -> Llama:
        """A model from the hub through huggingface_hub's cache (works offline once cached).

        The proposal's ``new LLamaWeights("Facebook/LLaMA", "llama2.gguf")``; ``kwargs`` go to
        ``Llama(...)``. The endpoint, token and offline mode come from the llama-runtime settings.
        """
        from .config import current_settings
        from .fetch.models import download_model

        return cls(download_model(repo_id, filename, revision, current_settings()), **kwargs)

    # --- tokens -------------------------------------------------------------------------------

    def _no_vocab_error(self) -> ModelError:
        # llama.cpp aborts the whole process when asked to tokenize without a vocabulary
        return ModelError(
            f"{self.model_path} has no vocabulary (its tokenizer.ggml.model is 'none'), so "
            "llama.cpp cannot tokenize with it; use the GGUF of a model that has a tokenizer")

    def _check_ids(self, tokens: Sequence[int]) -> None:
        # an id outside the vocabulary makes llama.cpp throw through its C API: the process dies
        if tokens and (min(tokens) < 0 or max(tokens) >= self.n_vocab):
            bad = next(t for t in tokens if not 0 <= t < self.n_vocab)
            raise PromptError(f"token id {bad} is not in the vocabulary of "
                              f"{self.model_path.name} (ids 0 to {self.n_vocab - 1})")

    def _special(self, read: Callable[[Any], int]) -> int | None:
        with self._reading() as vocab:
            token = read(vocab)
        return None if token == _TOKEN_NULL else int(token)

    def token_bos(self) -> int | None:
        """The beginning-of-sequence token id, or None when the vocabulary has none."""
        return self._special(self._native.llama_vocab_bos)

    def token_eos(self) -> int | None:
        """The end-of-sequence token id, or None when the vocabulary has none."""
        return self._special(self._native.llama_vocab_eos)

    def token_eot(self) -> int | None:
        """The end-of-turn token id (chat models), or None when the vocabulary has none."""
        return self._special(self._native.llama_vocab_eot)

    def token_nl(self) -> int | None:
        """The newline token id, or None when the vocabulary has none."""
        return self._special(self._native.llama_vocab_nl)

    def tokenize(self, text: str | bytes, *, add_special: bool = True,
                 special: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS, ``special`` parses ``<s>``-like text.

        ``bytes`` must be valid UTF-8 (else :class:`~llama_runtime.chat.PromptError`).
        """
        data = encode_text(text)
        with self._reading() as vocab:
            if not self._has_vocab:
                raise self._no_vocab_error()
            buf, n = call_sized(lambda out, size: self._native.llama_tokenize(
                vocab, data, len(data), out, size, add_special, special), int32_array, len(data) + 8)
        if n >= 0:
            return list(buf[:n])
        raise GenerationError(f"llama_tokenize failed on a text of {len(data)} bytes")

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """The text of ``tokens`` (invalid UTF-8 from byte tokens becomes U+FFFD).

        ``detokenize(tokenize(text)) == text`` for text the vocabulary covers: a leading BOS
        is dropped here because llama.cpp, given one, keeps the SentencePiece space prefix.
        """
        tokens = list(tokens)
        self._check_ids(tokens)
        if not special and tokens and tokens[0] == self.token_bos():
            tokens = tokens[1:]
        return self._detokenize_bytes(tokens, special=special).decode("utf-8", "replace")

    def _detokenize_bytes(self, tokens: Sequence[int], *, special: bool) -> bytes:
        arr = (ctypes.c_int32 * len(tokens))(*tokens)
        with self._reading() as vocab:
            buf, n = call_sized(lambda out, size: self._native.llama_detokenize(
                vocab, arr, len(tokens), out, size, False, special), ctypes.create_string_buffer,
                8 * len(tokens) + 16)
        if n >= 0:
            return buf.raw[:n]
        raise GenerationError(f"llama_detokenize failed on {len(tokens)} tokens")

    def token_to_piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes one token stands for; may be part of a UTF-8 character."""
        self._live_vocab()
        if not special and token in self._pieces:
            return self._pieces[token]
        self._check_ids([token])
        with self._reading() as vocab:
            buf, n = call_sized(lambda out, size: self._native.llama_token_to_piece(
                vocab, token, out, size, 0, special), ctypes.create_string_buffer, 64)
        piece = buf.raw[: max(n, 0)]
        if not special and n >= 0:
            self._pieces[token] = piece
        return piece

    # --- generation ---------------------------------------------------------------------------

    def generate(self, prompt: str | bytes, max_tokens: int = 64, *, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 repeat_penalty: float = 1.0, seed: int | None = None,
                 stop: Iterable[str] = ()) -> str:
        """The text that follows ``prompt``; ``temperature=0`` is greedy (deterministic).

        Generation ends at an end-of-generation token, after ``max_tokens``, when the context is
        full, or just before the first of the ``stop`` strings (which is not returned).
        """
        return "".join(self.stream(prompt, max_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                                   seed=seed, stop=stop))

    def stream(self, prompt: str | bytes, max_tokens: int = 64, *, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
               repeat_penalty: float = 1.0, seed: int | None = None,
               stop: Iterable[str] = ()) -> Iterator[str]:
        """:meth:`generate`, piece by piece as tokens are sampled.

        The pieces are always whole UTF-8 characters: bytes of a character split across tokens
        are held back until it is complete, and so is text that may begin a stop string.
        """
        context = self._live_context()
        sampling = self._sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        tokens = self.tokenize(prompt)
        return self._texts(context.sample(tokens, max_tokens, sampling, self._vocab,
                                          self.n_vocab), stop)

    def generate_tokens(self, prompt: str | bytes | Sequence[int], max_tokens: int = 64, *,
                        temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                        min_p: float = 0.05, repeat_penalty: float = 1.0,
                        seed: int | None = None) -> list[int]:
        """The generated token ids (not the prompt's); ``prompt`` may itself be token ids."""
        context = self._live_context()
        sampling = self._sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        tokens = list(prompt) if not isinstance(prompt, (str, bytes)) else self.tokenize(prompt)
        return list(context.sample(tokens, max_tokens, sampling, self._vocab, self.n_vocab))

    def _sampling(self, temperature: float, top_k: int, top_p: float, min_p: float,
                  repeat_penalty: float, seed: int | None) -> Sampling:
        return Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                        repeat_penalty=repeat_penalty, seed=self.seed if seed is None else seed)

    def _texts(self, tokens: Generator[int, None, None], stop: Iterable[str]) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopMatcher([stop] if isinstance(stop, str) else stop)
        pieces = self._pieces
        with contextlib.closing(tokens):  # stopping early frees the sampler now, not at GC
            for token in tokens:
                piece = pieces.get(token)
                if piece is None:
                    piece = self.token_to_piece(token)
                text = matcher.feed(decoder.decode(piece))
                if text:
                    yield text
                if matcher.stopped:
                    return
        tail = matcher.feed(decoder.decode(b"", final=True))
        tail += "" if matcher.stopped else matcher.flush()
        if tail:
            yield tail

    # --- chat ---------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The model's chat template (GGUF ``tokenizer.chat_template``), or None."""
        with self._reading():
            raw = self._native.llama_model_chat_template(self._live_model(), None)
        return raw.decode("utf-8", "replace") if raw else None

    def format_chat(self, messages: Sequence[Mapping[str, str]], *,
                    template: str | None = None) -> str:
        """The prompt text ``chat`` generates from: ``messages`` through the chat template."""
        template = template or self.chat_template
        if template is None:
            raise ChatTemplateError(
                f"{self.model_path.name} has no chat template (tokenizer.chat_template); pass "
                "one, e.g. chat(..., template='chatml'), or format the prompt and call generate()")
        return format_chat(self._native, template, messages)

    @overload
    def chat(self, messages: Sequence[Mapping[str, str]], max_tokens: int = ..., *,
             stream: Literal[False] = ..., template: str | None = ..., stop: Iterable[str] = ...,
             temperature: float = ..., top_k: int = ..., top_p: float = ..., min_p: float = ...,
             repeat_penalty: float = ..., seed: int | None = ...) -> str: ...
    @overload
    def chat(self, messages: Sequence[Mapping[str, str]], max_tokens: int = ..., *,
             stream: Literal[True], template: str | None = ..., stop: Iterable[str] = ...,
             temperature: float = ..., top_k: int = ..., top_p: float = ..., min_p: float = ...,
             repeat_penalty: float = ..., seed: int | None = ...) -> Iterator[str]: ...

    def chat(self, messages: Sequence[Mapping[str, str]], max_tokens: int = 256, *,
             stream: bool = False, template: str | None = None, stop: Iterable[str] = (),
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, seed: int | None = None) -> str | Iterator[str]:
        """The assistant's reply to ``messages`` (``[{"role": ..., "content": ...}, ...]``).

        The conversation is formatted with the model's chat template (or ``template``: a
        template text or a llama.cpp built-in name such as ``"chatml"``). The KV cache is
        reused: a conversation that grows turn by turn only decodes its new tokens.
        """
        context = self._live_context()
        prompt = self.format_chat(messages, template=template)
        sampling = self._sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        tokens = self.tokenize(prompt, special=True)
        pieces = self._texts(context.sample(tokens, max_tokens, sampling, self._vocab,
                                            self.n_vocab), stop)
        return pieces if stream else "".join(pieces)

    # --- embeddings ---------------------------------------------------------------------------

    def embed(self, text: str | bytes, *, normalize: bool = False) -> list[float]:
        """The embedding of ``text``: ``n_embd`` floats, pooled as the context says.

        ``normalize=True`` scales it to unit length (for cosine similarity by dot product).
        """
        context = self._live_context()
        vector = context.embedding(self.tokenize(text), self.n_embd)
        if normalize:
            norm = math.sqrt(sum(v * v for v in vector))
            vector = [v / norm for v in vector] if norm > 0 else vector
        return vector

    def reset(self) -> None:
        """Forget the KV cache: the next prompt is decoded from its first token."""
        self._live_context().reset()

    @property
    def n_decoded(self) -> int:
        """How many tokens this Llama has given to ``llama_decode`` so far (prompt included)."""
        return self._live_context().n_decoded

    def _live_context(self) -> Context:
        if self._context is None:
            if self.vocab_only and self._model is not None:
                raise GenerationError(
                    f"{self.model_path.name} was opened with vocab_only=True: it has a tokenizer "
                    "but no weights and no context, so generate, stream, chat, embed and reset "
                    "cannot run; open it again without vocab_only=True")
            raise GenerationError("this Llama is closed; create a new one")
        return self._context

    def _live_model(self) -> int:
        if self._model is None:
            raise GenerationError("this Llama is closed; create a new one")
        return self._model

    def _live_vocab(self) -> Any:
        self._live_model()
        return self._vocab

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """The vocabulary, while :meth:`close` waits: llama.cpp reads it beside a decode (its
        server tokenizes in its HTTP threads), so no turn is waited for."""
        self._gate.read()
        try:
            yield self._live_vocab()
        finally:
            self._gate.done()

    def close(self) -> None:
        """Free the context and the model; safe to call twice, from any thread (it waits for
        the native call under way; later calls and open streams raise GenerationError)."""
        with self._gate.closing():
            context, model = self._context, self._model
            self._context = self._model = None
            if context is not None:
                context.free()
            if model is not None:
                self._native.llama_model_free(model)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # __init__ may have failed before anything was allocated, or the interpreter may be
        # shutting down: never raise from here.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = ("closed" if self._model is None
                 else "vocab_only=True" if self.vocab_only else f"n_ctx={self.n_ctx}")
        return f"Llama({str(self.model_path)!r}, {state})"
