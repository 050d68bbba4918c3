"""Apple: macOS version, Apple Silicon or Intel (and Rosetta), Metal, and the CPU from sysctl.

macOS has no ``/proc/cpuinfo``: the CPU's features come from ``sysctl`` (Apple Silicon:
``hw.optional.arm.FEAT_*``; Intel: ``machdep.cpu.features``/``leaf7_features``/``extfeatures``
and ``hw.optional.*``), turned into the Linux flag names the rest of the probe speaks.

``hw.optional.arm64`` is 1 on Apple Silicon even in an x86_64 process under Rosetta 2, where
only x86_64 libraries load; ``sysctl.proc_translated`` is 1 in such a process (Apple's "About the
Rosetta translation environment"). That case is reported, never hidden: the process gets the
x86_64 CPU build at best, and the user is told that an arm64 Python would get Metal.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from typing import Any

from ._run import run_tool
from .cpu import ggml_features, x86_64_level

# hw.optional.arm.FEAT_* (macOS 12+) -> the Linux /proc/cpuinfo names ggml's features use
_ARM_FEATS = {"FEAT_DotProd": "asimddp", "FEAT_I8MM": "i8mm", "FEAT_SME": "sme",
              "FEAT_SME2": "sme2", "FEAT_BF16": "bf16", "FEAT_FP16": "fphp"}
# machdep.cpu.{features,leaf7_features,extfeatures} words -> Linux names
_X86_WORDS = {
    "SSE3": "pni", "SSSE3": "ssse3", "SSE4.1": "sse4_1", "SSE4.2": "sse4_2", "POPCNT": "popcnt",
    "CX16": "cx16", "LAHF": "lahf_lm", "AVX1.0": "avx", "AVX2": "avx2", "FMA": "fma",
    "F16C": "f16c", "BMI1": "bmi1", "BMI2": "bmi2", "LZCNT": "abm", "MOVBE": "movbe",
    "XSAVE": "xsave", "OSXSAVE": "osxsave", "AVX512F": "avx512f", "AVX512CD": "avx512cd",
    "AVX512DQ": "avx512dq", "AVX512BW": "avx512bw", "AVX512VL": "avx512vl",
    "AVX512VBMI": "avx512vbmi", "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16",
    "AVXVNNI": "avx_vnni",
}
# hw.optional.<key>: 1 -> Linux name (the same facts, as booleans; macOS enables AVX-512 state
# lazily, so these, not XCR0, are Apple's documented answer)
_X86_OPTIONAL = {
    "sse3": "pni", "supplementalsse3": "ssse3", "sse4_1": "sse4_1", "sse4_2": "sse4_2",
    "avx1_0": "avx", "avx2_0": "avx2", "fma": "fma", "f16c": "f16c", "bmi1": "bmi1",
    "bmi2": "bmi2", "avx512f": "avx512f", "avx512cd": "avx512cd", "avx512dq": "avx512dq",
    "avx512bw": "avx512bw", "avx512vl": "avx512vl", "avx512vbmi": "avx512vbmi",
}
SYSCTL_KEYS = ("hw.optional", "machdep.cpu", "sysctl.proc_translated")


def parse_sysctl(text: str) -> dict[str, str]:
    """``key: value`` lines of ``sysctl`` output (``unknown oid`` errors and blanks ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and " " not in key and key != "sysctl":  # "sysctl: unknown oid '...'"
            out[key] = value.strip()
    return out


def cpu_flags(sysctl: Mapping[str, str], arch: str) -> list[str]:
    """Linux-style CPU flags of this process's architecture, from sysctl values."""
    if arch == "aarch64":
        flags = {"asimd"} if sysctl.get("hw.optional.neon") == "1" else set()
        flags |= {name for key, name in _ARM_FEATS.items()
                  if sysctl.get(f"hw.optional.arm.{key}") == "1"}
        return sorted(flags)
    words = " ".join(sysctl.get(f"machdep.cpu.{k}", "") for k in
                     ("features", "leaf7_features", "extfeatures")).split()
    flags = {_X86_WORDS[w] for w in words if w in _X86_WORDS}
    flags |= {name for key, name in _X86_OPTIONAL.items() if sysctl.get(f"hw.optional.{key}") == "1"}
    return sorted(flags)


def cpu_from_sysctl(sysctl: Mapping[str, str], arch: str) -> dict[str, Any]:
    """The ``cpu`` profile facts selection reads (level, ggml features), from sysctl."""
    flags = cpu_flags(sysctl, arch)
    return {"vendor": sysctl.get("machdep.cpu.vendor") or ("Apple" if arch == "aarch64" else None),
            "x86_64_level": x86_64_level(flags) if arch == "x86_64" and flags else None,
            "features": ggml_features(arch, flags),
            "error": None if flags else "unknown, because sysctl reported no CPU features"}


def parse_apple(brand: str, arm64: str, macos: str, machine: str,
                translated: str | None = None) -> dict[str, Any]:
    """Captured ``sysctl -n machdep.cpu.brand_string``, ``sysctl -n hw.optional.arm64``,
    ``sw_vers -productVersion``, ``platform.machine()`` and ``sysctl -n sysctl.proc_translated``
    (None: not known; Intel Macs before macOS 11 do not have it) -> the ``apple`` profile part."""
    silicon = arm64.strip() == "1"
    native = machine.strip().lower() in ("arm64", "aarch64")
    rosetta = translated.strip() == "1" if translated is not None else silicon and not native
    return {"macos": macos.strip() or None, "chip": brand.strip() or None, "apple_silicon": silicon,
            "rosetta": rosetta,
            # ggml's Metal backend targets Apple Silicon GPUs, from an arm64 process
            "metal": silicon and native and not rosetta, "error": None}


def read_apple() -> dict[str, Any]:
    """Never raises; empty outside macOS. One ``sysctl`` run reads everything."""
    if sys.platform != "darwin":
        return {}
    text, why = run_tool(["sysctl", *SYSCTL_KEYS], timeout=2)
    values = parse_sysctl(text or "")
    machine = platform.machine()
    out = parse_apple(values.get("machdep.cpu.brand_string", ""), values.get("hw.optional.arm64", "0"),
                      platform.mac_ver()[0], machine, values.get("sysctl.proc_translated"))
    out["cpu"] = cpu_from_sysctl(values, "aarch64" if machine == "arm64" else machine)
    if why:
        out["error"] = f"unknown, because {why}"
    return out


def merge_cpu(cpu: dict[str, Any], apple: dict[str, Any]) -> dict[str, Any]:
    """The ``cpu`` part with the sysctl facts in, where ``/proc/cpuinfo`` gave none (macOS)."""
    facts = apple.get("cpu") or {}
    if not facts or cpu.get("features") or cpu.get("x86_64_level"):
        return cpu
    return {**cpu, **{k: v for k, v in facts.items() if v is not None or k == "error"},
            "vendor": cpu.get("vendor") or facts.get("vendor")}
