"""The public native-library API (parity with LLamaSharp's NativeLibraryConfig proposal).

``configure`` is ``WithLibrary``/``WithCuda``/``WithAutoDownload``; ``download`` is
``DownloadNativeLibrary``; ``download_best`` is ``DownloadBestNativeLibrary``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .config import Settings, resolve

_overrides: dict[str, Any] = {}
_guard = threading.Lock()


def configure(*, library: str | os.PathLike[str] | None = None, backend: str | None = None,
              variant: str | None = None, auto_download: bool | None = None,
              cache_dir: str | os.PathLike[str] | None = None, endpoint: str | None = None,
              proxy: str | None = None, timeout: float | None = None, offline: bool | None = None,
              strict: bool | None = None) -> Settings:
    """Set run-time options in code; they win over environment variables.

    Call it before the first :func:`load` (or ``Llama(...)``): the library is loaded once per
    process. Returns the settings now in force. Example::

        llama_runtime.configure(backend="cpu", cache_dir="/opt/llama-cache", auto_download=False)
    """
    given = {k: v for k, v in locals().items() if v is not None}
    resolve(arguments=given, environ={})  # validate before storing anything
    with _guard:
        _overrides.update(given)
    return current_settings()


def current_settings(environ: Any = None) -> Settings:
    """The settings in force now: ``configure()`` arguments over the environment."""
    with _guard:
        given = dict(_overrides)
    return resolve(arguments=given, environ=os.environ if environ is None else environ)


def download(filename: str | None = None, version: str | None = None, *,
             backend: str | None = None, settings: Settings | None = None) -> Path:
    """Download (or find in the cache) one variant and return its verified folder.

    ``filename`` is a variant name or its archive name from the manifest; without it the best
    variant for ``backend`` (default: the configured one) on this machine is taken.
    ``version`` is the binary release (the lock's revision); only the locked one is trusted.
    """
    from .errors import ConfigError
    from .fetch import ensure_variant
    from .variants import read_lock, select

    settings = settings or current_settings()
    lock = read_lock()
    if version is not None and version not in (lock.revision, lock.commit):
        raise ConfigError(f"this llama-runtime trusts binary release {lock.revision}; {version!r} is"
                          " not it. Install the llama-runtime release that locks it.")
    if filename is not None:
        by_archive = {v.archive: v for v in lock.manifest.variants.values()}
        variant = by_archive.get(filename) or lock.manifest.get(filename)
    else:
        name = select(lock.manifest, backend=backend or settings.backend, variant=settings.variant).require()
        variant = lock.manifest.variants[name]
    return ensure_variant(variant, lock, settings)[0]


def download_best(*, settings: Settings | None = None) -> Path:
    """Download the best variant for this machine and the configured backend; return its folder."""
    return download(settings=settings)


def load() -> Any:
    """Run the priority chain once (cached) and return the loaded :class:`~llama_runtime.loader.Library`."""
    from .loader import load as _load

    return _load(current_settings())
