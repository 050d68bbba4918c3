"""Apple: macOS version, Apple Silicon or Intel (and Rosetta), and Metal.

``sysctl hw.optional.arm64`` is 1 on Apple Silicon even for an x86_64 Python under Rosetta,
where an arm64 library cannot load; that case is reported rather than hidden.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from ._run import run_tool


def parse_apple(brand: str, arm64: str, macos: str, machine: str) -> dict[str, Any]:
    """Captured ``sysctl -n machdep.cpu.brand_string``, ``sysctl -n hw.optional.arm64``,
    ``sw_vers -productVersion`` and ``platform.machine()`` -> the ``apple`` profile part."""
    silicon = arm64.strip() == "1"
    native = machine.strip().lower() in ("arm64", "aarch64")
    return {"macos": macos.strip() or None, "chip": brand.strip() or None, "apple_silicon": silicon,
            "rosetta": silicon and not native,
            # ggml's Metal backend targets Apple Silicon GPUs
            "metal": silicon and native, "error": None}


def read_apple() -> dict[str, Any]:
    """Never raises; empty outside macOS."""
    if sys.platform != "darwin":
        return {}
    brand, _ = run_tool(["sysctl", "-n", "machdep.cpu.brand_string"], timeout=2)
    arm64, why = run_tool(["sysctl", "-n", "hw.optional.arm64"], timeout=2)
    out = parse_apple(brand or "", arm64 or "0", platform.mac_ver()[0], platform.machine())
    if why:
        out["error"] = f"unknown, because {why}"
    return out
