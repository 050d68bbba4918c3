"""Hub faults against our own download path: which ones are survived, which fail clearly, and
how fast. Each fault is injected by the loopback hub (``scripts/hubserver.py``) into the GET of
one real variant archive; ``ensure_variant`` runs in this process (no library is loaded, so
nothing native leaks between tests). Every test records a row of the reliability table.

Not repeated here (see ``test_runtime_chain.py``): one cut, one 503 with Retry-After 1 s, a
corrupt body through the whole load chain, a dead server.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scripts import devrelease
from scripts.hubserver import HubServer
from release_fixtures import Release, publish_file, run_source_py
from reliability_table import record

from llama_runtime.fetch.cache import verify_entry, version_dir
from llama_runtime.config import Settings, resolve
from llama_runtime.errors import DownloadError
from llama_runtime.fetch.ensure import ensure_variant
from llama_runtime.variants.manifest import Lock, Variant, read_lock

pytestmark = pytest.mark.slow

SMALL = "linux-x86_64-cpu-v3"  # the smaller archive (~2.6 MB): faults are about the protocol
MARGIN = 2.0  # seconds allowed past LLAMA_RUNTIME_TIMEOUT


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lock(release: Release) -> Lock:
    return read_lock(release.tree / "llama_runtime" / "binaries.lock.json")


@pytest.fixture(scope="module")
def small(lock: Lock) -> Variant:
    return lock.manifest.get(SMALL)


@pytest.fixture
def hub(hub_faults: Any) -> Any:
    return hub_faults


def settings_for(release: Release, cache: Path, **extra: str) -> Settings:
    return resolve(environ=release.env(cache, **extra))


def archive_path(release: Release, variant: Variant, commit: str | None = None) -> str:
    return f"/{devrelease.REPO}/resolve/{commit or release.lock['commit']}/{variant.archive}"


class Meter:
    """GETs and body bytes the hub served for one path, since creation."""

    def __init__(self, httpd: Any, path: str) -> None:
        self.httpd, self.path = httpd, path
        stats = httpd.stats()
        self.gets0 = stats["requests"].get(f"GET {path}", 0)
        self.bytes0 = stats["bytes_by_path"].get(path, 0)

    @property
    def gets(self) -> int:
        return self.httpd.stats()["requests"].get(f"GET {self.path}", 0) - self.gets0

    @property
    def served(self) -> int:
        return self.httpd.stats()["bytes_by_path"].get(self.path, 0) - self.bytes0


def leftovers(cache: Path) -> list[str]:
    vdir = version_dir(cache)
    return sorted(p.name for p in vdir.iterdir() if not p.name.endswith(".lock")
                  and p.name != ".proofs") if vdir.is_dir() else []


def survive(release: Release, hub: Any, small: Variant, lock: Lock, tmp_path: Path, name: str,
            faults: list[dict[str, Any]], timeout: float = 30) -> tuple[Meter, float]:
    """Inject ``faults``, fetch, and check the result is complete and verified."""
    meter = Meter(hub, archive_path(release, small))
    hub.add_faults([{"path_glob": "*" + small.archive, **f} for f in faults])
    cache = tmp_path / "cache"
    start = time.monotonic()
    folder, how = ensure_variant(small, lock, settings_for(release, cache, LLAMA_RUNTIME_TIMEOUT=str(timeout)))
    elapsed = time.monotonic() - start
    assert how == "download" and folder == version_dir(cache) / small.name
    problems = verify_entry(folder)
    assert problems == [] and leftovers(cache) == [small.name]
    record(name, "survived", elapsed, meter.served - small.size, "none" if not problems else "; ".join(problems))
    assert elapsed < timeout
    return meter, elapsed


def fail(release: Release, hub: Any, small: Variant, lock: Lock, tmp_path: Path, name: str,
         faults: list[dict[str, Any]], timeout: float, error: type[Exception] = DownloadError,
         variant: Variant | None = None, **env: str) -> tuple[Meter, float, str]:
    """Inject ``faults``; the fetch must fail with ``error`` inside the deadline, leaving nothing."""
    variant = variant or small
    meter = Meter(hub, archive_path(release, variant))
    hub.add_faults([{"path_glob": "*" + small.archive, **f} for f in faults])
    cache = tmp_path / "cache"
    settings = settings_for(release, cache, LLAMA_RUNTIME_TIMEOUT=str(timeout), **env)
    start = time.monotonic()
    with pytest.raises(error) as info:
        ensure_variant(variant, lock, settings)
    elapsed = time.monotonic() - start
    left = leftovers(cache)
    record(name, "failed clearly", elapsed, meter.served, "none" if not left else f"left {left}")
    assert left == [], left
    assert elapsed < timeout + MARGIN, f"{name}: {elapsed:.1f} s for a {timeout} s deadline"
    return meter, elapsed, str(info.value)


# -- transient faults: survived with bounded retries ------------------------------------------


def test_get_500_once_is_retried(release, hub, small, lock, tmp_path) -> None:
    meter, _ = survive(release, hub, small, lock, tmp_path, "GET 500 once", [{"kind": "status", "status": 500}])
    assert meter.gets == 2 and meter.served == small.size


def test_get_500_forever_gives_up_after_bounded_retries(release, hub, small, lock, tmp_path) -> None:
    meter, _, message = fail(release, hub, small, lock, tmp_path, "GET 500 forever",
                             [{"kind": "status", "status": 500, "times": None}], timeout=15)
    assert meter.gets == 4 and "HTTP 500" in message and "4 attempt(s)" in message
    assert small.archive in message and "LLAMA_RUNTIME_MIRROR" in message


def test_head_500_does_not_matter_to_the_archive_fetch(release, hub, small, lock, tmp_path) -> None:
    # our fetch is one streamed GET (the lock already says size and sha256): a HEAD fault is moot
    meter, _ = survive(release, hub, small, lock, tmp_path, "HEAD 500 (archive)",
                       [{"kind": "status", "status": 500, "method": "HEAD", "times": None}])
    assert meter.gets == 1
    assert hub.stats()["requests"].get(f"HEAD {archive_path(release, small)}", 0) == 0


def test_503_twice_with_retry_after_is_honoured(release, hub, small, lock, tmp_path) -> None:
    meter, elapsed = survive(release, hub, small, lock, tmp_path, "GET 503 x2, Retry-After 1",
                             [{"kind": "status", "status": 503, "retry_after": 1, "times": 2}])
    assert meter.gets == 3 and elapsed >= 2.0


def test_503_with_retry_after_past_the_deadline_fails_at_once(release, hub, small, lock, tmp_path) -> None:
    meter, elapsed, message = fail(release, hub, small, lock, tmp_path, "GET 503, Retry-After 600",
                                   [{"kind": "status", "status": 503, "retry_after": 600}], timeout=10)
    assert meter.gets == 1 and elapsed < 2
    assert "HTTP 503" in message and "retry after 600 s, past the deadline" in message


def test_body_cut_three_times_resumes_each_time(release, hub, small, lock, tmp_path) -> None:
    meter, _ = survive(release, hub, small, lock, tmp_path, "body cut halfway x3",
                       [{"kind": "cut", "times": 3}])
    assert meter.gets == 4
    assert meter.served - small.size < 64 * 1024  # Range resume: almost nothing twice


def test_reset_connection_is_retried(release, hub, small, lock, tmp_path) -> None:
    meter, _ = survive(release, hub, small, lock, tmp_path, "connection reset x2",
                       [{"kind": "reset", "times": 2, "method": "GET"}])
    assert meter.gets == 3 and meter.served == small.size


def test_reset_forever_fails_clearly(release, hub, small, lock, tmp_path) -> None:
    meter, _, message = fail(release, hub, small, lock, tmp_path, "connection reset forever",
                             [{"kind": "reset", "times": None, "method": "GET"}], timeout=15)
    assert meter.gets == 4 and "4 attempt(s)" in message and small.archive in message


def test_short_stall_is_waited_out(release, hub, small, lock, tmp_path) -> None:
    meter, elapsed = survive(release, hub, small, lock, tmp_path, "body stalls 2 s",
                             [{"kind": "stall", "seconds": 2}])
    assert meter.gets == 1 and elapsed >= 2


def test_stall_past_the_deadline_fails_inside_it(release, hub, small, lock, tmp_path) -> None:
    meter, elapsed, message = fail(release, hub, small, lock, tmp_path, "body stalls 60 s (deadline 3 s)",
                                   [{"kind": "stall", "seconds": 60, "times": None}], timeout=3)
    assert elapsed >= 2.5 and "within 3 s" in message and "Timeout" in message


def test_silent_connection_is_abandoned_and_resumed_with_range(release, hub, small, lock, tmp_path) -> None:
    # the body stops halfway for longer than the whole deadline while the connection stays open:
    # only a per-read idle timeout notices, and the resume must ask for the missing half only
    path, half = archive_path(release, small), small.size // 2
    seen = len(hub.range_log().get(path, []))
    meter, elapsed = survive(release, hub, small, lock, tmp_path, "body silent 30 s halfway (deadline 25 s)",
                             [{"kind": "stall", "seconds": 30, "at": half}], timeout=25)
    assert meter.gets == 2 and hub.range_log()[path][seen:] == [None, f"bytes={half}-"]
    assert meter.served == small.size  # no byte twice
    assert elapsed < 25 / 2  # abandoned after a few seconds, not at the deadline


def test_silent_proxied_connection_is_abandoned(release, small, tmp_path) -> None:
    """The hub client's transport (httpx, used whenever a proxy may apply) has the same idle timeout."""
    from counting_proxy import counting_proxy

    body = (release.hub.data_dir / "blobs" / small.sha256).read_bytes()
    with HubServer(tmp_path / "own-hub") as own, counting_proxy() as (proxy, forwarded):
        # its own hub: the stalled upstream connection the proxy keeps must not feed another test's meter
        commit = publish_file(own, "org/bins", small.archive, body)
        private = Lock(repo="org/bins", revision="main", commit=commit,
                       manifest=dataclasses.replace(read_lock(release.tree / "llama_runtime/binaries.lock.json")
                                                    .manifest, variants={small.name: small}))
        assert own.httpd is not None
        own.httpd.add_faults([{"path_glob": "*.tar.gz", "kind": "stall", "seconds": 30}])
        settings = resolve(environ={**release.env(tmp_path / "cache"), "LLAMA_RUNTIME_ENDPOINT": own.url,
                                    "LLAMA_RUNTIME_PROXY": proxy, "LLAMA_RUNTIME_TIMEOUT": "25"})
        start = time.monotonic()
        folder, how = ensure_variant(small, private, settings)
        elapsed = time.monotonic() - start
        record("silent proxied connection (deadline 25 s)", "survived", elapsed, None)
        assert how == "download" and verify_entry(folder) == []
        assert len([u for u in forwarded if u.endswith(small.archive)]) == 2
        assert elapsed < 25 / 2


OLAH_HINT = "re-committed the release"


@pytest.mark.parametrize(("faults", "timeout", "hinted"), [
    ([{"kind": "stall", "seconds": 60, "times": None}], 3, False),
    ([{"kind": "reset", "times": None, "method": "GET"}], 15, False),
    ([{"kind": "status", "status": 503, "retry_after": 600}], 10, False),
    ([{"kind": "status", "status": 500, "times": None}], 15, True),  # olah's answer for a commit it lacks
], ids=["silent", "reset", "503-busy", "500"])
def test_the_mirror_hint_follows_only_the_errors_it_explains(release, hub, small, lock, tmp_path,
                                                            faults, timeout, hinted) -> None:
    hub.add_faults([{"path_glob": "*" + small.archive, **f} for f in faults])
    with pytest.raises(DownloadError) as info:
        ensure_variant(small, lock, settings_for(release, tmp_path / "cache", LLAMA_RUNTIME_TIMEOUT=str(timeout)))
    message = str(info.value)
    assert (OLAH_HINT in message) is hinted, message
    assert "LLAMA_RUNTIME_MIRROR" in message  # the ways out that fit any failure stay


def test_the_mirror_hint_follows_a_revision_the_hub_does_not_know(release, hub, small, lock, tmp_path) -> None:
    settings = settings_for(release, tmp_path / "cache")
    unknown = dataclasses.replace(lock, commit="0" * 40)  # what a mirror that re-committed says to the lock
    with pytest.raises(DownloadError, match="the revision does not exist") as info:
        ensure_variant(small, unknown, settings)
    assert OLAH_HINT in str(info.value)
    missing = dataclasses.replace(small, archive="no-such-archive.tar.gz")
    with pytest.raises(DownloadError, match="the repository has no such file") as info:
        ensure_variant(missing, lock, settings)
    assert OLAH_HINT not in str(info.value)


def test_fast_drip_succeeds(release, hub, small, lock, tmp_path) -> None:
    meter, _ = survive(release, hub, small, lock, tmp_path, "slow drip (64 KiB / 20 ms)",
                       [{"kind": "drip", "chunk": 65536, "interval": 0.02}])
    assert meter.gets == 1 and meter.served == small.size


def test_slow_drip_fails_at_the_deadline(release, hub, small, lock, tmp_path) -> None:
    # each read gets bytes well inside any per-read timeout: only a whole-download deadline stops it
    meter, elapsed, message = fail(release, hub, small, lock, tmp_path, "very slow drip (1 KiB / 50 ms, deadline 3 s)",
                                   [{"kind": "drip", "chunk": 1024, "interval": 0.05, "times": None}],
                                   timeout=3)
    assert meter.gets == 1 and elapsed >= 2.5
    assert "deadline" in message and "LLAMA_RUNTIME_TIMEOUT" in message


def test_short_body_with_agreeing_content_length_is_resumed(release, hub, small, lock, tmp_path) -> None:
    # the lock knows the size: one byte short is a truncation to resume, not a file to reject
    meter, _ = survive(release, hub, small, lock, tmp_path, "wrong Content-Length (1 byte short)",
                       [{"kind": "wrong_length"}])
    # (a drip of the test before may still be trickling into its closed socket: allow a little)
    assert meter.gets == 2 and small.size <= meter.served < small.size + 64 * 1024


def test_redirect_loop_fails_fast(release, hub, small, lock, tmp_path) -> None:
    meter, elapsed, message = fail(release, hub, small, lock, tmp_path, "redirect loop",
                                   [{"kind": "redirect", "method": "GET", "times": None}], timeout=15)
    assert "redirects in a loop" in message and small.archive in message
    assert meter.gets <= 21 and elapsed < 3  # one client's worth of hops, not four


# -- permanent faults: fail fast, say which --------------------------------------------------


@pytest.mark.parametrize("what, env, fragment", [
    ("repo", {"LLAMA_RUNTIME_REPO": "nobody/no-such-repo"}, "the repository does not exist"),
    ("revision", {"LLAMA_RUNTIME_REVISION": "0" * 40}, "the revision does not exist"),
    ("file", {}, "the repository has no such file"),
], ids=["repo", "revision", "file"])
def test_404_names_what_is_missing(release, hub, small, lock, tmp_path, what, env, fragment) -> None:
    variant = dataclasses.replace(small, archive="no-such-archive.tar.gz") if what == "file" else small
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        ensure_variant(variant, lock, settings_for(release, tmp_path / "cache", **env))
    elapsed = time.monotonic() - start
    record(f"404 {what}", "failed clearly", elapsed, 0, "none" if not leftovers(tmp_path / "cache") else "left")
    message = str(info.value)
    assert "HTTP 404" in message and fragment in message and variant.archive in message
    assert elapsed < 2 and leftovers(tmp_path / "cache") == []


def test_corrupt_body_with_right_etag_leaves_nothing_in_any_cache(release, hub, small, tmp_path) -> None:
    """In a fresh process with its own HF_HOME: neither our cache nor huggingface_hub's keeps it."""
    hub.add_faults([{"path_glob": "*" + small.archive, "kind": "corrupt", "times": None}])
    cache, hf_home = tmp_path / "cache", tmp_path / "hf-home"
    code = ("import llama_runtime as l\n"
            "try:\n    l.download(%r)\nexcept Exception as e:\n"
            "    print(type(e).__name__); print(e)\n") % SMALL
    start = time.monotonic()
    proc = run_source_py(release, release.env(cache, HF_HOME=str(hf_home)), code)
    elapsed = time.monotonic() - start
    files = [p for root in (cache, hf_home) if root.exists() for p in root.rglob("*")
             if p.is_file() and not p.name.endswith(".lock")]
    record("corrupt body, right ETag", "refused" if "IntegrityError" in proc.stdout else proc.stdout[:40],
           elapsed, None, "none" if not files else f"left {len(files)} files")
    assert proc.stdout.startswith("IntegrityError"), proc.stdout + proc.stderr[-2000:]
    assert f"expected sha256 {small.sha256}" in proc.stdout and "nothing was installed" in proc.stdout
    assert files == []


def test_download_with_wrong_size_refused_early(release, hub, small, lock, tmp_path) -> None:
    """A lock that says the file is smaller than what the server sends: we stop reading at once."""
    liar = dataclasses.replace(small, size=small.size // 4)
    meter = Meter(hub, archive_path(release, small))
    start = time.monotonic()
    with pytest.raises(DownloadError, match="more than the .* bytes the lock expects"):
        ensure_variant(liar, lock, settings_for(release, tmp_path / "cache"))
    record("body longer than the lock's size", "failed clearly", time.monotonic() - start, meter.served)
    assert leftovers(tmp_path / "cache") == []


# -- redirect to another origin: works, and the token stays home ------------------------------


class _Capture(ThreadingHTTPServer):
    """A plain file server on another port that records the headers of every request."""

    daemon_threads = True

    def __init__(self, body: bytes) -> None:
        self.body, self.seen = body, []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.seen.append(dict(self.headers))
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                data = outer.body[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.body) - 1}/{len(outer.body)}")
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def private_hub(tmp_path: Path) -> Iterator[HubServer]:
    with HubServer(tmp_path / "private-hub", token="s3cret-token") as server:
        yield server


def test_redirect_to_another_origin_works_without_the_token(release, small, private_hub, tmp_path) -> None:
    body = (release.hub.data_dir / "blobs" / small.sha256).read_bytes()
    commit = publish_file(private_hub, "org/private-bins", small.archive, body, token="s3cret-token")
    private = Lock(repo="org/private-bins", revision="main", commit=commit,
                   manifest=dataclasses.replace(read_lock(release.tree / "llama_runtime/binaries.lock.json").manifest,
                                                variants={small.name: small}))
    other = _Capture(body)
    threading.Thread(target=other.serve_forever, args=(0.05,), daemon=True).start()
    try:
        assert private_hub.httpd is not None
        private_hub.httpd.add_faults([{"path_glob": "*.tar.gz", "method": "GET", "kind": "redirect",
                                       "location": f"{other.url}/cdn/{small.archive}"}])
        settings = resolve(environ={**release.env(tmp_path / "cache"), "LLAMA_RUNTIME_ENDPOINT": private_hub.url,
                                    "HF_TOKEN": "s3cret-token"})
        start = time.monotonic()
        folder, how = ensure_variant(small, private, settings)
        record("redirect to another origin", "survived", time.monotonic() - start, 0)
    finally:
        other.shutdown()
        other.server_close()
    assert how == "download" and verify_entry(folder) == []
    assert len(other.seen) == 1
    assert not any(k.lower() == "authorization" for k in other.seen[0]), other.seen[0]
    assert "s3cret-token" not in repr(other.seen)
    # and the token did reach its own origin (the private hub answers 401 without it)
    assert private_hub.httpd.stats()["requests"].get(f"GET /org/private-bins/resolve/{commit}/{small.archive}") == 1


def test_private_hub_without_token_says_access_denied(release, small, private_hub, tmp_path) -> None:
    body = (release.hub.data_dir / "blobs" / small.sha256).read_bytes()
    commit = publish_file(private_hub, "org/private-bins", small.archive, body, token="s3cret-token")
    private = Lock(repo="org/private-bins", revision="main", commit=commit,
                   manifest=read_lock(release.tree / "llama_runtime/binaries.lock.json").manifest)
    settings = resolve(environ={**release.env(tmp_path / "cache"), "LLAMA_RUNTIME_ENDPOINT": private_hub.url})
    start = time.monotonic()
    with pytest.raises(DownloadError, match="HTTP 401.*access denied; set HF_TOKEN"):
        ensure_variant(small, private, settings)
    record("401 (no token for a private repo)", "failed clearly", time.monotonic() - start, 0)
