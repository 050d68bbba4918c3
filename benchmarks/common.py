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
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

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
