"""llama-runtime: llama.cpp for Python, the prebuilt variant that fits this machine.

Importing this package is cheap: nothing is probed, downloaded or loaded until you ask.
"""

from __future__ import annotations

from ._version import __version__

_LAZY = {
    "configure": "api", "download": "api", "download_best": "api", "load": "api",
    "doctor": "doctor", "Llama": "llama", "quantize": "quant",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llama_runtime' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
