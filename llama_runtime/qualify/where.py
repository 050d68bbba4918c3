"""Where each CPU plugin of a variant can be run here: natively, under ``qemu-x86_64 -cpu MODEL``,
or not at all (and why). Pure, given the host's CPU dict (the probe's) and qemu's presence.

Every plugin the host runs is run natively. Every plugin qemu can execute is also run under
the *oldest* CPU model it claims to support (``qemu_x86.json``'s floor: ``x64`` under
``qemu64``, ``sse42`` under ``Nehalem`` ...): natively a plugin that uses one instruction too
many still runs, on a user's older CPU it dies; under its floor model it dies here first. A
build without plugins is run under the model of its declared x86-64 level the same way.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

NATIVE = "native"


@lru_cache(maxsize=1)
def qemu_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(__file__).parent / "qemu_x86.json").read_text(encoding="utf-8"))
    return data


@dataclass(frozen=True)
class Run:
    """One child to start: which CPU code, where, and why."""

    plugin: str | None  # None: the CPU backend linked into the libraries (no plugins)
    where: str  # "native" or "qemu-x86_64 -cpu MODEL"
    purpose: str

    @property
    def prefix(self) -> tuple[str, ...]:
        return () if self.where == NATIVE else tuple(self.where.split())


def qemu_path() -> str | None:
    return shutil.which(str(qemu_data()["emulator"]))


def qemu_run(model: str, purpose: str, plugin: str | None) -> Run:
    return Run(plugin, f"{qemu_data()['emulator']} -cpu {model}", purpose)


def plugin_runs(file: str, cpu: Mapping[str, Any], qemu: bool) -> tuple[list[Run], str | None]:
    """The runs of one plugin, and why it cannot run here at all (None when some run can)."""
    from ..plugins.rank import needed_flags, plugin_variant, rank

    variant = plugin_variant(file, "linux")
    (judged,) = rank([file], cpu, "linux").candidates
    known = variant is not None and needed_flags(variant) is not None
    runs = []
    if judged.usable or not known:  # a plugin the data does not know scores itself in the child
        runs.append(Run(file, NATIVE, "this CPU"))
    floor = qemu_data()["floor"]["plugins"].get(variant or "")
    if floor and qemu:
        runs.append(qemu_run(floor, f"the oldest CPU it is built for ({variant}: qemu -cpu {floor})", file))
    if runs:
        return runs, None
    host = cpu.get("model_name") or "this CPU"
    why = "; ".join(judged.reasons) or "ggml scores it 0 here"
    if floor:  # qemu could, but is not installed
        return [], f"{why} on {host}, and qemu-x86_64 is not installed (apt-get install qemu-user)"
    return [], f"{why} on {host}, and qemu-x86_64 cannot emulate it ({qemu_data()['tcg_note']})"


def builtin_runs(requires: Mapping[str, Any], cpu: Mapping[str, Any], qemu: bool) -> tuple[list[Run], str | None]:
    """The runs of a variant without plugins: natively where the host has what it requires, and
    under the qemu model of its x86-64 level."""
    level = int(requires.get("x86_64_level") or 1)
    features = set(requires.get("cpu_features") or ())
    runs = []
    if (cpu.get("x86_64_level") or 1) >= level and features <= set(cpu.get("features") or ()):
        runs.append(Run(None, NATIVE, "this CPU"))
    model = qemu_data()["floor"]["levels"].get(str(level))
    if model and qemu and features <= set(qemu_data()["models"][model]["features"]):
        runs.append(qemu_run(model, f"the oldest CPU it is built for (x86-64-v{level}: qemu -cpu {model})", None))
    if runs:
        return runs, None
    return [], (f"needs x86-64-v{level} {' '.join(sorted(features))}".rstrip()
                + f", which {cpu.get('model_name') or 'this CPU'} lacks"
                + ("" if model else " and qemu-x86_64 cannot emulate"))


def runnable_here(meta: Mapping[str, Any], host_os: str, host_arch: str, host_glibc: str | None) -> str | None:
    """Why a variant cannot be qualified on this machine at all; None when it can.

    A GPU variant can: its CPU plugins run without the GPU (only the GPU backend goes unproven).
    A Linux aarch64 one can on Linux x86-64, under qemu-aarch64 (:mod:`.cross`), and a Windows
    x86-64 one under Wine (:mod:`.wine`), when the tools are installed.
    """
    from ..versions import version_tuple as _version

    what = f"{meta.get('os')}/{meta.get('arch')}"
    from .targets import target_for, why_not

    target = target_for(meta, host_os, host_arch)
    if target is not None:  # run through the driver: its libc is the sysroot's or Wine's, not the host's
        return why_not(target, meta)
    if meta.get("os") == "linux" and meta.get("arch") == "aarch64" and host_arch != "aarch64":
        return f"a {what} build: qemu-aarch64 runs it on Linux x86-64 only, and this is a {host_os}/{host_arch} machine"
    if meta.get("os") != host_os or meta.get("arch") != host_arch:
        return f"a {what} build, and this is a {host_os}/{host_arch} machine"
    need = (meta.get("requires") or {}).get("glibc")
    if need and host_glibc and _version(need) > _version(host_glibc):
        return f"needs glibc {need}, this machine has {host_glibc}"
    return None
