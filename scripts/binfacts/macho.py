"""Mach-O facts of a macOS variant folder, read with LIEF (``lief`` on PyPI).

What ``variant.json`` says about a macOS build comes from its files: the CPU of each file (a
universal "fat" file holds several), the oldest macOS it runs on (``LC_BUILD_VERSION``'s
``minos``, or ``LC_VERSION_MIN_MACOSX`` on old builds), its install name (``LC_ID_DYLIB``), the
libraries it loads (``LC_LOAD_DYLIB`` and friends) and where ``@rpath`` points (``LC_RPATH``).
dyld resolves ``@rpath/x`` through the rpaths of the loading image, ``@loader_path`` is the
folder of that image; ``/usr/lib`` and ``/System/Library`` are the OS's own (the dyld shared
cache). A folder is accepted only when every dependency is a file of the folder or an OS library,
and every install name is what its dependents ask for: then it loads from wherever it is
unpacked, with no DYLD_* variable. Nothing here runs macOS code; it is structure only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Apple's names for the CPUs, and the manifest's
CPU_ARCH = {"ARM64": "aarch64", "X86_64": "x86_64"}
SYSTEM_PREFIXES = ("/usr/lib/", "/System/Library/")
_FRAMEWORK = re.compile(r"^/System/Library/Frameworks/([^/]+)\.framework/")


class MachOError(ValueError):
    """A Mach-O file or folder that cannot be a macOS variant; the message says why and where."""


@dataclass(frozen=True)
class MachO:
    """One architecture slice of one Mach-O file."""

    name: str
    arch: str  # manifest names: aarch64, x86_64
    archs: tuple[str, ...]  # every slice of the file (more than one: universal)
    filetype: str  # dylib | bundle
    minos: str  # "14.0"
    sdk: str | None
    install_name: str | None
    dependencies: tuple[str, ...]
    rpaths: tuple[str, ...]
    exports: frozenset[str]  # C names, without Mach-O's leading underscore


def _lief() -> Any:
    try:
        import lief
    except ImportError as exc:
        raise MachOError("reading Mach-O files needs LIEF: pip install lief "
                         "(it is in requirements-dev.txt)") from exc
    lief.logging.disable()
    return lief


def _version(parts: Sequence[int]) -> str:
    major, minor = (list(parts) + [0, 0])[:2]
    return f"{major}.{minor}"


def _minos(binary: Any, where: str) -> tuple[str, str | None]:
    """(minimum macOS, SDK) of one slice; a build for iOS or without either command is refused."""
    if binary.has_build_version:
        build = binary.build_version
        platform = str(build.platform).rsplit(".", 1)[-1]
        if platform != "MACOS":
            raise MachOError(f"{where} is built for {platform}, not macOS (LC_BUILD_VERSION)")
        return _version(build.minos), _version(build.sdk)
    if binary.has_version_min:  # LC_VERSION_MIN_MACOSX: builds for macOS before 10.14
        return _version(binary.version_min.version), _version(binary.version_min.sdk)
    raise MachOError(f"{where} records no minimum macOS (no LC_BUILD_VERSION or "
                     "LC_VERSION_MIN_MACOSX): it cannot be given a floor")


def _commands(binary: Any) -> tuple[str | None, list[str]]:
    lief = _lief()
    types = lief.MachO.LoadCommand.TYPE
    loads = {types.LOAD_DYLIB, types.LOAD_WEAK_DYLIB, types.REEXPORT_DYLIB,
             types.LAZY_LOAD_DYLIB, types.LOAD_UPWARD_DYLIB}
    install_name, deps = None, []
    for command in binary.commands:
        if command.command == types.ID_DYLIB:
            install_name = command.name
        elif command.command in loads:
            deps.append(command.name)
    return install_name, deps


def read_macho(path: Path, arch: str | None = None) -> MachO:
    """The facts of ``path``'s slice for ``arch`` (default: its only slice)."""
    lief = _lief()
    fat = lief.MachO.parse(str(path))
    if fat is None or fat.size == 0:
        raise MachOError(f"{path.name} is not a Mach-O file (in {path.parent})")
    slices = {CPU_ARCH.get(str(b.header.cpu_type).rsplit(".", 1)[-1], str(b.header.cpu_type)): b
              for b in fat}
    if arch is None and len(slices) > 1:
        raise MachOError(f"{path.name} is universal ({', '.join(slices)}): say which slice")
    chosen = arch or next(iter(slices))
    if chosen not in slices:
        raise MachOError(f"{path.name} has no {chosen} code (it holds {', '.join(slices)}; "
                         f"in {path.parent})")
    binary = slices[chosen]
    filetype = str(binary.header.file_type).rsplit(".", 1)[-1].lower()
    minos, sdk = _minos(binary, f"{path.name} ({chosen})")
    install_name, deps = _commands(binary)
    exports = frozenset(s.name[1:] if s.name.startswith("_") else s.name
                        for s in binary.exported_symbols)
    return MachO(path.name, chosen, tuple(slices), filetype, minos, sdk, install_name,
                 tuple(deps), tuple(r.path for r in binary.rpaths), exports)


def is_system(dependency: str) -> bool:
    return dependency.startswith(SYSTEM_PREFIXES)


def resolve(dependency: str, user: MachO, shipped: Iterable[str]) -> str | None:
    """The shipped file ``dependency`` of ``user`` resolves to, or None for an OS library.

    Raises for anything else: a Homebrew path, ``@executable_path`` (Python's folder, not
    ours), an ``@rpath`` no rpath of ``user`` finds in the folder.
    """
    if is_system(dependency):
        return None
    names = set(shipped)
    if dependency.startswith("@loader_path/"):
        candidates = [dependency.removeprefix("@loader_path/")]
    elif dependency.startswith("@rpath/"):
        leaf = dependency.removeprefix("@rpath/")
        candidates = [f"{r.removeprefix('@loader_path').strip('/')}/{leaf}".lstrip("/")
                      for r in user.rpaths if r.startswith("@loader_path")]
    else:
        candidates = []
    found = next((c.removeprefix("./") for c in candidates if c.removeprefix("./") in names), None)
    if found is None:
        raise MachOError(
            f"{user.name} needs {dependency}, which is neither in the folder (rpaths "
            f"{list(user.rpaths) or 'none'}) nor a macOS system library: ship it, or link it "
            "statically")
    return found


def frameworks(files: Iterable[MachO]) -> list[str]:
    """The system frameworks the files link (Metal, Accelerate, Foundation, ...)."""
    return sorted({m.group(1) for f in files for d in f.dependencies if (m := _FRAMEWORK.match(d))})


def system_libraries(files: Iterable[MachO]) -> list[str]:
    return sorted({d for f in files for d in f.dependencies
                   if is_system(d) and not _FRAMEWORK.match(d)})


def check_install_names(files: dict[str, MachO]) -> None:
    """Each dylib's install name must be what its dependents load: ``@rpath/<its file name>``."""
    for name, facts in files.items():
        if facts.filetype != "dylib":
            continue
        if facts.install_name != f"@rpath/{name}":
            raise MachOError(f"{name} has install name {facts.install_name!r}; a relocatable "
                             f"folder needs @rpath/{name} (install_name_tool -id)")


def load_order(files: dict[str, MachO], root: str) -> list[str]:
    """``root`` and the shipped libraries it needs, each after the ones it loads."""
    from scripts.binfacts.order import dependency_order

    def shipped(name: str) -> list[str]:
        found = (resolve(dep, files[name], files) for dep in files[name].dependencies)
        return [n for n in found if n is not None]

    return dependency_order([root], shipped, lambda path: MachOError(f"dependency cycle: {' -> '.join(path)}"))


def folder_facts(folder: Path, names: Sequence[str], arch: str) -> dict[str, MachO]:
    """Every named file of ``folder`` read for ``arch``; each dependency must resolve."""
    files = {n: read_macho(folder / n, arch) for n in names}
    for facts in files.values():
        for dep in facts.dependencies:
            resolve(dep, facts, files)
    check_install_names(files)
    return files


def missing_exports(files: Iterable[MachO], wanted: Iterable[str]) -> list[str]:
    """Names of ``wanted`` no file exports (what the binding would fail to bind)."""
    exported = frozenset().union(*(f.exports for f in files))
    return sorted(set(wanted) - exported)
