"""What kind of binary a file is (ELF, Mach-O, PE) and for which CPU, from its first bytes.

A variant's folder must hold libraries of its own OS: a Mach-O dylib in a Linux variant would
pass every hash and fail only on the user's machine, with the OS loader's terse "invalid ELF
header". Publishing and the variant builder refuse such a file up front, naming what it is.
Pure standard library: no parsing beyond the headers (the release scripts read the rest).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

OS_FORMAT = {"linux": "ELF", "macos": "Mach-O", "windows": "PE"}
_ELF_MACHINE = {0x03: "x86", 0x28: "arm", 0x3E: "x86_64", 0xB7: "aarch64"}
_MACHO_CPU = {0x7: "x86", 0x01000007: "x86_64", 0xC: "arm", 0x0100000C: "aarch64"}
_MACHO_FILETYPE = {1: "object", 2: "executable", 6: "dylib", 8: "bundle"}
_PE_MACHINE = {0x14C: "x86", 0x8664: "x86_64", 0xAA64: "aarch64"}


@dataclass(frozen=True)
class Binary:
    format: str | None  # ELF, Mach-O, PE, or None: not an executable format we know
    archs: tuple[str, ...] = ()  # more than one: a Mach-O universal ("fat") file
    kind: str = ""  # shared library, dylib, bundle, ...

    def describe(self) -> str:
        if self.format is None:
            return "not an ELF, Mach-O or PE file"
        fat = "universal " if len(self.archs) > 1 else ""
        article = "an" if not fat and self.format == "ELF" else "a"
        return f"{article} {fat}{self.format} {'+'.join(self.archs) or '?'} {self.kind}".strip()


def _elf(head: bytes) -> Binary:
    order = "<" if head[5:6] == b"\x01" else ">"
    e_type, machine = struct.unpack_from(order + "HH", head, 16)
    kind = {2: "executable", 3: "shared library"}.get(e_type, "object")
    return Binary("ELF", (_ELF_MACHINE.get(machine, hex(machine)),), kind)


def _macho(head: bytes, order: str) -> Binary:
    cpu, _, filetype = struct.unpack_from(order + "iiI", head, 4)
    return Binary("Mach-O", (_MACHO_CPU.get(cpu & 0xFFFFFFFF, hex(cpu)),),
                  _MACHO_FILETYPE.get(filetype, f"file type {filetype}"))


def _fat(head: bytes) -> Binary | None:
    (count,) = struct.unpack_from(">I", head, 4)
    if not 0 < count < 20:  # 0xcafebabe also starts Java class files (their version is >= 45)
        return None
    archs = []
    for i in range(count):
        if 8 + 20 * (i + 1) > len(head):
            break
        (cpu,) = struct.unpack_from(">I", head, 8 + 20 * i)
        archs.append(_MACHO_CPU.get(cpu, hex(cpu)))
    return Binary("Mach-O", tuple(archs), "universal binary")


def _pe(path: Path, head: bytes) -> Binary | None:
    (offset,) = struct.unpack_from("<I", head, 0x3C)
    with open(path, "rb") as f:
        f.seek(offset)
        sig = f.read(6)
    if sig[:4] != b"PE\0\0":
        return None
    (machine,) = struct.unpack_from("<H", sig, 4)
    return Binary("PE", (_PE_MACHINE.get(machine, hex(machine)),), "DLL or executable")


def identify(path: Path) -> Binary:
    """The format, architectures and kind of ``path`` (``Binary(None)`` for anything else)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    magic = head[:4]
    found: Binary | None = None
    if magic == b"\x7fELF" and len(head) >= 20:
        found = _elf(head)
    elif magic in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe") and len(head) >= 16:
        found = _macho(head, "<")
    elif magic in (b"\xfe\xed\xfa\xcf", b"\xfe\xed\xfa\xce") and len(head) >= 16:
        found = _macho(head, ">")
    elif magic in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf") and len(head) >= 8:
        found = _fat(head)
    elif magic[:2] == b"MZ" and len(head) >= 0x40:
        found = _pe(path, head)
    return found or Binary(None)


def wrong_format(path: Path, os_name: str, *, strict: bool = False) -> str | None:
    """Why ``path`` cannot be a library of an ``os_name`` variant, or None when it can.

    A binary of another OS is always wrong. A file of no known format is wrong only when
    ``strict`` (the variant builder, which reads every header anyway); publish leaves that to
    its load check.
    """
    want = OS_FORMAT.get(os_name)
    found = identify(path)
    if want is None or found.format == want or (found.format is None and not strict):
        return None
    return (f"{path.name} is {found.describe()}, but a {os_name} variant holds {want} files only"
            f" (found in {path.parent})")
