"""llama-runtime: llama.cpp for Python, the prebuilt variant that fits this machine.

Importing this package is cheap: nothing is probed, downloaded or loaded until you ask.
"""

from __future__ import annotations

import sys

from ._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (B3: import time)
if TYPE_CHECKING:
    from types import ModuleType as _ModuleType
else:
    _ModuleType = type(sys)  # the same class, without importing types

_LAZY = {
    "configure": "api", "download": "api", "download_best": "api", "load": "api",
    "doctor": "diagnostics.doctor", "Llama": "llama", "quantize": "quant",
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


class _Package(_ModuleType):
    """This package, refusing to let a submodule hide the public function of the same name.

    Importing a direct submodule ``llama_runtime.<name>`` makes the import system run
    ``setattr(llama_runtime, "<name>", <module>)``; a module named like a public function would
    replace it for the whole process, whenever and by whomever imported (issue 15: the flat
    layout's ``download.py`` hid ``llama_runtime.download()``). Those modules now live in
    subpackages (``fetch/download.py``, ``diagnostics/doctor.py``); this guard keeps a future
    one from bringing the bug back. The module itself stays in ``sys.modules``.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, _ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
del TYPE_CHECKING
