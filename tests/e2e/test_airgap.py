"""Air-gapped installs: `llama-runtime fetch --dest DIR` on a connected machine, then
`LLAMA_RUNTIME_MIRROR=DIR pip install` with no network at all (every socket connect refused in
every Python process, pip's included); and LLAMA_RUNTIME_OFFLINE with and without a cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts import devrelease
from release_fixtures import Release, network_guard, run_source_cli

pytestmark = pytest.mark.slow
BUILD_DEPS = ("hatchling>=1.26", "huggingface_hub>=1.0,<3", "archspec>=0.2.5")


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """What an air-gapped machine gets next to our sdist: wheels of the build and run deps."""
    house = devrelease.dev_cache() / "wheelhouse"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "-d", str(house), *BUILD_DEPS], check=True)
    return house


def _offline_install(release: Release, wheelhouse: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    python = devrelease.make_venv(tmp_path / "venv")
    guard = network_guard(tmp_path / "guard")
    full = release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT="http://127.0.0.1:9", **env)
    prep = devrelease.pip_install(python, "hatchling", full, "--no-index", "--find-links", str(wheelhouse),
                                  "filelock")  # the build requirements, as the README says
    assert prep.returncode == 0, prep.stderr[-2000:]
    # PYTHONPATH reaches pip and the (non-isolated) build: every socket connect fails
    return subprocess.run([str(python), "-m", "pip", "install", "-v", "--no-index", "--find-links", str(wheelhouse),
                           "--no-build-isolation", "--no-cache-dir", str(release.sdist)],
                          env={**full, "PYTHONPATH": str(guard)}, capture_output=True, text=True, cwd=tmp_path)


def test_mirror_install_with_no_network(release: Release, wheelhouse: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    fetched = run_source_cli(release, release.env(tmp_path / "fetch-cache"), "fetch", "--dest", str(mirror))
    assert fetched.returncode == 0, fetched.stderr
    assert (mirror / "manifest.json").is_file() and list(mirror.glob("*.tar.gz"))
    proc = _offline_install(release, wheelhouse, tmp_path, LLAMA_RUNTIME_MIRROR=str(mirror))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "llama-runtime: selected" in proc.stdout + proc.stderr
    assert f"from {mirror}" in proc.stdout + proc.stderr
    site = next((tmp_path / "venv" / "lib").glob("python*/site-packages/llama_runtime/_libs"))
    assert list(site.glob("libllama*.so"))


def test_offline_install_uses_a_populated_cache(release: Release, wheelhouse: Path, tmp_path: Path) -> None:
    cache_env = release.env(tmp_path / "cache")
    warm = run_source_cli(release, cache_env, "fetch", "--best")
    assert warm.returncode == 0, warm.stderr
    proc = _offline_install(release, wheelhouse, tmp_path, LLAMA_RUNTIME_OFFLINE="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "found in cache" in proc.stdout + proc.stderr


def test_offline_install_without_cache_says_how_to_fix(release: Release, wheelhouse: Path, tmp_path: Path) -> None:
    proc = _offline_install(release, wheelhouse, tmp_path, LLAMA_RUNTIME_OFFLINE="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "offline mode forbids downloading" in out and "LLAMA_RUNTIME_MIRROR" in out
    assert "network guard" not in out  # we refused before any connection was tried
