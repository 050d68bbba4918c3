"""The release side: pack each variant folder, write ``manifest.json``, upload, tag, write the lock.

``SRC/<name>/variant.json`` holds a manifest entry without ``archive``, ``sha256`` and ``size``
(publish computes those); the libraries sit next to it. Everything goes to the hub in one commit
on ``main``, the release tag points at that commit, and the lock pins the commit sha, so the
sdist, not the hub, is what users trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .pack import pack_variant
from ..errors import ManifestError, PublishError
from ..fetch.hashing import sha256_file
from ..variants.entry import VARIANT_FILE, check_folder
from ..variants.manifest import MANIFEST_FILE, SCHEMA, Manifest

def load_variant(folder: Path) -> dict[str, Any]:
    """Read and check ``folder/variant.json`` against the folder (:func:`~.variants.entry.check_folder`:
    every file listed and present, nothing unlisted); return the entry with defaults filled in."""
    return check_folder(folder)


def _variant_folders(src: Path) -> list[Path]:
    if not src.is_dir():
        raise PublishError(f"{src} is not a folder; SRC must hold one folder per variant.")
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise PublishError(
            f"{src} holds no variant folders (SRC/<name>/{VARIANT_FILE} + libraries)."
        )
    return folders


def _llama_cpp(entries: dict[str, dict[str, Any]], given: str | None) -> str | None:
    """The manifest's ``llama_cpp``: what the variants were built from.

    The rule this guards is that every library of the release can be driven by this
    llama-runtime's binding: a variant of a llama.cpp generation the binding was not checked
    against is refused. Several checked generations may share a release (the macOS and Windows
    npm builds exist only at 0.4.0, the Linux ones and our source builds are 0.5.0); the loader
    checks each variant's own ``llama_cpp`` again before it loads it.
    """
    from ..native import generations

    found = {str(e["llama_cpp"]) for e in entries.values() if e.get("llama_cpp")}
    alien = sorted(f"{name} (llama.cpp {e['llama_cpp']})" for name, e in entries.items()
                   if e.get("llama_cpp") and not generations.is_compatible(str(e["llama_cpp"])))
    if alien:
        raise ManifestError(
            f"{', '.join(alien)}: this llama-runtime's binding is checked only against llama.cpp"
            f" {generations.describe()}; its structs would be misread. Rebuild the variant from a"
            " checked llama.cpp, or add that generation to llama_runtime/native/generations.py"
            " with its header checked (tests/unit/test_generations.py)."
        )
    if given:
        return given
    return ", ".join(sorted(found, key=generations.normalize)) if found else None


Qualify = Callable[[list[Path]], dict[str, dict[str, Any]]]


def build_release(src: Path, staging: Path, llama_cpp: str | None = None, *,
                  qualify: Qualify | None = None) -> dict[str, Any]:
    """Pack every variant of ``src`` into ``staging``, write ``manifest.json`` and return it.

    ``qualify`` (what :func:`publish` passes): runs every variant this machine can run and returns
    each one's ``qualification`` record for its manifest entry, or raises (nothing is uploaded).
    """
    entries: dict[str, dict[str, Any]] = {}
    folders = _variant_folders(src)
    for folder in folders:
        entry = load_variant(folder)
        archive = f"{folder.name}.tar.gz"
        sha256, size = pack_variant(folder, staging / archive)
        entries[folder.name] = {**entry, "archive": archive, "sha256": sha256, "size": size}
    for name, record in (qualify(folders) if qualify is not None else {}).items():
        entries[name]["qualification"] = record
    manifest = {"schema": SCHEMA, "llama_cpp": _llama_cpp(entries, llama_cpp), "variants": entries}
    Manifest.parse(manifest)  # what we publish must be what the runtime can read
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (staging / MANIFEST_FILE).write_text(text, encoding="utf-8")
    return manifest


def _same_content(api: Any, repo: str, commit: str, staging: Path) -> bool:
    """Whether ``commit`` already holds every staged file byte for byte."""
    from huggingface_hub.utils.sha import git_hash  # the hub's own blob id of a non-LFS file

    info = api.model_info(repo, revision=commit, files_metadata=True)
    remote = {s.rfilename: s for s in info.siblings or []}
    for path in staging.iterdir():
        sib = remote.get(path.name)
        if sib is None:
            return False
        if sib.lfs is not None and sib.lfs.sha256 != sha256_file(path):
            return False
        if sib.lfs is None and sib.blob_id != git_hash(path.read_bytes()):
            return False
    return True


def _existing_tag(api: Any, repo: str, tag: str) -> str | None:
    refs = api.list_repo_refs(repo)
    return next((t.target_commit for t in refs.tags if t.name == tag), None)


def _commit(api: Any, repo: str, revision: str, staging: Path) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    staged = sorted(p.name for p in staging.iterdir())
    stale = [
        f
        for f in api.list_repo_files(repo, revision="main")
        if f.endswith(".tar.gz") and f not in staged
    ]  # variants this release dropped
    ops: list[Any] = [
        CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(staging / n)) for n in staged
    ]
    ops += [CommitOperationDelete(path_in_repo=f) for f in stale]
    info = api.create_commit(
        repo, operations=ops, revision="main", commit_message=f"llama-runtime binaries {revision}"
    )
    return str(info.oid)


def upload(staging: Path, *, repo: str, revision: str, endpoint: str, token: str | None) -> str:
    """Upload the staged release in one commit on main and tag it; return the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo, exist_ok=True)
    tagged = _existing_tag(api, repo, revision)
    if tagged is not None:
        if _same_content(api, repo, tagged, staging):
            return tagged  # re-publishing the same release is a no-op
        raise PublishError(
            f"tag {revision!r} already exists in {repo} at {tagged[:12]} with different"
            " files; a release tag is never moved. Publish under a new tag."
        )
    commit = _commit(api, repo, revision, staging)
    try:
        api.create_tag(
            repo, tag=revision, revision=commit, tag_message=f"llama-runtime binaries {revision}"
        )
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status != 409:
            raise
        raise PublishError(
            f"tag {revision!r} was created in {repo} by someone else while this release"
            f" was uploading; commit {commit[:12]} is on main but untagged. Check the"
            " tag and publish under a new one."
        ) from exc
    return commit


def write_lock(lock_path: Path, lock: dict[str, Any]) -> None:
    """Write the lock atomically: a temporary file beside it, then ``os.replace``."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{lock_path.name}.", suffix=".tmp", dir=lock_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(lock, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, lock_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hub_failure(exc: Exception, repo: str, endpoint: str) -> PublishError:
    return PublishError(
        f"uploading the release to {endpoint} ({repo}) failed: {type(exc).__name__}:"
        f" {exc}. Check the endpoint, the repo name and that the token (HF_TOKEN)"
        " may write to it; nothing was tagged, rerun when fixed."
    )


def publish(
    src: Path,
    *,
    repo: str,
    revision: str,
    endpoint: str,
    lock_path: Path,
    token: str | None = None,
    llama_cpp: str | None = None,
    qualify_cache: Path | None = None,
    qualify: bool = True,
) -> dict[str, Any]:
    """Pack ``src``, upload it to ``repo`` at ``endpoint``, tag ``revision``, write the lock.

    Before anything is uploaded every variant this machine can run is qualified (loaded, and
    every CPU plugin decodes a model of each quantization type: :mod:`llama_runtime.qualify`),
    its results cached under ``qualify_cache`` (default: the settings' cache folder); one that
    fails is refused with a :class:`~llama_runtime.errors.QualificationError`. ``qualify=False``
    is for tests of the packing and uploading alone.
    """
    from ..qualify.check import for_publish

    checker = for_publish(qualify_cache) if qualify else None
    with tempfile.TemporaryDirectory(prefix="llama-runtime-publish-") as tmp:
        manifest = build_release(Path(src), Path(tmp), llama_cpp, qualify=checker)
        try:
            commit = upload(Path(tmp), repo=repo, revision=revision, endpoint=endpoint, token=token)
        except PublishError:
            raise
        except Exception as exc:  # HfHubHTTPError, httpx and OS errors
            raise _hub_failure(exc, repo, endpoint) from exc
    lock = {"repo": repo, "revision": revision, "commit": commit, "manifest": manifest}
    write_lock(Path(lock_path), lock)
    return lock
