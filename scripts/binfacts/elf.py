"""Facts of ELF shared libraries for ``variant.json``: NEEDED/SONAME/RUNPATH, the glibc floor,
the load order of a folder, the CUDA architectures of a fatbin. Readers only (``readelf``)."""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from scripts.tools import BuildVariantError, run, tool


def readelf(flag: str, path: Path) -> str:
    readelf_exe = tool("readelf", "install binutils (apt-get install binutils)")
    return run([readelf_exe, flag, "-W", str(path)], f"readelf {flag}")


def parse_dynamic(text: str) -> dict[str, list[str]]:
    """NEEDED, SONAME, RUNPATH and RPATH entries from ``readelf -d`` output."""
    found: dict[str, list[str]] = {"NEEDED": [], "SONAME": [], "RUNPATH": [], "RPATH": []}
    for tag, value in re.findall(r"\((NEEDED|SONAME|RUNPATH|RPATH)\)[^\[]*\[([^\]]*)\]", text):
        found[tag].append(value)
    return found


def parse_version_needs(text: str, prefix: str = "GLIBC") -> list[tuple[int, ...]]:
    """``PREFIX_x.y[.z]`` versions an object needs (``GLIBC``, ``GLIBCXX`` of libstdc++), from
    ``readelf -V`` output."""
    from llama_runtime.versions import version_tuple

    needs = text.split("Version needs section", 1)
    if len(needs) < 2:
        return []
    return [version_tuple(v) for v in re.findall(rf"Name: {prefix}_(\d+(?:\.\d+)+)\b", needs[1])]


def parse_glibc_versions(text: str) -> list[tuple[int, ...]]:
    """``GLIBC_x.y[.z]`` versions an object needs, from ``readelf -V`` output."""
    return parse_version_needs(text, "GLIBC")


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of a shared library, in the order the linker recorded them."""
    return parse_dynamic(readelf("-d", Path(path)))["NEEDED"]


def elf_soname(path: Path) -> str | None:
    sonames = parse_dynamic(readelf("-d", Path(path)))["SONAME"]
    return sonames[0] if sonames else None


def glibc_floor(paths: Iterable[Path]) -> str:
    """The highest ``GLIBC_x.y`` any of ``paths`` needs: the oldest glibc that can load them."""
    versions = [v for p in paths for v in parse_glibc_versions(readelf("-V", Path(p)))]
    if not versions:
        raise BuildVariantError("no GLIBC_* symbol versions found: are these glibc ELF libraries?")
    return ".".join(str(part) for part in max(versions))


def libstdcxx_floor(paths: Iterable[Path]) -> str | None:
    """The newest ``GLIBCXX_*`` any of ``paths`` needs (the libstdc++ a machine must have, on
    top of the glibc floor: gcc 12's needs 3.4.30, RHEL 9's GCC 11 one stops at 3.4.29), or
    None when nothing needs libstdc++ (zig links libc++ in)."""
    versions = [v for p in paths for v in parse_version_needs(readelf("-V", Path(p)), "GLIBCXX")]
    return ".".join(map(str, max(versions))) if versions else None


def dependency_closure(folder: Path, root: str) -> list[str]:
    """``root`` and every library of ``folder`` it needs, directly or not."""
    seen: list[str] = []
    stack = [root]
    while stack:
        name = stack.pop()
        if name not in seen and (folder / name).is_file():
            seen.append(name)
            stack.extend(reversed(elf_needed(folder / name)))
    return seen


def load_order(folder: Path, names: Sequence[str]) -> list[str]:
    """``names`` sorted so that each library comes after the ones of ``names`` it NEEDs."""
    from scripts.binfacts.order import dependency_order

    wanted = set(names)
    return dependency_order(names, lambda n: [d for d in elf_needed(folder / n) if d in wanted],
                            lambda path: BuildVariantError(f"dependency cycle in {folder}: {' -> '.join(path)}"))


def cuda_architectures(path: Path) -> list[tuple[str, int]]:
    """(``"sm"`` for a cubin or ``"ptx"``, arch*10) of each image in a CUDA fatbin."""
    found: set[tuple[str, int]] = set()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = data.find(struct.pack("<I", 0xBA55ED50))  # fatbin header magic
        while start != -1:
            header_size, fat_size = struct.unpack_from("<HQ", data, start + 6)
            pos, end = start + header_size, start + header_size + fat_size
            while pos + 32 <= end:
                kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, pos)
                arch = struct.unpack_from("<I", data, pos + 28)[0]
                found.add(("ptx" if kind == 1 else "sm", arch))
                if entry_header == 0:
                    break
                pos += entry_header + size
            start = data.find(struct.pack("<I", 0xBA55ED50), end)
    return sorted(found)
