"""Models from a path or from the hub (``REPO_ID:FILE.gguf``), through huggingface_hub's cache."""

from __future__ import annotations

from pathlib import Path

from .config import Settings
from .errors import DownloadError, IntegrityError, ModelError


def is_hub_spec(spec: str) -> bool:
    """``org/name:file.gguf`` is a hub model; a path (even ``C:\\x.gguf``) is not."""
    if Path(spec).exists() or ":" not in spec:
        return False
    head, _, tail = spec.partition(":")
    return "/" in head and len(head) > 1 and not head.startswith((".", "/")) and bool(tail)


def download_model(repo_id: str, filename: str, revision: str | None, settings: Settings) -> Path:
    """The model file from huggingface_hub's own cache, downloading it unless offline.

    huggingface_hub does not check content hashes; a file it has just downloaded whose blob is
    named by a sha256 (large files, stored in LFS/Xet) is hashed here and thrown away on mismatch.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=settings.endpoint,
                                    token=settings.token or False, local_files_only=settings.offline))
    except Exception as exc:
        hint = (" Offline mode is on and it is not in the Hugging Face cache." if settings.offline
                else f" Check the repo id and file name, and that {settings.endpoint} is reachable.")
        raise DownloadError(f"cannot get {filename} from {repo_id}: {type(exc).__name__}: {exc}.{hint}") from exc
    if not isinstance(cached, str) or Path(cached).resolve() != path.resolve():
        _check_blob(path, f"{repo_id}:{filename}")  # new bytes: hash them once
    return path


def _check_blob(path: Path, what: str) -> None:
    from .hashing import sha256_file

    blob = path.resolve()
    expected = blob.name
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        return  # a small (git) file: its ETag is a git oid, not a sha256
    actual = sha256_file(blob)
    if actual != expected:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise IntegrityError(f"{what} from the hub is corrupt: sha256 {actual}, but the hub names it"
                             f" {expected}. It was removed from the Hugging Face cache; try again.")


def resolve_model(spec: str, settings: Settings) -> Path:
    """A local path as is, or a ``REPO_ID:FILE`` spec downloaded through the hub."""
    if not is_hub_spec(spec):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist (for a hub model write REPO_ID:FILE.gguf).")
        return path
    repo_id, _, filename = spec.partition(":")
    return download_model(repo_id, filename, None, settings)
