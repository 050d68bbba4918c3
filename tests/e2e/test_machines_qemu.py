"""Machines we do not have, end to end (issue 14.5): x86-64-v1, v2 and v3 CPUs emulated by
qemu-x86_64 (Debian 12 qemu-user 7.2), each given the captured /proc/cpuinfo of such a CPU.

The real package runs under the emulator (``qemu-x86_64 -cpu MODEL python -m llama_runtime
generate ...``): its probe reads qemu's CPUID and XGETBV, and /proc/cpuinfo through qemu's ``-L``
prefix (a folder holding ``proc/cpuinfo``: qemu opens a guest's absolute path there first), so
the emulated machine is consistent, not the host's AVX-512 cpuinfo beside a Nehalem's CPUID. The
loader selects the variant, proves the CPU plugin ggml picks in a child, which runs emulated too
(qemu's ``-0`` makes ``sys.executable`` a wrapper that starts qemu again: an exec from an
emulated process would otherwise run natively), and SmolLM2-135M Q4_1 (a real quantized model)
answers. The text must be the one the same variant and plugin give natively (qemu's TCG is
exact: tests/e2e/test_qualify.py shows the traces equal bit for bit), with no SIGILL; the probe under
qemu must agree with the captured profile, and the choices with what selection and the plugin
ranking predict from that profile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scripts import devrelease
from llama_runtime.plugins.rank import rank
from llama_runtime.probe.capture import profile_from_captures
from llama_runtime.probe.cpu import GGML_X86_FEATURES, x86_64_level
from llama_runtime.variants import Manifest, select
from release_fixtures import Release, run_source_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                                 reason="qemu-x86_64 missing: apt-get install qemu-user (scripts/dev does)")]
DATA = Path(__file__).parents[1] / "data"
PROMPT = "The capital of France is"
N = 8
# level -> (the captured machine, the qemu CPU model of that generation)
LEVELS = {"v1": ("core2-no-avx", "Penryn"), "v2": ("nehalem-v2-only", "Nehalem"),
          "v3": ("haswell-xeon-v3-linux", "Haswell")}
REFERENCE = r"""
import json, sys
from pathlib import Path
from llama_runtime.llama import Llama
from llama_runtime.native.binding import Native
folder, libs, plugin, model, prompt, n = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], *sys.argv[4:7]
native = Native.open([folder / x for x in libs], cpu_plugin=folder / plugin if plugin else None)
with Llama(model, native=native) as llm:
    print(json.dumps(llm.generate(prompt, int(n), temperature=0)))
"""


def captured(name: str) -> Any:
    data = json.loads((DATA / "machines" / f"{name}.json").read_text())
    return data, profile_from_captures({**data, "cpuinfo": (DATA / "cpuinfo" / data["cpuinfo_file"]).read_text()})


@pytest.fixture(scope="module")
def cache(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every variant of the release fetched natively: the emulated runs open no connection."""
    folder = tmp_path_factory.mktemp("qemu-cache")
    for name in release.lock["manifest"]["variants"]:
        proc = run_source_cli(release, release.env(folder), "fetch", "--variant", name)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return folder


def emulator(work: Path, model: str, cpuinfo: Path) -> Path:
    """A python that runs under ``qemu-x86_64 -cpu MODEL`` with ``cpuinfo`` as /proc/cpuinfo, and
    starts its children the same way."""
    root = work / f"root-{model}"
    (root / "proc").mkdir(parents=True)
    shutil.copyfile(cpuinfo, root / "proc" / "cpuinfo")
    wrapper = work / f"python-{model}"
    python = os.path.realpath(sys.executable)
    wrapper.write_text(f'#!/bin/sh\nexec qemu-x86_64 -cpu {model} -L "{root}" -0 "{wrapper}" "{python}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def emulated(release: Release, wrapper: Path, cache: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    sites = [p for p in sys.path if p.endswith("site-packages")]  # huggingface_hub and friends
    env = release.env(cache, PYTHONPATH=os.pathsep.join([str(release.tree), *sites]),
                      LLAMA_RUNTIME_OFFLINE="1", LLAMA_RUNTIME_AUTO_DOWNLOAD="0")
    start = time.monotonic()
    proc = subprocess.run([str(wrapper), "-m", "llama_runtime", *args], env=env, capture_output=True, text=True,
                          timeout=900, cwd=release.tree)
    return proc, time.monotonic() - start


def native_text(release: Release, cache: Path, variant: str, plugin: str | None, model: Path) -> str:
    entry = release.lock["manifest"]["variants"][variant]
    folder = next(cache.glob(f"*/{variant}"))
    proc = subprocess.run([sys.executable, "-c", REFERENCE, str(folder), json.dumps(entry["libraries"]),
                           plugin or "", str(model), PROMPT, str(N)], capture_output=True, text=True,
                          env={**release.env(cache), "PYTHONPATH": str(release.tree)}, timeout=600, cwd=release.tree)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text: str = json.loads(proc.stdout.strip().splitlines()[-1])
    return text


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_the_product_picks_runs_and_answers_on_an_emulated_cpu(level: str, release: Release, cache: Path,
                                                                 tmp_path: Path) -> None:
    name, model = LEVELS[level]
    data, profile = captured(name)
    manifest = Manifest.parse(release.lock["manifest"])
    variant = select(manifest, profile).selected
    assert variant is not None
    pick = rank(manifest.variants[variant].plugins, profile.cpu, "linux").ggml_pick
    wrapper = emulator(tmp_path, model, DATA / "cpuinfo" / data["cpuinfo_file"])
    smollm2 = devrelease.smollm2()

    gen, gen_s = emulated(release, wrapper, cache, "generate", str(smollm2), PROMPT, "-n", str(N), "--temp", "0")
    assert gen.returncode == 0, f"exit {gen.returncode} (-4: SIGILL): {gen.stderr[-3000:]}"
    doc, doc_s = emulated(release, wrapper, cache, "doctor", "--json")
    assert doc.returncode == 0, doc.stderr[-3000:]
    out = json.loads(doc.stdout)

    # the probe under qemu is the captured machine: cpuinfo through -L, CPUID and XGETBV from qemu
    cpu = out["profile"]["cpu"]
    assert cpu["model_name"] == profile.cpu["model_name"]
    assert cpu["x86_64_level"] == profile.cpu["x86_64_level"] == int(level[1])
    assert cpu["features"] == profile.cpu["features"]
    cpuid = set(cpu["cpuid"]["features"])
    assert sorted(cpuid & set(GGML_X86_FEATURES)) == sorted(profile.cpu["features"])
    assert x86_64_level(cpuid) == int(level[1])
    # the product's choices are the ones predicted from the captured profile
    assert out["selected"] == out["library"]["variant"] == variant
    assert out["library"]["plugin"]["cpu_plugin"] in (pick, None)  # None: a build without plugins
    assert out["library"]["plugin"]["mode"] in ("default", "builtin")
    # and the answer is what the same variant and plugin give natively
    reference = native_text(release, cache, variant, out["library"]["plugin"]["cpu_plugin"], smollm2)
    assert gen.stdout == reference + "\n"
    print(f"\n{level} ({model}, {name}): {variant} / {pick}: {gen.stdout.strip()!r}; generate {gen_s:.1f} s,"
          f" doctor {doc_s:.1f} s under qemu")
