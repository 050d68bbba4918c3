"""The loopback hub, driven by the real huggingface_hub client and by raw HTTP."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from scripts.hubserver import HubServer
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "org/bins"
ARCHIVE = os.urandom(200_000)  # a .tar.gz name: served like an LFS file
TEXT = b'{"hello": "world"}\n'  # a .json name: served like a git blob


def request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(
            method,
            parts.path + (f"?{parts.query}" if parts.query else ""),
            body=body,
            headers=headers or {},
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def control(hub: HubServer, method: str, path: str, payload: Any = None) -> Any:
    body = json.dumps(payload).encode() if payload is not None else None
    status, _, data = request(f"{hub.url}/_test/{path}", method, body=body)
    assert status == 200, data
    return json.loads(data)


def seed(hub: HubServer, token: str | None = None) -> str:
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo(REPO, exist_ok=True)
    info = api.create_commit(
        REPO,
        operations=[
            CommitOperationAdd("x.tar.gz", ARCHIVE),
            CommitOperationAdd("sub/m.json", TEXT),
        ],
        commit_message="seed",
    )
    api.create_tag(REPO, tag="v1", revision=info.oid)
    return str(info.oid)


def resolve_url(hub: HubServer, path: str = "x.tar.gz", rev: str = "v1") -> str:
    return f"{hub.url}/{REPO}/resolve/{rev}/{path}"


def test_upload_tag_and_download_by_tag_and_commit(hub: HubServer, tmp_path: Path) -> None:
    commit = seed(hub)
    assert len(commit) == 40 and int(commit, 16) >= 0
    by_tag = hf_hub_download(
        REPO, "x.tar.gz", revision="v1", endpoint=hub.url, cache_dir=tmp_path / "a"
    )
    by_commit = hf_hub_download(
        REPO, "sub/m.json", revision=commit, endpoint=hub.url, cache_dir=tmp_path / "b"
    )
    assert Path(by_tag).read_bytes() == ARCHIVE
    assert Path(by_commit).read_bytes() == TEXT
    assert commit in by_tag  # the client filed it under the commit the tag points to


def test_repo_api_files_refs_and_info(hub: HubServer) -> None:
    commit = seed(hub)
    api = HfApi(endpoint=hub.url)
    assert sorted(api.list_repo_files(REPO, revision="v1")) == ["sub/m.json", "x.tar.gz"]
    top = {f.path: f for f in api.list_repo_tree(REPO, revision="v1")}
    assert set(top) == {"sub", "x.tar.gz"}
    assert (
        top["x.tar.gz"].lfs is not None
        and top["x.tar.gz"].lfs.sha256 == hashlib.sha256(ARCHIVE).hexdigest()
    )
    refs = api.list_repo_refs(REPO)
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", commit)]
    assert [b.name for b in refs.branches] == ["main"]
    info = api.model_info(REPO, revision="v1")
    assert info.sha == commit
    assert {s.rfilename for s in info.siblings or []} == {"sub/m.json", "x.tar.gz"}


def test_recommitting_identical_bytes_is_a_no_op(hub: HubServer) -> None:
    commit = seed(hub)
    again = HfApi(endpoint=hub.url).create_commit(
        REPO, operations=[CommitOperationAdd("x.tar.gz", ARCHIVE)], commit_message="same"
    )
    assert again.oid == commit


def test_head_headers(hub: HubServer) -> None:
    commit = seed(hub)
    status, headers, body = request(resolve_url(hub), "HEAD")
    sha256 = hashlib.sha256(ARCHIVE).hexdigest()
    assert status == 200 and body == b""
    assert headers["x-repo-commit"] == commit
    assert headers["etag"] == f'"{sha256}"' == headers["x-linked-etag"]
    assert headers["content-length"] == headers["x-linked-size"] == str(len(ARCHIVE))
    assert headers["accept-ranges"] == "bytes"
    _, small, _ = request(resolve_url(hub, "sub/m.json"), "HEAD")
    git_oid = hashlib.sha1(b"blob %d\0" % len(TEXT) + TEXT).hexdigest()
    assert small["etag"] == f'"{git_oid}"' and "x-linked-etag" not in small


@pytest.mark.parametrize(
    ("spec", "lo", "hi"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=-5", len(ARCHIVE) - 5, len(ARCHIVE) - 1),
        ("bytes=199990-", 199990, len(ARCHIVE) - 1),
    ],
    ids=["closed", "suffix", "open"],
)
def test_range_requests(hub: HubServer, spec: str, lo: int, hi: int) -> None:
    seed(hub)
    status, headers, body = request(resolve_url(hub), headers={"Range": spec})
    assert status == 206
    assert body == ARCHIVE[lo : hi + 1]
    assert headers["content-range"] == f"bytes {lo}-{hi}/{len(ARCHIVE)}"


def test_unsatisfiable_range(hub: HubServer) -> None:
    seed(hub)
    status, _, _ = request(resolve_url(hub), headers={"Range": f"bytes={len(ARCHIVE)}-"})
    assert status == 416
    assert request(resolve_url(hub), headers={"Range": "bytes=abc"})[0] == 416


def test_missing_repo_revision_and_file_raise_the_clients_errors(
    hub: HubServer, tmp_path: Path
) -> None:
    seed(hub)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "x.tar.gz", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "x.tar.gz", revision="v9", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "y.tar.gz", revision="v1", endpoint=hub.url, cache_dir=tmp_path)


def test_stats_count_requests_and_bytes_and_reset(hub: HubServer) -> None:
    seed(hub)
    control(hub, "POST", "reset")
    request(resolve_url(hub), "HEAD")
    request(resolve_url(hub))
    request(resolve_url(hub), headers={"Range": "bytes=0-99"})
    stats = control(hub, "GET", "stats")
    path = f"/{REPO}/resolve/v1/x.tar.gz"
    assert stats["requests"] == {f"HEAD {path}": 1, f"GET {path}": 2}
    assert stats["bytes_served"] == len(ARCHIVE) + 100
    control(hub, "POST", "reset")
    assert control(hub, "GET", "stats") == {"requests": {}, "bytes_served": 0, "bytes_by_path": {}}


def test_fault_status_with_retry_after_hits_times_then_clears(hub: HubServer) -> None:
    seed(hub)
    control(
        hub,
        "POST",
        "faults",
        [
            {
                "path_glob": "*.tar.gz",
                "method": "GET",
                "kind": "status",
                "status": 503,
                "times": 2,
                "retry_after": 7,
            }
        ],
    )
    assert request(resolve_url(hub), "HEAD")[0] == 200  # method does not match
    for _ in range(2):
        status, headers, _ = request(resolve_url(hub))
        assert status == 503 and headers["retry-after"] == "7"
    assert request(resolve_url(hub))[0] == 200


def test_fault_corrupt_flips_one_byte_keeps_headers(hub: HubServer) -> None:
    seed(hub)
    control(hub, "POST", "faults", [{"path_glob": "*.tar.gz", "kind": "corrupt"}])
    status, headers, body = request(resolve_url(hub))
    assert status == 200 and len(body) == len(ARCHIVE)
    assert sum(a != b for a, b in zip(body, ARCHIVE)) == 1
    assert headers["etag"] == f'"{hashlib.sha256(ARCHIVE).hexdigest()}"'


def test_body_faults_skip_the_head_and_the_client_keeps_a_corrupt_file(
    hub: HubServer, tmp_path: Path
) -> None:
    seed(hub)
    control(hub, "POST", "faults", [{"path_glob": "*.tar.gz", "kind": "corrupt"}])
    path = hf_hub_download(REPO, "x.tar.gz", revision="v1", endpoint=hub.url, cache_dir=tmp_path)
    body = Path(path).read_bytes()
    # huggingface_hub checks the size, never the sha256: that is our job (fetch.verify)
    assert len(body) == len(ARCHIVE) and body != ARCHIVE
    assert control(hub, "GET", "faults") == []


def test_fault_stall_on_head_delays_the_headers(hub: HubServer) -> None:
    seed(hub)
    control(
        hub,
        "POST",
        "faults",
        [{"path_glob": "*.tar.gz", "method": "HEAD", "kind": "stall", "seconds": 3}],
    )
    with pytest.raises((TimeoutError, socket.timeout)):
        request(resolve_url(hub), "HEAD", timeout=0.5)
    assert request(resolve_url(hub), "HEAD")[0] == 200


def test_fault_cut_sends_half_then_closes(hub: HubServer) -> None:
    seed(hub)
    control(hub, "POST", "faults", [{"path_glob": "*.tar.gz", "kind": "cut"}])
    with pytest.raises(http.client.IncompleteRead) as info:
        request(resolve_url(hub))
    assert len(info.value.partial) == len(ARCHIVE) // 2


def test_fault_stall_delays_the_body(hub: HubServer) -> None:
    seed(hub)
    control(hub, "POST", "faults", [{"path_glob": "*.tar.gz", "kind": "stall", "seconds": 3}])
    with pytest.raises((TimeoutError, socket.timeout)):
        request(resolve_url(hub), timeout=0.5)


def test_fault_drip_is_slow_but_complete(hub: HubServer) -> None:
    seed(hub)
    control(
        hub,
        "POST",
        "faults",
        [{"path_glob": "*.tar.gz", "kind": "drip", "chunk": 50_000, "interval": 0.1}],
    )
    start = time.monotonic()
    status, _, body = request(resolve_url(hub))
    assert status == 200 and body == ARCHIVE
    assert time.monotonic() - start >= 0.25  # four chunks: three pauses before the last


def test_fault_reset_drops_the_connection(hub: HubServer) -> None:
    seed(hub)
    control(hub, "POST", "faults", [{"path_glob": "*.tar.gz", "kind": "reset"}])
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        request(resolve_url(hub))


def test_fault_wrong_length_fails_the_clients_size_check(hub: HubServer, tmp_path: Path) -> None:
    seed(hub)
    control(
        hub, "POST", "faults", [{"path_glob": "*.tar.gz", "method": "GET", "kind": "wrong_length"}]
    )
    with pytest.raises(OSError, match="(?i)consistency|size"):
        hf_hub_download(REPO, "x.tar.gz", revision="v1", endpoint=hub.url, cache_dir=tmp_path)


def test_fault_redirect_sends_location(hub: HubServer) -> None:
    seed(hub)
    target = f"/{REPO}/resolve/v1/sub/m.json"
    control(
        hub, "POST", "faults", [{"path_glob": "*/x.tar.gz", "kind": "redirect", "location": target}]
    )
    status, headers, _ = request(resolve_url(hub))
    assert status == 302 and headers["location"] == target
    assert request(resolve_url(hub))[2] == ARCHIVE  # times=1: gone after one hit


def test_faults_can_be_listed_and_cleared(hub: HubServer) -> None:
    control(hub, "POST", "faults", [{"kind": "status", "status": 500, "times": None}])
    assert len(control(hub, "GET", "faults")) == 1
    control(hub, "DELETE", "faults")
    assert control(hub, "GET", "faults") == []
    status, _, _ = request(f"{hub.url}/_test/faults", "POST", body=b'[{"kind": "melt"}]')
    assert status == 400


def test_token_is_required_when_configured(tmp_path: Path) -> None:
    with HubServer(tmp_path / "data", token="s3cret") as hub:
        commit = seed(hub, token="s3cret")
        status, headers, _ = request(resolve_url(hub), "HEAD")
        assert status == 401 and "x-repo-commit" not in headers
        status, _, _ = request(resolve_url(hub), "HEAD", headers={"Authorization": "Bearer wrong"})
        assert status == 401
        path = hf_hub_download(
            REPO,
            "x.tar.gz",
            revision=commit,
            endpoint=hub.url,
            cache_dir=tmp_path / "c",
            token="s3cret",
        )
        assert Path(path).read_bytes() == ARCHIVE


def test_restarted_server_serves_the_same_content(tmp_path: Path) -> None:
    with HubServer(tmp_path / "data") as hub:
        commit = seed(hub)
    with HubServer(tmp_path / "data") as hub:
        status, headers, body = request(resolve_url(hub))
        assert status == 200 and body == ARCHIVE and headers["x-repo-commit"] == commit


def test_cli_writes_ready_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "hubserver.py"
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--data", str(tmp_path / "d"), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = ready.read_text().strip()
        assert url.startswith("http://127.0.0.1:")
        assert request(f"{url}/_test/stats")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_network_guard_refuses_non_loopback_connects() -> None:
    guard = sys.modules["conftest"]
    with pytest.raises(guard.NetworkEscapeError):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1, never routable
    assert guard._BLOCKED.pop() == "('192.0.2.1', 443)"  # consumed, so this test itself passes
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()[:2], timeout=1):
            pass  # loopback is let through
    assert guard._BLOCKED == []
