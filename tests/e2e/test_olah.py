"""A real self-hosted hub mirror: ``olah`` (PyPI) in offline mode, on 127.0.0.1, serving a local
git repo that holds the files published to the loopback hub (byte-identical, downloaded from it).

olah streams without Content-Length, ignores Range and answers 401 RepoNotFound (or 500) for a
revision it does not have: the runtime and ``pip install`` must work through it, checked against
the lock's sha256, and a revision olah lacks must fail with a message that says what to do.
See tests/olah_mirror.py for how olah is configured.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts import devrelease
from olah_mirror import OlahServer, make_git_repo
from release_fixtures import Release, run_source_py

pytestmark = pytest.mark.slow
LOAD = "import json, llama_runtime as l; lib = l.load(); print(json.dumps({'source': lib.source}))"


@dataclass
class Mirror:
    url: str
    commit: str  # the mirror repo's git commit (not the hub's: the lock's commit is unknown to olah)
    tag: str
    olah: OlahServer


def _published_files(release: Release, dest: Path) -> dict[str, Path]:
    """manifest.json and every archive the lock names, downloaded from the hub at the locked commit."""
    from huggingface_hub import hf_hub_download

    names = ["manifest.json", *(v["archive"] for v in release.lock["manifest"]["variants"].values())]
    return {name: Path(hf_hub_download(release.lock["repo"], name, revision=release.lock["commit"],
                                       endpoint=release.hub.url, cache_dir=dest, token=False))
            for name in names}


@pytest.fixture(scope="module")
def mirror(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    work = tmp_path_factory.mktemp("olah")
    files = _published_files(release, work / "hf-cache")
    for name, variant in release.lock["manifest"]["variants"].items():  # byte-identical to the published ones
        assert hashlib.sha256(files[variant["archive"]].read_bytes()).hexdigest() == variant["sha256"], name
    org, name = release.lock["repo"].split("/")
    tag = release.lock["revision"]
    commit = make_git_repo(work / "mirrors" / "models" / org / name, files, tag=tag)
    shutil.rmtree(work / "hf-cache")
    with OlahServer(work / "mirrors", work / "server") as olah:
        yield Mirror(olah.url, commit, tag, olah)


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_olah_serves_the_published_files_with_its_quirks(release: Release, mirror: Mirror) -> None:
    variant = next(iter(release.lock["manifest"]["variants"].values()))
    url = f"{mirror.url}/{release.lock['repo']}/resolve/{mirror.commit}/{variant['archive']}"
    status, headers, body = _get(url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == variant["sha256"]
    assert "content-length" not in headers  # chunked: the quirk our download must handle
    status, _, ranged = _get(url, Range="bytes=100-")
    assert status == 200 and ranged == body  # Range ignored: the whole file again
    base = f"{mirror.url}/{release.lock['repo']}/resolve"
    status, headers, _ = _get(f"{base}/v9.9.9/{variant['archive']}")
    assert status == 401 and headers.get("x-error-code") == "RepoNotFound"  # an unknown branch or tag
    assert _get(f"{base}/{release.lock['commit']}/{variant['archive']}")[0] == 500  # unknown sha
    assert _get(f"{base}/{mirror.commit}/no-such-file.tar.gz")[0] == 500  # missing file


def _hub_archive_bytes(release: Release) -> dict[str, int]:
    return {p: n for p, n in release.hub.httpd.stats()["bytes_by_path"].items() if p.endswith(".tar.gz")}


def test_runtime_downloads_through_olah(release: Release, mirror: Mirror, tmp_path: Path) -> None:
    env = release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=mirror.url, LLAMA_RUNTIME_REVISION=mirror.commit)
    before = _hub_archive_bytes(release)
    proc = run_source_py(release, env, LOAD)
    assert _hub_archive_bytes(release) == before  # every byte came through olah (and matched the lock)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + mirror.olah.output()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["source"] == "download"


def test_pip_install_through_olah(release: Release, mirror: Mirror, tmp_path: Path) -> None:
    python = devrelease.make_venv(tmp_path / "venv")
    env = release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=mirror.url, LLAMA_RUNTIME_REVISION=mirror.tag)
    before = _hub_archive_bytes(release)
    proc = devrelease.pip_install(python, str(release.sdist), env)
    log = proc.stdout + proc.stderr
    assert _hub_archive_bytes(release) == before
    assert proc.returncode == 0, log[-4000:] + mirror.olah.output()
    assert "llama-runtime: selected" in log and mirror.url in log
    site = next((tmp_path / "venv" / "lib").glob("python*/site-packages/llama_runtime/_libs"))
    assert list(site.glob("libllama*.so"))


def test_revision_name_olah_lacks_fails_clearly(release: Release, mirror: Mirror, tmp_path: Path) -> None:
    # olah answers 401 RepoNotFound (not 404 RevisionNotFound) for a branch or tag it does not have
    env = release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=mirror.url, LLAMA_RUNTIME_REVISION="v9.9.9")
    proc = run_source_py(release, env, LOAD)
    assert proc.returncode != 0
    err = proc.stderr
    assert f"from {mirror.url} ({release.lock['repo']} at v9.9.9)" in err and "HTTP 401" in err
    assert "check LLAMA_RUNTIME_REVISION" in err  # not only "access denied; set HF_TOKEN"
    assert "access denied" not in err


@pytest.fixture(scope="module")
def lock_commit_failure(release: Release, mirror: Mirror, tmp_path_factory: pytest.TempPathFactory) -> str:
    """No LLAMA_RUNTIME_REVISION: we ask for the lock's commit, the hub's, which the mirror's git repo
    lacks; olah 0.5.4 answers 500 (GitPython fails on the unknown sha), which we retry as transient."""
    env = release.env(tmp_path_factory.mktemp("olah-lock-commit") / "cache", LLAMA_RUNTIME_ENDPOINT=mirror.url,
                      LLAMA_RUNTIME_TIMEOUT="20")
    start = time.monotonic()
    proc = run_source_py(release, env, LOAD)
    assert proc.returncode != 0 and time.monotonic() - start < 30
    return proc.stderr


def test_lock_commit_olah_lacks_names_endpoint_and_revision(release: Release, mirror: Mirror,
                                                            lock_commit_failure: str) -> None:
    err = lock_commit_failure
    assert f"from {mirror.url} ({release.lock['repo']} at {release.lock['commit'][:12]})" in err
    assert "HTTP 500" in err and "LLAMA_RUNTIME_MIRROR" in err and "LLAMA_RUNTIME_SKIP_DOWNLOAD=1" in err


def test_lock_commit_olah_lacks_points_at_llama_runtime_revision(lock_commit_failure: str) -> None:
    assert "LLAMA_RUNTIME_REVISION" in lock_commit_failure
