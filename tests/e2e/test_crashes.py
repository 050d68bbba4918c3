"""Crashes, concurrency and disks: ``kill -9`` in the middle of downloads, many processes (and
pip builds) wanting the same variant at once, a full filesystem and a read-only cache.

Every run is a fresh process from the staged release tree against the loopback hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts import devrelease
from release_fixtures import LOAD_JSON, Release, run_source_py
from reliability_table import record

from llama_runtime.fetch.cache import RECORD, verify_entry

pytestmark = pytest.mark.slow

VERSION = "0.1.0"
SMALL = "linux-x86_64-cpu-v3"
TEMP_MARKS = (".dl-", ".tmp-", ".old-")

FETCH = """
import json, sys, llama_runtime
try:
    folder = llama_runtime.download(sys.argv[1])
    print(json.dumps({"ok": True, "folder": str(folder)}))
except Exception as exc:
    print(json.dumps({"ok": False, "types": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}))
"""
LOAD = LOAD_JSON


def _popen(release: Release, env: dict[str, str], code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], env={**env, "PYTHONPATH": str(release.tree)},
                            cwd=release.tree, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc: subprocess.CompletedProcess[str] | subprocess.Popen[str], out: str | None = None) -> dict[str, Any]:
    text = out if out is not None else proc.stdout  # type: ignore[union-attr]
    assert text and text.strip(), getattr(proc, "stderr", "")
    return json.loads(text.strip().splitlines()[-1])


def _fetch(release: Release, env: dict[str, str], variant: str = SMALL) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", FETCH, variant], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(release.tree)}, cwd=release.tree)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _result(proc)


def _gets(release: Release, variant: str) -> int:
    assert release.hub.httpd is not None
    path = f"/{devrelease.REPO}/resolve/{release.lock['commit']}/{release.archive(variant)}"
    return release.hub.httpd.stats()["requests"].get(f"GET {path}", 0)


def _temps(cache: Path) -> list[str]:
    """Temporary folders and partial files anywhere in the cache."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.name.startswith(TEMP_MARKS) or p.name.endswith(".part"))


def _final_ok(folder: Path) -> bool:
    """A variant folder under its final name is either absent or complete and verified."""
    return not folder.exists() or verify_entry(folder) == []


# 1. kill -9 at random moments -----------------------------------------------------------------


def test_kill_9_mid_download_never_exposes_a_partial_variant(release: Release, hub_faults, tmp_path: Path) -> None:
    rng = random.Random(20261125)
    cache = tmp_path / "cache"
    env = release.env(cache)
    final = cache / VERSION / SMALL
    # ~40 chunks of 64 KiB every 30 ms: a download of about 1.3 s to land a kill in
    hub_faults.add_faults([{"path_glob": "*" + release.archive(SMALL), "kind": "drip", "chunk": 65536,
                        "interval": 0.03, "times": None}])
    seen_temps, completed, start = 0, 0, time.monotonic()
    for trial in range(10):
        if final.exists():  # a trial that finished: start the next one from an empty slot
            completed += 1
            shutil.rmtree(final)
        proc = _popen(release, env, FETCH, SMALL)
        begun = time.monotonic()
        while not any((cache / VERSION).glob(".dl-*")) and time.monotonic() - begun < 20:
            time.sleep(0.01)  # the download has begun: now pick a moment inside it
        time.sleep(rng.uniform(0.0, 2.2))  # some land after it: unpack, rename
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert _final_ok(final), f"trial {trial}: {verify_entry(final)}"
        assert not (cache / VERSION / f"{SMALL}.tar.gz").exists()
        seen_temps = max(seen_temps, len(_temps(cache)))
    assert seen_temps >= 1  # some kills did land mid-download and left temporaries behind
    hub_faults.clear_faults()
    if final.exists():
        shutil.rmtree(final)
    gets = _gets(release, SMALL)
    after = _fetch(release, env)
    assert after["ok"], after
    assert verify_entry(final) == [] and _gets(release, SMALL) == gets + 1
    # the next download, under the variant's lock, removed what the killed ones left
    assert _temps(cache) == []
    record(f"kill -9 mid-download x10 ({10 - completed} mid-way)", "survived",
           time.monotonic() - start, None, "none")


def test_stale_temporaries_of_other_variants_are_left_alone(release: Release, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    vdir = cache / VERSION
    vdir.mkdir(parents=True)
    mine = [vdir / f".dl-{SMALL}-abcd1234", vdir / f".tmp-{SMALL}-zz_9xy01", vdir / f".old-{SMALL}-q1w2e3r4"]
    other = [vdir / f".dl-{SMALL}-x-abcd1234", vdir / ".dl-linux-x86_64-cpu-abcd1234", vdir / f"{SMALL}-notes"]
    for p in mine + other:
        p.mkdir()
        (p / f"{SMALL}.tar.gz.part").write_bytes(b"partial")
    assert _fetch(release, release.env(cache))["ok"]
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in other)  # another variant's (maybe live) download is not ours to remove


# 2. concurrency -------------------------------------------------------------------------------


def test_eight_processes_one_download_identical_files(release: Release, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = release.env(cache)
    before = {v: _gets(release, v) for v in release.lock["manifest"]["variants"]}
    start = time.monotonic()
    procs = [_popen(release, env, LOAD) for _ in range(8)]
    results = [_result(p, p.communicate(timeout=180)[0]) for p in procs]
    elapsed = time.monotonic() - start
    assert all(r["ok"] for r in results), results
    variant = results[0]["variant"]
    assert {(r["variant"], r["path"], r["sha256"]) for r in results} == {
        (variant, results[0]["path"], results[0]["sha256"])}
    assert sorted(r["source"] for r in results) == ["cache"] * 7 + ["download"]
    assert {v: _gets(release, v) - n for v, n in before.items()} == {
        v: int(v == variant) for v in before}  # one GET of one archive, counted at the hub
    folder = cache / VERSION / variant
    assert verify_entry(folder) == [] and _temps(cache) == []
    record("8 processes, empty cache", "survived", elapsed, 0, "none")


def test_three_pip_builds_side_by_side_share_one_download(release: Release, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = release.env(cache)
    before = {v: _gets(release, v) for v in release.lock["manifest"]["variants"]}
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q",
                               "-w", str(tmp_path / f"w{i}"), str(release.sdist)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    elapsed = time.monotonic() - start
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    fetched = {v: _gets(release, v) - n for v, n in before.items()}
    assert sum(fetched.values()) == 1, fetched
    variant = next(v for v, n in fetched.items() if n)
    record_ = json.loads((cache / VERSION / variant / RECORD).read_text())
    contents = []
    for i in range(3):
        wheel = next((tmp_path / f"w{i}").glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            report = json.loads(zf.read("llama_runtime/_libs/selection.json"))
            libs = {name: hashlib.sha256(zf.read(f"llama_runtime/_libs/{name}")).hexdigest()
                    for name in record_["files"]}
        assert report["selected"] == variant
        assert libs == {n: e["sha256"] for n, e in record_["files"].items()}
        contents.append(libs)
    assert contents[0] == contents[1] == contents[2]
    record("3 pip wheel builds side by side", "survived", elapsed, 0, "none")


# 3. disks --------------------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Any]:
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs-{len(mounted)}"
        _mount_tmpfs(where, size)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("size, phase", [("1m", "download"), ("3m", "unpack")], ids=["download", "unpack"])
def test_full_filesystem_is_a_clear_cache_error(release: Release, small_fs, size: str, phase: str) -> None:
    fs = small_fs(size)
    cache = fs / "cache"
    start = time.monotonic()
    out = _fetch(release, release.env(cache))
    elapsed = time.monotonic() - start
    left = _temps(cache) + [p.name for p in (cache / VERSION).iterdir()
                            if not p.name.startswith(".") and p.is_dir()]
    record(f"full disk during {phase} ({size} tmpfs)", "failed clearly" if not out["ok"] else "survived?",
           elapsed, None, "none" if not left else f"left {left}")
    assert not out["ok"] and "CacheError" in out["types"] and "OSError" in out["types"], out
    assert str(cache / VERSION) in out["message"] and "No space left on device" in out["message"]
    assert "LLAMA_RUNTIME_CACHE" in out["message"] or "writable" in out["message"]
    assert left == []


def test_read_only_complete_cache_still_loads(release: Release, small_fs) -> None:
    fs = small_fs("64m")
    cache = fs / "cache"
    first = _result(run_source_py(release, release.env(cache), LOAD))
    assert first["ok"] and first["source"] == "download", first
    proc = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot remount read-only: {proc.stderr.strip()}")
    # root ignores permission bits, but not a read-only mount: prove writes really fail
    with pytest.raises(OSError):
        (cache / "probe").write_text("x")
    before = release.requests()
    start = time.monotonic()
    again = _result(run_source_py(release, release.env(cache), LOAD))
    assert again["ok"] and again["source"] == "cache" and again["path"] == first["path"], again
    assert release.requests() == before
    record("read-only complete cache", "survived", time.monotonic() - start, 0, "none")


def test_read_only_empty_cache_says_where_and_what_to_do(release: Release, small_fs) -> None:
    fs = small_fs("1m")
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    out = _fetch(release, release.env(fs / "cache"))
    assert not out["ok"] and "CacheError" in out["types"], out
    assert str(fs / "cache") in out["message"] and "LLAMA_RUNTIME_CACHE" in out["message"]
    record("read-only empty cache", "failed clearly", 0.0, None, "none")
