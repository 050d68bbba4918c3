"""Models from a path or from the hub (``REPO_ID:FILE.gguf``), through huggingface_hub's cache."""

from __future__ import annotations

from pathlib import Path

from .config import Settings
from .errors import DownloadError, ModelError


def is_hub_spec(spec: str) -> bool:
    """``org/name:file.gguf`` is a hub model; a path (even ``C:\\x.gguf``) is not."""
    if Path(spec).exists() or ":" not in spec:
        return False
    head, _, tail = spec.partition(":")
    return "/" in head and len(head) > 1 and not head.startswith((".", "/")) and bool(tail)


def download_model(repo_id: str, filename: str, revision: str | None, settings: Settings) -> Path:
    """The model file from huggingface_hub's own cache, downloading it unless offline."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=settings.endpoint,
                                    token=settings.token or False, local_files_only=settings.offline))
    except Exception as exc:
        hint = (" Offline mode is on and it is not in the Hugging Face cache." if settings.offline
                else f" Check the repo id and file name, and that {settings.endpoint} is reachable.")
        raise DownloadError(f"cannot get {filename} from {repo_id}: {type(exc).__name__}: {exc}.{hint}") from exc


def resolve_model(spec: str, settings: Settings) -> Path:
    """A local path as is, or a ``REPO_ID:FILE`` spec downloaded through the hub."""
    if not is_hub_spec(spec):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist (for a hub model write REPO_ID:FILE.gguf).")
        return path
    repo_id, _, filename = spec.partition(":")
    return download_model(repo_id, filename, None, settings)
