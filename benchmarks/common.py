"""Shared bits of the benchmarks: timing helpers, result rows, the loopback release."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent

PY = sys.executable


@dataclass
class Row:
    """One line of the table: value vs baseline, ratio, target and whether it is met."""

    bench: str
    what: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_what: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timed_run(cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    full = {**os.environ, **(env or {})}
    kw.setdefault("cwd", "/")  # never import the checkout's llama_runtime by accident
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=full, capture_output=True, text=True, **kw)
    return time.perf_counter() - t0, proc


def interleave(fns: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Call each fn once per round, in alternating order; return the samples per name."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else list(reversed(names))
        for n in order:
            out[n].append(fns[n]())
    return out


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def crash(proc: subprocess.CompletedProcess[str]) -> str | None:
    """None for a process that was not killed by a signal; else "SIGILL in FUNCTION (LIBRARY)",
    from the "CRASH ..." line bench_llama.c prints (function by addr2line, which reads the
    library's symbol table: the static kernels a crash happens in are not exported)."""
    import re
    import shutil

    from llama_runtime.plugins.trial import crash_name  # the product's own signal naming

    name = crash_name(proc.returncode)
    if name is None:
        return None
    m = re.search(r"^CRASH (\S+) lib=(\S+) offset=(\S+) sym=(\S+)$", proc.stderr or "", re.M)
    if not m:
        return f"{name} (where: not reported)"
    lib, offset, sym = m.group(2), m.group(3), m.group(4)
    func = sym
    if shutil.which("addr2line") and lib != "?":
        out = subprocess.run(["addr2line", "-f", "-C", "-e", lib, offset], capture_output=True, text=True)
        first = out.stdout.splitlines()[0] if out.stdout else "??"
        func = first if first != "??" else sym
    func = func if len(func) <= 100 else func[:97] + "..."
    return f"{name} in {func} ({Path(lib).name}+{offset})"
