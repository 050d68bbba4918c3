"""Ctrl-C during a long llama.cpp call: deferred until the call returns instead of lost.

CPython runs a Python signal handler at the next Python code the main thread executes. During
a long C call that code is llama.cpp's log callback (``binding._on_log``), so the default
handler raises ``KeyboardInterrupt`` *inside a ctypes callback*, where ctypes prints it
("Exception ignored on calling ctypes callback function") and drops it: the call runs to the
end and the interrupt is gone (measured: Ctrl-C during ``llama_model_quantize`` still wrote the
whole file and exited 0). Inside :func:`deferred_interrupt` the first SIGINT is only noted and
raised as ``KeyboardInterrupt`` once the call has returned; a second one ends the process at
once, the way an unhandled SIGINT does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger("llama_runtime")


@contextlib.contextmanager
def deferred_interrupt(what: str) -> Iterator[None]:
    """Run the block with SIGINT deferred (main thread, default SIGINT handler only).

    A handler the application installed itself is left alone, and so is any thread but the
    main one (Python delivers signals to the main thread only).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pending: list[int] = []

    def on_sigint(signum: int, _frame: FrameType | None) -> None:
        if pending:  # the second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            return
        pending.append(signum)
        logger.warning("interrupted: %s stops as soon as llama.cpp returns; press Ctrl-C again "
                       "to end the process now", what)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
