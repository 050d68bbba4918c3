"""The hub side of a fetch: ``huggingface_hub``'s URL scheme, headers and HTTP client.

``huggingface_hub`` reads its endpoint and offline flags once, at import; everything is
passed explicitly here so our settings, resolved at call time, always win.
"""

from __future__ import annotations

from pathlib import Path

from .config import Settings, check_endpoint
from .download import Progress, fetch
from .errors import DownloadError


def ways_out(settings: Settings) -> str:
    return (f"Check that {settings.endpoint} is reachable and retry; or install from a mirror folder"
            " (LLAMA_RUNTIME_MIRROR, written by `llama-runtime fetch --dest` on a connected machine);"
            " or skip the binary now (LLAMA_RUNTIME_SKIP_DOWNLOAD=1) and let the runtime fetch it later.")


def download_file(repo: str, filename: str, revision: str, settings: Settings, dest: Path,
                  progress: Progress | None = None, size: int | None = None) -> Path:
    """Download ``filename`` of ``repo`` at ``revision`` into folder ``dest``; return its path."""
    from huggingface_hub import __version__ as hub_version
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined,unused-ignore]

    from ._version import __version__

    check_endpoint(settings)  # also when a caller replaced the endpoint after resolve()
    url = hf_hub_url(repo, filename, revision=revision, endpoint=settings.endpoint)
    headers = build_hf_headers(token=settings.token or False, library_name="llama-runtime",
                               library_version=__version__, user_agent=f"huggingface_hub/{hub_version}")
    try:
        return fetch(url, dest / filename, headers=headers, timeout=settings.timeout,
                     proxy=settings.proxy, progress=progress, size=size)
    except DownloadError as exc:
        mirror = ("" if settings.revision or not unknown_revision(exc) else " If this endpoint is a"
                  " mirror that re-committed the release (olah, a git copy), its commits differ from"
                  " the lock's: set LLAMA_RUNTIME_REVISION to its branch, tag or commit.")
        error = DownloadError(f"could not download {filename} from {settings.endpoint} ({repo} at"
                              f" {revision[:12]}): {exc}. {ways_out(settings)}{mirror}")
        error.status, error.code = exc.status, exc.code
        raise error from exc


def unknown_revision(exc: DownloadError) -> bool:
    """Whether the hub's last answer is what a mirror says of a commit or repo it does not have.

    The Hub: 404 ``RevisionNotFound``/``RepoNotFound``; olah: 500 for an unknown commit sha and
    401 ``RepoNotFound`` for an unknown branch or tag; a plain mirror: 404. Not a timeout, a
    reset or a busy server (no answer, or one about something else).
    """
    if exc.status == 500 or exc.status == 404 and exc.code != "EntryNotFound":
        return True
    return exc.status == 401 and exc.code in ("RepoNotFound", "RevisionNotFound")
