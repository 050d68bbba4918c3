"""A new contributor's checkout (no binary lock): `pip install .`, `pip install -e .` and
`uv pip install -e .` work, the build environment holds no huggingface_hub, the installed package
says how to get a library, `llama-runtime publish` makes the first release from such an install,
and LLAMA_RUNTIME_REPO/REVISION installs a release trusted as the hub serves it.

The checkout is a copy of this source tree without its lock (what `git clone` gives), installed
with real pip and uv into fresh virtual environments against the loopback hub of ``release``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from scripts import devrelease
from release_fixtures import Release

pytestmark = pytest.mark.slow

UV = str(Path(sys.executable).parent / "uv")
LOAD = "import llama_runtime; lib = llama_runtime.load(); print(lib.source, lib.variant, lib.path)"
NO_LOCK = "no binary lock (llama_runtime/binaries.lock.json) in this source tree"
FIRST = "contrib/first-release"  # a repo of its own on the shared loopback hub


def _run(cmd: list[str], env: dict[str, str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _env(release: Release, tmp: Path, **extra: str) -> dict[str, str]:
    env = release.env(tmp / "cache", UV_CACHE_DIR=str(tmp / "uv-cache"), **extra)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def _checkout(tmp: Path) -> Path:
    tree = devrelease.stage_source(tmp / "clone")  # the package sources, no lock: a fresh clone
    assert not (tree / "llama_runtime" / "binaries.lock.json").exists()
    return tree


def _site(python: Path) -> Path:
    return next((python.parent.parent / "lib").glob("python*/site-packages"))


def _build_deps(log: str) -> str:
    """What pip installed into the isolated build environment: its 'Successfully installed' line
    (the one naming hatchling; the package's own comes on another line, in another stream)."""
    lines = [line for line in log.splitlines() if "Successfully installed" in line and "hatchling-" in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip-download"])
def test_pip_install_of_a_checkout_ships_no_library_and_says_how_to_get_one(
        release: Release, tmp_path: Path, skip: bool) -> None:
    tree = _checkout(tmp_path)
    env = _env(release, tmp_path, **({"LLAMA_RUNTIME_SKIP_DOWNLOAD": "1"} if skip else {}))
    python = devrelease.make_venv(tmp_path / "venv")
    proc = devrelease.pip_install(python, str(tree), env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert (("skip-download is set" in log) if skip else (f"llama-runtime: {NO_LOCK}" in log
                                                          and "the wheel ships no llama.cpp library" in log))
    deps = _build_deps(log)  # hatchling and archspec (and hatchling's own), never huggingface_hub
    assert "hatchling-" in deps and "archspec-" in deps and "huggingface" not in deps.lower()
    libs = _site(python) / "llama_runtime" / "_libs"
    assert sorted(p.name for p in libs.iterdir()) == ["selection.json"]
    out = _run([python, "-c", LOAD], env, tmp_path / "elsewhere", ok=False)
    assert out.returncode != 0 and "NoReleaseError" in out.stderr
    for way in ("no binary lock", "LLAMA_RUNTIME_LIB", "LLAMA_RUNTIME_REPO and LLAMA_RUNTIME_REVISION"):
        assert way in out.stderr
    # the first way it names works: a libllama of a real variant folder
    variant = json.loads((release.variants / "linux-x86_64-cpu" / "variant.json").read_text())
    lib = release.variants / "linux-x86_64-cpu" / variant["libraries"][-1]
    explicit = _run([python, "-c", LOAD], {**env, "LLAMA_RUNTIME_LIB": str(lib)}, tmp_path / "elsewhere")
    assert explicit.stdout.split()[:2] == ["explicit", "None"]


def _editable(frontend: str, tree: Path, env: dict[str, str], tmp: Path) -> Path:
    if frontend == "pip":
        python = devrelease.make_venv(tmp / "venv")
        _run([python, "-m", "pip", "install", "--no-cache-dir", "-e", tree], env, tmp)
    else:
        _run([UV, "venv", "-q", "--python", sys.executable, tmp / "venv"], env, tmp)
        python = tmp / "venv" / "bin" / "python"
        _run([UV, "pip", "install", "--python", python, "-e", tree], env, tmp)
    return python


@pytest.mark.parametrize("frontend", ["pip", "uv"])
def test_editable_checkout_makes_the_first_release_and_then_loads_it(release: Release, tmp_path: Path,
                                                                    frontend: str) -> None:
    tree = _checkout(tmp_path)
    env = _env(release, tmp_path)
    python = _editable(frontend, tree, env, tmp_path)
    report = json.loads(next(_site(python).glob("llama_runtime_libs/selection.json")).read_text())
    assert report["selected"] is None and NO_LOCK in report["reason"]
    # the documented command, from this install; the lock goes where the package reads it: the tree
    published = _run([python.parent / "llama-runtime", "publish", release.variants, "--repo",
                      f"{FIRST}-{frontend}", "--revision", "v0.0.1"], env, tmp_path / "elsewhere")
    lock = tree / "llama_runtime" / "binaries.lock.json"
    assert f"lock written to {lock}" in published.stdout
    assert json.loads(lock.read_text())["repo"] == f"{FIRST}-{frontend}"
    loaded = _run([python, "-c", LOAD], env, tmp_path / "elsewhere")
    assert loaded.stdout.startswith("download ") and "no binary lock" not in loaded.stderr
    # ... and the sdist built now is a release: it carries the lock
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", tmp_path / "d", tree],
         env, tmp_path)
    with tarfile.open(next((tmp_path / "d").glob("*.tar.gz"))) as tf:
        assert [n for n in tf.getnames() if n.endswith("llama_runtime/binaries.lock.json")]


def test_checkout_installs_a_named_release_trusting_the_hub_with_a_warning(release: Release,
                                                                          tmp_path: Path) -> None:
    tree = _checkout(tmp_path)
    named = {"LLAMA_RUNTIME_REPO": devrelease.REPO, "LLAMA_RUNTIME_REVISION": "v0.1.0"}
    env = _env(release, tmp_path)
    python = devrelease.make_venv(tmp_path / "venv")
    proc = devrelease.pip_install(python, str(tree), {**env, **named})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    warning = (f"it trusts the manifest of {devrelease.REPO} at v0.1.0 (commit {release.lock['commit'][:12]})"
               f" as {release.hub.url} serves it")
    assert f"llama-runtime: WARNING: this llama-runtime has no binary lock: {warning}" in log
    report = json.loads((_site(python) / "llama_runtime" / "_libs" / "selection.json").read_text())
    assert report["selected"] and report["release"]["commit"] == release.lock["commit"]
    assert report["source"]["revision"] == release.lock["commit"] and report["source"]["trust"] == "hub"
    # the installed package knows its release without the variables, and says on whose word
    out = _run([python, "-c", LOAD], env, tmp_path / "elsewhere")
    assert out.stdout.startswith(f"installed {report['selected']} ")
    assert warning in out.stderr and "rest on that hub, not on the sdist" in out.stderr
