"""Which OS a library file was built for, from its first bytes: ELF, PE (Windows) or Mach-O.

The OS loader's own words for a library of another OS ("invalid ELF header", "%1 is not a
valid Win32 application") do not say what is wrong; this does, before the library is opened.
"""

from __future__ import annotations

from pathlib import Path

_MACHO = {b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe",
          b"\xca\xfe\xba\xbe"}  # 32/64-bit, both byte orders, and universal (fat) files


def os_of(head: bytes) -> str | None:
    """``linux`` (ELF), ``windows`` (PE, "MZ") or ``macos`` (Mach-O); None when unknown."""
    if head[:4] == b"\x7fELF":
        return "linux"
    if head[:2] == b"MZ":
        return "windows"
    if head[:4] in _MACHO:
        return "macos"
    return None


def foreign(path: Path, this_os: str) -> str | None:
    """"built for windows, this machine runs linux" when ``path`` is a library of another OS;
    None when it is this OS's, unknown, or unreadable (the OS loader then has its say)."""
    try:
        with open(path, "rb") as f:
            built = os_of(f.read(4))
    except OSError:
        return None
    if built is None or built == this_os:
        return None
    return f"built for {built}, this machine runs {this_os}"
