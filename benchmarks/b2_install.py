"""B1-ours and B2: `pip install --no-cache-dir` of the sdist into a fresh venv from the hub.

B2: bytes the hub served during that install vs the selected archive and all archives.
B1: wall time of the install (phases from pip's timestamped --log), then the first generation;
measured twice: with pip's cache as this machine has it (``--no-cache-dir`` does not reach the
isolated build environment, whose pip installs hatchling and archspec from pip's cache), and
cold, with ``PIP_CACHE_DIR`` pointing at an empty folder (a user's first install: everything
from the index).
The baseline of B1 (building llama-cpp-python==0.3.36 from source, ccache off) comes from
b1_baseline.py: cached between runs because it takes minutes; the row says when it was measured.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import Row, timed_run

from scripts import devrelease  # noqa: E402
from benchmarks.release import Release

_EVENTS = (  # (short name, pip log text); intervals between consecutive events, in time order
    ("start", None),
    ("build deps start", "Installing build dependencies: started"),
    ("build deps done", "Installing build dependencies: finished"),
    ("get-requires done", "Getting requirements to build wheel: finished"),
    ("metadata start", "Preparing metadata (pyproject.toml): started"),
    ("probe done", "llama-runtime: machine:"),
    ("selected", "llama-runtime: selected"),
    ("archive fetched+verified", "downloaded from"),
    ("metadata done", "Preparing metadata (pyproject.toml): finished"),
    ("wheel build start", "Building wheels for collected packages"),
    ("wheel created", "Created wheel for"),
    ("installed", "Successfully installed"),
)


def _phases(log: Path) -> tuple[dict[str, float], list[str]]:
    """Time between consecutive pip/hook events (pip's --log is timestamped)."""
    stamped = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d+) (.*)", line)
        if m:
            stamped.append((datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S,%f").timestamp(), m.group(2)))
    if not stamped:
        return {}, []
    t0 = stamped[0][0]
    seen = [("start", t0)]
    for name, key in _EVENTS[1:]:
        hits = [ts for ts, text in stamped if key in text]
        # build dependencies are installed with the same words: the package's install is the last
        t = (hits[-1] if name == "installed" else hits[0]) if hits else None
        if t is not None:
            seen.append((name, t))
    seen.sort(key=lambda e: e[1])
    out = {f"{a} -> {b}": tb - ta for (a, ta), (b, tb) in zip(seen, seen[1:])}
    out["total (pip log)"] = stamped[-1][0] - t0
    hook = [f"+{ts - t0:6.2f} s {text.strip()[:140]}" for ts, text in stamped if "llama-runtime:" in text]
    return out, hook


def _install(rel: Release, name: str, **extra_env: str) -> tuple[Path, float, Any, dict[str, Any], Path]:
    """One install of the sdist into a fresh venv with an empty llama-runtime cache."""
    httpd = rel.hub.httpd
    assert httpd is not None
    python = devrelease.make_venv(rel.work / f"venv-{name}")
    cache = rel.work / f"cache-{name}"
    env = {"LLAMA_RUNTIME_ENDPOINT": rel.hub.url, "LLAMA_RUNTIME_CACHE": str(cache), **extra_env}
    shutil.rmtree(cache, ignore_errors=True)  # a fresh machine: nothing cached
    log = rel.work / f"pip-{name}.log"
    log.unlink(missing_ok=True)
    httpd.reset_stats()
    t0 = time.perf_counter()
    proc = devrelease.pip_install(python, str(rel.sdist), env, "--log", str(log))
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return python, seconds, proc, httpd.stats(), log


def _cold(rel: Release) -> tuple[float, str, tuple[float, ...]]:
    """The install with an empty pip cache: seconds, its phase breakdown, load before."""
    import os
    import tempfile

    before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="b1-pip-cache-") as empty:
        _, seconds, _, _, log = _install(rel, "b1-cold", PIP_CACHE_DIR=empty)
    phases, _ = _phases(log)
    return seconds, ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()), before


def run(rel: Release, model: Path, baseline: dict | None) -> list[Row]:
    python, t_install, proc, stats, log = _install(rel, "b2")
    # until `import llama_runtime` can generate (offline: nothing more may be fetched)
    gen = ("import time,sys; t=time.perf_counter(); import llama_runtime as l; "
           "m=l.Llama(sys.argv[1], n_ctx=64); s=m.generate('hello world', 8, temperature=0); "
           "print(time.perf_counter()-t)")
    t_gen, g = timed_run([str(python), "-c", gen, str(model)],
                         {"LLAMA_RUNTIME_CACHE": str(rel.work / "cache-b2"), "LLAMA_RUNTIME_OFFLINE": "1"})
    if g.returncode != 0:
        raise RuntimeError(f"generation after install failed: {g.stderr[-2000:]}")
    sel = _selected(python, proc, rel)
    variants = rel.manifest["variants"]
    archive = int(variants[sel]["size"])
    total = sum(int(v["size"]) for v in variants.values())
    served = int(stats["bytes_served"])
    phases, hook = _phases(log)
    breakdown = ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
    t_cold, cold_breakdown, cold_load = _cold(rel)
    base = float(baseline["seconds"]) if baseline else None
    when = (f"measured {baseline['date']} at load {baseline['load_before'][0]:.1f}, {baseline['cpu_seconds']:.0f} s CPU,"
            " cached between runs" if baseline else "not measured: run `scripts/dev bench --only B1`")
    rows = [
        Row("B2", f"bytes served during install (selected {sel})", served / 1e6, "MB",
            archive / 1e6, "selected archive", served / archive, "<= 1.01x", served / archive <= 1.01,
            f"sum of all {len(variants)} archives: {total / 1e6:.2f} MB ({served / total:.2f}x of it); "
            f"requests: {stats['requests']}"),
        Row("B1-ours", "pip install --no-cache-dir sdist (fresh venv, pip cache warm)", t_install, "s",
            base, f"llama-cpp-python 0.3.36 from source, ccache off; {when}",
            t_install / base if base else None, "<= 1/20 of baseline",
            t_install / base <= 1 / 20 if base else None,
            "breakdown (pip --log; the hook's probe/fetch run inside "
            f"pip's metadata step because hatchling has no prepare_metadata hook, so pip builds the wheel there): {breakdown}; then first generation in a fresh process {t_gen:.2f} s",
            {"hook": hook, "phases": phases, "t_gen": t_gen}),
        Row("B1-ours", "the same with an empty pip cache (cold: a user's first install)", t_cold, "s",
            base, "the same baseline (its pip cache was warm)", t_cold / base if base else None,
            "<= 1/20 of baseline", t_cold / base <= 1 / 20 if base else None,
            f"PIP_CACHE_DIR=<empty folder>, so the build environment (hatchling, archspec) and the"
            f" run-time dependencies (huggingface_hub and its dependencies) come from the index;"
            f" load before {cold_load[0]:.2f}; breakdown: {cold_breakdown}"),
    ]
    return rows


def _selected(python: Path, proc: Any, rel: Release) -> str:
    """Which variant went into the wheel (its build report, else the hook's log line)."""
    sel = None
    found = list((python.parent.parent).glob("lib/python*/site-packages/llama_runtime/**/selection.json"))
    if found:
        sel = json.loads(found[0].read_text()).get("selected")
    variants = rel.manifest["variants"]
    if not isinstance(sel, str) or sel not in variants:
        m = re.search(r"linux-[\w-]+", " ".join(line for line in (proc.stdout + proc.stderr).splitlines()
                                              if "llama-runtime:" in line and "select" in line))
        sel = m.group(0) if m else next(iter(variants))
    return sel
