"""Qualify a Linux aarch64 variant on an x86-64 Linux machine: its CPU plugins under
``qemu-aarch64 -cpu MODEL``, driven by ``driver.c`` cross-compiled with Debian's
``gcc-aarch64-linux-gnu`` (no aarch64 Python is needed: the driver does what
:mod:`llama_runtime.plugins.child` does and prints the same JSON lines).

Which model runs which plugin (``qemu_aarch64.json``): each ARM plugin under the model with the
fewest features that has all the HWCAPs ggml scores it on (its floor: an instruction beyond
them dies here, not on a user's older CPU), an SVE plugin also at 128- and 256-bit vectors. A
plugin no model has the features of stays "not qualified here", with the reason.

The driver is compiled on demand (qualification runs where variants are built and published:
the maintainer's machine) into ``<store>/drivers/<hash of source, headers, compiler>/``; the
source ships with the package so ``llama-runtime publish`` can qualify from an installed copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .where import Run

DRIVER = Path(__file__).parent / "driver.c"
INCLUDE = Path(__file__).parent.parent / "native" / "include"
# the Debian packages each tool comes in (scripts/dev installs them)
PACKAGES = {"qemu-aarch64": "qemu-user", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu"}


@lru_cache(maxsize=1)
def arm_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(__file__).parent / "qemu_aarch64.json").read_text(encoding="utf-8"))
    return data


def sysroot() -> Path:
    return Path(arm_data()["sysroot"])


def missing_tools() -> list[str]:
    """The Debian packages this machine lacks to run an aarch64 variant (empty: none)."""
    lacking = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if not (sysroot() / "lib" / "libc.so.6").exists():
        lacking.append("libc6-arm64-cross")
    if not (sysroot() / "lib" / "libgomp.so.1").exists():  # an OpenMP build bundles its own; npm's may not
        lacking.append("libgomp1-arm64-cross")
    return lacking


def arm_tag(file: str) -> str | None:
    """``libggml-cpu-armv8.2_2.so`` -> ``armv8.2_2``; None for a file that is no ARM CPU plugin."""
    from ..plugins.rank import plugin_variant

    tag = plugin_variant(file, "linux")
    return tag if tag is not None and tag.startswith("arm") else None


def floor_model(needs: Sequence[str]) -> str | None:
    """The qemu model with the fewest features that has every one of ``needs``."""
    fits = [(len(f), i, m) for i, (m, f) in enumerate(arm_data()["models"].items()) if set(needs) <= set(f)]
    return min(fits)[2] if fits else None


def arm_runs(file: str) -> tuple[list[Run], str | None]:
    """The runs of one plugin of an aarch64 variant, and why it cannot run here (None when it can)."""
    data, tag = arm_data(), arm_tag(file)
    needs = data["plugins"].get(tag or "")
    if needs is None:
        return [], (f"an ARM plugin this llama-runtime does not know ({tag or file}): which qemu-aarch64"
                    " model has its features is not recorded in qemu_aarch64.json")
    model = floor_model(needs)
    if model is None:
        return [], f"needs {' '.join(needs)}, which no qemu-aarch64 -cpu model of {', '.join(data['models'])} has"
    emulator = data["emulator"]
    runs = [Run(file, f"{emulator} -cpu {model}", f"the oldest CPU it is built for ({tag}: {' '.join(needs) or 'NEON'})")]
    if "sve" in needs:
        runs += [Run(file, f"{emulator} -cpu {model},{vl}", f"SVE at {int(vl.rsplit('=', 1)[1]) * 8} bits")
                 for vl in data["sve_lengths"]]
    return runs, None


@lru_cache(maxsize=4)
def _compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    return out.splitlines()[0] if out else cc


def driver_hash(cc: str) -> str:
    """What the driver binary is made of: its source, the headers, the compiler."""
    h = hashlib.sha256(DRIVER.read_bytes())
    for header in sorted(INCLUDE.glob("*.h")):
        h.update(header.name.encode() + header.read_bytes())
    h.update(_compiler_version(cc).encode())
    return h.hexdigest()[:16]


def build_driver(root: Path, cc: str | None = None, suffix: str = "") -> Path:
    """``driver.c`` compiled by ``cc`` (default: the aarch64 cross compiler), cached under ``root``."""
    cc = cc or str(arm_data()["compiler"])
    folder = root / "drivers" / driver_hash(cc)
    exe = folder / f"qualify-driver{suffix}"
    if exe.is_file():
        return exe
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        cmd = [cc, "-std=gnu11", "-O2", "-Wall", "-I", str(INCLUDE), str(DRIVER), "-o", str(tmp / exe.name),
               *(["-static"] if suffix == ".exe" else ["-ldl"])]  # MinGW: no runtime DLL to find under Wine
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        os.replace(tmp / exe.name, exe)  # atomic: a concurrent builder's binary is the same
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return exe


def job_text(job: Mapping[str, Any]) -> str:
    """The child's JSON job (:mod:`llama_runtime.plugins.child`) as the driver's lines."""
    lines = [f"lib {p}" for p in job["libraries"]]
    if job.get("plugin"):  # a Windows job (.wine) has it as Wine sees it
        lines.append(f"plugin {job.get('plugin_path') or Path(job['folder']) / job['plugin']}")
    if job.get("backend_dir"):
        lines.append(f"backend_dir {job['backend_dir']}")
    if job.get("quantize"):
        from ..quant import find_quant_type

        lines.append(f"source {job['source']}")
        lines += [f"quantize {t} {find_quant_type(t).ftype} {dest}" for t, dest in job["quantize"]]
        return "\n".join(lines) + "\n"
    lines += [f"prompt {' '.join(map(str, job['prompt']))}", f"n_gen {job['n_gen']}", f"threads {job['n_threads']}"]
    lines += [f"model {t} {path}" for t, path in job.get("models") or []]
    lines += [f"force {t} {' '.join(map(str, ids))}" for t, ids in (job.get("force") or {}).items() if ids]
    return "\n".join(lines) + "\n"


def run_driver(exe: Path, job: Mapping[str, Any], prefix: Sequence[str], timeout: float,
               env: Mapping[str, str] | None = None) -> Any:
    """One driver child under ``prefix`` (``qemu-aarch64 -cpu max``, Wine): a
    :class:`~llama_runtime.plugins.trial.Outcome`, as :func:`~llama_runtime.plugins.trial._run_child`."""
    from ..plugins.trial import run_process

    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        env["QEMU_LD_PREFIX"] = str(sysroot())  # the aarch64 glibc and loader the variant links to
    return run_process([*prefix, str(exe)], job_text(job), timeout, env, what="the driver")


def arm_child(root: Path) -> Any:
    """A ``run_child`` for :mod:`.run` that runs the aarch64 driver under qemu; a job without a
    place (the quantizer) runs under the least capable model."""
    exe = build_driver(root)
    floor = f"{arm_data()['emulator']} -cpu {floor_model([])}".split()

    def child(job: dict[str, Any], prefix: Sequence[str], timeout: float) -> Any:
        from .run import QEMU_TIMEOUT_S

        return run_driver(exe, job, prefix or floor, max(timeout, QEMU_TIMEOUT_S))

    return child
