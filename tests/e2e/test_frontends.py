"""The install-time hook under every frontend people use: pip, pip wheel, python -m build, uv,
editable installs, -C config settings, cross/Docker targets, and a wheel reused from a cache.

Every test runs the real frontend against the loopback hub of the ``release`` fixture, from a
temporary working directory and without PYTHONPATH, so the checkout's own ``llama_runtime``
(which has no lock) can never be imported by accident.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from scripts import devrelease
from release_fixtures import Release

pytestmark = pytest.mark.slow

UV = str(Path(sys.executable).parent / "uv")
CPU, CPU_V3 = "linux-x86_64-cpu", "linux-x86_64-cpu-v3"
BEST = "linux-x86_64-cpu-omp"  # this (x86-64-v3+) machine's selection: priority over v3
FIX = "pip install --no-cache-dir --force-reinstall llama-runtime"
LOAD = "import llama_runtime; lib = llama_runtime.load(); print(lib.source, lib.variant, lib.path)"


def _env(release: Release, tmp: Path, **extra: str) -> dict[str, str]:
    env = release.env(tmp / "cache", UV_CACHE_DIR=str(tmp / "uv-cache"), **extra)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    if ok:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _wheel_report(wheel: Path, release: Release) -> dict[str, Any]:
    """The build report of a platform wheel, after checking it holds the selected libraries."""
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        report: dict[str, Any] = json.loads(zf.read("llama_runtime/_libs/selection.json"))
        names = set(zf.namelist())
    variant = release.lock["manifest"]["variants"][report["selected"]]
    assert {f"llama_runtime/_libs/{f}" for f in variant["libraries"] + variant.get("plugins", [])} <= names
    return report


def _site_libs(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages/llama_runtime/_libs"))


def _uv_venv(venv: Path, env: dict[str, str]) -> Path:
    _run([UV, "venv", "-q", "--python", sys.executable, str(venv)], env, venv.parent)
    return venv / "bin" / "python"


def _copy_tree(release: Release, dest: Path) -> Path:
    """A private copy of the staged source tree (editable installs write into it)."""
    shutil.copytree(release.tree, dest, ignore=shutil.ignore_patterns("_libs", "__pycache__"))
    return dest


def _this_machine_variant(release: Release, tmp: Path) -> str:
    doctor = _run([sys.executable, "-m", "llama_runtime", "doctor", "--json"],
                  {**_env(release, tmp), "PYTHONPATH": str(release.tree)}, release.tree)
    return json.loads(doctor.stdout)["selected"]


# -- 1. frontends ---------------------------------------------------------------------------

def test_uv_pip_install_sdist(release: Release, tmp_path: Path) -> None:
    env = _env(release, tmp_path)
    python = _uv_venv(tmp_path / "venv", env)
    _run([UV, "pip", "install", "--python", python, str(release.sdist)], env, tmp_path)
    report = json.loads((_site_libs(tmp_path / "venv") / "selection.json").read_text())
    assert report["selected"] == _this_machine_variant(release, tmp_path)
    out = _run([python, "-c", LOAD], env, tmp_path)
    assert out.stdout.startswith(f"installed {report['selected']} ")


def test_pip_wheel(release: Release, tmp_path: Path) -> None:
    env = _env(release, tmp_path)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", tmp_path / "w",
          release.sdist], env, tmp_path)
    report = _wheel_report(next((tmp_path / "w").glob("*.whl")), release)
    assert report["selected"] == _this_machine_variant(release, tmp_path)


def test_python_m_build_wheel_from_tree(release: Release, tmp_path: Path) -> None:
    tree = _copy_tree(release, tmp_path / "src")
    env = _env(release, tmp_path)
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "w", tree], env, tmp_path)
    report = _wheel_report(next((tmp_path / "w").glob("*.whl")), release)
    assert report["selected"] == _this_machine_variant(release, tmp_path)


def test_uv_build_wheel_from_tree(release: Release, tmp_path: Path) -> None:
    tree = _copy_tree(release, tmp_path / "src")
    env = _env(release, tmp_path)
    _run([UV, "build", "--wheel", "--python", sys.executable, "--out-dir", tmp_path / "w", tree],
         env, tmp_path)
    report = _wheel_report(next((tmp_path / "w").glob("*.whl")), release)
    assert report["selected"] == _this_machine_variant(release, tmp_path)


# -- 2. editable installs -------------------------------------------------------------------

def _editable_libs(python: Path) -> Path:
    return next((python.parent.parent / "lib").glob("python*/site-packages/llama_runtime_libs"))


def _check_editable(tree: Path, python: Path, env: dict[str, str], cwd: Path) -> str:
    libs = _editable_libs(python)
    report = json.loads((libs / "selection.json").read_text())
    assert report["selected"] and all((libs / f).is_file() for f in report["variant"]["libraries"])
    out = _run([python, "-c", LOAD + "; import llama_runtime; print(llama_runtime.__file__)"], env, cwd)
    source, variant, path, module = out.stdout.split()
    assert (source, variant) == ("installed", report["selected"])
    assert Path(path).resolve().parent == libs.resolve()
    assert Path(module).resolve().is_relative_to(tree.resolve())  # the editable import reads the tree
    assert not (tree / "llama_runtime" / "_libs").exists()  # nothing written into the tree
    return report["built_at"]


def test_pip_editable(release: Release, tmp_path: Path) -> None:
    tree = _copy_tree(release, tmp_path / "src")
    env = _env(release, tmp_path)
    python = devrelease.make_venv(tmp_path / "venv")
    _run([python, "-m", "pip", "install", "--no-cache-dir", "-e", tree], env, tmp_path)
    _check_editable(tree, python, env, tmp_path / "elsewhere")
    libs = _editable_libs(python)
    _run([python, "-m", "pip", "uninstall", "-y", "llama-runtime"], env, tmp_path)
    gone = _run([python, "-c", "import llama_runtime"], env, tmp_path / "elsewhere", ok=False)
    assert gone.returncode != 0
    assert not libs.exists()  # the libraries are in the wheel's RECORD: removed on uninstall
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", tmp_path / "d", tree],
         env, tmp_path)
    with tarfile.open(next((tmp_path / "d").glob("*.tar.gz"))) as tf:
        assert not [n for n in tf.getnames() if "_libs" in n or n.endswith(".so")]


def test_uv_pip_editable_reinstall_replaces_libs(release: Release, tmp_path: Path) -> None:
    tree = _copy_tree(release, tmp_path / "src")
    env = _env(release, tmp_path)
    python = _uv_venv(tmp_path / "venv", env)
    _run([UV, "pip", "install", "--python", python, "-e", tree], env, tmp_path)
    first = _check_editable(tree, python, env, tmp_path / "elsewhere")
    _run([UV, "pip", "install", "--python", python, "--reinstall-package", "llama-runtime",
          "-e", tree, "-C", f"variant={CPU}"], env, tmp_path)
    libs = _editable_libs(python)
    report = json.loads((libs / "selection.json").read_text())
    assert report["selected"] == CPU and report["built_at"] >= first
    # the previous variant's files are gone: the installer replaced the wheel's files
    assert sorted(p.name for p in libs.iterdir() if p.name != "__pycache__") == sorted(
        report["variant"]["libraries"] + report["variant"].get("plugins", []) + ["selection.json"])
    assert _check_editable(tree, python, env, tmp_path / "elsewhere")
    _run([UV, "pip", "uninstall", "--python", python, "llama-runtime"], env, tmp_path)
    assert not libs.exists()


# -- 3. config settings, and 4. what `pip install -v` shows ----------------------------------

def test_pip_config_settings_choose_variant_and_log_says_why(release: Release, tmp_path: Path) -> None:
    env = _env(release, tmp_path)
    python = devrelease.make_venv(tmp_path / "venv")
    # current pip here; pip 23 (ensurepip's) runs in the other pip tests
    _run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], env, tmp_path)
    proc = _run([python, "-m", "pip", "install", "-v", "--no-cache-dir", "-C", "backend=cpu",
                 "-C", f"variant={CPU}", release.sdist], env, tmp_path)
    report = json.loads((_site_libs(tmp_path / "venv") / "selection.json").read_text())
    assert report["selected"] == CPU
    assert report["request"] == {"backend": "cpu", "variant": CPU, "target": None}
    assert report["settings"]["variant"]["source"] == "config-settings"
    log = proc.stdout + proc.stderr
    size = release.lock["manifest"]["variants"][CPU]["size"]
    assert "llama-runtime: machine: linux/x86_64, glibc" in log  # the profile in one line
    assert f"llama-runtime: selected {CPU}" in log  # the chosen variant and why
    assert (f"llama-runtime: {release.archive(CPU)}: {size} bytes, downloaded from {release.hub.url}"
            in log)
    out = _run([python, "-c", LOAD], env, tmp_path)
    assert out.stdout.startswith(f"installed {CPU} ")  # the request travels with the wheel


def _pip_wheel(release: Release, tmp: Path, *args: str, ok: bool = True,
               **env: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", tmp / "w",
                 *args, release.sdist], _env(release, tmp, **env), tmp, ok=ok)


def test_skip_download_setting_ships_no_library(release: Release, tmp_path: Path) -> None:
    _pip_wheel(release, tmp_path, "-C", "skip-download=1")
    wheel = next((tmp_path / "w").glob("*.whl"))
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".so")]
        report = json.loads(zf.read("llama_runtime/_libs/selection.json"))
    assert report["selected"] is None and "skip-download" in report["reason"]


@pytest.mark.parametrize(("setting", "message"), [
    ("colour=blue", "unknown config setting 'colour'; valid keys: backend, variant, target, skip-download"),
    ("backend=cuda99", "-C backend='cuda99' is not a known backend; valid values: auto, cpu, cuda, cuda11,"),
], ids=["unknown-key", "bad-backend"])
@pytest.mark.parametrize("frontend", ["pip", "uv"])
def test_bad_config_setting_fails_build(release: Release, tmp_path: Path, frontend: str, setting: str,
                                        message: str) -> None:
    if frontend == "pip":
        proc = _pip_wheel(release, tmp_path, "-C", setting, ok=False)
    else:
        proc = _run([UV, "build", "--wheel", "--python", sys.executable, "--out-dir", tmp_path / "w",
                     "-C", setting, release.sdist], _env(release, tmp_path), tmp_path, ok=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"llama-runtime: error: {message}" in out and "Traceback" not in out


@pytest.mark.parametrize("flag", ["--config-settings-package", "--config-settings"])
def test_uv_config_settings(release: Release, tmp_path: Path, flag: str) -> None:
    env = _env(release, tmp_path)
    python = _uv_venv(tmp_path / "venv", env)
    value = f"llama-runtime:variant={CPU}" if flag.endswith("package") else f"variant={CPU}"
    _run([UV, "pip", "install", "--python", python, flag, value, release.sdist], env, tmp_path)
    report = json.loads((_site_libs(tmp_path / "venv") / "selection.json").read_text())
    assert report["selected"] == CPU and report["request"]["variant"] == CPU


# -- 5. cross / Docker builds ---------------------------------------------------------------

def test_target_variant_name_builds_without_probe(release: Release, tmp_path: Path) -> None:
    proc = _pip_wheel(release, tmp_path, "-v", LLAMA_RUNTIME_TARGET=CPU)
    report = _wheel_report(next((tmp_path / "w").glob("*.whl")), release)
    assert report["selected"] == CPU and report["cross"] is True
    assert report["profile"] is None and report["request"] == {"backend": "auto", "variant": CPU, "target": CPU}
    out = proc.stdout + proc.stderr
    assert f"target variant {CPU} (LLAMA_RUNTIME_TARGET); no probe of this machine" in out
    assert "llama-runtime: machine:" not in out
    # installed on a machine that could run a better variant, the named one is kept (Docker)
    env = _env(release, tmp_path, LLAMA_RUNTIME_STRICT="1")
    python = _uv_venv(tmp_path / "venv", env)
    _run([UV, "pip", "install", "--python", python, next((tmp_path / "w").glob("*.whl"))], env, tmp_path)
    loaded = _run([python, "-c", LOAD], env, tmp_path)
    assert loaded.stdout.startswith(f"installed {CPU} ") and not loaded.stderr


def _old_cpu_profile(release: Release, tmp: Path) -> Path:
    """This machine's ``doctor --json``, edited into a baseline x86-64 CPU with no extensions."""
    env = {**_env(release, tmp), "PYTHONPATH": str(release.tree)}
    doctor = json.loads(_run([sys.executable, "-m", "llama_runtime", "doctor", "--json"], env,
                             release.tree).stdout)
    assert doctor["selected"] == BEST  # this machine; the target below is an older CPU
    doctor["profile"]["cpu"].update(x86_64_level=1, features=[], microarchitecture="x86_64")
    target = tmp / "target.json"
    target.write_text(json.dumps(doctor))
    return target


@pytest.mark.parametrize("how", ["env", "config-setting"])
def test_target_profile_file_builds_for_that_machine(release: Release, tmp_path: Path, how: str) -> None:
    target = _old_cpu_profile(release, tmp_path)
    if how == "env":
        proc = _pip_wheel(release, tmp_path, "-v", LLAMA_RUNTIME_TARGET=str(target))
    else:
        proc = _pip_wheel(release, tmp_path, "-v", "-C", f"target={target}")
    report = _wheel_report(next((tmp_path / "w").glob("*.whl")), release)
    assert report["selected"] == CPU and report["cross"] is True
    assert report["profile"]["cpu"]["x86_64_level"] == 1
    rejected = {c["name"]: c for c in report["candidates"]}[CPU_V3]
    assert not rejected["compatible"] and rejected["reasons"]
    assert "llama-runtime: machine: linux/x86_64, glibc" in proc.stdout + proc.stderr


# -- 6. a wheel from pip's cache that no longer fits ----------------------------------------

@pytest.fixture(scope="module")
def reused(release: Release, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """A venv whose llama-runtime came from pip's wheel cache, built for an older CPU."""
    tmp = tmp_path_factory.mktemp("reused")
    pip_cache = str(tmp / "pip-cache")
    # named, as an index install is: pip looks its wheel cache up by name and URL
    req = f"llama-runtime @ {release.sdist.as_uri()}"
    # first a build for another machine (an older CPU), cached by pip under the sdist's URL only
    target = _old_cpu_profile(release, tmp)
    other = devrelease.make_venv(tmp / "other")
    _run([other, "-m", "pip", "install", "--cache-dir", pip_cache, req],
         _env(release, tmp, LLAMA_RUNTIME_TARGET=str(target)), tmp)
    # ... then an ordinary install here, which pip serves from that cache without building
    env = _env(release, tmp)
    python = devrelease.make_venv(tmp / "venv")
    proc = _run([python, "-m", "pip", "install", "-v", "--cache-dir", pip_cache, req], env, tmp)
    assert "llama-runtime: machine:" not in proc.stdout + proc.stderr  # the hook did not run
    assert json.loads((_site_libs(tmp / "venv") / "selection.json").read_text())["selected"] == CPU
    return python, env, tmp


# defined before the test below, which re-installs the package in the shared venv
def test_reused_wheel_offline_still_loads_the_shipped_library(reused: tuple[Path, dict[str, str], Path],
                                                               tmp_path: Path) -> None:
    python, env, _ = reused
    env = {**env, "LLAMA_RUNTIME_OFFLINE": "1", "LLAMA_RUNTIME_CACHE": str(tmp_path / "empty")}
    out = _run([python, "-c", LOAD], env, tmp_path, ok=False)
    assert out.stdout.startswith(f"installed {CPU} "), out.stderr[-2000:]
    assert FIX in out.stderr


def test_wheel_reused_from_pip_cache_warns_fetches_late_and_strict_fails(
        reused: tuple[Path, dict[str, str], Path], release: Release) -> None:
    python, env, tmp = reused
    first = _run([python, "-c", LOAD], env, tmp)
    assert first.stdout.startswith(f"download {BEST} "), first.stdout + first.stderr
    assert f"({CPU}, built for: " in first.stderr and "no longer fits" in first.stderr
    assert f"{BEST} fits this machine better" in first.stderr and f"`{FIX}`" in first.stderr
    again = _run([python, "-c", LOAD], env, tmp)
    assert again.stdout.startswith(f"cache {BEST} ") and FIX in again.stderr

    strict = _run([python, "-c", LOAD], {**env, "LLAMA_RUNTIME_STRICT": "1"}, tmp, ok=False)
    assert strict.returncode != 0
    assert "LLAMA_RUNTIME_STRICT=1" in strict.stderr and FIX in strict.stderr

    # the fix the warning names (the sdist stands in for the index here)
    _run([python, "-m", "pip", "install", "--no-cache-dir", "--force-reinstall", "--no-deps",
          release.sdist], env, tmp)
    fixed = _run([python, "-c", LOAD], {**env, "LLAMA_RUNTIME_STRICT": "1"}, tmp)
    assert fixed.stdout.startswith(f"installed {BEST} ") and FIX not in fixed.stderr
