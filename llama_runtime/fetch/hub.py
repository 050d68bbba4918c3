"""The hub side of a fetch: the Hugging Face URL scheme and request headers, in plain Python.

The install-time fetch runs inside pip's isolated build environment, which holds only hatchling
and archspec: nothing on this path imports ``huggingface_hub`` (the run time keeps it as a
dependency, for ``publish`` and model downloads). The URLs are those of ``hf_hub_url`` (model
repos): ``{endpoint}/{repo}/resolve/{revision}/{filename}``, the revision quoted whole (a branch
``refs/pr/1`` becomes ``refs%2Fpr%2F1``), the filename quoted but its slashes kept.
Everything is passed explicitly, so our settings, resolved at call time, always win.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from ..config import Settings, check_endpoint
from .download import Progress, fetch
from ..errors import DownloadError


def ways_out(settings: Settings) -> str:
    return (f"Check that {settings.endpoint} is reachable and retry; or install from a mirror folder"
            " (LLAMA_RUNTIME_MIRROR, written by `llama-runtime fetch --dest` on a connected machine);"
            " or skip the binary now (LLAMA_RUNTIME_SKIP_DOWNLOAD=1) and let the runtime fetch it later.")


def resolve_url(endpoint: str, repo: str, revision: str, filename: str) -> str:
    """What ``huggingface_hub.hf_hub_url(repo, filename, revision=, endpoint=)`` returns."""
    return f"{endpoint.rstrip('/')}/{repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def revision_url(endpoint: str, repo: str, revision: str) -> str:
    """The Hub API's ``model_info`` of ``repo`` at ``revision`` (its ``sha`` is the commit)."""
    return f"{endpoint.rstrip('/')}/api/models/{repo}/revision/{quote(revision, safe='')}"


def request_headers(settings: Settings) -> dict[str, str]:
    """``build_hf_headers(token=..., library_name="llama-runtime")``: a user agent, and the token
    only when one is configured (never one read behind the user's back)."""
    import platform

    from .._version import __version__

    headers = {"user-agent": f"llama-runtime/{__version__}; python/{platform.python_version()}"}
    if settings.token:
        headers["authorization"] = f"Bearer {settings.token}"
    return headers


def revision_commit(repo: str, revision: str, settings: Settings, dest: Path) -> str:
    """The commit sha ``revision`` (a tag, branch or commit) names in ``repo`` now."""
    import json
    import re

    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    check_endpoint(settings)
    try:
        path = fetch(revision_url(settings.endpoint, repo, revision), dest / "revision.json",
                     headers=request_headers(settings), timeout=settings.timeout, proxy=settings.proxy)
        sha = json.loads(path.read_text(encoding="utf-8")).get("sha")
    except DownloadError as exc:
        raise DownloadError(f"could not read revision {revision} of {repo} from {settings.endpoint}:"
                            f" {exc}. {ways_out(settings)}") from exc
    except (ValueError, AttributeError):  # not JSON, or not an object
        sha = None
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
        raise DownloadError(f"{settings.endpoint} did not name the commit of {repo} at {revision}"
                            " (its API answer has no 40-hex \"sha\"): is it a Hugging Face hub, or a"
                            " mirror of one?")
    return sha


def download_file(repo: str, filename: str, revision: str, settings: Settings, dest: Path,
                  progress: Progress | None = None, size: int | None = None) -> Path:
    """Download ``filename`` of ``repo`` at ``revision`` into folder ``dest``; return its path."""
    check_endpoint(settings)  # also when a caller replaced the endpoint after resolve()
    url = resolve_url(settings.endpoint, repo, revision, filename)
    try:
        return fetch(url, dest / filename, headers=request_headers(settings), timeout=settings.timeout,
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
