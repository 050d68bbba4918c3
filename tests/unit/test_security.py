"""Security: TLS to anything that is not this machine, hostile archives through the real fetch,
and no byte from the hub (or a tampered cache) loaded before its sha256 matches.

The token staying on its own origin across a redirect is proved in ``test_faults.py``
(``test_redirect_to_another_origin_works_without_the_token``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from scripts import devrelease
from _tarballs import tarball
from scripts.hubserver import HubServer
from release_fixtures import Release, publish_file
from reliability_table import record

from llama_runtime.fetch.cache import lookup, verify_entry
from llama_runtime.config import resolve, with_overrides
from llama_runtime.errors import ConfigError, IntegrityError, UnsafeArchiveError
from llama_runtime.fetch.ensure import ensure_variant
from llama_runtime.fetch.hashing import sha256_file
from llama_runtime.variants.manifest import Lock, Manifest, read_lock

VERSION = "0.1.0"


# 1. TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:8080", "http://127.9.9.9", "http://localhost:1234", "http://[::1]:8080",
    "https://hub.example.com", "https://10.0.0.5:8443",
], ids=["loopback-v4", "loopback-net", "localhost", "loopback-v6", "https-remote", "https-lan"])
def test_allowed_endpoints(endpoint: str) -> None:
    assert resolve(environ={"LLAMA_RUNTIME_ENDPOINT": endpoint}).endpoint == endpoint


@pytest.mark.parametrize("endpoint", [
    "http://hub.example.com", "http://10.0.0.5:8080", "http://127.0.0.1.nip.io", "http://[2001:db8::1]",
    "http://localhost.example.com",
], ids=["remote", "lan", "lookalike-name", "ipv6-remote", "localhost-lookalike"])
def test_plain_http_to_another_machine_is_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="uses plain http:// to another machine.*LLAMA_RUNTIME_ALLOW_HTTP=1"):
        resolve(environ={"LLAMA_RUNTIME_ENDPOINT": endpoint})
    allowed = resolve(environ={"LLAMA_RUNTIME_ENDPOINT": endpoint, "LLAMA_RUNTIME_ALLOW_HTTP": "1"})
    assert allowed.endpoint == endpoint and allowed.sources["allow_http"] == "env:LLAMA_RUNTIME_ALLOW_HTTP"


def test_plain_http_set_after_resolve_is_refused_before_connecting(tmp_path: Path) -> None:
    lock = Lock.parse({"repo": "o/r", "revision": "v1", "commit": "c" * 40, "manifest": {
        "schema": 1, "variants": {"v": {"archive": "v.tar.gz", "sha256": "ab" * 32, "size": 10, "os": "linux",
                                        "arch": "x86_64", "backend": "cpu", "libraries": ["libllama.so"]}}}})
    settings = with_overrides(resolve(environ={"LLAMA_RUNTIME_CACHE": str(tmp_path / "c")}),
                              endpoint="http://hub.example.com")
    with pytest.raises(ConfigError, match="plain http://"):
        ensure_variant(lock.manifest.get("v"), lock, settings)


def test_token_is_never_shown() -> None:
    settings = resolve(environ={"HF_TOKEN": "hf_s3cret"})
    assert "hf_s3cret" not in repr(settings) and "hf_s3cret" not in json.dumps(settings.report())


# 2. hostile archives through the real fetch ---------------------------------------------------


@pytest.mark.parametrize("members, fragment", [
    ([("libllama.so", tarfile.REGTYPE, ""), ("../../escaped.so", tarfile.REGTYPE, "")], "climbs out"),
    ([("libllama.so", tarfile.REGTYPE, ""), ("/tmp/llama-runtime-escaped.so", tarfile.REGTYPE, "")],
     "absolute path"),
    ([("libllama.so", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link to '/etc/passwd'"),
    ([("libllama.so", tarfile.REGTYPE, ""), ("libggml.so", tarfile.LNKTYPE, "/etc/shadow")], "hard link"),
], ids=["dotdot", "absolute", "symlink", "hardlink"])
def test_hostile_archive_with_a_matching_lock_is_not_unpacked(tmp_path: Path, members: list[Any],
                                                             fragment: str) -> None:
    """The sha256 matches a hand-written lock (a compromised release): the unpacker still refuses."""
    data = tarball(*members)
    with HubServer(tmp_path / "evil-hub") as hub:
        commit = publish_file(hub, "evil/bins", "v.tar.gz", data)
        lock = Lock.parse({"repo": "evil/bins", "revision": "main", "commit": commit, "manifest": {
            "schema": 1, "variants": {"v": {"archive": "v.tar.gz", "sha256": hashlib.sha256(data).hexdigest(),
                                            "size": len(data), "os": "linux", "arch": "x86_64",
                                            "backend": "cpu", "libraries": ["libllama.so"]}}}})
        cache = tmp_path / "deep" / "er" / "cache"
        settings = resolve(environ={"LLAMA_RUNTIME_ENDPOINT": hub.url, "LLAMA_RUNTIME_CACHE": str(cache)})
        start = time.monotonic()
        with pytest.raises(UnsafeArchiveError, match=fragment):
            ensure_variant(lock.manifest.get("v"), lock, settings)
    escaped = [p for p in (tmp_path / "deep" / "escaped.so", Path("/tmp/llama-runtime-escaped.so")) if p.exists()]
    left = [p.name for p in (cache / VERSION).iterdir() if not p.name.endswith(".lock")]
    record(f"hostile archive, matching lock ({fragment.split()[0]})", "refused", time.monotonic() - start,
           None, "none" if not (escaped or left) else f"escaped {escaped} left {left}")
    assert escaped == [] and left == []


# 3. nothing unverified is loaded -------------------------------------------------------------

MAPS = """
import json, llama_runtime
try:
    out = {"ok": True, **llama_runtime.load().to_dict()}
except Exception as exc:
    out = {"ok": False, "types": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}
out["mapped"] = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libllama" in line})
print(json.dumps(out))
"""


def _load(release: Release, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", MAPS], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(release.tree)}, cwd=release.tree)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_corrupt_download_is_never_mapped(release: Release, tmp_path: Path) -> None:
    assert release.hub.httpd is not None
    release.hub.httpd.add_faults([{"path_glob": "*.tar.gz", "kind": "corrupt", "times": None}])
    try:
        out = _load(release, release.env(tmp_path / "cache"))
    finally:
        release.hub.httpd.clear_faults()
    assert not out["ok"] and "IntegrityError" in out["types"], out
    assert out["mapped"] == []  # no libllama of any origin got into the process


@pytest.fixture(scope="module")
def populated(release: Release, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    cache = tmp_path_factory.mktemp("security") / "cache"
    first = _load(release, release.env(cache))
    assert first["ok"] and first["source"] == "download", first
    return cache, first


@pytest.mark.slow
def test_tampered_cached_library_is_fetched_again_not_loaded(release: Release, populated, tmp_path: Path) -> None:
    cache, first = populated
    lib = Path(first["path"])
    good = lib.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same size: only a hash can tell
    lib.write_bytes(bytes(bad))
    start = time.monotonic()
    out = _load(release, release.env(cache))
    assert out["ok"] and out["source"] == "download" and out["path"] == first["path"], out
    assert sha256_file(lib) == first["sha256"] and out["mapped"] == [first["path"]]
    assert verify_entry(lib.parent) == []
    record("tampered cached library (same size)", "survived", time.monotonic() - start, None, "none")


@pytest.mark.slow
def test_tampered_cache_offline_refuses_to_load(release: Release, populated) -> None:
    cache, first = populated
    lib = Path(first["path"])
    good = lib.read_bytes()
    try:
        lib.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
        out = _load(release, release.env(cache, LLAMA_RUNTIME_OFFLINE="1"))
    finally:
        lib.write_bytes(good)
    assert not out["ok"] and "OfflineError" in out["types"] and out["mapped"] == [], out
    record("tampered cache, offline", "failed clearly", 0.0, None, "none")


def test_tampering_that_restores_the_mtime_is_caught_by_cache_verify(tmp_path: Path) -> None:
    """The cheap check (size + mtime) at every load is not proof against someone who also resets
    the mtime; ``llama-runtime cache verify`` re-hashes everything and catches it."""
    from llama_runtime.fetch.cache import install

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("libllama.so")
        info.size = 4096
        tar.addfile(info, io.BytesIO(os.urandom(4096)))
    archive = tmp_path / "v.tar.gz"
    archive.write_bytes(buf.getvalue())
    variant = Manifest.parse({"schema": 1, "variants": {"v": {
        "archive": "v.tar.gz", "sha256": sha256_file(archive), "size": archive.stat().st_size, "os": "linux",
        "arch": "x86_64", "backend": "cpu", "libraries": ["libllama.so"]}}}).get("v")
    folder = install(tmp_path / "cache", variant, archive, {"kind": "test"})
    lib = folder / "libllama.so"
    st = lib.stat()
    lib.write_bytes(b"\0" * 4096)
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lookup(tmp_path / "cache", variant) == folder  # documented limit of the cheap check
    assert verify_entry(folder) == ["libllama.so: sha256 differs from the record (modified or corrupt)"]
    lib.touch()  # any ordinary rewrite moves the mtime: then the load path re-hashes too
    assert lookup(tmp_path / "cache", variant) is None


def test_override_revision_cannot_swap_a_locked_archive(release: Release, tmp_path: Path) -> None:
    """LLAMA_RUNTIME_REVISION at another commit whose archive has other bytes: the lock wins."""
    lock = read_lock(release.tree / "llama_runtime" / "binaries.lock.json")
    small = lock.manifest.get("linux-x86_64-cpu-v3")
    assert release.hub.httpd is not None
    evil = b"\x1f\x8b" + os.urandom(small.size - 2)  # same name, same size, other bytes
    commit = publish_file(release.hub, devrelease.REPO, small.archive, evil)
    try:
        settings = resolve(environ=release.env(tmp_path / "cache", LLAMA_RUNTIME_REVISION=commit))
        with pytest.raises(IntegrityError, match=f"expected sha256 {small.sha256}"):
            ensure_variant(small, lock, settings)
    finally:  # put the real archive back on main for the tests that follow
        publish_file(release.hub, devrelease.REPO, small.archive,
                     (release.hub.data_dir / "blobs" / small.sha256).read_bytes())
    assert [p for p in (tmp_path / "cache" / VERSION).iterdir() if not p.name.endswith(".lock")] == []
    record("revision override serving other bytes", "refused", 0.0, None, "none")
