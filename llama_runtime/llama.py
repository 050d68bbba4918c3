"""The high-level API: load a GGUF model, tokenize, generate text.

A thin layer over the C functions of :mod:`llama_runtime.native`: one ``llama_model`` and one
``llama_context`` per :class:`Llama`, a fresh sampler chain per generation. Every failure of
llama.cpp becomes a :class:`~llama_runtime.errors.ModelError` or
:class:`~llama_runtime.errors.GenerationError` here, in one place each.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GenerationError, ModelError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the checker reads it

    from .native import Native

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp draws a random seed
_GGUF_MAGIC = b"GGUF"


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


def _why(log_lines: list[str]) -> str:
    """llama.cpp's own explanation: the warnings/errors it logged during the failed call."""
    return "; ".join(log_lines[-3:]) if log_lines else "llama.cpp logged no reason"


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
    """

    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int = 512, n_batch: int = 512,
                 n_threads: int | None = None, n_gpu_layers: int = 0, seed: int = LLAMA_DEFAULT_SEED,
                 native: Native | None = None) -> None:
        self._model: int | None = None
        self._ctx: int | None = None
        self.model_path = Path(model_path)
        self.seed = seed
        _check_model_file(self.model_path)
        if native is None:
            from .loader import load  # the loader resolves, fetches and opens the library

            native = load().native
        self._native = native
        self._model = self._load_model(n_gpu_layers)
        self._ctx = self._new_context(n_ctx, n_batch, n_threads)
        self._vocab = native.llama_model_get_vocab(self._model)
        self.n_ctx = int(native.llama_n_ctx(self._ctx))
        self.n_batch = int(native.llama_n_batch(self._ctx))

    def _load_model(self, n_gpu_layers: int) -> int:
        params = self._native.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        with self._native.capture_errors() as errors:
            model = self._native.llama_model_load_from_file(str(self.model_path).encode(), params)
        if not model:
            raise ModelError(
                f"llama.cpp could not load {self.model_path}: {_why(errors)}. The file may be "
                "truncated or corrupt (download it again), or use an architecture or tensor type "
                "this llama.cpp does not know"
            )
        return int(model)

    def _new_context(self, n_ctx: int, n_batch: int, n_threads: int | None) -> int:
        params = self._native.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, params.n_ubatch)
        params.n_threads = params.n_threads_batch = n_threads or _default_threads()
        ctx = self._native.llama_init_from_model(self._model, params)
        if not ctx:
            raise ModelError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {self.model_path}; "
                "try a smaller n_ctx or n_batch"
            )
        return int(ctx)

    # --- tokens -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, revision: str | None = None,
                        **kwargs: Any) -> Llama:
        """A model from the hub through huggingface_hub's cache (works offline once cached).

        The proposal's ``new LLamaWeights("Facebook/LLaMA", "llama2.gguf")``; ``kwargs`` go to
        ``Llama(...)``. The endpoint, token and offline mode come from the llama-runtime settings.
        """
        from .api import current_settings
        from .models import download_model

        return cls(download_model(repo_id, filename, revision, current_settings()), **kwargs)

    def tokenize(self, text: str, *, add_special: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS, ``special`` parses ``<s>``-like text."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            buf = (ctypes.c_int32 * capacity)()
            n = self._native.llama_tokenize(self._live_vocab(), data, len(data), buf, capacity,
                                            add_special, special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n  # llama.cpp says how many tokens it needs
        raise GenerationError(f"llama_tokenize failed on a text of {len(data)} bytes")

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """The text of ``tokens`` (invalid UTF-8 from byte tokens becomes U+FFFD).

        ``detokenize(tokenize(text)) == text`` for text the vocabulary covers: a leading BOS
        is dropped here because llama.cpp, given one, keeps the SentencePiece space prefix.
        """
        tokens = list(tokens)
        if not special and tokens and tokens[0] == self._native.llama_vocab_bos(self._live_vocab()):
            tokens = tokens[1:]
        return self._detokenize_bytes(tokens, special=special).decode("utf-8", "replace")

    def _detokenize_bytes(self, tokens: Sequence[int], *, special: bool) -> bytes:
        arr = (ctypes.c_int32 * len(tokens))(*tokens)
        capacity = 8 * len(tokens) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(capacity)
            n = self._native.llama_detokenize(self._live_vocab(), arr, len(tokens), buf, capacity,
                                              False, special)
            if n >= 0:
                return buf.raw[:n]
            capacity = -n
        raise GenerationError(f"llama_detokenize failed on {len(tokens)} tokens")

    def token_to_piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes one token stands for; may be part of a UTF-8 character."""
        buf = ctypes.create_string_buffer(64)
        n = self._native.llama_token_to_piece(self._live_vocab(), token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._native.llama_token_to_piece(self._live_vocab(), token, buf, -n, 0, special)
        return buf.raw[: max(n, 0)]

    # --- generation ---------------------------------------------------------------------------

    def generate(self, prompt: str, max_tokens: int = 64, *, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, seed: int | None = None) -> str:
        """The text that follows ``prompt``; ``temperature=0`` is greedy (deterministic)."""
        return "".join(self.stream(prompt, max_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, seed=seed))

    def stream(self, prompt: str, max_tokens: int = 64, *, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, seed: int | None = None) -> Iterator[str]:
        """Yield the generated text piece by piece as it is sampled.

        A token may end in the middle of a UTF-8 character (byte-fallback tokens): those bytes
        are held back until the character is complete. Generation stops at an end-of-generation
        token, after ``max_tokens``, or when the context is full.
        """
        tokens = self.tokenize(prompt)
        if len(tokens) > self.n_ctx:
            raise GenerationError(
                f"the prompt is {len(tokens)} tokens long but the context holds {self.n_ctx}; "
                "shorten the prompt or create the Llama with a larger n_ctx"
            )
        self._reset_memory()
        self._decode(tokens)
        sampler = self._new_sampler(temperature, top_k, top_p, self.seed if seed is None else seed)
        try:
            yield from self._sample_loop(sampler, min(max_tokens, self.n_ctx - len(tokens)))
        finally:
            self._native.llama_sampler_free(sampler)

    def _sample_loop(self, sampler: int, max_tokens: int) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i in range(max_tokens):
            token = int(self._native.llama_sampler_sample(sampler, self._live_ctx(), -1))
            if self._native.llama_vocab_is_eog(self._vocab, token):
                break
            text = decoder.decode(self.token_to_piece(token))
            if text:
                yield text
            if i + 1 < max_tokens:
                self._decode([token])
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def _decode(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` at the next positions, ``n_batch`` at a time."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            arr = (ctypes.c_int32 * len(chunk))(*chunk)  # must outlive llama_decode
            batch = self._native.llama_batch_get_one(arr, len(chunk))
            with self._native.capture_errors() as errors:
                rc = self._native.llama_decode(self._live_ctx(), batch)
            if rc != 0:
                raise GenerationError(
                    f"llama_decode returned {rc} for {len(chunk)} tokens: {_why(errors)} "
                    "(1: no room left in the context, 2: aborted, negative: invalid input or error)"
                )

    def _reset_memory(self) -> None:
        # Each generation starts from an empty KV cache: positions restart at 0.
        self._native.llama_memory_clear(self._native.llama_get_memory(self._live_ctx()), True)

    def _new_sampler(self, temperature: float, top_k: int, top_p: float, seed: int) -> int:
        n = self._native
        chain = n.llama_sampler_chain_init(n.llama_sampler_chain_default_params())
        if not chain:
            raise GenerationError("llama_sampler_chain_init failed")
        if temperature <= 0:
            n.llama_sampler_chain_add(chain, n.llama_sampler_init_greedy())
            return int(chain)
        if top_k > 0:
            n.llama_sampler_chain_add(chain, n.llama_sampler_init_top_k(top_k))
        if 0 < top_p < 1:
            n.llama_sampler_chain_add(chain, n.llama_sampler_init_top_p(top_p, 1))
        n.llama_sampler_chain_add(chain, n.llama_sampler_init_temp(temperature))
        n.llama_sampler_chain_add(chain, n.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return int(chain)

    # --- lifetime -----------------------------------------------------------------------------

    def _live_ctx(self) -> int:
        if self._ctx is None:
            raise GenerationError("this Llama is closed; create a new one")
        return self._ctx

    def _live_vocab(self) -> Any:
        if self._model is None:
            raise GenerationError("this Llama is closed; create a new one")
        return self._vocab

    def close(self) -> None:
        """Free the context and the model; safe to call twice."""
        ctx, model = self._ctx, self._model
        self._ctx = self._model = None
        if ctx is not None:
            self._native.llama_free(ctx)
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
        state = "closed" if self._model is None else f"n_ctx={self.n_ctx}"
        return f"Llama({str(self.model_path)!r}, {state})"
