"""The C library: glibc or musl, and its version.

``parse_musl_version`` is pure (fed the banner ``ld-musl`` prints); the readers do the I/O,
following ``packaging._musllinux``.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any


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
    if glibc:
        return {"name": "glibc", "version": glibc, "error": None}
    loader = _musl_loader()
    if loader is None:
        return {"name": None, "version": None, "error": "unknown, because neither glibc nor musl was found"}
    import subprocess  # lazily: glibc answers through confstr

    try:
        proc = subprocess.run([loader], capture_output=True, text=True, timeout=2)
        return {"name": "musl", "version": parse_musl_version(proc.stderr), "error": None}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"name": "musl", "version": None, "error": f"unknown, because {loader} failed: {exc}"}
