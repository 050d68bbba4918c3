"""The run-time priority chain end to end, from the staged source tree (no ``_libs/``): cache,
download, explicit library, offline, integrity, resume, mirror, concurrency, doctor, cache list.

Real libllama and the real loopback hub; every load runs in a fresh process because the native
library is process-wide.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from release_fixtures import LOAD_JSON, Release

pytestmark = pytest.mark.slow

VERSION = "0.1.0"
DEAD = "http://127.0.0.1:9"  # discard port: nothing listens

LOAD = LOAD_JSON


def _run(release: Release, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # cwd is the staged tree: `python -c`/`-m` put the cwd first on sys.path, so running from the
    # repo root would import the repo's own package, which has no binaries.lock.json
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(release.tree)}, cwd=release.tree)


def _cli(release: Release, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return _run(release, env, "-m", "llama_runtime", *args)


def _load(release: Release, env: dict[str, str], prelude: str = "") -> dict[str, Any]:
    proc = _run(release, env, "-c", prelude + LOAD)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stats(release: Release) -> dict[str, Any]:
    assert release.hub.httpd is not None
    return release.hub.httpd.stats()


def _archive_path(release: Release, variant: str) -> str:
    from scripts import devrelease

    return f"/{devrelease.REPO}/resolve/{release.lock['commit']}/{release.archive(variant)}"


def _archive_gets(release: Release, variant: str) -> int:
    return _stats(release)["requests"].get(f"GET {_archive_path(release, variant)}", 0)


def _best(release: Release) -> str:
    """The variant selection ranks first on this machine (asked of doctor once per session)."""
    if not _BEST:
        env = release.env(Path("/nonexistent-llama-cache"))
        _BEST.append(json.loads(_cli(release, env, "doctor", "--json").stdout)["selected"])
    return _BEST[0]


_BEST: list[str] = []


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(cache: Path) -> list[str]:
    """Everything in the version folder except lock files and the CPU plugin proof records."""
    vdir = cache / VERSION
    return sorted(p.name for p in vdir.iterdir() if not p.name.endswith(".lock")
                  and p.name != ".proofs") if vdir.is_dir() else []


@pytest.fixture
def faults(release: Release):
    assert release.hub.httpd is not None
    yield release.hub.httpd
    release.hub.httpd.clear_faults()


@pytest.fixture(scope="module")
def populated(release: Release, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A cache filled by one first load from the hub (shared by the tests that only read it)."""
    cache = tmp_path_factory.mktemp("populated") / "cache"
    first = _load(release, release.env(cache))
    assert first["ok"], first
    return cache, first


# 1. priority chain -------------------------------------------------------------------------


def test_first_load_downloads_best_variant_into_versioned_cache(release: Release, populated) -> None:
    cache, first = populated
    assert first["source"] == "download"
    variant = first["variant"]
    folder = cache / VERSION / variant
    assert Path(first["directory"]) == folder and Path(first["path"]).parent == folder
    manifest = release.lock["manifest"]["variants"][variant]
    record = json.loads((folder / "llama-runtime.json").read_text())
    assert record["variant"] == variant and record["archive_sha256"] == manifest["sha256"]
    for lib in manifest["libraries"]:
        assert (folder / lib).is_file()
        assert record["files"][lib]["sha256"] == _sha256(folder / lib)
    assert first["sha256"] == _sha256(Path(first["path"]))
    # the best variant for this machine, as selection ranks it
    doctor = json.loads(_cli(release, release.env(cache), "doctor", "--json").stdout)
    assert doctor["selected"] == variant


def test_second_process_uses_cache_without_connecting(release: Release, populated) -> None:
    cache, first = populated
    before = _stats(release)["requests"]
    again = _load(release, release.env(cache))
    assert again["ok"] and again["source"] == "cache" and again["path"] == first["path"]
    assert _stats(release)["requests"] == before


def test_explicit_library_skips_the_lock(release: Release, populated, tmp_path: Path) -> None:
    _, first = populated
    # a bogus variant, a dead endpoint and a lock reader that explodes: none may be consulted
    env = release.env(tmp_path / "empty", LLAMA_RUNTIME_LIB=first["path"], LLAMA_RUNTIME_VARIANT="no-such",
                      LLAMA_RUNTIME_ENDPOINT=DEAD)
    prelude = ("import llama_runtime.variants as _v, llama_runtime.variants.manifest as _m\n"
               "def _boom(*a, **k): raise AssertionError('the lock was read')\n"
               "_v.read_lock = _m.read_lock = _boom\n")
    out = _load(release, env, prelude)
    assert out["ok"], out
    assert out["source"] == "explicit" and out["path"] == first["path"] and out["variant"] is None
    assert not (tmp_path / "empty").exists()


def test_explicit_library_missing_is_a_clear_error(release: Release, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "libllama.so"
    out = _load(release, release.env(tmp_path / "cache", LLAMA_RUNTIME_LIB=str(missing)))
    assert not out["ok"] and "LibraryLoadError" in out["types"] and "OSError" in out["types"]
    assert f"LLAMA_RUNTIME_LIB={missing}" in out["message"] and "does not exist" in out["message"]


def test_auto_download_off_lists_what_was_tried(release: Release, tmp_path: Path) -> None:
    before = release.requests()
    out = _load(release, release.env(tmp_path / "cache", LLAMA_RUNTIME_AUTO_DOWNLOAD="0"))
    assert not out["ok"] and out["types"][0] == "LibraryNotFoundError", out
    message = out["message"]
    assert "Tried:" in message and "LLAMA_RUNTIME_AUTO_DOWNLOAD=0" in message
    for name in release.lock["manifest"]["variants"]:
        assert f"{name}: not cached" in message
    assert "LLAMA_RUNTIME_LIB" in message
    assert release.requests() == before


@pytest.mark.parametrize("flag", ["LLAMA_RUNTIME_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_with_empty_cache_fails_without_connecting(release: Release, tmp_path: Path,
                                                           flag: str) -> None:
    before = release.requests()
    out = _load(release, release.env(tmp_path / "cache", **{flag: "1"}))
    assert not out["ok"] and "OfflineError" in out["types"], out
    assert "offline" in out["message"] and "llama-runtime fetch" in out["message"]
    assert "LLAMA_RUNTIME_MIRROR" in out["message"]
    assert release.requests() == before
    assert _leftovers(tmp_path / "cache") == []


def test_offline_with_populated_cache_loads(release: Release, populated) -> None:
    cache, first = populated
    before = release.requests()
    out = _load(release, release.env(cache, LLAMA_RUNTIME_OFFLINE="1"))
    assert out["ok"] and out["source"] == "cache" and out["variant"] == first["variant"]
    assert release.requests() == before


# 2. generation through the chain -----------------------------------------------------------

GENERATE = """
import json, sys, llama_runtime
print(json.dumps(llama_runtime.Llama(sys.argv[1]).generate("Hello", max_tokens=8, temperature=0)))
"""


@pytest.mark.parametrize("model", ["tiny_model", "smollm2_gguf"], ids=["tiny-f32", "smollm2-q4_1"])
def test_generation_is_deterministic_across_processes_and_cli(release: Release, populated,
                                                             model: str,
                                                             request: pytest.FixtureRequest) -> None:
    # the variant the chain downloads for this machine, on the toy model and on a quantized one
    path = request.getfixturevalue(model)
    env = release.env(populated[0])
    texts = []
    for _ in range(2):
        proc = _run(release, env, "-c", GENERATE, str(path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        texts.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert texts[0].strip() and texts[0] == texts[1]
    cli = _cli(release, env, "generate", str(path), "Hello", "-n", "8", "--temp", "0")
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout == texts[0] + "\n"


# 3. integrity --------------------------------------------------------------------------------


def test_corrupt_archive_is_refused_and_leaves_nothing(release: Release, faults, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    faults.add_faults([{"path_glob": "*.tar.gz", "method": "GET", "kind": "corrupt", "times": 10}])
    out = _load(release, release.env(cache))
    assert not out["ok"] and "IntegrityError" in out["types"], out
    message = out["message"]
    variant = release.lock["manifest"]["variants"][_best(release)]
    assert variant["archive"] in message and f"expected sha256 {variant['sha256']}" in message
    assert "got      sha256 " in message
    assert _leftovers(cache) == []
    faults.clear_faults()
    again = _load(release, release.env(cache))
    assert again["ok"] and again["source"] == "download", again
    assert _leftovers(cache) == [again["variant"]]


# 4. resume and transient failures ------------------------------------------------------------


@pytest.mark.parametrize("fault", [
    {"kind": "cut"},
    {"kind": "status", "status": 503, "retry_after": 1},
], ids=["cut", "503"])
def test_transient_failure_is_retried(release: Release, faults, tmp_path: Path,
                                      fault: dict[str, Any]) -> None:
    best = _best(release)
    path, size = _archive_path(release, best), release.lock["manifest"]["variants"][best]["size"]
    gets, served = _archive_gets(release, best), _stats(release)["bytes_by_path"].get(path, 0)
    faults.add_faults([{"path_glob": "*.tar.gz", "method": "GET", "times": 1, **fault}])
    start = time.monotonic()
    out = _load(release, release.env(tmp_path / "cache"))
    elapsed = time.monotonic() - start
    assert out["ok"] and out["source"] == "download" and out["variant"] == best, out
    assert _archive_gets(release, best) - gets == 2  # one failure, one retry
    served = _stats(release)["bytes_by_path"][path] - served
    if fault["kind"] == "cut":
        # half the body, then the rest by Range; a restart from byte 0 would cost 1.5x the size
        assert size <= served <= size + 64 * 1024  # resumed with Range: (almost) nothing re-fetched
    else:
        assert served == size and elapsed >= fault["retry_after"]  # Retry-After was honoured


# 5. dead server ------------------------------------------------------------------------------


def test_dead_server_fails_fast_with_ways_out(release: Release, tmp_path: Path) -> None:
    start = time.monotonic()
    out = _load(release, release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=DEAD))
    elapsed = time.monotonic() - start
    assert not out["ok"] and "DownloadError" in out["types"], out
    assert elapsed < 15
    for needle in (DEAD, "LLAMA_RUNTIME_MIRROR", "LLAMA_RUNTIME_SKIP_DOWNLOAD"):
        assert needle in out["message"]
    assert _leftovers(tmp_path / "cache") == []


# 6. mirror -----------------------------------------------------------------------------------


def test_mirror_folder_serves_an_air_gapped_machine(release: Release, tmp_path: Path) -> None:
    mirror, best = tmp_path / "mirror", _best(release)
    made = _cli(release, release.env(tmp_path / "fetch-cache"), "fetch", "--dest", str(mirror))
    assert made.returncode == 0, made.stderr[-3000:]
    archive = mirror / release.archive(best)
    assert json.loads((mirror / "manifest.json").read_text())["variants"][best]["sha256"] == _sha256(archive)
    before = release.requests()
    out = _load(release, release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=DEAD,
                                     LLAMA_RUNTIME_MIRROR=str(mirror)))
    assert out["ok"] and out["source"] == "download" and out["variant"] == best, out
    assert release.requests() == before
    record = json.loads((Path(out["directory"]) / "llama-runtime.json").read_text())
    assert record["source"] == {"kind": "mirror", "path": str(mirror)}


def test_tampered_mirror_is_refused(release: Release, tmp_path: Path) -> None:
    mirror, best = tmp_path / "mirror", _best(release)
    made = _cli(release, release.env(tmp_path / "fetch-cache"), "fetch", "--dest", str(mirror))
    assert made.returncode == 0, made.stderr[-3000:]
    archive = mirror / release.archive(best)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    out = _load(release, release.env(cache, LLAMA_RUNTIME_ENDPOINT=DEAD, LLAMA_RUNTIME_MIRROR=str(mirror)))
    assert not out["ok"] and "IntegrityError" in out["types"], out
    assert release.archive(best) in out["message"] and str(mirror) in out["message"]
    assert _leftovers(cache) == []


# 7. cache concurrency ------------------------------------------------------------------------


def test_concurrent_first_loads_download_once(release: Release, tmp_path: Path) -> None:
    best = _best(release)
    gets = _archive_gets(release, best)
    env = {**release.env(tmp_path / "cache"), "PYTHONPATH": str(release.tree)}
    procs = [subprocess.Popen([sys.executable, "-c", LOAD], env=env, cwd=release.tree, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert all(r["ok"] and r["variant"] == best for r in results), results
    assert sorted(r["source"] for r in results) == ["cache"] * 3 + ["download"]
    assert _archive_gets(release, best) - gets == 1
    assert _leftovers(tmp_path / "cache") == [best]


# 8. doctor -----------------------------------------------------------------------------------


def test_doctor_json_before_and_after_a_load(release: Release, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = release.env(cache)
    before = release.requests()
    empty = json.loads(_cli(release, env, "doctor", "--json").stdout)
    assert set(empty) >= {"profile", "candidates", "selected", "library", "settings"}
    assert {c["name"] for c in empty["candidates"]} == set(release.lock["manifest"]["variants"])
    for c in empty["candidates"]:
        assert set(c) >= {"name", "compatible", "score", "reasons"} and c["reasons"]
    assert empty["selected"] == _best(release)
    assert empty["library"]["source"] == "download" and empty["library"]["path"] is None
    assert empty["settings"]["cache_dir"] == {"value": str(cache), "source": "env:LLAMA_RUNTIME_CACHE"}
    assert all(set(v) == {"value", "source"} for v in empty["settings"].values())
    assert release.requests() == before and not cache.exists()  # doctor never downloads

    assert _load(release, env)["ok"]
    full = json.loads(_cli(release, env, "doctor", "--json").stdout)
    lib = full["library"]
    assert lib["source"] == "cache" and Path(lib["path"]).is_file()
    assert lib["sha256"] == _sha256(Path(lib["path"])) and len(lib["sha256"]) == 64
    assert "CPU :" in lib["system_info"]
    human = _cli(release, env, "doctor")
    assert human.returncode == 0 and f"selected: {full['selected']}" in human.stdout


def test_doctor_target_judges_another_machine(release: Release, populated, tmp_path: Path) -> None:
    env = release.env(populated[0])
    saved = json.loads(_cli(release, env, "doctor", "--json").stdout)
    saved["profile"]["arch"] = "aarch64"
    target = tmp_path / "arm.json"
    target.write_text(json.dumps(saved))
    out = _cli(release, env, "doctor", "--json", "--target", str(target))
    result = json.loads(out.stdout)
    assert result["profile"]["arch"] == "aarch64"
    x86 = [c for c in result["candidates"] if "x86_64" in c["name"]]
    assert x86 and all(not c["compatible"] and c["reasons"] for c in x86)
    assert any("aarch64" in r or "arm" in r for c in x86 for r in c["reasons"])
    assert result["library"] is None


# 9. cache list -------------------------------------------------------------------------------


def test_cache_list_shows_the_cached_variant(release: Release, populated) -> None:
    cache, first = populated
    out = _cli(release, release.env(cache), "cache", "list")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(f"{VERSION}/{first['variant']}")]
    assert len(lines) == 1, out.stdout
    assert "\tcomplete\t" in lines[0] and lines[0].endswith(str(cache / VERSION / first["variant"]))
