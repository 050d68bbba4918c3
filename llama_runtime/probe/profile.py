"""The probed machine as a value: built by :func:`probe`, or read back from ``doctor --json``."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .cpu import normalize_arch, read_cpu
from .nvidia import read_nvidia
from .libc import read_libc


def _os_name() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    return {"darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)


@dataclass(frozen=True)
class MachineProfile:
    os: str
    arch: str
    libc: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    nvidia: dict[str, Any] = field(default_factory=dict)
    probe_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for build logs."""
        cpu = self.cpu
        level = f" x86-64-v{cpu['x86_64_level']}" if cpu.get("x86_64_level") else ""
        libc = f"{self.libc.get('name')} {self.libc.get('version')}" if self.libc.get("name") else "no libc info"
        gpu = f"NVIDIA driver {self.nvidia['driver']}" if self.nvidia.get("driver") else "no NVIDIA GPU"
        return (f"{self.os}/{self.arch}, {libc}, CPU {cpu.get('microarchitecture') or '?'}{level}"
                f" ({len(cpu.get('features') or [])} ggml features), {gpu}")

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
                       nvidia=dict(data.get("nvidia") or {}), probe_ms=data.get("probe_ms"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not a machine profile: missing {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> MachineProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the target profile {path}: {exc}") from exc


def probe() -> MachineProfile:
    """Probe this machine. Never raises: each failed probe says why in its ``error``."""
    start = time.perf_counter()
    cpu = read_cpu()
    return MachineProfile(
        os=_os_name(), arch=normalize_arch(platform.machine()), libc=read_libc(), cpu=cpu,
        nvidia=read_nvidia(), probe_ms=round((time.perf_counter() - start) * 1000, 1),
    )
