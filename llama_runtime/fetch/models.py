"""Models from a path or from the hub (``REPO_ID:FILE.gguf``), into huggingface_hub's cache.

The file lands where ``hf_hub_download`` puts it (``blobs/<etag>``, ``snapshots/<commit>/<file>``,
``refs/<revision>`` under ``HF_HUB_CACHE``), so other tools sharing the cache see it. Only the
body is ours: huggingface_hub 2.x downloads into a per-process temporary file that it deletes on
any error (huggingface_hub PR #4228); it resumes a cut only inside one call and gives up on a 5xx
or a reset, so a model cut at 90 % then started over; and a dead endpoint took its fixed ~23 s
back-off, whatever the deadline. So the metadata HEAD is retried here, the body goes through
``download.fetch`` (Range resume, Retry-After, one deadline: ``LLAMA_RUNTIME_TIMEOUT``) into
``blobs/<etag>.llama-runtime.part``, which survives between attempts and runs, and is verified and
renamed to the blob under huggingface_hub's own lock; then ``hf_hub_download`` finds the blob and
only links it and writes the ref (one more HEAD, which it retries itself if it fails).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..config import Settings, check_endpoint
from .download import (TRANSIENT_STATUS, Failure, fetch, idle_timeout, parse_retry_after,
                       permanent_transport_error, retrying)
from ..errors import DownloadError, IntegrityError, ModelError, OfflineError

T = TypeVar("T")


def is_hub_spec(spec: str) -> bool:
    """``org/name:file.gguf`` is a hub model; a path (even ``C:\\x.gguf``) is not."""
    if Path(spec).exists() or ":" not in spec:
        return False
    head, _, tail = spec.partition(":")
    return "/" in head and len(head) > 1 and not head.startswith((".", "/")) and bool(tail)


class _Model:
    """Which file of which repo, for the messages."""

    def __init__(self, repo_id: str, filename: str, revision: str | None, settings: Settings) -> None:
        self.repo_id, self.filename, self.revision, self.settings = repo_id, filename, revision, settings

    def __str__(self) -> str:
        at = f" at revision {self.revision}" if self.revision else ""
        return f"{self.filename} from {self.repo_id}{at} ({self.settings.endpoint})"


def download_model(repo_id: str, filename: str, revision: str | None, settings: Settings) -> Path:
    """The model file in huggingface_hub's cache, downloaded (resumably, verified) unless offline."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import repo_folder_name

    model, cache = _Model(repo_id, filename, revision, settings), Path(constants.HF_HUB_CACHE)
    if settings.offline:
        return _offline(model, cache)
    check_endpoint(settings)
    deadline = time.monotonic() + settings.timeout
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=settings.endpoint)
    meta = _retrying(model, deadline, lambda t: get_hf_file_metadata(
        url, token=settings.token or False, timeout=t, endpoint=settings.endpoint))
    if not meta.etag or not meta.commit_hash or not _safe_name(meta.etag):
        raise DownloadError(f"cannot download {model}: the hub's answer lacks a usable ETag or"
                            " X-Repo-Commit; is this endpoint a Hugging Face hub (or a mirror of one)?")
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    blob = storage / "blobs" / meta.etag
    if not blob.exists():
        _download_blob(model, meta, storage, deadline)
    path = Path(_retrying(model, deadline, lambda t: hf_hub_download(  # links the blob, writes the ref
        repo_id, filename, revision=revision, endpoint=settings.endpoint, token=settings.token or False,
        cache_dir=cache, etag_timeout=t)))
    if path.resolve() != blob.resolve():  # the repo moved on between the two HEADs: new bytes
        _check_sha256(path.resolve(), model)
    return path


def _offline(model: _Model, cache: Path) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model.repo_id, model.filename, revision=model.revision,
                                    cache_dir=cache, local_files_only=True))
    except Exception as exc:
        raise OfflineError(f"{model} is not in the Hugging Face cache ({cache}) and offline mode"
                           " (LLAMA_RUNTIME_OFFLINE or HF_HUB_OFFLINE) forbids downloading it. Download it"
                           " once with network, or point HF_HOME at a cache that holds it.") from exc


def _download_blob(model: _Model, meta: Any, storage: Path, deadline: float) -> None:
    """Fetch the body into ``blobs/<etag>`` under huggingface_hub's own lock for that blob."""
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock  # type: ignore[attr-defined,unused-ignore]

    lock = storage.parent / ".locks" / storage.name / f"{meta.etag}.lock"  # where hf_hub_download locks
    lock.parent.mkdir(parents=True, exist_ok=True)
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    blob = storage / "blobs" / meta.etag
    try:
        with WeakFileLock(lock, timeout=max(0.1, deadline - time.monotonic())):
            if not blob.exists():  # another process may have finished it while we waited
                _fetch_verified(model, meta, blob, deadline)
    except Timeout as exc:
        raise DownloadError(f"cannot download {model}: another process held {lock} until the deadline"
                            " (LLAMA_RUNTIME_TIMEOUT) passed; it is probably downloading the same file."
                            " Wait for it, or retry with a larger LLAMA_RUNTIME_TIMEOUT.") from exc


def _fetch_verified(model: _Model, meta: Any, blob: Path, deadline: float) -> None:
    """``blob`` via ``<etag>.llama-runtime.part`` (resumed if an earlier attempt or run left it)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined,unused-ignore]
    from huggingface_hub.utils import tqdm as hf_tqdm  # type: ignore[attr-defined,unused-ignore]

    from .._version import __version__

    s = model.settings
    url = hf_hub_url(model.repo_id, model.filename, revision=meta.commit_hash, endpoint=s.endpoint)
    headers = build_hf_headers(token=s.token or False, library_name="llama-runtime", library_version=__version__)
    staged = blob.with_name(blob.name + ".llama-runtime")  # fetch() writes staged.part, then renames
    part = staged.with_name(staged.name + ".part")
    if meta.size is not None and part.exists() and part.stat().st_size >= meta.size:
        part.unlink()  # complete but never verified (or too long): no range left to resume
    # huggingface_hub's own bar (it honours HF_HUB_DISABLE_PROGRESS_BARS), as hf_hub_download shows
    bar = hf_tqdm(  # type: ignore[no-untyped-call,unused-ignore]
        total=meta.size, initial=part.stat().st_size if part.exists() else 0, unit="B", unit_scale=True,
        desc=model.filename)
    try:
        with bar:
            fetch(url, staged, headers=headers, timeout=max(0.0, round(deadline - time.monotonic(), 1)),
                  proxy=s.proxy, size=meta.size, progress=lambda have, _total: bar.update(have - bar.n))
    except DownloadError as exc:
        kept = f" {part.stat().st_size} bytes are kept; the next try resumes there." if part.exists() else ""
        raise DownloadError(f"cannot download {model}: {str(exc).rstrip('.')}.{kept} Check that {s.endpoint}"
                            " is reachable (and the proxy, if any), then retry; a larger"
                            " LLAMA_RUNTIME_TIMEOUT helps on a slow link.") from exc
    _check_sha256(staged, model, meta.etag)
    staged.replace(blob)


def _check_sha256(path: Path, model: _Model, expected: str | None = None) -> None:
    """Hash a file whose hub name is a sha256 (LFS/Xet files); a git oid (small files) is not one."""
    from .hashing import sha256_file

    expected = expected or path.name
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        return
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise IntegrityError(f"{model} is corrupt: sha256 {actual}, but the hub names it {expected}."
                             " It was removed from the Hugging Face cache; try again.")


def _retrying(model: _Model, deadline: float, call: Callable[[float], T]) -> T:
    """``call(timeout)`` through :func:`~llama_runtime.fetch.download.retrying`, the one retry loop.

    Each try may wait for an answer as long as a body may stay silent (``idle_timeout``).
    """
    settings = model.settings
    idle = idle_timeout(settings.timeout)

    def judge(exc: Exception) -> Failure:
        retry_after = _transient(exc, model)  # raises the permanent ones, explained
        return Failure(f"{type(exc).__name__}: {_first_line(exc)}", retry_after)

    def give_up(attempts: int, last: Failure) -> DownloadError:
        return DownloadError(
            f"cannot download {model}: gave up after {attempts} attempt(s) within {settings.timeout:g} s"
            f" (LLAMA_RUNTIME_TIMEOUT); last: {last.message}. Check that {settings.endpoint} is reachable"
            " (LLAMA_RUNTIME_ENDPOINT or HF_ENDPOINT, and the proxy, if any), then retry; a larger"
            " LLAMA_RUNTIME_TIMEOUT helps on a slow link.")

    return retrying(lambda left: call(min(idle, left)), deadline, judge, give_up, str(model))


def _transient(exc: Exception, model: _Model) -> float | None:
    """The Retry-After of a failure worth retrying (``None``: none given); permanent ones raise."""
    from huggingface_hub import errors

    cause = exc.__cause__ if isinstance(exc, errors.LocalEntryNotFoundError) and exc.__cause__ else exc
    if isinstance(cause, errors.OfflineModeIsEnabled):  # HF_HUB_OFFLINE set after resolve(): a ConnectionError
        raise OfflineError(f"cannot download {model}: huggingface_hub is in offline mode (HF_HUB_OFFLINE)."
                           " Unset it to download, or download the model once with network.") from exc
    response = getattr(cause, "response", None) if isinstance(cause, errors.HfHubHTTPError) else None
    if response is not None and response.status_code in TRANSIENT_STATUS:
        return parse_retry_after(response.headers.get("Retry-After"))
    if response is None and _is_network(cause):
        permanent = permanent_transport_error(cause, model.settings.endpoint)
        if permanent is None:
            return None
        raise DownloadError(f"cannot download {model}: {permanent}") from exc
    raise _permanent(exc, cause, model) from exc


def _is_network(exc: BaseException) -> bool:
    # httpx (and huggingface_hub's httpx2 flavour) name their base class TransportError
    names = {k.__name__ for k in type(exc).__mro__}
    return "TransportError" in names or isinstance(exc, (ConnectionError, TimeoutError))


def _permanent(exc: Exception, cause: BaseException, model: _Model) -> Exception:
    from huggingface_hub import errors

    status = getattr(getattr(cause, "response", None), "status_code", None)
    token = "HF_TOKEN is set; check that its account has access" if model.settings.token else "set HF_TOKEN"
    if isinstance(cause, errors.GatedRepoError):
        why = f"{model.repo_id} is gated: accept its terms on its hub page, then {token}"
    elif isinstance(cause, errors.RepositoryNotFoundError):  # the Hub also says this for private repos
        why = f"repository {model.repo_id} does not exist there, or it is private: {token}"
    elif isinstance(cause, errors.RevisionNotFoundError):
        why = f"{model.repo_id} has no revision {model.revision or 'main'}: check the branch, tag or commit"
    elif isinstance(cause, errors.EntryNotFoundError):
        why = (f"{model.repo_id} has no file {model.filename} at {model.revision or 'main'}: check the"
               " file name (the repo's file list is on its hub page)")
    elif status in (401, 403):
        why = f"access denied (HTTP {status}): {token}"
    elif status == 404:
        why = "not found (HTTP 404): check the repo id, the file name and the revision"
    else:
        why = f"{type(cause).__name__}: {_first_line(cause)}"
    return DownloadError(f"cannot download {model}: {why}. Not retried: trying again cannot help.")


def _safe_name(name: str) -> bool:
    """An ETag names a file in the cache: never a path (huggingface_hub trusts it as is)."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0].rstrip(".")


def resolve_model(spec: str, settings: Settings) -> Path:
    """A local path as is, or a ``REPO_ID:FILE`` spec downloaded through the hub."""
    if not is_hub_spec(spec):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist (for a hub model write REPO_ID:FILE.gguf).")
        return path
    repo_id, _, filename = spec.partition(":")
    return download_model(repo_id, filename, None, settings)
