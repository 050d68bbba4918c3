"""Hand-made .tar.gz archives for the unpacker's tests (hostile members included)."""

from __future__ import annotations

import io
import tarfile

Member = tuple[str, bytes, str]  # (name, tarfile type, link target)


def tarball(*members: Member, content: bytes = b"\x7fELF") -> bytes:
    """A .tar.gz of ``members``; each regular file holds ``content``, links point where told."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            if kind == tarfile.REGTYPE:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return buf.getvalue()
