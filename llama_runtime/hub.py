"""The hub side of a fetch, through the real ``huggingface_hub`` client.

``huggingface_hub`` reads its endpoint and offline flags once, at import; everything is
passed explicitly here so our settings, resolved at call time, always win.
"""

from __future__ import annotations

from pathlib import Path

from .config import Settings
from .errors import DownloadError


def _ways_out(settings: Settings) -> str:
    return (f"Check that {settings.endpoint} is reachable and retry; or install from a mirror folder"
            " (LLAMA_RUNTIME_MIRROR, written by `llama-runtime fetch --dest` on a connected machine);"
            " or skip the binary now (LLAMA_RUNTIME_SKIP_DOWNLOAD=1) and let the runtime fetch it later.")


def download_file(repo: str, filename: str, revision: str, settings: Settings, dest: Path) -> Path:
    """Download ``filename`` of ``repo`` at ``revision`` into folder ``dest``; return its path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = hf_hub_download(repo, filename, revision=revision, endpoint=settings.endpoint,
                               local_dir=dest, token=settings.token or False,
                               etag_timeout=min(settings.timeout, 30.0))
    except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError) as exc:
        raise DownloadError(f"{settings.endpoint} has no {filename} in {repo} at {revision}: "
                            f"{type(exc).__name__}. Is LLAMA_RUNTIME_REPO/REVISION right?") from exc
    except Exception as exc:  # httpx and OS errors: the hub is down or unreachable
        raise DownloadError(f"could not download {filename} from {settings.endpoint} ({repo}@"
                            f"{revision[:12]}): {type(exc).__name__}: {exc}. {_ways_out(settings)}") from exc
    return Path(path)
