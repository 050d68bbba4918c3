"""The probed machine as a value: built by :func:`probe`, or read back from ``doctor --json``."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .cpu import machine, normalize_arch, os_name as _os_name, read_cpu
from .nvidia import read_nvidia
from .libc import read_libc
from .rocm import read_rocm
from .vulkan import read_vulkan


@dataclass(frozen=True)
class MachineProfile:
    os: str
    arch: str
    libc: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    nvidia: dict[str, Any] = field(default_factory=dict)
    probe_ms: float | None = None
    # Added after the first release: absent in older doctor --json files, so they default empty.
    rocm: dict[str, Any] = field(default_factory=dict)
    vulkan: dict[str, Any] = field(default_factory=dict)
    apple: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for build logs."""
        cpu = self.cpu
        level = f" x86-64-v{cpu['x86_64_level']}" if cpu.get("x86_64_level") else ""
        libc = f"{self.libc.get('name')} {self.libc.get('version')}" if self.libc.get("name") else "no libc info"
        cxx = (self.libc.get("libstdcxx") or {}).get("version")
        libc += f" (libstdc++ {cxx})" if cxx else ""
        gpu = ", ".join(self.gpu_names()) or "no GPU"
        if self.nvidia.get("driver"):
            gpu = f"NVIDIA driver {self.nvidia['driver']} (CUDA {self.nvidia.get('cuda_driver') or '?'}), {gpu}"
        return (f"{self.os}/{self.arch}, {libc}, CPU {cpu.get('microarchitecture') or '?'}{level}"
                f" ({len(cpu.get('features') or [])} ggml features), {gpu}")

    def gpu_names(self) -> list[str]:
        """Every GPU found, as ``name (detail)``, for reports and warnings."""
        names = [f"{g.get('name') or 'NVIDIA GPU'} (cc {g.get('compute_capability') or '?'})"
                 for g in self.nvidia.get("gpus") or []]
        names += [f"{g.get('name') or 'AMD GPU'} ({g.get('gfx')})" for g in self.rocm.get("gpus") or []]
        names += [f"{d.get('name')} (Vulkan {d.get('type')})" for d in self.vulkan.get("devices") or []
                  if d.get("type") != "cpu" and not _same_gpu(d.get("name"), names)]
        if self.apple.get("metal"):
            names.append(f"{self.apple.get('chip') or 'Apple Silicon'} (Metal)")
        return names

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineProfile:
        """Accept a profile dict or a whole ``doctor --json`` object (which holds ``profile``)."""
        if isinstance(data, dict):
            data = data.get("profile", data)
        if not isinstance(data, dict):
            raise ConfigError(
                f"not a machine profile: expected a JSON object, got {type(data).__name__}"
            )
        try:
            return cls(os=data["os"], arch=normalize_arch(data["arch"]),
                       libc=dict(data.get("libc") or {}), cpu=dict(data.get("cpu") or {}),
                       nvidia=dict(data.get("nvidia") or {}), probe_ms=data.get("probe_ms"),
                       rocm=dict(data.get("rocm") or {}), vulkan=dict(data.get("vulkan") or {}),
                       apple=dict(data.get("apple") or {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not a machine profile: missing {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> MachineProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the target profile {path}: {exc}") from exc


def _same_gpu(name: str | None, seen: list[str]) -> bool:
    return bool(name) and any(str(name) in s or s.split(" (")[0] in str(name) for s in seen)


class _Background:
    """``fn(*args)`` in a daemon thread; ``result()`` waits and re-raises (a lighter ThreadPoolExecutor)."""

    def __init__(self, fn: Callable[..., dict[str, Any]], *args: Any) -> None:
        self._value: dict[str, Any] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> dict[str, Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _read_apple() -> dict[str, Any]:
    if sys.platform != "darwin":
        return {}  # what read_apple() says, without importing it (and platform) elsewhere
    from .apple import read_apple

    return read_apple()


def probe(libcuda: str | None = None, *, detail: bool = True) -> MachineProfile:
    """Probe this machine. Never raises: each failed probe says why in its ``error``.

    The probes that start processes (libcuda in a child, vulkaninfo, rocminfo) run side by side,
    each under its own timeout, so the slowest one bounds the total. ``detail=False`` (the
    run-time load path) skips what selection never reads: archspec's microarchitecture name.
    """
    start = time.perf_counter()
    os_name = _os_name()
    nvidia = _Background(read_nvidia, libcuda) if os_name != "macos" else None
    vulkan = _Background(read_vulkan) if os_name != "macos" else None
    rocm = _Background(read_rocm) if os_name == "linux" else None
    cpu, libc, apple = read_cpu(detail=detail), read_libc(), _read_apple()
    if apple:  # macOS: no /proc/cpuinfo, the CPU's features come from sysctl
        from .apple import merge_cpu

        cpu = merge_cpu(cpu, apple)
    return MachineProfile(
        os=os_name, arch=normalize_arch(machine()), libc=libc, cpu=cpu,
        nvidia=nvidia.result() if nvidia else {"driver": None, "cuda_driver": None, "gpus": [],
                                               "error": "no NVIDIA driver on macOS", "source": None},
        rocm=rocm.result() if rocm else {}, vulkan=vulkan.result() if vulkan else {}, apple=apple,
        probe_ms=round((time.perf_counter() - start) * 1000, 1),
    )
