"""llama.cpp's "your buffer was too small, here is the size" protocol, in one place.

``llama_tokenize``, ``llama_detokenize`` and ``llama_token_to_piece`` return the count written,
or minus the count they need; ``llama_chat_apply_template`` returns the full length, which may
exceed the buffer (a negative value is an error there, not a size). Either way a second call
with a buffer of the size asked for succeeds, so one retry is enough.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, TypeVar

Buffer = TypeVar("Buffer", bound="ctypes.Array[Any]")


def call_sized(fill: Callable[[Buffer, int], int], new: Callable[[int], Buffer], capacity: int, *,
               returns_length: bool = False) -> tuple[Buffer, int]:
    """``fill(buffer, capacity)`` with ``new(capacity)``, again once with the size llama.cpp asks for.

    Returns the last buffer and llama.cpp's answer; the caller judges it (still negative, or
    with ``returns_length`` longer than ``len(buffer)``: the second call asked for more too).
    """
    buf = new(capacity)
    n = fill(buf, capacity)
    need = (n + 1 if n > capacity else 0) if returns_length else -n  # +1: the NUL it writes
    if need > 0:
        buf = new(need)
        n = fill(buf, need)
    return buf, n


def int32_array(capacity: int) -> ctypes.Array[ctypes.c_int32]:
    """A ``llama_token`` buffer of ``capacity`` entries."""
    return (ctypes.c_int32 * capacity)()
