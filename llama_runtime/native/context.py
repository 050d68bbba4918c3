"""One ``llama_context``: decoding, the KV cache it keeps between calls, sampling, embeddings.

The context remembers which tokens its KV cache holds (sequence 0). A new prompt that starts
with those tokens only decodes what is new; the divergent tail is removed with
``llama_memory_seq_rm``. That is what makes a chat's second turn cost its new tokens only.

A llama.cpp built without OpenMP (the npm builds, every macOS build) creates and joins a
disposable ggml thread pool on every ``llama_decode`` unless the context has one attached:
each context then gets one persistent pool (``benchmarks/NOTES.md``: +11 % generation tok/s).
"""

from __future__ import annotations

import ctypes
import logging
import os
import weakref
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

from ..errors import GenerationError, ModelError
from .gate import CLOSED, Gate
from .sampling import Sampling, build_chain
from .structs import GGML_MAX_N_THREADS, llama_batch

if TYPE_CHECKING:
    from .binding import Native

logger = logging.getLogger("llama_runtime.native")

# Open contexts, for the fork hook below (registered with the first context).
_LIVE: weakref.WeakSet[Context] = weakref.WeakSet()
_fork_hook: list[bool] = []

FORK_WARNING = (
    "this process was forked from one where llama.cpp had run OpenMP threads: libgomp cannot "
    "start them again in a child (a decode would hang), so llama.cpp uses 1 thread here. For "
    "full speed start worker processes with multiprocessing's 'spawn' or 'forkserver' method, "
    "or fork before the first generation.")


def _after_fork_in_child() -> None:
    # Threads do not survive fork. A persistent pool's workers are the parent's: a decode on it
    # would wait for them forever, so the child falls back to ggml's default (the pools' memory
    # is left alone: ggml_threadpool_free would join the missing threads). libgomp is worse: once
    # a parallel region ran in the parent, any region with more than one thread in the child
    # hangs, in old and new contexts alike; one thread runs no region.
    from .binding import opened

    for native in opened():
        native.single_thread_after_fork = native.decoded and native.has_openmp()
    for context in list(_LIVE):
        context._after_fork()


def _watch_forks(context: Context) -> None:
    if not _fork_hook and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook.append(True)
    _LIVE.add(context)


ABANDONED = ("another generation started on this Llama in the thread consuming this one, and"
             " replaced its context; consume one at a time")
POOLING = {None: -1, "none": 0, "mean": 1, "cls": 2, "last": 3}  # enum llama_pooling_type
_POOLING_NONE = 0


def why(log_lines: list[str]) -> str:
    """llama.cpp's own explanation: the warnings/errors it logged during the failed call."""
    return "; ".join(log_lines[-3:]) if log_lines else "llama.cpp logged no reason"


def needs_threadpool(features: dict[str, str] | None) -> bool:
    """Whether a CPU backend with these feature flags gains from a persistent thread pool.

    With OpenMP ggml keeps its workers between graphs by itself; without it, each decode
    starts and joins its threads. Unknown features (None): no pool, nothing to risk.
    """
    return features is not None and features.get("OPENMP", "0") in ("0", "")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Context:
    """A ``llama_context`` of a loaded model; freed by :meth:`free`.

    Generations, embeddings and resets from several threads take turns through ``gate`` (the
    Llama's :class:`~llama_runtime.native.gate.Gate`; see there). ``threadpool=False`` leaves
    ggml's default threading (for comparisons and tests).
    """

    def __init__(self, native: Native, model: int, *, n_ctx: int, n_batch: int, n_threads: int,
                 embeddings: bool = False, pooling: str | None = None,
                 threadpool: bool = True, gate: Gate | None = None) -> None:
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {', '.join(map(str, POOLING))}; got {pooling!r}")
        self._native = native
        self.gate = gate or Gate()
        params = native.llama_context_default_params()
        params.n_ctx, params.n_batch = n_ctx, n_batch
        # A pooled embedding needs the whole text in one micro-batch.
        params.n_ubatch = n_batch if embeddings else min(n_batch, params.n_ubatch)
        if native.single_thread_after_fork:
            logger.warning(FORK_WARNING)
            n_threads = 1
        params.n_threads = params.n_threads_batch = n_threads
        params.embeddings = embeddings
        params.pooling_type = POOLING[pooling]
        ctx = native.llama_init_from_model(model, params)
        if not ctx:
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens; "
                             "try a smaller n_ctx or n_batch")
        self.ctx = int(ctx)
        self.embeddings = embeddings
        self.n_ctx = int(native.llama_n_ctx(ctx))
        self.n_batch = int(native.llama_n_batch(ctx))
        self.pooling_type = int(native.llama_pooling_type(ctx))
        self.memory = native.llama_get_memory(ctx)
        self.tokens: list[int] = []  # what the KV cache holds, position by position
        self.n_decoded = 0  # tokens given to llama_decode so far (tests and metrics read it)
        self._generation = 0
        self.closed = False
        # One reusable single-token batch: the per-token path allocates nothing.
        self._one = (ctypes.c_int32 * 1)()
        self._one_batch = native.llama_batch_get_one(self._one, 1)
        self.n_threads = n_threads
        # ggml_threadpool_t attached to the context (0: none, ggml's per-decode default)
        self.threadpool = self._attach_threadpool(n_threads) if threadpool else 0
        _watch_forks(self)

    def _attach_threadpool(self, n_threads: int) -> int:
        """One pool for both decode kinds: ``n_threads_batch == n_threads`` (two pools otherwise).

        An optimisation only: whatever is missing, the context works without it.
        """
        n = self._native
        features = n.cpu_features()
        if not needs_threadpool(features):
            logger.debug("no persistent thread pool: the CPU backend reports %s",
                         "no features" if features is None else f"OPENMP = {features.get('OPENMP')}")
            return 0
        if n.llama_attach_threadpool is None or not 0 < n_threads <= GGML_MAX_N_THREADS:
            logger.debug("no persistent thread pool: llama_attach_threadpool missing or "
                         "n_threads %d out of range", n_threads)
            return 0
        pool = n.threadpool_new(n_threads)
        if not pool:
            logger.debug("no persistent thread pool: ggml_threadpool_new unavailable or failed")
            return 0
        n.llama_attach_threadpool(self.ctx, pool, pool)
        return pool

    def _after_fork(self) -> None:
        self.gate.after_fork()
        if self.closed:
            return
        if self.threadpool:
            self._native.llama_attach_threadpool(self.ctx, None, None)  # = llama_detach_threadpool
            self.threadpool = 0
        if self._native.single_thread_after_fork and self.n_threads > 1:
            logger.warning(FORK_WARNING)
            self._native.llama_set_n_threads(self.ctx, 1, 1)
            self.n_threads = 1

    # --- decoding -----------------------------------------------------------------------------

    def decode(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` at the next positions, ``n_batch`` at a time."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = list(tokens[start : start + self.n_batch])
            arr = (ctypes.c_int32 * len(chunk))(*chunk)  # must outlive llama_decode
            self._run(self._native.llama_batch_get_one(arr, len(chunk)), chunk)

    def _decode_one(self, token: int) -> None:
        self._one[0] = token
        self._run(self._one_batch, (token,))

    def _run(self, batch: llama_batch, chunk: Sequence[int]) -> None:
        if len(self.tokens) + len(chunk) > self.n_ctx:
            raise GenerationError(f"the context of {self.n_ctx} tokens is full")
        with self._native.capture_errors() as errors:
            rc = self._native.llama_decode(self.ctx, batch)
        if rc != 0:
            self._clear()  # a failed batch may be half in the cache: start clean next time
            raise GenerationError(
                f"llama_decode returned {rc} for {len(chunk)} tokens: {why(errors)} "
                "(1: no room left in the context, 2: aborted, negative: invalid input or error)"
            )
        self.tokens.extend(chunk)
        self.n_decoded += len(chunk)
        self._native.decoded = True

    def reset(self) -> None:
        """Forget the KV cache (after another thread's generation, if one is under way)."""
        with self.gate.running():
            if not self.closed:
                self._generation += 1  # an open stream of this thread must not go on without it
                self._clear()

    def _clear(self) -> None:
        self._native.llama_memory_clear(self.memory, True)
        self.tokens = []

    def eval_prompt(self, tokens: Sequence[int]) -> None:
        """Make the KV cache hold exactly ``tokens`` with the last one's logits fresh."""
        keep = common_prefix(self.tokens, tokens)
        keep = min(keep, len(tokens) - 1)  # the last token is decoded again for its logits
        if keep < len(self.tokens):
            if self._native.llama_memory_seq_rm(self.memory, 0, keep, -1):
                del self.tokens[keep:]
            else:  # some memories (recurrent) cannot drop a tail: start over
                self._clear()
                keep = 0
        self.decode(tokens[keep:])

    # --- sampling -----------------------------------------------------------------------------

    def sample(self, tokens: Sequence[int], max_tokens: int, sampling: Sampling,
               vocab: int, n_vocab: int) -> Generator[int, None, None]:
        """Decode the prompt ``tokens``, then yield up to ``max_tokens`` sampled tokens.

        Stops before an end-of-generation token and when the context is full. One run of the
        gate from the first ``next()`` to the end, out of native code while a token is handed
        out. Starting another generation in the thread consuming this one abandons this one.
        """
        self._check_prompt(tokens)
        gate = self.gate
        run = gate.begin()
        try:
            generation = self._start(tokens)
            n = self._native
            chain = build_chain(n, sampling, n_vocab)
            try:
                if sampling.penalised:  # the penalty sees the prompt's last tokens too
                    for t in tokens[-sampling.repeat_last_n:]:
                        n.llama_sampler_accept(chain, t)
                limit = min(max_tokens, self.n_ctx - len(tokens))
                sample, is_eog, ctx = n.llama_sampler_sample, n.llama_vocab_is_eog, self.ctx
                pause, resume = gate.pause, gate.resume
                for i in range(limit):
                    token = sample(chain, ctx, -1)
                    if is_eog(vocab, token):
                        return
                    pause(run)
                    yield token
                    resume(run)
                    if self._generation != generation:  # checked after resuming: ctx may be gone
                        raise GenerationError(CLOSED if self.closed else ABANDONED)
                    if i + 1 < limit:
                        self._decode_one(token)
            finally:
                n.llama_sampler_free(chain)
        finally:
            gate.end(run)

    def _check_prompt(self, tokens: Sequence[int]) -> None:
        if not tokens:
            raise GenerationError("the prompt has no tokens; give some text or add_special=True")
        if len(tokens) > self.n_ctx:
            raise GenerationError(
                f"the prompt is {len(tokens)} tokens long but the context holds {self.n_ctx}; "
                "shorten the prompt or create the Llama with a larger n_ctx")

    def _start(self, tokens: Sequence[int]) -> int:
        """A new generation (its number) with the prompt decoded; inside the gate."""
        if self.closed:  # closed by another thread while this run waited for its turn
            raise GenerationError(CLOSED)
        self._generation += 1
        self._set_embeddings(False)
        self.eval_prompt(tokens)
        return self._generation

    # --- embeddings ---------------------------------------------------------------------------

    def embedding(self, tokens: Sequence[int], n_embd: int) -> list[float]:
        """The pooled embedding of ``tokens`` (the last token's when pooling is ``none``)."""
        if not tokens:
            raise GenerationError("cannot embed an empty text")
        if len(tokens) > min(self.n_batch, self.n_ctx):
            raise GenerationError(
                f"the text is {len(tokens)} tokens long; embeddings take at most "
                f"{min(self.n_batch, self.n_ctx)} (n_batch and n_ctx): create the Llama with larger ones")
        with self.gate.running():
            if self.closed:
                raise GenerationError(CLOSED)
            self._generation += 1
            self._set_embeddings(True)
            self._clear()
            try:
                self.decode(tokens)
                n = self._native
                if self.pooling_type == _POOLING_NONE:
                    ptr = n.llama_get_embeddings_ith(self.ctx, -1)
                else:
                    ptr = n.llama_get_embeddings_seq(self.ctx, 0)
                if not ptr:
                    raise GenerationError("llama.cpp returned no embedding (was the context created "
                                          "with embeddings=True?)")
                return list(ptr[:n_embd])
            finally:
                self._clear()  # embedding-mode state is no prefix a generation should reuse

    def _set_embeddings(self, on: bool) -> None:
        if on != self.embeddings:
            self._native.llama_set_embeddings(self.ctx, on)
            self.embeddings = on

    def free(self) -> None:
        """Free the context; the caller holds ``gate.closing()`` (no run is inside native code)."""
        self._generation += 1  # a suspended generation must not touch the freed context
        self.closed = True
        self._native.llama_free(self.ctx)
        _LIVE.discard(self)
        if self.threadpool:  # only now: the context's CPU backend points at it until freed
            self._native.threadpool_free(self.threadpool)
            self.threadpool = 0
