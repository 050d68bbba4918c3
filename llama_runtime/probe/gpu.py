"""GPUs: the NVIDIA driver and the CUDA version *it* supports (not the toolkit's).

Pure parsers of captured text sit beside thin readers; tests feed captured outputs.
"""

from __future__ import annotations

import re

NVIDIA_PROC_VERSION = "/proc/driver/nvidia/version"


def parse_nvidia_proc_version(text: str) -> str | None:
    """``/proc/driver/nvidia/version`` -> driver version such as ``"550.54.15"``."""
    m = re.search(r"Kernel Module(?: for [\w-]+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def cuda_version_from_int(value: int) -> str:
    """``cuDriverGetVersion`` encodes 12.4 as 12040."""
    return f"{value // 1000}.{(value % 1000) // 10}"

