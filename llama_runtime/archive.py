"""Variant archives: packed reproducibly on the release side, unpacked defensively at run time.

An archive is a flat ``.tar.gz``: regular files only, all at its root, no folders, no links,
no absolute paths. Packing fixes every bit of metadata (order, mtime, owner, mode, the gzip
header) so the same folder always gives the same sha256; unpacking refuses anything that could
write outside the destination or create something other than a plain file.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from .errors import PublishError, UnsafeArchiveError
from .hashing import sha256_file


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


def _check_member(member: tarfile.TarInfo, archive: Path) -> str:
    """The safe relative name of ``member``, or an UnsafeArchiveError saying why not."""
    name = member.name
    path = PurePosixPath(name)
    why = None
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        why = "has an absolute path"
    elif ".." in path.parts or "\\" in name:
        why = "climbs out of the folder ('..' or a backslash)"
    elif member.issym() or member.islnk():
        why = f"is a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}"
    elif not member.isreg():
        why = "is not a regular file (a folder, device or fifo)"
    if why:
        raise UnsafeArchiveError(
            f"{archive.name}: member {name!r} {why}; refusing to unpack it."
            " The archive is not one `llama-runtime publish` made."
        )
    return str(path)


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeArchiveError(f"{archive} is not a readable tar archive: {exc}") from exc


def _checked_members(
    tar: tarfile.TarFile, archive: Path, expected: list[str] | None
) -> list[tuple[tarfile.TarInfo, str]]:
    try:
        members = [(m, _check_member(m, archive)) for m in tar.getmembers()]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UnsafeArchiveError(f"{archive} is truncated or corrupt: {exc}") from exc
    names = [name for _, name in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UnsafeArchiveError(f"{archive.name}: member {dupes[0]!r} appears more than once.")
    missing = sorted(set(expected or ()) - set(names))
    if missing:
        raise UnsafeArchiveError(
            f"{archive.name} lacks {', '.join(missing)}; it holds {', '.join(names) or 'nothing'}."
        )
    return members


def safe_extract(
    archive: Path, dest_dir: Path, expected_members: list[str] | None = None
) -> list[Path]:
    """Unpack ``archive`` into ``dest_dir`` after checking every member; return the files written.

    Every member must be a regular file with a relative path that stays inside ``dest_dir``
    (no absolute paths, no ``..``, no links, devices or folders); every name in
    ``expected_members`` must be present. Nothing is written unless all members pass.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    written = []
    with _open_tar(archive) as tar:
        for member, name in _checked_members(tar, archive, expected_members):
            target = dest_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member) or io.BytesIO()
            with source, open(target, "wb") as out:
                while block := source.read(1024 * 1024):
                    out.write(block)
            target.chmod(0o755 if member.mode & 0o111 else 0o644)
            written.append(target)
    return written
