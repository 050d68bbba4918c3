"""Facts of Windows PE files (DLLs) for ``variant.json``, read with ``pefile`` (PyPI).

Pure readers, no build and no Wine: the machine of each file, the DLL names it imports (the
import and the delay-load tables), what it exports, and from those the load order of a variant
folder, its ggml plugins, and which outside DLLs it needs. Windows resolves DLL names without
regard to case (``KERNEL32.dll`` is ``kernel32.dll``), so every comparison here is case-blind
while the names written down keep the case the files use.

An outside DLL is one of three kinds: a system DLL that every Windows 10 or later has (kernel32,
msvcrt, the UCRT API sets ...), one a driver provides (``vulkan-1.dll``, the Vulkan loader every
GPU driver installs), or neither, such as ``MSVCP140.dll`` (the Visual C++ redistributable) or
``libstdc++-6.dll`` (MinGW's runtime): a folder that needs one of those is refused, since a
user's machine may not have it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# IMAGE_FILE_HEADER.Machine (winnt.h) -> the name Windows and pefile use
MACHINES: Mapping[int, str] = {0x8664: "AMD64", 0xAA64: "ARM64", 0x14C: "I386"}
# DLLs of Windows itself (present on every Windows 10/11 install), lowercase. msvcrt.dll is
# the CRT MinGW links against; ucrtbase.dll and the api-ms-win-* API sets are the UCRT.
SYSTEM_DLLS = frozenset({
    "kernel32.dll", "kernelbase.dll", "ntdll.dll", "user32.dll", "gdi32.dll", "advapi32.dll",
    "shell32.dll", "shlwapi.dll", "ole32.dll", "oleaut32.dll", "ws2_32.dll", "bcrypt.dll",
    "crypt32.dll", "secur32.dll", "dbghelp.dll", "psapi.dll", "version.dll", "winmm.dll",
    "setupapi.dll", "cfgmgr32.dll", "dxgi.dll", "d3d12.dll", "msvcrt.dll", "ucrtbase.dll",
})
# api-ms-win-*/ext-ms-win-* are API sets: names the loader maps to system DLLs itself.
_API_SET = re.compile(r"^(api|ext)-ms-win-[a-z0-9-]+\.dll$")
# DLLs a GPU driver installs, and the pip package that provides one (None: the driver does).
DRIVER_DLLS: Mapping[str, str | None] = {"vulkan-1.dll": None}
LLAMA_DLL = re.compile(r"^llama(\.[\w.]+)?\.dll$", re.IGNORECASE)  # llama.dll, llama.v0.4.0.dll
PLUGIN_DLL = re.compile(r"^ggml-[\w.-]+\.dll$", re.IGNORECASE)


class PeFactsError(ValueError):
    """A file or folder is not what a Windows variant must be; the message says what to do."""


@dataclass(frozen=True)
class PeFile:
    """What a variant needs to know about one PE file."""

    name: str
    machine: str
    is_dll: bool
    imports: tuple[str, ...]  # the import table's DLL names, as recorded
    delay_imports: tuple[str, ...]  # loaded on first call (MSVC /DELAYLOAD), needed all the same
    exports: tuple[str, ...]

    @property
    def needs(self) -> tuple[str, ...]:
        """Every DLL this file may load, in table order, without duplicates."""
        return tuple(dict.fromkeys([*self.imports, *self.delay_imports]))


def parse_pe(data: bytes, name: str) -> PeFile:
    """The facts of one PE image given as bytes (``name`` is for messages and the result)."""
    import pefile  # type: ignore[import-untyped,unused-ignore]

    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as exc:
        raise PeFactsError(f"{name} is not a Windows PE file ({exc}); a Windows variant holds "
                           "only DLLs built for Windows") from exc
    try:
        pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY[d] for d in (
            "IMAGE_DIRECTORY_ENTRY_IMPORT", "IMAGE_DIRECTORY_ENTRY_DELAY_IMPORT",
            "IMAGE_DIRECTORY_ENTRY_EXPORT")])
        machine = pe.FILE_HEADER.Machine
        exports = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
        return PeFile(
            name=name, machine=MACHINES.get(machine, f"0x{machine:04x}"), is_dll=pe.is_dll(),
            imports=_dll_names(getattr(pe, "DIRECTORY_ENTRY_IMPORT", ())),
            delay_imports=_dll_names(getattr(pe, "DIRECTORY_ENTRY_DELAY_IMPORT", ())),
            exports=tuple(s.name.decode("ascii", "replace") for s in
                          (exports.symbols if exports else ()) if s.name))
    finally:
        pe.close()


def _dll_names(entries: Iterable[Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(e.dll.decode("ascii", "replace") for e in entries))


def read_pe(path: Path) -> PeFile:
    return parse_pe(Path(path).read_bytes(), Path(path).name)


def is_system_dll(name: str) -> bool:
    low = name.lower()
    return low in SYSTEM_DLLS or bool(_API_SET.match(low))


def dependency_closure(files: Mapping[str, PeFile], root: str) -> list[str]:
    """``root`` and every file of ``files`` it needs, directly or not (names as in ``files``)."""
    by_low = {n.lower(): n for n in files}
    seen: list[str] = []
    stack = [root]
    while stack:
        name = by_low.get(stack.pop().lower())
        if name is not None and name not in seen:
            seen.append(name)
            stack.extend(reversed(files[name].needs))
    return seen


def load_order(files: Mapping[str, PeFile], names: Sequence[str]) -> list[str]:
    """``names`` sorted so that each file comes after the ones of ``names`` it imports.

    Loading in this order by full path means every DLL's imports are already in the process
    when Windows resolves them, whatever the DLL search path is.
    """
    from scripts.binfacts.order import dependency_order

    by_low = {n.lower(): n for n in names}
    return dependency_order(names, lambda n: [by_low[d.lower()] for d in files[n].needs if d.lower() in by_low],
                            lambda path: PeFactsError(f"import cycle: {' -> '.join(path)}"))


def outside_dlls(files: Mapping[str, PeFile], shipped: Iterable[str]) -> dict[str, list[str]]:
    """The DLLs ``shipped`` files need from outside, by kind: system, driver and unknown."""
    have = {n.lower() for n in shipped}
    kinds: dict[str, dict[str, str]] = {"system": {}, "driver": {}, "unknown": {}}
    for name in shipped:
        for dep in files[name].needs:
            low = dep.lower()
            if low in have:
                continue
            kind = ("system" if is_system_dll(dep) else
                    "driver" if low in DRIVER_DLLS else "unknown")
            kinds[kind].setdefault(low, dep)
    return {k: sorted(v.values(), key=str.lower) for k, v in kinds.items()}


def who_needs(files: Mapping[str, PeFile], dll: str) -> list[str]:
    return sorted(n for n, f in files.items() if dll.lower() in (d.lower() for d in f.needs))


def folder_facts(folder: Path, machine: str = "AMD64") -> dict[str, Any]:
    """libraries (load order), plugins, imports and outside DLLs of a Windows variant folder.

    Every ``*.dll`` of ``folder`` must be a DLL for ``machine``, needed by ``llama*.dll`` or be a
    ggml plugin (``ggml-*.dll``, which ggml loads from the folder itself), and need nothing but
    the folder's own files, system DLLs and driver DLLs.
    """
    files = {p.name: read_pe(p) for p in sorted(Path(folder).iterdir())
             if p.suffix.lower() == ".dll"}
    wrong = [f"{f.name} ({f.machine}{'' if f.is_dll else ', not a DLL'})"
             for f in files.values() if f.machine != machine or not f.is_dll]
    if wrong:
        raise PeFactsError(f"{folder}: {', '.join(wrong)}: a {machine} Windows variant holds "
                           f"only {machine} DLLs")
    roots = [n for n in files if LLAMA_DLL.match(n)]
    if len(roots) != 1:
        raise PeFactsError(f"expected one llama*.dll in {folder}, found {roots or 'none'}")
    closure = dependency_closure(files, roots[0])
    plugins = sorted(n for n in files if n not in closure and PLUGIN_DLL.match(n))
    stray = sorted(set(files) - set(closure) - set(plugins))
    if stray:
        raise PeFactsError(f"{folder}: {', '.join(stray)} neither serve {roots[0]} nor are ggml "
                           "plugins (ggml-*.dll); leave them out of the variant")
    outside = outside_dlls(files, [*closure, *plugins])
    if outside["unknown"]:
        needs = "; ".join(f"{d} (needed by {', '.join(who_needs(files, d))})"
                          for d in outside["unknown"])
        raise PeFactsError(f"{Path(folder).name} needs {needs}, which it neither ships nor can "
                           "expect on a user's Windows: link it statically or bundle it")
    return {"machine": machine, "libraries": load_order(files, closure), "plugins": plugins,
            "imports": {n: list(files[n].needs) for n in [*closure, *plugins]},
            "external_libraries": outside["driver"], "system_libraries": outside["system"],
            "exports": {n: list(files[n].exports) for n in plugins}}


def runtime_loads(folder: Path, names: Sequence[str]) -> dict[str, list[str]]:
    """Driver DLLs that files of ``folder`` name in their data without importing them.

    ggml-vulkan.dll imports nothing from ``vulkan-1.dll``: vulkan.hpp's dynamic dispatcher
    calls ``LoadLibrary("vulkan-1.dll")`` when the backend starts. The name is in the file as
    a string (ASCII or UTF-16), which is what is looked for here.
    """
    found: dict[str, list[str]] = {}
    for name in names:
        data = (Path(folder) / name).read_bytes().lower()
        imported = {d.lower() for d in read_pe(Path(folder) / name).needs}
        hits = [dll for dll in DRIVER_DLLS if dll not in imported and
                (dll.encode() in data or dll.encode("utf-16-le") in data)]
        if hits:
            found[name] = hits
    return found
