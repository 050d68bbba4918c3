"""Stream one file from the hub to disk: resumable, bounded retries, one overall deadline.

The URL and headers come from :mod:`llama_runtime.fetch.hub` (the Hub's scheme, the token). It does
what ``hf_hub_download`` does not: a deadline for the whole download (``LLAMA_RUNTIME_TIMEOUT``)
instead of a 23 s back-off on a dead server, resume with ``Range`` after a cut, and no second
copy in another cache. The caller verifies the sha256 before anything is used.

A connection that stays open but sends nothing is abandoned after :func:`idle_timeout` seconds
(derived from the deadline) and the download resumed with ``Range``. :func:`retrying` is the one
retry loop of every hub request (these bodies, and the model metadata of :mod:`.models`).

Two transports, one behaviour (status handling, retries, Range, deadline are shared):

* **direct** (the default, and the only one the install-time fetch has: pip's isolated build
  environment holds no ``huggingface_hub``): stdlib ``http.client``, reading the body with
  ``read1(1 MiB)`` (at most one ``recv`` per call, so a cut loses nothing already read and a
  slow drip still meets the deadline check). This is also for speed: ``httpx``'s
  ``iter_bytes()`` goes through httpcore/h11 in 64 KiB pieces and reached only ~0.6-0.8 of
  curl's throughput on a 200 MiB file (benchmark B5); ``read1`` reaches curl. Redirects are
  followed here (at most ``MAX_REDIRECTS``), and ``Authorization`` is dropped as soon as a
  redirect leaves the origin, as ``httpx`` does. Proxies and CAs follow the hub client's rules
  (:mod:`llama_runtime.fetch.netconf`): ``LLAMA_RUNTIME_PROXY``, else ``HTTP(S)_PROXY``/``ALL_PROXY``
  with ``NO_PROXY``; an ``http://`` proxy gets ``CONNECT`` for https and absolute URLs for http.
* **hub client** (``huggingface_hub.get_session()``): only where the direct one cannot do what
  the application asked for: a proxy of another scheme (``https://``, ``socks5://``), or, when
  the application has imported ``huggingface_hub`` itself, its own client factory
  (``huggingface_hub.set_client_factory``) or ``HF_HUB_OFFLINE`` mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar
from urllib.parse import urlsplit

from ..errors import CacheError, DownloadError
from .netconf import PLAIN_PROXY_SCHEMES, proxy_authorization, proxy_for, ssl_context

log = logging.getLogger(__name__)
ATTEMPTS = 4  # one try plus three retries of transient failures
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
Progress = Callable[[int, Optional[int]], None]
MAX_REDIRECTS = 20  # as httpx
CHUNK = 1 << 20  # the most one read1() of the direct transport returns
_REDIRECTS = (301, 302, 303, 307, 308)
IDLE_MIN, IDLE_MAX = 2.0, 10.0  # seconds; see idle_timeout
T = TypeVar("T")


def idle_timeout(deadline: float) -> float:
    """Seconds a connection may send nothing at all before it is abandoned (then resumed).

    A fifth of the deadline (``LLAMA_RUNTIME_TIMEOUT``), so that a silent connection costs at
    most a fifth of it and the retries still fit; at most 10 s, huggingface_hub's own per-read
    download timeout (``HF_HUB_DOWNLOAD_TIMEOUT``) and more than TCP needs to recover a lost
    segment (1 + 2 + 4 s of retransmission back-off); at least 2 s, so that a short deadline does
    not turn a slow first byte into a reconnect loop. 600 s (the default) gives 10 s, 25 s gives 5 s.
    A slow but steady drip is never cut by it: only the deadline ends that.
    """
    return min(IDLE_MAX, max(IDLE_MIN, deadline / 5))


# which of three things a hub's 404 is about (the Hub's X-Error-Code header; ours sends it too)
_NOT_FOUND = {
    "RepoNotFound": "the repository does not exist (or is private: set HF_TOKEN); check LLAMA_RUNTIME_REPO"
                    " (a mirror such as olah also says this for a revision it lacks: check LLAMA_RUNTIME_REVISION)",
    "RevisionNotFound": "the revision does not exist in the repository; check LLAMA_RUNTIME_REVISION",
    "EntryNotFound": "the repository has no such file at that revision; the release on the hub is"
                     " incomplete, or LLAMA_RUNTIME_REVISION points at another release",
}


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after, self.status = retry_after, status


def _http_error(message: str, response: Any | None) -> DownloadError:
    """A DownloadError carrying the hub's answer (for hints that fit only some answers)."""
    error = DownloadError(message)
    if response is not None:
        error.status, error.code = response.status_code, response.headers.get("X-Error-Code")
    return error


def _client(proxy: str | None, url: str) -> Any:
    chosen = proxy_for(url, proxy)
    plain = chosen is None or urlsplit(chosen).scheme in PLAIN_PROXY_SCHEMES
    if plain and url.startswith(("http://", "https://")) and not _hub_client_asked():
        return _Direct(proxy)
    try:
        from huggingface_hub import get_session
    except ImportError as exc:  # pip's isolated build environment
        raise DownloadError(f"the proxy {chosen} needs huggingface_hub's HTTP client, which is not"
                            " installed here (pip's build environment has none); use an http://"
                            " proxy, or install huggingface_hub and build with"
                            " --no-build-isolation") from exc
    session = get_session()
    if proxy is None:
        return session
    return type(session)(proxy=proxy, follow_redirects=True)  # the same httpx flavour as the hub's


def _hub_client_asked() -> bool:
    """Whether an application that imported huggingface_hub set it up in a way only its own
    client honours (a client factory, offline mode); never imports it (see the module doc)."""
    import sys

    if sys.modules.get("huggingface_hub") is None:  # not imported (or blocked): nothing set up
        return False
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import _http

        custom = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) is not getattr(_http, "default_client_factory", None)
        return custom or constants.is_offline_mode()
    except Exception:  # another huggingface_hub layout: stay on its own client
        return True


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port or {"http": 80, "https": 443}.get(u.scheme)


class _DirectResponse:
    """The few parts of an httpx response that ``_one_attempt`` uses, over ``http.client``."""

    def __init__(self, response: Any, url: str, timeout: float) -> None:
        self._response, self.url, self.timeout = response, url, timeout
        self.status_code: int = response.status
        self.headers = response.headers  # case-insensitive .get()

    def iter_bytes(self) -> Iterator[bytes]:
        import http.client

        read1 = self._response.read1
        while True:
            try:
                chunk = read1(CHUNK)
            except TimeoutError as exc:  # the socket's timeout is the idle timeout
                raise _Transient(_silent(exc, self.timeout)) from exc
            except (OSError, http.client.HTTPException) as exc:  # the network, not the disk
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            if not chunk:
                return
            yield chunk


class _Direct:
    """``http.client`` transport with httpx's redirect rules (see the module doc)."""

    def __init__(self, proxy: str | None = None) -> None:
        self._ssl: Any = None
        self._proxy = proxy  # None here: each URL is looked up (NO_PROXY), as httpx does

    def _connect(self, url: str, timeout: float) -> tuple[Any, str, dict[str, str]]:
        """A connection for ``url``, the request target to send on it and headers to add."""
        import http.client

        scheme, host, port = _origin(url)
        u = urlsplit(url)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        via = self._proxy or proxy_for(url, None)
        if scheme not in ("http", "https"):
            raise DownloadError(f"cannot download from {url}: only http and https are supported")
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl_context()
        if via is None:
            if scheme == "https":
                return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl), path, {}
            return http.client.HTTPConnection(host, port, timeout=timeout), path, {}
        p = urlsplit(via)
        if scheme == "http":  # a forward proxy: the absolute URL, and its credentials
            conn = http.client.HTTPConnection(p.hostname or "", p.port or 80, timeout=timeout)
            return conn, url, proxy_authorization(via)
        conn = http.client.HTTPSConnection(p.hostname or "", p.port or 80, timeout=timeout, context=self._ssl)
        conn.set_tunnel(host, port, headers=proxy_authorization(via))  # CONNECT, then TLS to host
        return conn, path, {}

    @contextmanager
    def stream(self, method: str, url: str, *, headers: dict[str, str], timeout: float
               ) -> Iterator[_DirectResponse]:
        from urllib.parse import urljoin

        first, conn = url, None
        try:
            for _ in range(MAX_REDIRECTS + 1):
                conn, target, extra = self._connect(url, timeout)
                conn.request(method, target, headers={**headers, **extra})
                response = conn.getresponse()
                location = response.getheader("Location")
                if response.status in _REDIRECTS and location:
                    target = urljoin(url, location)
                    if _origin(target) != _origin(url):  # the token stays with its origin
                        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                    conn.close()
                    url = target
                    continue
                yield _DirectResponse(response, url, timeout)
                return
            raise DownloadError(f"{first} redirects in a loop (more than {MAX_REDIRECTS} redirects)")
        finally:
            if conn is not None:
                conn.close()


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the HTTP-date form is rare on hubs: ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _one_attempt(client: Any, url: str, part: Path, headers: dict[str, str], deadline: float,
                 idle: float, size: int | None, progress: Progress | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    request_headers = {**headers, **({"Range": f"bytes={have}-"} if have else {})}
    # per connect and per read (both transports): a silent connection is abandoned after `idle`
    timeout = max(1.0, min(deadline - time.monotonic(), idle))
    with client.stream("GET", url, headers=request_headers, timeout=timeout) as r:
        if r.status_code in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {r.status_code}", parse_retry_after(r.headers.get("Retry-After")),
                             r.status_code)
        if r.status_code >= 400:
            raise _http_error(f"HTTP {r.status_code} for {url}" + _hint(r), r)
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


def retry_wait(attempt: int, retry_after: float | None, deadline: float) -> float | None:
    """Seconds to sleep after failed attempt ``attempt`` (0-based): the server's ``Retry-After``,
    else 0.5, 1, 2 ... s, never past ``deadline``; ``None`` when the server asks for a longer wait
    than the deadline leaves (retrying sooner would only be refused again)."""
    left = max(0.0, deadline - time.monotonic())
    if retry_after is not None and retry_after > left:
        return None
    return min(retry_after if retry_after is not None else 0.5 * 2**attempt, left)


def permanent_transport_error(exc: BaseException, url: str) -> DownloadError | None:
    """The transport errors that retrying cannot cure, explained; ``None`` for the others."""
    if type(exc).__name__ == "TooManyRedirects":  # a loop
        return DownloadError(f"{url} redirects in a loop (more than 20 redirects)")
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return DownloadError(f"the certificate of {url} is not trusted ({exc}). Behind a company proxy or"
                             " CA, point SSL_CERT_FILE (or SSL_CERT_DIR) at its CA bundle.")
    return None


@dataclass
class Failure:
    """What one failed attempt tells :func:`retrying`."""

    message: str
    retry_after: float | None = None  # the server's Retry-After, in seconds
    status: int | None = None  # the HTTP status, when the server answered one
    final: bool = False  # retrying cannot help now (the deadline passed mid-body)
    cause: BaseException | None = None


def retrying(call: Callable[[float], T], deadline: float, judge: Callable[[Exception], Failure],
             give_up: Callable[[int, Failure], Exception], what: str) -> T:
    """``call(seconds left)`` until it returns, ``judge`` raises (a permanent error, explained),
    ``ATTEMPTS`` tries were made or ``deadline`` passed; then ``give_up(attempts, last)`` is raised.

    Between tries it waits :func:`retry_wait` (the server's ``Retry-After``, else 0.5, 1, 2 s).
    """
    last, attempts = Failure("no attempt made (LLAMA_RUNTIME_TIMEOUT already passed)"), 0
    while attempts < ATTEMPTS and (left := deadline - time.monotonic()) > 0:
        attempts += 1
        try:
            return call(left)
        except Exception as exc:
            last = judge(exc)
            last.cause = last.cause or exc
        if last.final or attempts == ATTEMPTS:
            break
        wait = retry_wait(attempts - 1, last.retry_after, deadline)
        if wait is None:
            last.message += f"; the server asks to retry after {last.retry_after:g} s, past the deadline"
            break
        log.info("%s failed (%s); retry %d in %.1f s", what, last.message, attempts, wait)
        time.sleep(wait)
    raise give_up(attempts, last) from last.cause


def _silent(exc: BaseException, idle: float) -> str:
    return f"{type(exc).__name__}: the connection sent nothing for {idle:g} s and was abandoned"


def _judge(exc: Exception, url: str, idle: float) -> Failure:
    """How ``fetch`` takes one failed attempt; raises the errors that retrying cannot cure."""
    if isinstance(exc, _Transient):
        return Failure(str(exc), exc.retry_after, exc.status)
    if isinstance(exc, _Deadline):
        return Failure(str(exc), final=True)
    if isinstance(exc, (DownloadError, CacheError)):
        raise exc
    permanent = permanent_transport_error(exc, url)
    if permanent is not None:
        raise permanent from exc
    # transport errors of the hub client's httpx flavour or http.client (connect, headers)
    if isinstance(exc, TimeoutError) or type(exc).__name__.endswith("Timeout"):
        return Failure(_silent(exc, idle))
    return Failure(f"{type(exc).__name__}: {exc}")


def fetch(url: str, dest: Path, *, headers: dict[str, str], timeout: float, proxy: str | None = None,
          progress: Progress | None = None, size: int | None = None) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``) before ``timeout`` seconds have passed.

    ``size``, when known (the lock says it), bounds the body: a longer one is refused early and a
    shorter one resumed, whatever Content-Length the server sent. The DownloadError carries the
    HTTP status of the hub's last answer (``status``, None when it never answered: a timeout, a
    reset) and, for a refusal (4xx), its ``X-Error-Code`` (``code``).
    """
    deadline, idle = time.monotonic() + timeout, idle_timeout(timeout)
    part = dest.with_name(dest.name + ".part")
    client = _client(proxy, url)

    def attempt(_left: float) -> Path:
        _one_attempt(client, url, part, headers, deadline, idle, size, progress)
        part.replace(dest)
        return dest

    def give_up(attempts: int, last: Failure) -> DownloadError:
        error = DownloadError(f"gave up on {url} after {attempts} attempt(s) within {timeout:g} s"
                              f" (LLAMA_RUNTIME_TIMEOUT): {last.message}")
        error.status = last.status
        return error

    return retrying(attempt, deadline, lambda exc: _judge(exc, url, idle), give_up, f"download of {url}")
