"""Get a variant's verified libraries into the cache: from the cache itself, a mirror folder,
or the hub at the commit the lock pins. Nothing is unpacked before its sha256 matches the lock.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .cache import held, install, lock_path, lookup, remove_stale_temps, version_dir
from ..config import Settings
from .download import Progress
from ..errors import CacheError, DownloadError, IntegrityError, OfflineError
from .hashing import sha256_file
from ..variants.manifest import Lock, Variant

log = logging.getLogger(__name__)


def verify(path: Path, variant: Variant, origin: str, anchor: str = "the lock") -> None:
    """Raise (and delete the file) unless ``path`` hashes to the sha256 ``anchor`` trusts."""
    actual = sha256_file(path)
    if actual != variant.sha256:
        path.unlink(missing_ok=True)
        raise IntegrityError(
            f"{variant.archive} from {origin} is not the file this release trusts:\n"
            f"  expected sha256 {variant.sha256} (from {anchor})\n  got      sha256 {actual}\n"
            "It was deleted and nothing was installed. The hub or mirror serves a different or"
            " corrupted file; report it, or use a mirror you trust (LLAMA_RUNTIME_MIRROR)."
        )


def anchor_of(lock: Lock) -> str:
    """What vouches for the sha256 values of ``lock`` (see :mod:`llama_runtime.fetch.trust`)."""
    if lock.trust == "hub":
        return f"the manifest of {lock.repo} at {lock.revision}, as the hub served it: no lock"
    return "the lock"


def _from_mirror(variant: Variant, mirror: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    src = mirror / variant.archive
    if not src.is_file():
        raise DownloadError(
            f"the mirror {mirror} has no {variant.archive}; refill it with"
            f" `llama-runtime fetch --variant {variant.name} --dest {mirror}` on a connected machine."
        )
    dest = work / variant.archive
    shutil.copyfile(src, dest)
    return dest, {"kind": "mirror", "path": str(mirror)}


def _from_hub(variant: Variant, lock: Lock, settings: Settings, work: Path,
              progress: Progress | None) -> tuple[Path, dict[str, Any]]:
    from .hub import download_file

    repo = settings.repo or lock.repo
    # without a lock, the commit the manifest was read at: its archives are the ones it names
    revision = lock.commit if lock.trust == "hub" else settings.revision or lock.commit
    path = download_file(repo, variant.archive, revision, settings, work, progress, variant.size)
    return path, {"kind": "hub", "endpoint": settings.endpoint, "repo": repo, "revision": revision,
                  "trust": lock.trust}


def obtain_archive(variant: Variant, lock: Lock, settings: Settings, work: Path,
                   progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Fetch ``variant``'s archive into ``work`` and verify it; return its path and origin."""
    if settings.mirror is not None:
        path, origin = _from_mirror(variant, settings.mirror, work)
    elif settings.offline:
        raise OfflineError(
            f"{variant.name} is not in the cache ({version_dir(settings.cache_dir)}) and offline mode"
            " forbids downloading it. Fetch it once with network (`llama-runtime fetch`), or point"
            " LLAMA_RUNTIME_MIRROR at a folder written by `llama-runtime fetch --dest`."
        )
    else:
        path, origin = _from_hub(variant, lock, settings, work, progress)
    verify(path, variant, origin.get("endpoint") or origin.get("path", "?"), anchor_of(lock))
    return path, origin


def ensure_variant(variant: Variant, lock: Lock, settings: Settings,
                   progress: Progress | None = None) -> tuple[Path, str]:
    """The cached folder of ``variant``, downloading it if needed; returns (folder, 'cache'|'download')."""
    found = lookup(settings.cache_dir, variant)
    if found is not None:
        return found, "cache"
    base = version_dir(settings.cache_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the cache folder {base}: {exc.strerror}; set LLAMA_RUNTIME_CACHE"
                         " to a writable folder.") from exc
    with held(lock_path(settings.cache_dir, variant.name)):
        found = lookup(settings.cache_dir, variant)  # another process may have finished it
        if found is not None:
            return found, "cache"
        for stale in remove_stale_temps(settings.cache_dir, variant.name):
            log.info("removed %s, left by a download that was interrupted", stale)
        work = Path(tempfile.mkdtemp(prefix=f".dl-{variant.name}-", dir=base))
        try:
            archive, origin = obtain_archive(variant, lock, settings, work, progress)
            log.info("fetched %s (%d bytes) from %s", variant.archive, variant.size, origin)
            return install(settings.cache_dir, variant, archive, origin), "download"
        finally:
            shutil.rmtree(work, ignore_errors=True)
