"""Run the greedy oracle (tests/data/oracle/greedy.c) on aarch64 builds under qemu-aarch64 and
compare its tokens with an x86 build's, within the tolerance of issue 14 (point 3).

The tolerance: the two token lists must be equal, or equal up to a first divergence at a step
where the reference was at a near-tie: the aarch64 build chose the reference's runner-up, and
the reference's top-1/top-2 logit margin there was below ``max_margin``. Different kernels
(NEON/SVE dot products on q8 activations vs AVX2/AVX-512 ones, other accumulation orders)
legitimately flip a near-tie; a broken kernel flips tokens the reference was sure of. After a
divergence the contexts differ, so nothing later is compared.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llama_runtime.qualify import cross as qualify_cross

REPO = Path(__file__).resolve().parent.parent
GREEDY = REPO / "tests" / "data" / "oracle" / "greedy.c"
HWCAPS = REPO / "tests" / "data" / "cross" / "hwcaps.c"
INCLUDE = REPO / "llama_runtime" / "native" / "include"
AARCH64_ROOT = qualify_cross.sysroot()  # one copy with the qualification's (llama_runtime/qualify/cross.py)
# What each HWCAP feature adds to a plugin's score (ggml/src/ggml-cpu/arch/arm/cpu-feats.cpp).
ARM_SCORE_BITS: Mapping[str, int] = {"dotprod": 2, "fp16": 4, "sve": 8, "i8mm": 16, "sve2": 32,
                                     "sme": 64}


def missing_tools() -> list[str]:
    """The Debian packages this machine lacks for the aarch64 tests (scripts/dev installs them):
    the qualification's (qemu-user, the cross gcc, its libc and libgomp) and gcc for x86."""
    return [*qualify_cross.missing_tools(), *(["gcc"] if shutil.which("gcc") is None else [])]


def cross_gcc(source: Path, out: Path, *link: str) -> Path:
    subprocess.run(["aarch64-linux-gnu-gcc", "-std=c11", "-O2", "-I", str(INCLUDE), str(source),
                    *link, "-o", str(out)], check=True, capture_output=True, text=True)
    return out


def build_greedy(folder: Path, out: Path, *, cc: str = "gcc") -> Path:
    """greedy.c linked to ``folder``'s libllama and libggml (by path, siblings via rpath)."""
    libs = sorted(folder.glob("libllama*.so"))[:1] + sorted(folder.glob("libggml.*so"))[:1]
    link = [*map(str, libs), f"-Wl,-rpath,{folder}", f"-Wl,-rpath-link,{folder}"]
    if cc == "aarch64-linux-gnu-gcc":
        return cross_gcc(GREEDY, out, *link)
    subprocess.run([cc, "-std=c11", "-O2", "-I", str(INCLUDE), str(GREEDY), *link, "-o", str(out)],
                   check=True, capture_output=True, text=True)
    return out


def qemu(cpu: str) -> list[str]:
    return ["qemu-aarch64", "-L", str(AARCH64_ROOT), "-cpu", cpu]


def hwcaps(exe: Path, cpu: str) -> set[str]:
    """The features qemu-aarch64 ``-cpu`` reports through HWCAPs (tests/data/cross/hwcaps.c)."""
    out = subprocess.run([*qemu(cpu), str(exe)], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def plugin_features(march: str) -> set[str]:
    """``armv8.6-a+dotprod+fp16+sve+i8mm`` -> {dotprod, fp16, sve, i8mm}."""
    return set(march.split("+")[1:])


def expected_plugin(plugins: Mapping[str, str], features: set[str]) -> str:
    """The plugin ggml scores best: all its features present, the highest sum of their bits.

    ``plugins``: tag (``armv8.2_2``) -> its -march (cross_builds.ALL_ARM_CPU_VARIANTS).
    """
    fits = {tag: sum(ARM_SCORE_BITS[f] for f in plugin_features(m))
            for tag, m in plugins.items() if plugin_features(m) <= features}
    return max(fits, key=lambda tag: fits[tag])


@dataclass(frozen=True)
class Trace:
    """One greedy run: ids, the runner-up and top-1/top-2 margin of each step, the plugin."""

    ids: list[int]
    second: list[int]
    margin: list[float]
    plugin: str | None

    @classmethod
    def parse(cls, stdout: str, stderr: str) -> Trace:
        lines = {line.split(" ", 1)[0]: line.split()[1:] for line in stdout.splitlines()}
        plugin = re.search(r"loaded CPU backend from \S*libggml-cpu-([\w.]+)\.so", stderr)
        return cls([int(x) for x in lines["ids"]], [int(x) for x in lines["second"]],
                   [float(x) for x in lines["margin"]], plugin[1] if plugin else None)


def run_greedy(prefix: Sequence[str], exe: Path, model: Path, prompt: str, n_gen: int,
               backend_dir: Path | None, timeout: float = 600) -> Trace:
    cmd = [*prefix, str(exe), str(model), prompt, str(n_gen), "1", "256", "1"]
    env = {**os.environ, "GREEDY_TRACE": "1"}
    env.pop("LD_LIBRARY_PATH", None)
    proc = subprocess.run([*cmd, *([str(backend_dir)] if backend_dir else [])], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return Trace.parse(proc.stdout, proc.stderr)


def first_divergence(ref: Trace, got: Trace) -> int | None:
    """The first step where the two differ (a shorter list differs where it ends), or None."""
    for i, (a, b) in enumerate(zip(ref.ids, got.ids)):
        if a != b:
            return i
    return None if len(ref.ids) == len(got.ids) else min(len(ref.ids), len(got.ids))


def tolerance_problem(ref: Trace, got: Trace, max_margin: float) -> str | None:
    """Why ``got`` is outside the tolerance against ``ref``; None when it is within it."""
    d = first_divergence(ref, got)
    if d is None:
        return None
    if d >= min(len(ref.ids), len(got.ids)):
        return f"one run stopped early at step {d} (end of generation) and the other did not"
    if got.ids[d] != ref.second[d]:
        return (f"step {d}: got token {got.ids[d]}, reference {ref.ids[d]} with runner-up "
                f"{ref.second[d]} (margin {ref.margin[d]:.4g}): not a near-tie flip")
    if ref.margin[d] > max_margin:
        return (f"step {d}: got the runner-up {got.ids[d]} but the reference's margin was "
                f"{ref.margin[d]:.4g} > {max_margin}: a kernel is wrong, not a tie")
    return None
