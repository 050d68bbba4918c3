"""ctypes binding of the pinned llama.cpp (``include/llama.h``).

Importing this package loads nothing; :meth:`Native.open` does.
"""

from __future__ import annotations

from .binding import LLAMA_CPP_GENERATION, Native

__all__ = ["LLAMA_CPP_GENERATION", "Native"]
