"""The C library: glibc or musl, and its version.

``parse_musl_version`` is pure (fed the banner ``ld-musl`` prints); the readers do the I/O,
following ``packaging._musllinux``.
"""

from __future__ import annotations

import os
import re
import sys
from struct import error as struct_error
from typing import Any, BinaryIO


def parse_glibc_version(text: str) -> str | None:
    """``"glibc 2.36"`` (``os.confstr('CS_GNU_LIBC_VERSION')``) -> ``"2.36"``."""
    m = re.match(r"glibc\s+(\d+)\.(\d+)", text.strip())
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_musl_version(text: str) -> str | None:
    """The banner ``ld-musl-*.so.1`` prints on stderr -> ``"1.2.4"``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].startswith("musl"):
        return None
    m = re.match(r"Version (\d+)\.(\d+)(?:\.(\d+))?", lines[1])
    return ".".join(g for g in m.groups() if g) if m else None


def _musl_loader() -> str | None:
    # The interpreter of the running Python names the musl loader.
    try:
        with open(sys.executable, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    m = re.search(rb"/lib/ld-musl-[\w.-]+\.so\.1", head)
    return m.group(0).decode() if m else None


def read_libc() -> dict[str, Any]:
    """Probe the C library. Never raises: a failure is recorded in ``error``."""
    if not sys.platform.startswith("linux"):
        return {"name": None, "version": None, "error": None}
    try:
        glibc = parse_glibc_version(os.confstr("CS_GNU_LIBC_VERSION") or "")
    except (ValueError, OSError):
        glibc = None
    if glibc:  # llama.cpp is C++: the libstdc++ it finds has a floor of its own (GLIBCXX_*)
        return {"name": "glibc", "version": glibc, "error": None, "libstdcxx": read_libstdcxx()}
    loader = _musl_loader()
    if loader is None:
        return {"name": None, "version": None, "error": "unknown, because neither glibc nor musl was found"}
    import subprocess  # lazily: glibc answers through confstr

    try:
        proc = subprocess.run([loader], capture_output=True, text=True, timeout=2)
        return {"name": "musl", "version": parse_musl_version(proc.stderr), "error": None}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"name": "musl", "version": None, "error": f"unknown, because {loader} failed: {exc}"}


_LIBSTDCXX = "libstdc++.so.6"
_GLIBCXX = re.compile(rb"GLIBCXX_(\d+\.\d+(?:\.\d+)?)\x00")
_SHT_GNU_VERDEF = 0x6FFFFFFD


def parse_glibcxx(data: bytes) -> str | None:
    """The newest ``GLIBCXX_x.y.z`` named in ``data`` (version names, NUL-terminated as in a
    library's string table) -> ``"3.4.30"``."""
    found = {tuple(int(x) for x in m.split(b".")) for m in _GLIBCXX.findall(data)}
    return ".".join(map(str, max(found))) if found else None


def version_definitions(f: BinaryIO) -> bytes:
    """The names of the symbol versions an ELF file defines (``.gnu.version_d``), each followed
    by a NUL: read in small pieces, not the whole 2 MB libstdc++ (this runs on the load path, B6)."""
    import struct

    head = f.read(64)
    wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
    shoff = struct.unpack_from(order + ("Q" if wide else "I"), head, 0x28 if wide else 0x20)[0]
    entsize, count = struct.unpack_from(order + "HH", head, 0x3A if wide else 0x2E)
    f.seek(shoff)
    table = f.read(entsize * count)
    layout = order + ("IIQQQQI" if wide else "IIIIIII")  # name type flags addr offset size link
    sections = [struct.unpack_from(layout, table, i * entsize) for i in range(count)]
    verdef = next((s for s in sections if s[1] == _SHT_GNU_VERDEF), None)
    if verdef is None or verdef[6] >= count:
        return b""
    f.seek(verdef[4])
    defs, strtab = f.read(verdef[5]), sections[verdef[6]][4]
    names, at = [], 0
    while at + 20 <= len(defs):  # Elf_Verdef: version flags ndx cnt hash aux next
        aux, step = struct.unpack_from(order + "II", defs, at + 12)
        if at + aux + 4 <= len(defs):
            f.seek(strtab + struct.unpack_from(order + "I", defs, at + aux)[0])
            names.append(f.read(64).split(b"\x00")[0] + b"\x00")
        if not step:
            break
        at += step
    return b"".join(names)


def _elf_machine(path: str) -> bytes | None:
    # EI_CLASS (offset 4) and e_machine (offset 18): a 32-bit or foreign libstdc++ never loads here
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    return head[4:5] + head[18:20] if head[:4] == b"\x7fELF" else None


def _libstdcxx_paths(env: dict[str, str]) -> list[str]:
    """Where the dynamic loader would find libstdc++ for a library with no RUNPATH of its own to
    it, in its order: one already mapped into this process, LD_LIBRARY_PATH, ld.so.cache, the
    default folders."""
    paths = []
    try:
        with open("/proc/self/maps", "rb") as f:  # loaded by numpy/torch/conda: that one is used
            paths += [m.decode() for m in re.findall(rb"(/\S*/libstdc\+\+\.so\.6)\S*\n", f.read())]
    except OSError:
        pass
    paths += [os.path.join(d, _LIBSTDCXX) for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    try:
        with open("/etc/ld.so.cache", "rb") as f:
            paths += [m.decode() for m in re.findall(rb"([^\x00]*/libstdc\+\+\.so\.6)\x00", f.read())]
    except OSError:
        pass
    return paths + [os.path.join(d, _LIBSTDCXX) for d in ("/lib64", "/usr/lib64", "/lib", "/usr/lib")]


def read_libstdcxx(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The libstdc++ a llama.cpp library would load here: ``{"version": "3.4.30", "path": ...}``
    (the newest GLIBCXX version it defines). Never raises; ``version`` None when none was found,
    which selection treats as unknown (it cannot prove a floor wrong)."""
    own = _elf_machine(sys.executable)
    for path in _libstdcxx_paths(dict(os.environ) if env is None else env):
        if own is not None and _elf_machine(path) != own:
            continue
        try:
            with open(path, "rb") as f:
                version = parse_glibcxx(version_definitions(f))
        except (OSError, struct_error):
            continue
        return {"version": version, "path": path, "error": None if version else "no GLIBCXX versions"}
    return {"version": None, "path": None, "error": f"no {_LIBSTDCXX} found"}
