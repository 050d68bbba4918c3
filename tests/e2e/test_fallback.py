"""The real CUDA build (npm @node-llama-cpp/linux-x64-cuda@3.22.1) published next to the CPU one,
forced with LLAMA_BACKEND=cuda on this machine without an NVIDIA driver or CUDA runtime: it must
fail to load with the OS loader's message and fall back to the CPU variant (an error under strict).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PROBE = ("import json, logging, llama_runtime as l\n"
         "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
         "lib = l.load(); print(json.dumps({'variant': lib.variant, 'source': lib.source,"
         " 'attempts': lib.attempts, 'devices': lib.native.devices()}))")


def _load(tree: Path, endpoint: str, cache: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_"))}
    env.update(PYTHONPATH=str(tree), LLAMA_RUNTIME_ENDPOINT=endpoint, LLAMA_RUNTIME_CACHE=str(cache), **extra)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tree, capture_output=True,
                          text=True, timeout=300)


def test_forced_cuda_falls_back_to_cpu_with_loader_message(gpu_release, tmp_path: Path) -> None:
    tree, endpoint, _ = gpu_release
    proc = _load(tree, endpoint, tmp_path / "cache", LLAMA_BACKEND="cuda")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["variant"] == "linux-x86_64-cpu"
    assert [d["type"] for d in result["devices"]] == ["cpu"]
    (attempt,) = result["attempts"]
    assert attempt.startswith("download linux-x86_64-cuda13: the cuda backend")
    # the dynamic loader's own words about the missing CUDA runtime
    assert "cannot open shared object file" in attempt and ".so." in attempt
    assert "WARNING" in proc.stderr and "linux-x86_64-cuda13" in proc.stderr
    # the CUDA variant was really fetched and verified before it was tried
    assert (tmp_path / "cache" / "0.1.0" / "linux-x86_64-cuda13" / "libggml-cuda.so").is_file()


def test_forced_cuda_under_strict_is_an_error(gpu_release, tmp_path: Path) -> None:
    tree, endpoint, _ = gpu_release
    proc = _load(tree, endpoint, tmp_path / "cache", LLAMA_BACKEND="cuda", LLAMA_RUNTIME_STRICT="1")
    assert proc.returncode != 0
    # the first fallback refused: CUDA was asked for where no driver is visible
    assert "LibraryLoadError" in proc.stderr and "LLAMA_RUNTIME_STRICT=1" in proc.stderr
    assert "no NVIDIA driver" in proc.stderr and "LLAMA_BACKEND=cuda" in proc.stderr


def test_auto_never_picks_cuda_without_a_driver(gpu_release, tmp_path: Path) -> None:
    tree, endpoint, _ = gpu_release
    proc = _load(tree, endpoint, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["variant"] == "linux-x86_64-cpu" and result["attempts"] == []
    assert not (tmp_path / "cache" / "0.1.0" / "linux-x86_64-cuda13").exists()  # never downloaded
