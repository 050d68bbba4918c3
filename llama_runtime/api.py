"""The public native-library API (parity with LLamaSharp's NativeLibraryConfig proposal).

``configure`` is ``WithLibrary``/``WithCuda``/``WithAutoDownload``; ``download`` is
``DownloadNativeLibrary``; ``download_best`` is ``DownloadBestNativeLibrary``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import Settings, current_settings, remember, resolve
from .fetch.download import Progress


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
    remember(given)
    return current_settings()


CPU_LEVELS = {"v1": 1, "sse": 1, "none": 1, "v2": 2, "sse4": 2, "avx": 2, "v3": 3, "avx2": 3,
              "v4": 4, "avx512": 4}


def _profile_for(cpu: str | int | None, os_name: str | None, arch: str | None) -> Any:
    """This machine's profile with the given parts replaced (None: all probed)."""
    if cpu is None and os_name is None and arch is None:
        return None
    from dataclasses import replace

    from .errors import ConfigError
    from .probe import probe
    from .probe.cpu import X86_64_LEVELS, ggml_features, normalize_arch

    profile = probe()
    if cpu is not None:
        level = cpu if isinstance(cpu, int) else CPU_LEVELS.get(str(cpu).lower())
        if level not in (1, 2, 3, 4):
            raise ConfigError(f"cpu={cpu!r} is not an x86-64 level; use 1-4 or one of {', '.join(CPU_LEVELS)}.")
        flags = set().union(*(X86_64_LEVELS[n] for n in range(2, level + 1)))
        profile = replace(profile, cpu={**profile.cpu, "x86_64_level": level,
                                        "features": ggml_features("x86_64", flags)})
    return replace(profile, os=os_name or profile.os, arch=normalize_arch(arch) if arch else profile.arch)


def download(filename: str | None = None, version: str | None = None, *,
             backend: str | None = None, cpu: str | int | None = None, os: str | None = None,
             arch: str | None = None, progress: Progress | None = None,
             settings: Settings | None = None) -> Path:
    """Download (or find in the cache) one variant and return its verified folder.

    The proposal's ``DownloadNativeLibrary``. ``filename`` is a variant name or its archive
    name from the manifest. Without it, the best variant is chosen for ``backend`` (default: the
    configured one) and this machine, or for the machine described by ``cpu`` (x86-64 level: 1-4,
    ``"avx2"``, ``"avx512"``), ``os`` (``"linux"``, ``"macos"``, ``"windows"``) and ``arch``.
    ``version`` is the binary release (the lock's revision); only the locked one is trusted.
    ``progress(done_bytes, total_bytes_or_None)`` is called as the archive arrives::

        folder = llama_runtime.download(backend="cpu", cpu="avx2")
    """
    from .errors import ConfigError
    from .fetch.ensure import ensure_variant
    from .fetch.trust import trusted_lock
    from .variants import select

    settings = settings or current_settings()
    lock = trusted_lock(settings)
    if version is not None and version not in (lock.revision, lock.commit):
        raise ConfigError(f"this llama-runtime trusts binary release {lock.revision}; {version!r} is"
                          " not it. Install the llama-runtime release that locks it.")
    if filename is not None:
        by_archive = {v.archive: v for v in lock.manifest.variants.values()}
        variant = by_archive.get(filename) or lock.manifest.get(filename)
    else:
        name = select(lock.manifest, _profile_for(cpu, os, arch), backend=backend or settings.backend,
                      variant=settings.variant).require()
        variant = lock.manifest.variants[name]
    return ensure_variant(variant, lock, settings, progress)[0]


def download_best(*, progress: Progress | None = None, settings: Settings | None = None) -> Path:
    """Download the best variant for this machine and the configured backend; return its folder.

    The proposal's ``DownloadBestNativeLibrary``; see :func:`download` for ``progress``.
    """
    return download(progress=progress, settings=settings)


def load() -> Any:
    """Run the priority chain once (cached) and return the loaded :class:`~llama_runtime.runtime.loader.Library`."""
    from .runtime.loader import load as _load

    return _load(current_settings())
