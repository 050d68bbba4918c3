"""One :class:`~llama_runtime.llama.Llama` used from several threads: its native calls in turn.

A ``llama_context`` must never see two calls at once: four threads calling ``generate`` on one
model aborted the process (``GGML_ASSERT(i1 >= 0 && i1 < ne1)`` in ggml's ops.cpp). The gate of
a Llama serializes them, the way a threaded web server needs it:

* A **run** (one generation, embedding or reset) owns the context from its first native call to
  its end. A run asked for by another thread waits until it is over; runs follow each other
  whole, so each thread gets exactly the answer it would get alone. A ``stream()`` is one run
  from its first ``next()`` until it is exhausted, closed or garbage-collected: other threads
  wait for it (so close a stream you stop reading, or let it go).
* The thread that last advanced an open stream is its consumer. A new run from that thread
  cannot wait for the stream (the thread would wait for itself): it takes the context over, and
  the abandoned stream raises :class:`~llama_runtime.errors.GenerationError` at its next step,
  as two interleaved streams in one thread always did. (A thread pool that moves one stream
  between its threads, and then gives such a thread another request, meets this too: serve a
  stream from one thread, or hold a lock of your own around the whole stream.)
* Between two tokens a run keeps the context but is not *inside* it (:meth:`Gate.pause`,
  :meth:`Gate.resume`). Reading the vocabulary (tokenize, detokenize, pieces, special tokens),
  which llama.cpp allows beside a decode (its server tokenizes in its HTTP threads), never
  waits for a run (:meth:`Gate.read`). :meth:`Gate.closing` waits for the native call under
  way and for the readers before anything is freed; a run that resumes after it learns that
  the Llama is closed.

The uncontended cost per generated token is measured in ``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import GenerationError

CLOSED = "this Llama is closed; create a new one"


class Gate:
    """Who owns one Llama's context, who is inside its native code, who reads its vocabulary.

    All state lives under one reentrant lock (a stream finalized by the garbage collector inside
    a gate method must still end its run), and every exit checks that state instead of trusting
    a local flag: a KeyboardInterrupt between two bytecodes cannot leave the gate held.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._owner: object | None = None  # the run that owns the context until it ends
        self._inside: object | None = None  # the run inside native code now
        self._waiting = 0  # threads in _cond.wait(): only then is a notify worth its cost
        self.consumer = 0  # threading.get_ident() of the thread that last ran the owner's step
        self._readers = 0
        self.closed = False

    def after_fork(self) -> None:
        """In a forked child: the threads that owned, were inside or waited do not exist there."""
        self._lock = threading.RLock()  # may have been held by one of them at the fork
        self._cond = threading.Condition(self._lock)
        self._owner = self._inside = None
        self._waiting = self._readers = 0

    def _wait(self) -> None:
        self._waiting += 1
        try:
            self._cond.wait()
        finally:
            self._waiting -= 1

    def begin(self) -> object:
        """A new run owning the context and inside it (after another thread's run is over)."""
        me = threading.get_ident()
        with self._lock:
            while not self.closed and (self._inside is not None
                                       or self._owner is not None and self.consumer != me):
                self._wait()
            if self.closed:
                raise GenerationError(CLOSED)
            run = object()
            self._owner = self._inside = run  # an open stream of this thread is taken over
            self.consumer = me
            return run

    def resume(self, run: object) -> None:
        """``run`` goes back into native code (a stream's next token)."""
        with self._lock:
            while self._inside is not None:  # a run that took over, or close()
                self._wait()
            self._inside = run
            if self._owner is run:
                self.consumer = threading.get_ident()

    def pause(self, run: object) -> None:
        """``run`` leaves native code but keeps the context (a stream hands out a token)."""
        with self._lock:
            if self._inside is run:
                self._inside = None
                if self._waiting:
                    self._cond.notify_all()

    def end(self, run: object) -> None:
        """``run`` is over, wherever it stopped; the next one may start."""
        with self._lock:
            if self._inside is run:
                self._inside = None
            if self._owner is run:
                self._owner = None
            if self._waiting:
                self._cond.notify_all()

    @contextmanager
    def running(self) -> Iterator[None]:
        """One whole run that never pauses (an embedding, a reset)."""
        run = self.begin()
        try:
            yield
        finally:
            self.end(run)

    def read(self) -> None:
        """Start reading the model's vocabulary or metadata; :meth:`done` ends it."""
        with self._lock:
            if self.closed:
                raise GenerationError(CLOSED)
            self._readers += 1

    def done(self) -> None:
        with self._lock:
            self._readers -= 1
            if self._waiting and not self._readers:
                self._cond.notify_all()

    @contextmanager
    def closing(self) -> Iterator[None]:
        """Free things inside: no run starts any more, no reader or native call is under way."""
        marker = object()
        with self._lock:
            self.closed = True
            if self._waiting:
                self._cond.notify_all()  # runs waiting for their turn give up
            while self._readers or self._inside is not None:
                self._wait()
            self._inside = marker
        try:
            yield
        finally:
            self.end(marker)
