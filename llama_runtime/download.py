"""Stream one file from the hub to disk: resumable, bounded retries, one overall deadline.

It rides on ``huggingface_hub``'s own HTTP client (``get_session()``), URL scheme
(``hf_hub_url``) and headers (``build_hf_headers``), but does what ``hf_hub_download`` does
not: a deadline for the whole download (``LLAMA_RUNTIME_TIMEOUT``) instead of a 23 s back-off
on a dead server, resume with ``Range`` after a cut, and no second copy in another cache.
The caller verifies the sha256 before anything is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from .errors import CacheError, DownloadError

log = logging.getLogger(__name__)
ATTEMPTS = 4  # one try plus three retries of transient failures
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
Progress = Callable[[int, Optional[int]], None]


# which of three things a hub's 404 is about (the Hub's X-Error-Code header; ours sends it too)
_NOT_FOUND = {
    "RepoNotFound": "the repository does not exist (or is private: set HF_TOKEN); check LLAMA_RUNTIME_REPO"
                    " (a mirror such as olah also says this for a revision it lacks: check LLAMA_RUNTIME_REVISION)",
    "RevisionNotFound": "the revision does not exist in the repository; check LLAMA_RUNTIME_REVISION",
    "EntryNotFound": "the repository has no such file at that revision; the release on the hub is"
                     " incomplete, or LLAMA_RUNTIME_REVISION points at another release",
}


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _client(proxy: str | None) -> Any:
    from huggingface_hub import get_session

    session = get_session()
    if proxy is None:
        return session
    return type(session)(proxy=proxy, follow_redirects=True)  # the same httpx flavour as the hub's


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _one_attempt(client: Any, url: str, part: Path, headers: dict[str, str], deadline: float,
                 size: int | None, progress: Progress | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    request_headers = {**headers, **({"Range": f"bytes={have}-"} if have else {})}
    timeout = max(1.0, min(deadline - time.monotonic(), 30.0))
    with client.stream("GET", url, headers=request_headers, timeout=timeout) as r:
        if r.status_code in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {r.status_code}", _retry_after(r.headers.get("Retry-After")))
        if r.status_code >= 400:
            raise DownloadError(f"HTTP {r.status_code} for {url}" + _hint(r))
        if have and r.status_code != 206:  # server ignored Range (some mirrors do): start over
            have = 0
        total = _total(r, have)
        have = _write_body(r, part, have, deadline, size, _Report(progress, size or total))
    if total is not None and have != total:
        raise _Transient(f"body ended at {have} of {total} bytes")
    if size is not None and have < size:  # a short body with an honest-looking Content-Length
        raise _Transient(f"body ended at {have} of the {size} bytes the lock expects")


class _Report:
    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self.progress, self.total = progress, total

    def __call__(self, have: int) -> None:
        if self.progress:
            self.progress(have, self.total)


def _write_body(r: Any, part: Path, have: int, deadline: float, size: int | None,
                report: _Report) -> int:
    try:
        with part.open("ab" if have else "wb") as f:
            for chunk in r.iter_bytes():  # as received: a cut loses no bytes already read
                f.write(chunk)
                have += len(chunk)
                report(have)
                if size is not None and have > size:  # never let a server fill the disk
                    raise DownloadError(f"{r.url} sent more than the {size} bytes the lock expects")
                if time.monotonic() > deadline:  # a slow drip never trips a per-read timeout
                    raise _Deadline(f"still receiving at byte {have} when the deadline passed")
    except DownloadError:
        raise
    except OSError as exc:
        raise CacheError(f"cannot write {part.name} in {part.parent}: {exc.strerror or exc}; free some"
                         " space there or set LLAMA_RUNTIME_CACHE to another folder.") from exc
    return have


class _Deadline(Exception):
    pass


def _total(response: Any, have: int) -> int | None:
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _hint(response: Any) -> str:
    status = response.status_code
    why = _NOT_FOUND.get(response.headers.get("X-Error-Code", ""))
    if why and status in (401, 404):  # the Hub and mirrors (olah) answer 401 RepoNotFound too
        return f": {why}."
    if status in (401, 403):
        return ": access denied; set HF_TOKEN if the repo is private."
    if status == 404:
        return ": not found; check LLAMA_RUNTIME_REPO / LLAMA_RUNTIME_REVISION."
    return "."


def fetch(url: str, dest: Path, *, headers: dict[str, str], timeout: float, proxy: str | None = None,
          progress: Progress | None = None, size: int | None = None) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``) before ``timeout`` seconds have passed.

    ``size``, when known (the lock says it), bounds the body: a longer one is refused early and a
    shorter one resumed, whatever Content-Length the server sent.
    """
    deadline = time.monotonic() + timeout
    part = dest.with_name(dest.name + ".part")
    client, last = _client(proxy), "no attempt made"
    for attempt in range(ATTEMPTS):
        if deadline - time.monotonic() <= 0:
            break
        try:
            _one_attempt(client, url, part, headers, deadline, size, progress)
            part.replace(dest)
            return dest
        except _Transient as exc:
            last, wait = str(exc), exc.retry_after
        except _Deadline as exc:
            last = str(exc)
            break
        except Exception as exc:  # transport errors of whichever httpx flavour the hub client uses
            if isinstance(exc, (DownloadError, CacheError)):
                raise
            if type(exc).__name__ == "TooManyRedirects":  # a loop: retrying cannot help
                raise DownloadError(f"{url} redirects in a loop (more than 20 redirects)") from exc
            last, wait = f"{type(exc).__name__}: {exc}", None
        if attempt == ATTEMPTS - 1:
            break
        left = max(0.0, deadline - time.monotonic())
        if wait is not None and wait > left:
            last += f"; the server asks to retry after {wait:g} s, past the deadline"
            break
        wait = min(wait if wait is not None else 0.5 * 2**attempt, left)
        log.info("download of %s failed (%s); retry %d in %.1f s", url, last, attempt + 1, wait)
        time.sleep(wait)
    raise DownloadError(f"gave up on {url} after {attempt + 1} attempt(s) within {timeout:g} s"
                        f" (LLAMA_RUNTIME_TIMEOUT): {last}")
