"""A llama-runtime without a lock (a checkout): what the hook and the runtime do, and the release
named by LLAMA_RUNTIME_REPO/REVISION trusted as the hub serves it; the fetch path without
huggingface_hub (pip's build environment has none): URLs, headers, proxies."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from counting_proxy import counting_proxy
from scripts.hubserver import HubServer
from huggingface_hub import hf_hub_url
from huggingface_hub.utils import build_hf_headers

from llama_runtime.fetch import trust
from llama_runtime.config import Settings, resolve
from llama_runtime.errors import IntegrityError, LibraryNotFoundError, ManifestError, NoReleaseError
from llama_runtime.fetch.ensure import ensure_variant
from llama_runtime.fetch.hub import request_headers, resolve_url
from llama_runtime.install import prepare_wheel
from llama_runtime.fetch.netconf import environment_proxies, proxy_authorization, proxy_for
from llama_runtime.release.publish import publish

ROOT = Path(__file__).resolve().parents[2]
REPO = "org/bins"
LIBS = ["libggml-base.so", "libggml.so", "libllama.so"]


def _variant(src: Path, name: str) -> None:
    folder = src / name
    folder.mkdir(parents=True)
    (folder / "variant.json").write_text(json.dumps({
        "os": "linux", "arch": "x86_64", "backend": "cpu", "requires": {"glibc": "2.17"},
        "libraries": LIBS, "backend_dl": False, "python_requires": [], "llama_cpp": "0.5.0"}))
    for lib in LIBS:
        (folder / lib).write_bytes(os.urandom(4000))


@pytest.fixture
def release(hub: HubServer, tmp_path: Path) -> dict[str, Any]:
    """A release of two (random-byte) variants on the loopback hub, tagged v1; its lock is kept
    elsewhere, as if this were a checkout that never got it."""
    src = tmp_path / "variants"
    _variant(src, "linux-x86_64-cpu")
    _variant(src, "linux-x86_64-cpu-v3")
    # random bytes cannot be qualified (they do not load): this tests trust, not the binaries
    return publish(src, repo=REPO, revision="v1", endpoint=hub.url, lock_path=tmp_path / "elsewhere.json",
                   qualify=False)


def _settings(hub: HubServer, tmp_path: Path, **env: str) -> Settings:
    return resolve(environ={"LLAMA_RUNTIME_ENDPOINT": hub.url, "LLAMA_RUNTIME_CACHE": str(tmp_path / "cache"),
                            **env})


def _requests(hub: HubServer) -> dict[str, int]:
    assert hub.httpd is not None
    return dict(hub.httpd.stats()["requests"])


# -- no lock, nothing named ---------------------------------------------------------------------

def test_without_a_lock_or_a_release_the_error_says_how_to_get_a_library(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(NoReleaseError) as info:
        trust.trusted_lock(_settings(hub, tmp_path), tmp_path / "binaries.lock.json")
    message = str(info.value)
    assert f"no binary lock ({tmp_path / 'binaries.lock.json'})" in message
    for way in ("LLAMA_RUNTIME_LIB", "LLAMA_RUNTIME_REPO and LLAMA_RUNTIME_REVISION", "llama-runtime publish"):
        assert way in message
    assert isinstance(info.value, LibraryNotFoundError) and isinstance(info.value, ManifestError)
    assert _requests(hub) == {}  # nothing was asked of the hub


@pytest.mark.parametrize(("given", "unset"), [({"LLAMA_RUNTIME_REPO": REPO}, "LLAMA_RUNTIME_REVISION"),
                                              ({"LLAMA_RUNTIME_REVISION": "v1"}, "LLAMA_RUNTIME_REPO")])
def test_half_a_release_name_is_refused(hub: HubServer, tmp_path: Path, given: dict[str, str], unset: str) -> None:
    with pytest.raises(NoReleaseError, match=f"^{unset} is not set: without a lock"):
        trust.trusted_lock(_settings(hub, tmp_path, **given), tmp_path / "none.json")


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "llama_runtime").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def test_hook_without_a_lock_plans_a_wheel_with_no_library(tmp_path: Path) -> None:
    said: list[str] = []
    plan = prepare_wheel(root=_tree(tmp_path), config_settings=None, staging=tmp_path / "stage",
                         environ={"LLAMA_RUNTIME_CACHE": str(tmp_path / "cache")}, echo=said.append)
    assert plan.tag is None and plan.dependencies == []
    assert list(plan.force_include.values()) == ["llama_runtime/_libs/selection.json"]  # the report only
    assert plan.report["selected"] is None and "no binary lock" in plan.report["reason"]
    assert len(said) == 1 and "the wheel ships no llama.cpp library" in said[0]
    assert "LLAMA_RUNTIME_LIB" in said[0] and "LLAMA_RUNTIME_REPO" in said[0]


# -- no lock, LLAMA_RUNTIME_REPO/REVISION: the hub's manifest, with a WARNING --------------------

def test_named_release_is_read_from_the_hub_at_its_commit(release: dict[str, Any], hub: HubServer, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(hub, tmp_path, LLAMA_RUNTIME_REPO=REPO, LLAMA_RUNTIME_REVISION="v1")
    said: list[str] = []
    with caplog.at_level(logging.WARNING, logger="llama_runtime"):
        lock = trust.trusted_lock(settings, tmp_path / "no-lock.json", echo=said.append)
    assert (lock.trust, lock.repo, lock.revision, lock.commit) == ("hub", REPO, "v1", release["commit"])
    assert {n: v.sha256 for n, v in lock.manifest.variants.items()} == {
        n: v["sha256"] for n, v in release["manifest"]["variants"].items()}
    warning = f"it trusts the manifest of {REPO} at v1 (commit {release['commit'][:12]}) as {hub.url} serves it"
    assert warning in caplog.text and "rest on that hub, not on the sdist" in caplog.text
    assert said and said[0].startswith("llama-runtime: WARNING: ") and warning in said[0]
    folder, how = ensure_variant(lock.manifest.variants["linux-x86_64-cpu"], lock, settings)
    assert how == "download" and sorted(p.name for p in folder.iterdir()) == sorted(
        [*LIBS, "llama-runtime.json", "variant.json"])
    record = json.loads((folder / "llama-runtime.json").read_text())
    assert record["source"]["revision"] == release["commit"] and record["source"]["trust"] == "hub"
    got = _requests(hub)
    assert got[f"GET /api/models/{REPO}/revision/v1"] == 1
    assert got[f"GET /{REPO}/resolve/{release['commit']}/manifest.json"] == 1
    assert got[f"GET /{REPO}/resolve/{release['commit']}/linux-x86_64-cpu.tar.gz"] == 1


def test_named_release_is_kept_for_offline_runs(release: dict[str, Any], hub: HubServer, tmp_path: Path) -> None:
    settings = _settings(hub, tmp_path, LLAMA_RUNTIME_REPO=REPO, LLAMA_RUNTIME_REVISION="v1")
    first = trust.trusted_lock(settings, tmp_path / "no-lock.json")
    before = _requests(hub)
    offline = _settings(hub, tmp_path, LLAMA_RUNTIME_REPO=REPO, LLAMA_RUNTIME_REVISION="v1",
                        LLAMA_RUNTIME_OFFLINE="1")
    again = trust.trusted_lock(offline, tmp_path / "no-lock.json")
    assert again == first and _requests(hub) == before  # no request at all
    other = _settings(hub, tmp_path, LLAMA_RUNTIME_REPO=REPO, LLAMA_RUNTIME_REVISION="v2", LLAMA_RUNTIME_OFFLINE="1")
    with pytest.raises(NoReleaseError, match="offline mode is on, and the manifest of org/bins at v2 was never read"):
        trust.trusted_lock(other, tmp_path / "no-lock.json")


def test_archive_not_matching_the_hub_manifest_is_refused(release: dict[str, Any], hub: HubServer,
                                                         tmp_path: Path) -> None:
    settings = _settings(hub, tmp_path, LLAMA_RUNTIME_REPO=REPO, LLAMA_RUNTIME_REVISION="v1")
    lock = trust.trusted_lock(settings, tmp_path / "no-lock.json")
    assert hub.httpd is not None
    hub.httpd.add_faults([{"path_glob": "*.tar.gz", "kind": "corrupt", "times": None}])
    with pytest.raises(IntegrityError) as info:
        ensure_variant(lock.manifest.variants["linux-x86_64-cpu"], lock, settings)
    assert f"(from the manifest of {REPO} at v1, as the hub served it: no lock)" in str(info.value)
    assert not (tmp_path / "cache" / "0.1.0" / "linux-x86_64-cpu").exists()


def test_an_existing_lock_wins_over_the_hub(release: dict[str, Any], hub: HubServer, tmp_path: Path) -> None:
    settings = _settings(hub, tmp_path, LLAMA_RUNTIME_REPO=REPO, LLAMA_RUNTIME_REVISION="v1")
    lock = trust.trusted_lock(settings, tmp_path / "elsewhere.json")
    assert lock.trust == "lock" and lock.path == tmp_path / "elsewhere.json"
    assert _requests(hub).get(f"GET /api/models/{REPO}/revision/v1") is None


def test_a_revision_that_is_not_a_release_fails_clearly(hub: HubServer, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url).create_repo("org/empty")
    HfApi(endpoint=hub.url).upload_file(path_or_fileobj=b'{"schema": 7}', path_in_repo="manifest.json",
                                        repo_id="org/empty")
    settings = _settings(hub, tmp_path, LLAMA_RUNTIME_REPO="org/empty", LLAMA_RUNTIME_REVISION="main")
    with pytest.raises(ManifestError, match="manifest.json of org/empty at main on .* is not a llama-runtime"
                                            " release manifest: manifest schema 7 is not supported"):
        trust.trusted_lock(settings, tmp_path / "no-lock.json")


# -- the fetch path without huggingface_hub -----------------------------------------------------

NO_HUB = """
import json, sys
sys.modules["huggingface_hub"] = None  # as in pip's build environment: `import` fails
from pathlib import Path
from llama_runtime.config import resolve
from llama_runtime.fetch.ensure import ensure_variant
from llama_runtime.fetch.trust import trusted_lock
settings = resolve(environ=json.loads(sys.argv[1]))
lock = trusted_lock(settings, Path(sys.argv[2]))
print(json.dumps([lock.trust, ensure_variant(lock.manifest.variants["linux-x86_64-cpu"], lock, settings)[1]]))
"""


@pytest.mark.parametrize("lock_name", ["elsewhere.json", "absent.json"], ids=["lock", "no-lock"])
@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "http-proxy"])
def test_fetch_needs_no_huggingface_hub(release: dict[str, Any], hub: HubServer, tmp_path: Path,
                                        lock_name: str, proxied: bool) -> None:
    env = {"LLAMA_RUNTIME_ENDPOINT": hub.url, "LLAMA_RUNTIME_CACHE": str(tmp_path / "cache"),
           "LLAMA_RUNTIME_REPO": REPO, "LLAMA_RUNTIME_REVISION": "v1"}
    with counting_proxy() as (proxy, forwarded):
        if proxied:
            env["LLAMA_RUNTIME_PROXY"] = proxy
        proc = subprocess.run([sys.executable, "-c", NO_HUB, json.dumps(env), str(tmp_path / lock_name)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == ["lock" if lock_name == "elsewhere.json" else "hub", "download"]
    archives = [u for u in forwarded if u.endswith(".tar.gz")]
    # with a lock, LLAMA_RUNTIME_REVISION says where to fetch; without, the manifest's own commit
    at = "v1" if lock_name == "elsewhere.json" else release["commit"]
    assert archives == ([f"{hub.url}/{REPO}/resolve/{at}/linux-x86_64-cpu.tar.gz"] if proxied else [])


@pytest.mark.parametrize(("revision", "filename"), [
    ("v1", "linux-x86_64-cpu.tar.gz"), ("refs/pr/1", "a b+c.tar.gz"), ("0" * 40, "sub/dir/x.json"),
    ("main", "üñí.tar.gz")])
def test_urls_are_the_hubs_own(revision: str, filename: str) -> None:
    endpoint = "https://hub.example.com"
    assert resolve_url(endpoint, REPO, revision, filename) == hf_hub_url(REPO, filename, revision=revision,
                                                                         endpoint=endpoint)


def test_headers_carry_the_token_only_when_set() -> None:
    plain = request_headers(resolve(environ={}))
    assert set(plain) == {"user-agent"} and plain["user-agent"].startswith("llama-runtime/")
    token = request_headers(resolve(environ={"HF_TOKEN": "hf_s3cret"}))
    hub = build_hf_headers(token="hf_s3cret", library_name="llama-runtime")
    assert token["authorization"] == hub["authorization"] == "Bearer hf_s3cret"


@pytest.mark.parametrize(("env", "url", "expected"), [
    ({}, "https://huggingface.co/x", None),
    ({"HTTPS_PROXY": "http://p:3128"}, "https://huggingface.co/x", "http://p:3128"),
    ({"HTTPS_PROXY": "http://p:3128"}, "http://127.0.0.1:9/x", None),  # http URLs use HTTP_PROXY
    ({"HTTPS_PROXY": "http://P:1", "https_proxy": "http://lower:2"}, "https://h/x", "http://lower:2"),
    ({"ALL_PROXY": "p:8080"}, "https://h/x", "http://p:8080"),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com,.internal"}, "https://hub.example.com/x", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https://example.org/x", "http://p:1"),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://h/x", None),
    ({"HTTPS_PROXY": "http://p:1", "no_proxy": "127.0.0.1:8000"}, "https://127.0.0.1:8000/x", None),
    ({"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}, "http://h/x", None),  # httpoxy
], ids=["none", "https", "scheme", "lowercase-wins", "all", "no-proxy-suffix", "no-proxy-other", "no-proxy-star",
        "no-proxy-port", "cgi"])
def test_proxy_choice_follows_the_environment(env: dict[str, str], url: str, expected: str | None) -> None:
    assert proxy_for(url, None, env) == expected
    assert proxy_for(url, "http://explicit:1", env) == "http://explicit:1"  # LLAMA_RUNTIME_PROXY: always


def test_environment_proxies_and_credentials() -> None:
    assert environment_proxies({"http_proxy": "", "HTTP_PROXY": "http://a:1"}) == {}
    assert proxy_authorization("http://u%40x:p%3Aw@proxy:1") == {"Proxy-Authorization": "Basic dUB4OnA6dw=="}
    assert proxy_authorization("http://proxy:1") == {}
