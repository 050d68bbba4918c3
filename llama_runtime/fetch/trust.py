"""Which binary release this llama-runtime trusts, and on whose word.

With a lock (``binaries.lock.json``, written by ``llama-runtime publish`` and shipped in the
sdist) the sdist is the trust anchor: every archive must match the lock's sha256, wherever it is
fetched from (``LLAMA_RUNTIME_REPO``/``REVISION`` only say where).

Without one (a source checkout, ``pip install .`` before the first release) the package knows
no release. ``LLAMA_RUNTIME_REPO`` plus ``LLAMA_RUNTIME_REVISION`` may then name one: its
``manifest.json`` is read from the hub at the commit that revision names, every archive is
checked against that manifest's sha256 (and fetched at that same commit), and a WARNING says the
trust now rests on the hub. The manifest read is kept in the cache, so later runs work offline;
a release tag never moves (publish refuses to move one), so it is not read again. A wheel built
that way keeps the release in its build report (``selection.json``), so the installed package
knows it without the variables (with the same WARNING).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ManifestError, NoReleaseError
from ..variants.manifest import MANIFEST_FILE, Lock, Manifest, package_lock_path

log = logging.getLogger("llama_runtime")
_warned: set[str] = set()  # one WARNING per release and process, not one per call
HOW_TO_GET_A_LIBRARY = (
    "To get a library: set LLAMA_RUNTIME_LIB to a libllama you have (a llama.cpp build, or a"
    " folder made by scripts/build_variants.py); or install a llama-runtime release, whose sdist"
    " carries the lock; or set LLAMA_RUNTIME_REPO and LLAMA_RUNTIME_REVISION to a binary release"
    " on a hub (with LLAMA_RUNTIME_ENDPOINT for one other than huggingface.co), whose manifest is"
    " then trusted as that hub serves it. `llama-runtime publish` makes a release and writes the lock."
)


def no_lock_message(path: Path) -> str:
    return (f"this llama-runtime has no binary lock ({path}): it was installed from a source checkout"
            " or built before a binary release was made, so it ships no llama.cpp library and trusts"
            f" no release to download one from. {HOW_TO_GET_A_LIBRARY}")


def names_a_release(settings: Settings) -> bool:
    """Whether the settings name a binary release by themselves (what a missing lock needs)."""
    return bool(settings.repo or settings.revision)


def trusted_lock(settings: Settings, path: Path | None = None, *,
                 echo: Callable[[str], Any] | None = None) -> Lock:
    """The lock at ``path`` (default: the package's); without one, the release the settings name
    (read from the hub), else the one the installed wheel was built from; else an error that says
    how to get a library."""
    from ..variants.manifest import read_lock  # looked up now: tests replace it to prove it unread

    path = path or package_lock_path()
    if path.exists():
        return read_lock(path)
    if names_a_release(settings):
        return hub_release(settings, path, echo=echo)
    installed = installed_release()
    if installed is None:
        raise NoReleaseError(no_lock_message(path))
    lock, endpoint = installed
    _warn(lock, endpoint, echo)
    return lock


def release_record(lock: Lock, endpoint: str) -> dict[str, Any]:
    """What the build report keeps of a release trusted without a lock (see :func:`installed_release`)."""
    return {"endpoint": endpoint, "repo": lock.repo, "revision": lock.revision, "commit": lock.commit,
            "manifest": _manifest_data(lock.manifest)}


def installed_release() -> tuple[Lock, str] | None:
    """The release a wheel built without a lock was made from (LLAMA_RUNTIME_REPO/REVISION at
    install time), as its build report keeps it: the run time needs no variable set again."""
    from ..runtime.loader import read_build_report

    data = (read_build_report() or {}).get("release")
    if not isinstance(data, dict):
        return None
    try:
        return Lock.parse(data, trust="hub"), str(data["endpoint"])
    except (ManifestError, KeyError):  # not one this llama-runtime can read
        return None


def hub_release(settings: Settings, path: Path, *, echo: Callable[[str], Any] | None = None) -> Lock:
    """The release ``LLAMA_RUNTIME_REPO`` at ``LLAMA_RUNTIME_REVISION``, trusted as the hub serves it."""
    repo, revision = settings.repo, settings.revision
    if not repo or not revision:
        unset = "LLAMA_RUNTIME_REVISION" if repo else "LLAMA_RUNTIME_REPO"
        raise NoReleaseError(f"{unset} is not set: without a lock ({path}) a binary release is named by"
                             " both LLAMA_RUNTIME_REPO and LLAMA_RUNTIME_REVISION (a tag, branch or"
                             " commit of that repo).")
    kept = _kept_path(settings)
    lock = _read_kept(kept)
    if lock is None:
        if settings.offline or settings.mirror is not None:
            why = "offline mode is on" if settings.offline else "LLAMA_RUNTIME_MIRROR forbids the network"
            raise NoReleaseError(f"this llama-runtime has no lock and {why}, and the manifest of {repo}"
                                 f" at {revision} was never read on this machine ({kept}). Run once"
                                 f" with network, or: {HOW_TO_GET_A_LIBRARY}")
        lock = _read_from_hub(settings, repo, revision)
        _keep(kept, release_record(lock, settings.endpoint))
    _warn(lock, settings.endpoint, echo)
    return lock


def _warn(lock: Lock, endpoint: str, echo: Callable[[str], Any] | None) -> None:
    text = (f"this llama-runtime has no binary lock: it trusts the manifest of {lock.repo} at"
            f" {lock.revision} (commit {lock.commit[:12]}) as {endpoint} serves it, so the"
            " sha256 checks of its archives rest on that hub, not on the sdist. Install a"
            " llama-runtime release (with its lock) for a trust anchor of its own.")
    if echo is not None:
        echo(f"llama-runtime: WARNING: {text}")
    key = f"{endpoint} {lock.repo} {lock.commit}"
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", text)


def _kept_path(settings: Settings) -> Path:
    from .cache import version_dir

    key = hashlib.sha256(f"{settings.endpoint}\n{settings.repo}\n{settings.revision}".encode()).hexdigest()
    return version_dir(settings.cache_dir) / ".releases" / f"{key[:24]}.json"


def _read_kept(kept: Path) -> Lock | None:
    try:
        return Lock.parse(json.loads(kept.read_text(encoding="utf-8")), trust="hub")
    except (OSError, ValueError):  # absent, unreadable or damaged: read it from the hub again
        return None


def _keep(kept: Path, data: dict[str, Any]) -> None:
    """Keep the release's manifest for later (offline) runs; a read-only cache only costs a re-read."""
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".release-", suffix=".tmp", dir=kept.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, kept)
    except OSError as exc:
        log.debug("could not keep the release manifest in %s: %s", kept.parent, exc)


def _manifest_data(manifest: Manifest) -> dict[str, Any]:
    return {"schema": 1, "llama_cpp": manifest.llama_cpp,
            "variants": {n: v.to_dict() for n, v in manifest.variants.items()}}


def _read_from_hub(settings: Settings, repo: str, revision: str) -> Lock:
    from .hub import download_file, revision_commit

    with tempfile.TemporaryDirectory(prefix="llama-runtime-release-") as tmp:
        commit = revision_commit(repo, revision, settings, Path(tmp))
        path = download_file(repo, MANIFEST_FILE, commit, settings, Path(tmp))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Lock(repo=repo, revision=revision, commit=commit, manifest=Manifest.parse(data),
                        trust="hub")
        except ValueError as exc:  # not JSON, or ManifestError
            raise ManifestError(f"{MANIFEST_FILE} of {repo} at {revision} on {settings.endpoint} is not"
                                f" a llama-runtime release manifest: {exc}") from exc
