"""`LLAMA_BACKEND=cuda pip install` of the sdist: the wheel ships the real npm CUDA 13 build and
declares NVIDIA's runtime wheels, pip installs them in the same command, and the loader takes
libcudart/libcublas from site-packages so that only the driver (libcuda.so.1) is missing here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from scripts import devrelease

pytestmark = pytest.mark.slow
CUDA = "linux-x86_64-cuda13"


@pytest.fixture(scope="module")
def cuda_venv(gpu_release, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    _, endpoint, sdist = gpu_release
    work = tmp_path_factory.mktemp("cuda-venv")
    python = devrelease.make_venv(work / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_"))}
    env.update(LLAMA_RUNTIME_ENDPOINT=endpoint, LLAMA_RUNTIME_CACHE=str(work / "cache"))
    proc = devrelease.pip_install(python, str(sdist), {**env, "LLAMA_BACKEND": "cuda"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return python, env, proc.stdout + proc.stderr


def _py(python: Path, env: dict[str, str], code: str, tmp: Path) -> dict:
    proc = subprocess.run([str(python), "-c", code], env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_wheel_declares_and_pip_installs_nvidia_runtime_wheels(cuda_venv, tmp_path: Path) -> None:
    python, env, log = cuda_venv
    out = _py(python, env, "import json, importlib.metadata as m; print(json.dumps({"
              "'requires': m.requires('llama-runtime'),"
              "'have': [d.metadata['Name'] for d in m.distributions()]}))", tmp_path)
    # the runtime at least the toolkit the plugin was built with (its PTX ISA says 13.1)
    assert {"nvidia-cublas>=13,<14", "nvidia-cuda-runtime>=13.1,<14"} <= set(out["requires"])
    assert {"nvidia-cublas", "nvidia-cuda-runtime"} <= set(out["have"])  # resolved in the same command
    assert f"selected {CUDA}" in log


def test_only_the_driver_is_missing(cuda_venv, tmp_path: Path) -> None:
    python, env, _ = cuda_venv
    doctor = subprocess.run([str(python.parent / "llama-runtime"), "doctor", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    deps = {d["name"]: d for d in json.loads(doctor.stdout)["native_dependencies"][CUDA]}
    assert {n for n, d in deps.items() if not d["found"]} == {"libcuda.so.1"}
    assert "driver" in deps["libcuda.so.1"]["provider"]
    for name in ("libcudart.so.13", "libcublas.so.13"):
        assert "site-packages/nvidia/" in deps[name]["where"]
    human = subprocess.run([str(python.parent / "llama-runtime"), "doctor"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert "libcuda.so.1" in human.stdout and "MISSING" in human.stdout


def test_shipped_cuda_library_fails_on_the_driver_alone_and_falls_back(cuda_venv, tmp_path: Path) -> None:
    python, env, _ = cuda_venv
    out = _py(python, env, "import json, llama_runtime as l; lib = l.load(); print(json.dumps("
              "{'variant': lib.variant, 'source': lib.source, 'attempts': lib.attempts}))", tmp_path)
    assert out["variant"] == "linux-x86_64-cpu" and out["source"] in ("download", "cache")
    (attempt,) = out["attempts"]
    assert attempt.startswith(f"installed {CUDA}")
    # the dynamic loader's own complaint, with NVIDIA's wheels already loaded from site-packages
    assert "libcuda.so.1: cannot open shared object file" in attempt
    assert "libcudart" not in attempt.split("missing:")[0] and "libcublas" not in attempt.split("missing:")[0]


def test_strict_install_refuses_cuda_where_no_driver_is_visible(gpu_release, tmp_path: Path) -> None:
    _, endpoint, sdist = gpu_release
    python = devrelease.make_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_"))}
    env.update(LLAMA_RUNTIME_ENDPOINT=endpoint, LLAMA_RUNTIME_CACHE=str(tmp_path / "cache"),
               LLAMA_BACKEND="cuda", LLAMA_RUNTIME_STRICT="1")
    proc = devrelease.pip_install(python, str(sdist), env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "LLAMA_RUNTIME_STRICT=1 forbids building with a fallback" in out and "no NVIDIA driver" in out
    assert not (tmp_path / "cache" / "0.1.0" / CUDA).exists()  # refused before any download


def test_named_cuda_variant_builds_where_no_driver_is_visible_as_the_backend_does(gpu_release,
                                                                                 tmp_path: Path) -> None:
    """`LLAMA_RUNTIME_VARIANT=<the CUDA variant> pip wheel` here (no driver) builds it with a warning,
    as `LLAMA_BACKEND=cuda` does, instead of refusing with "no variant fits" (issue 15, point 7)."""
    import sys
    import zipfile

    _, endpoint, sdist = gpu_release
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_"))}
    env.update(LLAMA_RUNTIME_ENDPOINT=endpoint, LLAMA_RUNTIME_CACHE=str(tmp_path / "cache"),
               LLAMA_RUNTIME_VARIANT=CUDA)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir",
                           "--disable-pip-version-check", "-w", str(tmp_path / "wheels"), str(sdist)],
                          env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"kept: LLAMA_RUNTIME_VARIANT={CUDA} asked for it" in log and "no NVIDIA driver" in log
    (wheel,) = (tmp_path / "wheels").glob("llama_runtime-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "llama_runtime/_libs/libggml-cuda.so" in names
    report = json.loads(zipfile.ZipFile(wheel).read("llama_runtime/_libs/selection.json"))
    assert report["selected"] == CUDA and report["request"]["variant"] == CUDA
