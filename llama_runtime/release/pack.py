"""Variant archives, packed reproducibly on the release side (unpacked by :mod:`llama_runtime.fetch.archive`).

An archive is a flat ``.tar.gz``: regular files only, all at its root, no folders, no links,
no absolute paths. Packing fixes every bit of metadata (order, mtime, owner, mode, the gzip
header) so the same folder always gives the same sha256.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path, PurePosixPath

from ..errors import PublishError
from ..fetch.hashing import sha256_file


def archive_members(folder: Path) -> list[tuple[str, Path]]:
    """(member name, real file) for every file of ``folder``, sorted by name.

    A symlink is stored as a copy of its target, and only when that target is a regular file
    inside ``folder``: the archive must hold no links and nothing from elsewhere on disk.
    """
    root = folder.resolve()
    members = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        real = entry.resolve()
        if entry.is_symlink() and real.parent != root:
            raise PublishError(
                f"{entry} is a symlink to {os.readlink(entry)}, outside {folder};"
                " copy the file into the folder instead."
            )
        if real.is_dir():
            raise PublishError(
                f"{entry} is a folder; a variant archive is flat (libraries at its"
                f" root), so move its files up or leave it out of {folder}."
            )
        if not real.is_file():
            raise PublishError(f"{entry} is not a regular file (a broken link or a device).")
        members.append((entry.name, real))
    return members


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.type = size, 0, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if ".so" in PurePosixPath(name).suffixes or name.endswith(".dylib") else 0o644
    return info


def pack_variant(folder: Path, dest_archive: Path) -> tuple[str, int]:
    """Pack ``folder`` into ``dest_archive`` reproducibly; return (sha256, size in bytes)."""
    tmp = dest_archive.with_name(f".{dest_archive.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as raw:
            # filename="" and mtime=0 keep the gzip header free of names and times
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name, real in archive_members(folder):
                        with open(real, "rb") as fh:
                            tar.addfile(_tar_info(name, real.stat().st_size), fh)
        os.replace(tmp, dest_archive)
    finally:
        tmp.unlink(missing_ok=True)
    return sha256_file(dest_archive), dest_archive.stat().st_size
