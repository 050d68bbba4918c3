"""CPU: architecture, vendor, microarchitecture, x86-64 level and the features ggml cares about.

``parse_cpuinfo`` is pure (tests feed captured ``/proc/cpuinfo``); ``read_cpu`` does the I/O.
archspec names the microarchitecture; the level and the features come from the flags the
kernel reports, which only lists what the OS has enabled (e.g. AVX without XSAVE is hidden).
Selection needs only the level and the features, so the run-time load path skips archspec
(``read_cpu(detail=False)``: its import and host detection cost ~15-30 ms per process); doctor,
install and the build reports keep the microarchitecture name.

On x86-64 the profile also holds ``cpuid`` (what the CPU itself reports, which is all ggml reads
to pick a plugin) and ``os`` (the register states the OS enables, :mod:`.xsave`); ``features``
and the level keep only what both allow, so no selection relies on a state the OS disables.
Where there is no ``/proc/cpuinfo`` (Windows, macOS) CPUID supplies the flags.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

# Features that decide which ggml build runs without "Illegal instruction".
GGML_X86_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl",
    "avx512vbmi", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
)
GGML_ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve", "sve2", "sme")
# psABI x86-64 micro-architecture levels (cumulative)
X86_64_LEVELS: dict[int, frozenset[str]] = {
    2: frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
    3: frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    4: frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
}
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def machine() -> str:
    """``platform.machine()``, without importing ``platform`` on POSIX (the load path)."""
    if hasattr(os, "uname"):
        return os.uname().machine
    import platform

    return platform.machine()


def normalize_arch(machine: str) -> str:
    m = machine.strip().lower()
    return _ARCH_ALIASES.get(m, m)


def x86_64_level(flags: Iterable[str]) -> int:
    """Highest x86-64 psABI level whose features are all present (1 = baseline)."""
    have = set(flags)
    level = 1
    for n in (2, 3, 4):
        if not X86_64_LEVELS[n] <= have:
            break
        level = n
    return level


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Vendor, model name and flags of the first processor in ``/proc/cpuinfo`` text."""
    info: dict[str, Any] = {"vendor": None, "model_name": None, "flags": []}
    for line in text.splitlines():
        if not line.strip():
            if info["flags"]:
                break
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("vendor_id", "cpu implementer") and info["vendor"] is None:
            info["vendor"] = value.strip()
        elif key in ("model name", "cpu model") and info["model_name"] is None:
            info["model_name"] = value.strip()
        elif key in ("flags", "features") and not info["flags"]:
            info["flags"] = value.split()
    return info


def ggml_features(arch: str, flags: Iterable[str]) -> list[str]:
    wanted = GGML_X86_FEATURES if arch == "x86_64" else GGML_ARM_FEATURES
    have = set(flags)
    return [f for f in wanted if f in have]


def _archspec_host() -> tuple[str | None, str | None]:
    import archspec.cpu  # type: ignore[import-untyped]

    host = archspec.cpu.host()
    return host.name, host.vendor


def _read_cpuinfo(path: str, out: dict[str, Any]) -> tuple[list[str], str | None]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            info = parse_cpuinfo(f.read())
    except OSError as exc:
        return [], f"unknown, because {path} could not be read ({exc.strerror})"
    out["vendor"], out["model_name"] = info["vendor"], info["model_name"]
    return info["flags"], None


def usable_flags(flags: list[str], x86: dict[str, Any], os_name: str) -> tuple[list[str], bool]:
    """The flags selection may rely on, and whether CPUID supplied them.

    Linux's ``/proc/cpuinfo`` lists what the kernel enabled; elsewhere (Windows'
    ``IsProcessorFeaturePresent`` knows only AVX-512F; macOS has no such file) CPUID says more.
    Either way a flag whose register state the OS disables (XCR0) is dropped.
    """
    from .xsave import disabled_features

    cpuid = x86.get("cpuid") or {}
    from_cpuid = not cpuid.get("error") and (os_name != "linux" or not flags)
    if from_cpuid:
        flags = list(cpuid.get("features") or ())
    off = disabled_features(x86.get("os"))
    return [f for f in flags if f not in off], from_cpuid


def os_name() -> str:
    """This OS as the profile names it: linux, windows, macos (else ``sys.platform``)."""
    if sys.platform.startswith("linux"):
        return "linux"
    return {"darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)


def read_cpu(cpuinfo_path: str = "/proc/cpuinfo", *, detail: bool = True) -> dict[str, Any]:
    """Probe this machine's CPU. Never raises: a failure is recorded in ``error``.

    ``detail=False`` leaves ``microarchitecture`` None (no archspec): selection never reads it.
    """
    arch = normalize_arch(machine())
    out: dict[str, Any] = {"arch": arch, "vendor": None, "model_name": None, "microarchitecture": None,
                           "x86_64_level": None, "features": [], "error": None}
    if sys.platform == "win32":
        from .windows import read_windows_flags

        win = read_windows_flags()
        flags: list[str] = win["flags"]
        out["error"] = win["error"]
    else:
        flags, out["error"] = _read_cpuinfo(cpuinfo_path, out)
    if detail:
        try:
            out["microarchitecture"], vendor = _archspec_host()
            out["vendor"] = out["vendor"] or vendor
        except Exception as exc:  # archspec must never break an install
            out["error"] = f"archspec failed: {exc}"
    if arch == "x86_64":
        from .xsave import read_x86

        x86 = read_x86(os_name())
        out.update(x86)
        flags, from_cpuid = usable_flags(flags, x86, os_name())
        if from_cpuid and str(out["error"]).startswith("unknown, because"):
            out["error"] = None  # the missing /proc/cpuinfo (or PF API failure) no longer matters
        out["vendor"] = out["vendor"] or x86["cpuid"]["vendor"]
        out["x86_64_level"] = x86_64_level(flags) if flags else None
    out["features"] = ggml_features(arch, flags)
    return out
