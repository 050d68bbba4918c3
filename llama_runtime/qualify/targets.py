"""The variants this machine runs only through the C driver (``driver.c``): a Linux aarch64 one
under qemu-aarch64 (:mod:`.cross`), a Windows x86-64 one under Wine (:mod:`.wine`). One
:class:`Target` says, for :mod:`.check`, which runs each plugin gets, which child runs them and
what besides the files decides their outcome (the emulator's version, the driver's build)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .where import Run


@dataclass(frozen=True)
class Target:
    kind: str  # "aarch64" or "windows"

    @property
    def os_name(self) -> str:
        return "windows" if self.kind == "windows" else "linux"

    def compiler(self) -> str:
        from . import cross, wine

        return wine.COMPILER if self.kind == "windows" else str(cross.arm_data()["compiler"])

    def plan(self, meta: Mapping[str, Any], cpu: Mapping[str, Any], backend_dl: bool,
             name: str) -> tuple[dict[str, list[Run]], dict[str, str]]:
        """plugin file -> its runs; and why some cannot run here."""
        from ..plugins.rank import cpu_plugins
        from .cross import arm_runs
        from .wine import wine_runs

        if not backend_dl:
            return {name: []}, {name: f"a {self.kind} build without CPU plugins: the driver runs plugins only"}
        runs, not_here = {}, {}
        for file in cpu_plugins(meta.get("plugins") or [], self.os_name):
            runs[file], why = wine_runs(file, cpu) if self.kind == "windows" else arm_runs(file)
            if why:
                not_here[file] = why
        return runs, not_here

    def child(self, root: Path) -> Any:
        from .cross import arm_child
        from .wine import wine_child

        return wine_child(root) if self.kind == "windows" else arm_child(root)

    def version(self) -> str | None:
        """The emulator's version (the record's ``qemu``; Wine's for a Windows variant)."""
        from .check import qemu_version
        from .wine import version

        return version() if self.kind == "windows" else qemu_version("qemu-aarch64")

    def place(self, run: Run, host_key: str) -> str:
        from .cross import driver_hash

        on = f" on native:{host_key}" if self.kind == "windows" else ""  # Wine runs this CPU's instructions
        return f"{run.where} ({self.version()}){on} driver {driver_hash(self.compiler())}"


def target_for(meta: Mapping[str, Any], host_os: str, host_arch: str) -> Target | None:
    """The target of a variant this Linux x86-64 machine runs only through the driver; else None."""
    if (host_os, host_arch) != ("linux", "x86_64"):
        return None
    if meta.get("os") == "linux" and meta.get("arch") == "aarch64":
        return Target("aarch64")
    if meta.get("os") == "windows" and meta.get("arch") == "x86_64":
        return Target("windows")
    return None


def why_not(target: Target, meta: Mapping[str, Any]) -> str | None:
    """Why ``target``'s variant cannot run here after all (tools missing, another llama.cpp)."""
    from ..native.generations import BINDING_GENERATION
    from . import cross, wine

    lacking = wine.missing_tools() if target.kind == "windows" else cross.missing_tools()
    how = "under Wine" if target.kind == "windows" else "under qemu-aarch64"
    if lacking:
        return f"a {meta.get('os')}/{meta.get('arch')} build: running it {how} with the cross-compiled driver" \
               f" needs apt-get install {' '.join(lacking)}"
    found = meta.get("llama_cpp")
    if found != BINDING_GENERATION:  # its structs are passed by value: the headers must match
        return (f"a {meta.get('os')}/{meta.get('arch')} build of llama.cpp {found or '(not recorded)'}: the"
                f" driver that runs it {how} is compiled against the {BINDING_GENERATION} headers")
    return None
