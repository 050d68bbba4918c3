"""Windows: CPU features from ``IsProcessorFeaturePresent`` (there is no /proc/cpuinfo).

The API reports whether the OS has enabled a feature (AVX needs OS-saved YMM state), which is
what decides "Illegal instruction". ``features_from_pf`` is pure, fed captured results.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

# winnt.h PF_* codes -> the /proc/cpuinfo flag names the rest of the probe uses
PF_FEATURES = {
    13: "pni",        # PF_SSE3_INSTRUCTIONS_AVAILABLE
    36: "ssse3",      # PF_SSSE3_INSTRUCTIONS_AVAILABLE
    37: "sse4_1",     # PF_SSE4_1_INSTRUCTIONS_AVAILABLE
    38: "sse4_2",     # PF_SSE4_2_INSTRUCTIONS_AVAILABLE
    39: "avx",        # PF_AVX_INSTRUCTIONS_AVAILABLE
    40: "avx2",       # PF_AVX2_INSTRUCTIONS_AVAILABLE
    41: "avx512f",    # PF_AVX512F_INSTRUCTIONS_AVAILABLE
    29: "asimd",      # PF_ARM_V8_INSTRUCTIONS_AVAILABLE (NEON is part of ARMv8-A)
    43: "asimddp",    # PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE
}
# The API has no code for FMA, F16C, BMI2 or POPCNT. Every x86 CPU that shipped AVX2 also has
# FMA3, F16C, BMI1/2, MOVBE and LZCNT (Intel Haswell, AMD Excavator onwards), and every SSE4.2
# CPU has POPCNT, CX16 and LAHF; the level follows from that.
_IMPLIED = {
    "sse4_2": ("popcnt", "cx16", "lahf_lm"),
    "avx2": ("fma", "f16c", "bmi1", "bmi2", "abm", "movbe", "xsave"),
}


def features_from_pf(present: Iterable[int]) -> list[str]:
    """The PF codes for which ``IsProcessorFeaturePresent`` returned true -> cpuinfo-style flags."""
    flags = {PF_FEATURES[c] for c in present if c in PF_FEATURES}
    for have, implied in _IMPLIED.items():
        if have in flags:
            flags.update(implied)
    return sorted(flags)


def read_windows_flags() -> dict[str, Any]:
    """Never raises; empty outside Windows."""
    if sys.platform != "win32":
        return {}
    try:
        import ctypes

        check = ctypes.windll.kernel32.IsProcessorFeaturePresent  # type: ignore[attr-defined,unused-ignore]
        return {"flags": features_from_pf(c for c in PF_FEATURES if check(c)), "error": None}
    except Exception as exc:  # an API failure must not break an install
        return {"flags": [], "error": f"unknown, because IsProcessorFeaturePresent failed ({exc})"}
