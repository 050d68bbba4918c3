"""Hub models (``Llama.from_pretrained``, ``generate REPO:FILE``) against the loopback hub's faults.

The real ``huggingface_hub`` client talks real HTTP to ``scripts/hubserver.py``; only its cache
folder is pointed at a temporary one. The hub counts requests and body bytes per path, which is
how a resumed body (no byte served twice) is told apart from a restart.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripts.hubserver import HubServer
from scripts.tiny_model import write_tiny_llama

from llama_runtime.config import Settings, resolve
from llama_runtime.errors import DownloadError, IntegrityError, OfflineError
from llama_runtime.fetch.models import download_model

REPO, FILE = "tests/flaky-model", "model.gguf"
MARGIN = 2.0  # seconds allowed past LLAMA_RUNTIME_TIMEOUT


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_tiny_llama(tmp_path_factory.mktemp("model") / FILE, n_embd=128, n_ff=512)
    assert path.stat().st_size > 1_000_000  # several reads, so a cut lands mid-body
    return path


@pytest.fixture(scope="module")
def model_hub(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> Iterator[HubServer]:
    from huggingface_hub import HfApi

    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        api = HfApi(endpoint=server.url, token=False)
        api.create_repo(REPO)
        api.upload_file(path_or_fileobj=str(model_file), path_in_repo=FILE, repo_id=REPO)
        yield server


@pytest.fixture
def hub(model_hub: HubServer) -> Iterator[Any]:
    assert model_hub.httpd is not None
    model_hub.httpd.clear_faults()
    model_hub.httpd.reset_stats()
    yield model_hub.httpd
    model_hub.httpd.clear_faults()


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read by hf_hub_download per call
    return cache


def settings(endpoint: str, tmp_path: Path, timeout: float = 30, **env: str) -> Settings:
    return resolve(environ={"LLAMA_RUNTIME_ENDPOINT": endpoint, "LLAMA_RUNTIME_TIMEOUT": str(timeout),
                            "LLAMA_RUNTIME_CACHE": str(tmp_path / "cache"), **env})


def counts(hub: Any, path: str = f"/{REPO}/resolve/main/{FILE}") -> tuple[int, int, int]:
    """HEADs and GETs of ``path`` (any revision) and the body bytes served for it."""
    stats = hub.stats()
    tail = path.split("/resolve/")[1].split("/", 1)[1]
    heads = sum(n for k, n in stats["requests"].items() if k.startswith("HEAD") and k.endswith(tail))
    gets = sum(n for k, n in stats["requests"].items() if k.startswith("GET") and k.endswith(tail))
    served = sum(n for k, n in stats["bytes_by_path"].items() if k.endswith(tail))
    return heads, gets, served


def fault(hub: Any, **rule: Any) -> None:
    hub.add_faults([{"path_glob": f"*/{FILE}", **rule}])


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 100_000)


def assert_in_hf_cache(path: Path, cache: Path, model_file: Path) -> None:
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    storage = cache / f"models--{REPO.replace('/', '--')}"
    assert path.read_bytes() == model_file.read_bytes()
    assert path.parent.parent == storage / "snapshots" and path.resolve() == storage / "blobs" / digest
    assert (storage / "refs" / "main").read_text() == path.parent.name
    assert not list((storage / "blobs").glob("*.part")) and not list((storage / "blobs").glob("*.llama-runtime"))


# -- transient faults are survived ----------------------------------------------------------------


def test_500_twice_then_success(hub: Any, hf_cache: Path, model_file: Path, tmp_path: Path) -> None:
    fault(hub, method="GET", kind="status", status=500, times=2)
    path = download_model(REPO, FILE, None, settings(hub.url, tmp_path))
    assert_in_hf_cache(path, hf_cache, model_file)
    heads, gets, served = counts(hub)
    assert gets == 3 and served == model_file.stat().st_size
    # huggingface_hub itself finds it afterwards, without a connection
    offline = download_model(REPO, FILE, None, settings(hub.url, tmp_path, LLAMA_RUNTIME_OFFLINE="1"))
    assert offline == path and counts(hub)[:2] == (heads, gets)


def test_cut_body_resumes_where_it_stopped(hub: Any, hf_cache: Path, model_file: Path, tmp_path: Path) -> None:
    fault(hub, kind="cut", times=1)  # half the body, then the connection closes
    fault(hub, method="GET", kind="status", status=503, times=1)  # and the resume's first GET fails
    path = download_model(REPO, FILE, None, settings(hub.url, tmp_path))
    assert_in_hf_cache(path, hf_cache, model_file)
    _, gets, served = counts(hub)
    assert gets == 3
    assert served == model_file.stat().st_size  # no byte twice: the last GET asked for a Range


@pytest.mark.slow  # > 2 s: 3.0 s here
def test_cut_resumes_in_the_next_run(hub: Any, hf_cache: Path, model_file: Path, tmp_path: Path) -> None:
    size = model_file.stat().st_size
    fault(hub, kind="cut", times=1)
    fault(hub, method="GET", kind="status", status=502, times=None)  # the hub stays down
    with pytest.raises(DownloadError) as info:
        download_model(REPO, FILE, None, settings(hub.url, tmp_path, timeout=3))
    message = str(info.value)
    assert f"{size // 2} bytes are kept" in message and "HTTP 502" in message and "attempt" in message
    hub.clear_faults()
    path = download_model(REPO, FILE, None, settings(hub.url, tmp_path))  # a new call, as after Ctrl-C
    assert_in_hf_cache(path, hf_cache, model_file)
    assert counts(hub)[2] == size  # the second run asked only for the missing half


@pytest.mark.slow  # > 2 s: 2.2 s here (Retry-After)
def test_retry_after_of_a_429_and_a_503_is_honoured(hub: Any, hf_cache: Path, model_file: Path,
                                                    tmp_path: Path) -> None:
    fault(hub, method="HEAD", kind="status", status=503, retry_after=1, times=1)
    fault(hub, method="GET", kind="status", status=429, retry_after=1, times=1)
    start = time.monotonic()
    path = download_model(REPO, FILE, None, settings(hub.url, tmp_path))
    assert time.monotonic() - start >= 2.0
    assert_in_hf_cache(path, hf_cache, model_file)


def test_connection_reset_on_head_and_get(hub: Any, hf_cache: Path, model_file: Path, tmp_path: Path) -> None:
    fault(hub, method="HEAD", kind="reset", times=1)
    fault(hub, method="GET", kind="reset", times=1)
    path = download_model(REPO, FILE, None, settings(hub.url, tmp_path))
    assert_in_hf_cache(path, hf_cache, model_file)


@pytest.mark.slow  # > 2 s: 5.6 s here
def test_silent_connection_is_abandoned_and_resumed_with_range(hub: Any, hf_cache: Path, model_file: Path,
                                                               tmp_path: Path) -> None:
    half = model_file.stat().st_size // 2
    fault(hub, kind="stall", seconds=30, at=half)  # the connection stays open, silent, past the deadline
    start = time.monotonic()
    path = download_model(REPO, FILE, None, settings(hub.url, tmp_path, timeout=25))
    elapsed = time.monotonic() - start
    assert_in_hf_cache(path, hf_cache, model_file)
    _, gets, served = counts(hub)
    assert gets == 2 and served == model_file.stat().st_size
    [ranges] = [v for k, v in hub.range_log().items() if k.endswith(FILE)]
    assert ranges == [None, f"bytes={half}-"]
    assert elapsed < 25 / 2


# -- permanent failures are not retried -----------------------------------------------------------


@pytest.mark.parametrize(("repo", "filename", "revision", "says"), [
    ("tests/no-such-model", FILE, None, "repository tests/no-such-model does not exist there, or it is private"),
    (REPO, "missing.gguf", None, f"{REPO} has no file missing.gguf at main"),
    (REPO, FILE, "v9.9", f"{REPO} has no revision v9.9"),
], ids=["repo", "file", "revision"])
def test_not_found_is_said_once(hub: Any, hf_cache: Path, tmp_path: Path, repo: str, filename: str,
                                revision: str | None, says: str) -> None:
    with pytest.raises(DownloadError) as info:
        download_model(repo, filename, revision, settings(hub.url, tmp_path))
    message = str(info.value)
    assert says in message and "Not retried" in message and hub.url in message and "\n" not in message
    requests = hub.stats()["requests"]
    assert sum(n for k, n in requests.items() if "/resolve/" in k) == 1, requests


def test_private_repo_without_token_mentions_hf_token(tmp_path: Path, hf_cache: Path) -> None:
    with HubServer(tmp_path / "private-hub", token="secret") as private:
        assert private.httpd is not None
        with pytest.raises(DownloadError) as info:
            download_model(REPO, FILE, None, settings(private.url, tmp_path))
        assert "set HF_TOKEN" in str(info.value)
        assert sum(private.httpd.stats()["requests"].values()) == 1


def test_corrupt_body_is_refused_not_retried(hub: Any, hf_cache: Path, tmp_path: Path) -> None:
    fault(hub, kind="corrupt", times=1)
    with pytest.raises(IntegrityError, match="is corrupt"):
        download_model(REPO, FILE, None, settings(hub.url, tmp_path))
    assert counts(hub)[1] == 1 and leftovers(hf_cache) == []


def test_offline_cache_miss_opens_no_connection(hub: Any, hf_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(OfflineError, match="offline mode"):
        download_model(REPO, FILE, None, settings(hub.url, tmp_path, LLAMA_RUNTIME_OFFLINE="1"))
    assert hub.stats()["requests"] == {}


# -- the deadline -----------------------------------------------------------------------------------


@pytest.mark.slow  # > 2 s: 3.0 s here
def test_dead_endpoint_fails_within_the_deadline(hf_cache: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_model(REPO, FILE, None, settings(dead, tmp_path, timeout=3))
    assert time.monotonic() - start < 3 + MARGIN  # huggingface_hub alone backs off for ~23 s
    message = str(info.value)
    assert dead in message and REPO in message and FILE in message and "attempt(s)" in message
    assert "LLAMA_RUNTIME_TIMEOUT" in message and "ConnectError" in message


@pytest.mark.slow  # 2.0 s here, per method
@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_silent_hub_fails_within_the_deadline(hub: Any, hf_cache: Path, tmp_path: Path, method: str) -> None:
    fault(hub, method=method, kind="stall", seconds=30, times=None)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="LLAMA_RUNTIME_TIMEOUT"):
        download_model(REPO, FILE, None, settings(hub.url, tmp_path, timeout=2))
    assert time.monotonic() - start < 2 + MARGIN


def test_retry_after_past_the_deadline_gives_up_at_once(hub: Any, hf_cache: Path, tmp_path: Path) -> None:
    fault(hub, method="HEAD", kind="status", status=503, retry_after=60, times=None)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="retry after 60 s, past the deadline"):
        download_model(REPO, FILE, None, settings(hub.url, tmp_path, timeout=5))
    assert time.monotonic() - start < 1 and counts(hub)[0] == 1
