"""Variant archives, unpacked defensively at run time (packed by :mod:`llama_runtime.release.pack`).

An archive is a flat ``.tar.gz``: regular files only, all at its root, no folders, no links,
no absolute paths. Unpacking refuses anything that could write outside the destination or
create something other than a plain file.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import UnsafeArchiveError


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
