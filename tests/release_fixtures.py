"""Session fixtures for a real release on loopback: variants -> hub -> lock -> sdist -> venv.

Imported by conftest.py. Heavy artifacts (npm packs, source builds) are cached under
~/.cache/llama-runtime-dev by scripts/build_variants.py, so only the first run is slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from scripts import devrelease
from scripts.hubserver import HubServer


# A sitecustomize that makes every socket connect fail in the process that imports it.
NO_NETWORK = """
import socket
def _refuse(self, address):
    raise OSError(f"network guard: connect to {address!r} refused")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
"""


def network_guard(folder: Path) -> Path:
    """A folder to put on PYTHONPATH: every Python process started with it opens no connection."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(NO_NETWORK)
    return folder


# load once; print what came back, or the error's class names and message, as one JSON line
LOAD_JSON = """
import json, llama_runtime
try:
    out = {"ok": True, **llama_runtime.load().to_dict()}
except Exception as exc:
    out = {"ok": False, "types": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}
print(json.dumps(out))
"""


@dataclass
class Release:
    hub: HubServer
    tree: Path  # a source tree whose binaries.lock.json points at the hub
    lock: dict
    sdist: Path
    variants: Path

    def archive(self, name: str) -> str:
        return self.lock["manifest"]["variants"][name]["archive"]

    def env(self, cache: Path, **extra: str) -> dict[str, str]:
        """Environment for a run against this release with its own cache folder."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_"))}
        return {**base, "LLAMA_RUNTIME_ENDPOINT": self.hub.url, "LLAMA_RUNTIME_CACHE": str(cache),
                "HF_HUB_DISABLE_TELEMETRY": "1", **extra}

    def requests(self) -> int:
        assert self.hub.httpd is not None
        return sum(self.hub.httpd.stats()["requests"].values())


@pytest.fixture(scope="session")
def bv() -> ModuleType:
    """``scripts/build_variants.py``, the variant builder (one module object for every test, so
    its exception and dataclass types are the ones its functions raise and return)."""
    from scripts import build_variants

    return build_variants


@pytest.fixture(scope="session")
def variants_dir() -> Path:
    """Real variant folders: the npm prebuilt and a source build (cached between runs)."""
    return devrelease.build_variant_dirs(devrelease.dev_cache() / "variants")


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory, variants_dir: Path) -> Iterator[Release]:
    work = tmp_path_factory.mktemp("release")
    with HubServer(work / "hub") as hub:
        tree = devrelease.stage_source(work / "src")
        lock_path = devrelease.publish_release(tree, variants_dir, hub.url)
        sdist = devrelease.build_sdist(tree, work / "dist")
        yield Release(hub, tree, json.loads(lock_path.read_text()), sdist, variants_dir)


@pytest.fixture
def hub_faults(release: Release) -> Iterator[Any]:
    """The release hub's server with no fault rules, cleared again after the test."""
    assert release.hub.httpd is not None
    release.hub.httpd.clear_faults()
    yield release.hub.httpd
    release.hub.httpd.clear_faults()


@pytest.fixture(scope="session")
def tiny_model(tiny_gguf: Path) -> Path:
    """The binding tests' tiny llama (``write_tiny_llama`` defaults, seed 0), written once."""
    return tiny_gguf


def run_source_cli(release: Release, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m llama_runtime`` from the release's source tree (no install)."""
    return subprocess.run([sys.executable, "-m", "llama_runtime", *args], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(release.tree)}, timeout=300,
                          cwd=release.tree)


def run_source_py(release: Release, env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    """A Python snippet importing the release's source tree, in a fresh process."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(release.tree)}, timeout=300,
                          cwd=release.tree)


CUDA_NPM = "@node-llama-cpp/linux-x64-cuda@3.22.1"
CPU_NPM = "@node-llama-cpp/linux-x64@3.22.1"


@pytest.fixture(scope="session")
def gpu_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    """The real npm CUDA 13 build published next to the npm CPU build: (tree, endpoint, sdist)."""
    variants = devrelease.build_variant_dirs(devrelease.dev_cache() / "variants-gpu",
                                             "--npm", CUDA_NPM, "--npm", CPU_NPM)
    work = tmp_path_factory.mktemp("gpu-release")
    with HubServer(work / "hub") as hub:
        tree = devrelease.stage_source(work / "src")
        devrelease.publish_release(tree, variants, hub.url)
        yield tree, hub.url, devrelease.build_sdist(tree, work / "dist")


def publish_file(hub: HubServer, repo: str, name: str, data: bytes, token: str | None = None) -> str:
    """Upload one file to ``repo`` (created) on ``hub`` with the real client; the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo(repo, exist_ok=True)
    info = api.upload_file(path_or_fileobj=data, path_in_repo=name, repo_id=repo)
    return str(info.oid)
