"""Networks people install behind: HTTP(S)_PROXY / NO_PROXY, LLAMA_RUNTIME_PROXY (counted by a
proxy on 127.0.0.1), a hub that wants HF_TOKEN, and the overall deadline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from scripts import devrelease
from counting_proxy import counting_proxy
from scripts.hubserver import HubServer
from release_fixtures import Release, run_source_py

pytestmark = pytest.mark.slow
LOAD = "import json, llama_runtime as l; lib = l.load(); print(json.dumps({'source': lib.source}))"


def _archive_hits(forwarded: list[str]) -> list[str]:
    return [u for u in forwarded if u.endswith(".tar.gz")]


@pytest.mark.parametrize("how", ["HTTP_PROXY", "LLAMA_RUNTIME_PROXY"])
def test_download_goes_through_the_proxy(release: Release, tmp_path: Path, how: str) -> None:
    with counting_proxy() as (proxy, forwarded):
        env = release.env(tmp_path / "cache", **{how: proxy})
        proc = run_source_py(release, env, LOAD)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["source"] == "download"
        assert len(_archive_hits(forwarded)) == 1
        assert all(u.startswith(release.hub.url) for u in forwarded)


def test_no_proxy_bypasses_the_proxy(release: Release, tmp_path: Path) -> None:
    with counting_proxy() as (proxy, forwarded):
        env = release.env(tmp_path / "cache", HTTP_PROXY=proxy, NO_PROXY="127.0.0.1")
        proc = run_source_py(release, env, LOAD)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert forwarded == []


def test_install_time_fetch_uses_the_configured_proxy(release: Release, tmp_path: Path) -> None:
    python = devrelease.make_venv(tmp_path / "venv")
    with counting_proxy() as (proxy, forwarded):
        proc = devrelease.pip_install(python, str(release.sdist),
                                      release.env(tmp_path / "cache", LLAMA_RUNTIME_PROXY=proxy))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(_archive_hits(forwarded)) == 1  # pip's own PyPI traffic did not go there


def test_private_hub_needs_hf_token(release: Release, tmp_path: Path) -> None:
    # a second server over the same store, answering 401 without the token
    assert release.hub.httpd is not None
    with HubServer(release.hub.data_dir, token="s3cret") as private:
        env = release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=private.url)
        denied = run_source_py(release, env, LOAD)
        assert denied.returncode != 0
        assert "HTTP 401" in denied.stderr and "HF_TOKEN" in denied.stderr
        allowed = run_source_py(release, {**env, "HF_TOKEN": "s3cret"}, LOAD)
        assert allowed.returncode == 0, allowed.stderr[-2000:]


def test_deadline_bounds_a_stalled_download(release: Release, tmp_path: Path) -> None:
    assert release.hub.httpd is not None
    release.hub.httpd.add_faults([{"path_glob": "*.tar.gz", "method": "GET", "kind": "stall",
                                   "seconds": 30, "times": 10}])
    try:
        start = time.monotonic()
        proc = run_source_py(release, release.env(tmp_path / "cache", LLAMA_RUNTIME_TIMEOUT="3"), LOAD)
        elapsed = time.monotonic() - start
    finally:
        release.hub.httpd.clear_faults()
    assert proc.returncode != 0 and "within 3 s" in proc.stderr
    assert elapsed < 3 + 5  # the deadline plus interpreter start-up and a margin
