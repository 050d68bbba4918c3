"""The versioned cache: ``<cache>/<llama-runtime version>/<variant>/``.

A variant folder appears under its final name only when complete: it is unpacked into a
temporary folder beside it, checked, given its record, and renamed. A lock file serialises
processes that need the same variant; a complete cache needs no write access to be used.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import CacheError, IntegrityError
from .hashing import sha256_file
from ..variants.manifest import Variant

RECORD = "llama-runtime.json"


def version_dir(cache_dir: Path, version: str = __version__) -> Path:
    return cache_dir / version


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        return record
    except (OSError, ValueError):
        return None


def lookup(cache_dir: Path, variant: Variant) -> Path | None:
    """The cached folder of ``variant`` if complete and made from the archive the lock trusts."""
    folder = version_dir(cache_dir) / variant.name
    record = read_record(folder)
    if record is None or record.get("archive_sha256") != variant.sha256:
        return None
    files = record.get("files") or {}
    for name in variant.files:
        if not _intact(folder / name, files.get(name)):
            return None
    if _foreign(folder, record):  # ggml loads every plugin it finds there: nothing unrecorded
        return None
    return folder


def _foreign(folder: Path, record: dict[str, Any]) -> list[str]:
    """Names in ``folder`` that its record does not know (planted after the verified unpack)."""
    if "extra_files" not in record:  # a record from before extra files were recorded
        return []
    known = {RECORD, *(record.get("files") or {}), *(record.get("extra_files") or {})}
    try:
        return sorted(p.name for p in folder.iterdir() if p.name not in known)
    except OSError:
        return []


def _intact(path: Path, entry: dict[str, Any] | None) -> bool:
    """Whether a cached file is still the one its record hashed.

    Size and mtime as recorded: unchanged since the verified unpack (cheap, every load).
    Otherwise (copied without times, touched, an older record) the file is re-hashed: a
    corrupt or modified library is never loaded, it is fetched again.
    """
    try:
        st = path.stat()
        if entry is None or st.st_size != entry["size"]:
            return False
        return st.st_mtime_ns == entry.get("mtime_ns") or sha256_file(path) == entry.get("sha256")
    except (OSError, KeyError, TypeError):
        return False


def _write_record(folder: Path, variant: Variant, source: dict[str, Any]) -> None:
    files = {}
    for name in variant.files:
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"archive {variant.archive} lacks {name}, which the manifest lists.")
        st = path.stat()
        files[name] = {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    # files the archive holds beyond the manifest's list (variant.json, a licence): trusted with
    # the archive, kept, and recorded so that anything appearing later is seen as foreign
    extra = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.name not in files and p.name != RECORD}
    record = {"variant": variant.name, "archive": variant.archive, "archive_sha256": variant.sha256,
              "files": files, "extra_files": extra, "source": source, "llama_runtime": __version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (folder / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def install(cache_dir: Path, variant: Variant, archive: Path, source: dict[str, Any]) -> Path:
    """Unpack a verified ``archive`` into the cache atomically; return the final folder."""
    import shutil
    import tempfile

    from .archive import safe_extract

    base = version_dir(cache_dir)
    final = base / variant.name
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{variant.name}-", dir=base))
    except OSError as exc:
        raise CacheError(f"cannot write to the cache {base}: {exc.strerror}; set LLAMA_RUNTIME_CACHE"
                         " to a writable folder.") from exc
    try:
        safe_extract(archive, tmp)
        _write_record(tmp, variant, source)
        if final.exists():  # incomplete or stale: set it aside, then swap in the new one
            stale = Path(tempfile.mkdtemp(prefix=f".old-{variant.name}-", dir=base))
            os.replace(final, stale / "x")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as exc:
        raise CacheError(f"cannot unpack {variant.archive} into {base}: {exc}; nothing was installed."
                         " Free some space there, or set LLAMA_RUNTIME_CACHE to a writable folder"
                         " with room.") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


TEMP_PREFIXES = (".dl-", ".tmp-", ".old-")


def _temp_of(item: Path, name: str) -> bool:
    """Whether ``item`` is a temporary folder of variant ``name`` (mkdtemp: 8 chars, no dash)."""
    for prefix in TEMP_PREFIXES:
        rest = item.name[len(prefix) + len(name) + 1:]
        if item.name.startswith(f"{prefix}{name}-") and len(rest) == 8 and "-" not in rest:
            return True
    return False


def remove_stale_temps(cache_dir: Path, name: str) -> list[Path]:
    """Remove the temporary folders a killed process left for variant ``name``.

    Call it only while holding that variant's lock: every live writer of those folders holds
    it, so whatever exists then belongs to a process that died (``kill -9``, power loss).
    """
    import shutil

    base, removed = version_dir(cache_dir), list[Path]()
    try:
        items = [p for p in base.iterdir() if _temp_of(p, name)]
    except OSError:
        return removed
    for item in items:
        shutil.rmtree(item, ignore_errors=True)
        if not item.exists():
            removed.append(item)
    return removed


def lock_path(cache_dir: Path, name: str) -> Path:
    return version_dir(cache_dir) / f".{name}.lock"


@contextmanager
def held(path: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold the inter-process lock file ``path`` (created if needed) for the ``with`` block.

    The ``filelock`` package (flock on POSIX, msvcrt on Windows), imported only here: loading
    a cached variant never takes a lock. Each call opens its own lock, so threads of one
    process wait for each other as other processes do.
    """
    try:
        from filelock import FileLock, Timeout
    except ImportError:  # pip --no-build-isolation without the build requirements installed
        raise CacheError("the filelock package is missing (pip install filelock); a build with"
                         " --no-build-isolation needs the build requirements first: pip install"
                         " hatchling archspec filelock") from None
    lock = FileLock(path, timeout=timeout)
    try:
        lock.acquire(poll_interval=0.05)
    except Timeout:
        raise CacheError(f"waited {timeout:.0f} s for {path}; another process holds it.") from None
    except OSError as exc:
        raise CacheError(f"cannot create the lock file {path}: {exc.strerror or exc}; "
                         "check that the cache folder is writable (LLAMA_RUNTIME_CACHE).") from exc
    try:
        yield
    finally:
        lock.release()


def entries(cache_dir: Path) -> list[dict[str, Any]]:
    """Every variant folder under every version, with its record (None when incomplete)."""
    out: list[dict[str, Any]] = []
    if not cache_dir.is_dir():
        return out
    for vdir in sorted(p for p in cache_dir.iterdir() if p.is_dir()):
        for folder in sorted(p for p in vdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out.append({"version": vdir.name, "variant": folder.name, "path": str(folder),
                        "current": vdir.name == __version__, "record": read_record(folder)})
    return out


def verify_entry(folder: Path) -> list[str]:
    """Re-hash every file of a cached variant against its record; the problems found."""
    record = read_record(folder)
    if record is None:
        return ["no record: incomplete or not made by llama-runtime"]
    problems = []
    recorded = {**(record.get("extra_files") or {}), **(record.get("files") or {})}
    problems += [f"{name}: not from the archive (added later)" for name in _foreign(folder, record)]
    for name, entry in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{name}: sha256 differs from the record (modified or corrupt)")
    return problems


def prune(cache_dir: Path, *, keep_current: bool) -> list[Path]:
    """Remove cached variants (all, or all but this version's) and stale temporary folders."""
    import shutil

    removed: list[Path] = []
    if not cache_dir.is_dir():
        return removed
    for vdir in sorted(p for p in cache_dir.iterdir() if p.is_dir()):
        keep = keep_current and vdir.name == __version__
        for item in sorted(vdir.iterdir()):
            stale_tmp = item.name.startswith(TEMP_PREFIXES) and _older_than(item, 3600)
            if (not keep and not item.name.endswith(".lock")) or stale_tmp:
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
                removed.append(item)
        if not keep and not any(vdir.iterdir()):
            vdir.rmdir()
    return removed


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False
