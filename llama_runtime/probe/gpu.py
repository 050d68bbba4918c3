"""GPUs: the NVIDIA driver and the CUDA version *it* supports (not the toolkit's).

Pure parsers of captured text sit beside thin readers; tests feed captured outputs.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from typing import Any

NVIDIA_PROC_VERSION = "/proc/driver/nvidia/version"


def parse_nvidia_proc_version(text: str) -> str | None:
    """``/proc/driver/nvidia/version`` -> driver version such as ``"550.54.15"``."""
    m = re.search(r"Kernel Module(?: for [\w-]+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def cuda_version_from_int(value: int) -> str:
    """``cuDriverGetVersion`` encodes 12.4 as 12040."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _libcuda_version() -> str | None:
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return cuda_version_from_int(version.value)


def read_nvidia(proc_path: str = NVIDIA_PROC_VERSION) -> dict[str, Any]:
    """The NVIDIA driver, if any. Never raises: failures are recorded in ``error``."""
    out: dict[str, Any] = {"driver": None, "cuda_driver": None, "gpus": [], "error": None}
    if os.path.exists(proc_path):
        try:
            with open(proc_path, encoding="utf-8", errors="replace") as f:
                out["driver"] = parse_nvidia_proc_version(f.read())
        except OSError as exc:
            out["error"] = f"unknown, because {proc_path} could not be read ({exc.strerror})"
    try:
        out["cuda_driver"] = _libcuda_version()
    except Exception as exc:  # a broken driver must not break an install
        out["error"] = f"unknown, because libcuda failed: {exc}"
    if out["driver"] is None and out["cuda_driver"] is None and out["error"] is None:
        out["error"] = "no NVIDIA driver found (no /proc/driver/nvidia/version, no libcuda)"
    return out
