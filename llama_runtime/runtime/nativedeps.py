"""Native libraries a GPU variant needs but does not ship (CUDA runtime, cuBLAS, the driver).

NVIDIA publishes the CUDA runtime libraries as wheels (``nvidia-cuda-runtime``,
``nvidia-cublas``; ``-cu12`` for CUDA 12) that unpack to ``site-packages/nvidia/*/lib``. Like the
major frameworks, we load them by full path before the variant, so the dynamic loader finds
them by soname without ``LD_LIBRARY_PATH``. Every answer comes from the loader itself.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

# soname -> what provides it (a pip package, or something the system must have)
PROVIDERS = {
    "libcudart.so.13": "nvidia-cuda-runtime", "libcublas.so.13": "nvidia-cublas",
    "libcublasLt.so.13": "nvidia-cublas", "libcudart.so.12": "nvidia-cuda-runtime-cu12",
    "libcublas.so.12": "nvidia-cublas-cu12", "libcublasLt.so.12": "nvidia-cublas-cu12",
    "libcuda.so.1": "the NVIDIA driver (not a pip package)",
    "libvulkan.so.1": "the Vulkan loader (Debian/Ubuntu: libvulkan1)",
    "vulkan-1.dll": "the Vulkan loader (Windows: installed with the GPU driver)",
}


def site_packages_copy(name: str, paths: list[str] | None = None) -> Path | None:
    """``name`` inside an NVIDIA wheel (``<site-packages>/nvidia/*/lib/``), if installed."""
    for entry in paths if paths is not None else sys.path:
        base = Path(entry or ".") / "nvidia"
        if base.is_dir():
            for hit in sorted(base.glob(f"*/lib/{name}")):
                return hit
    return None


def resolve(name: str, paths: list[str] | None = None) -> dict[str, Any]:
    """Where the dynamic loader gets ``name`` from: a wheel's copy, the system, or nowhere.

    A wheel's copy is loaded (by full path, so later lookups by soname find it).
    """
    provider = PROVIDERS.get(name)
    copy = site_packages_copy(name, paths)
    try:
        ctypes.CDLL(str(copy) if copy else name, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return {"name": name, "found": False, "where": None, "provider": provider, "error": str(exc)}
    return {"name": name, "found": True, "where": str(copy) if copy else "system", "provider": provider,
            "error": None}


def resolve_all(names: list[str], paths: list[str] | None = None) -> list[dict[str, Any]]:
    # the runtime before the libraries that use it (cuBLAS needs libcudart)
    order = sorted(names, key=lambda n: (not n.startswith("libcudart"), n))
    return [resolve(n, paths) for n in order]


def pip_line(python_requires: list[str] | tuple[str, ...]) -> str:
    return "pip install " + " ".join(f"'{r}'" for r in python_requires)
