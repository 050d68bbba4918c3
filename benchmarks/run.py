"""Run the llama-runtime benchmarks side by side with their baselines (`scripts/dev bench`).

    .venv/bin/python -m benchmarks.run [--only B1,B2,B3,B4,B5,B6,B7,B8] [--work DIR] [--quick] [--cputime]

Prints one table (median, baseline median, ratio, target, met?) and writes benchmarks/RESULTS.md.
Every baseline is measured in the same run, interleaved with the candidate, except B1's: building
llama-cpp-python from source takes minutes, so it is cached (b1_baseline.py) and measured again only
when missing or with `--only B1` (which then also runs B2, where our side of B1 is measured).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
from benchmarks.common import Row, load  # noqa: E402

ALL = ("B2", "B3", "B4", "B5", "B6", "B7", "B8")  # B1-ours is measured by B2's install
# only when asked: B2 for captured CUDA machines packs ~2 GB of CUDA archives (b2_cuda.py)
EXTRA = ("B2C",)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def table(rows: list[Row]) -> str:
    head = "| # | what | median | baseline (median) | ratio | target | met? |\n|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        base = f"{fmt(r.baseline)} ({r.baseline_what})" if r.baseline is not None else (r.baseline_what or "-")
        lines.append(f"| {r.bench} | {r.what} | {fmt(r.value)} {r.unit} | {base} | {fmt(r.ratio)} | {r.target} | {met} |")
    return head + "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated subset of " + ",".join(ALL + EXTRA)
                    + " (B1: measure the cached llama-cpp-python build baseline again, then B2)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ap.add_argument("--cputime", action="store_true",
                    help="B4/B7 with 1 thread, rates per process CPU-second: a cross-check that does "
                         "not depend on the machine's load (write it elsewhere with --results)")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    only = [x.strip().upper() for x in args.only.split(",") if x.strip()]
    if "B1" in only and "B2" not in only:
        only.append("B2")  # our side of B1 is B2's install
    work = (args.work or Path(tempfile.mkdtemp(prefix="llama-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    q = args.quick
    load_before = load()
    started = time.time()
    rows: list[Row] = []
    errors: list[str] = []

    from scripts.hubserver import HubServer
    from benchmarks.release import make_release

    with HubServer(work / "hub") as hub:
        rel = make_release(work, hub)
        model_small = work / "tiny.gguf"
        from scripts.tiny_model import write_tiny_llama
        write_tiny_llama(model_small)
        libdir = rel.variants / "linux-x86_64-cpu-v3"  # the source build (OpenMP), as the issue asks

        def step(name: str, fn) -> None:
            if name not in only:
                return
            before = load()
            print(f"==> {name} (load {before[0]:.1f})", flush=True)
            t = time.perf_counter()
            try:
                got = fn()
                rows.extend(got)
                for r in got:
                    print(f"    {r.bench} {r.what}: {fmt(r.value)} {r.unit} vs {fmt(r.baseline)} "
                          f"-> {fmt(r.ratio)} ({r.target}) {r.met}", flush=True)
            except Exception as exc:  # one benchmark failing must not hide the others
                traceback.print_exc()
                errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:400]}")
            print(f"    ({time.perf_counter() - t:.0f} s, load {before[0]:.1f} -> {load()[0]:.1f})", flush=True)

        from benchmarks import (b1_baseline, b2_install, b3_startup, b4_tokens, b5_download,
                                b6_first_token, b7_native, b8_plugin_proof)
        step("B3", lambda: b3_startup.run(rel, rounds=7 if q else 15))
        step("B6", lambda: b6_first_token.run(rel, model_small, rounds=3 if q else 7))
        step("B8", lambda: b8_plugin_proof.run(rel, rounds=3 if q else 7))
        # --cputime: 1 thread (no barrier partner to wait for), tokens per process CPU-second
        clk = {"clock": "cpu", "threads": 1} if args.cputime else {}
        step("B4", lambda: b4_tokens.run(work, libdir, rounds=2 if q else 12, reps=2 if q else 3,
                                         model_rounds=2 if q else 8, **clk))
        step("B7", lambda: b7_native.run(rel, work, rounds=2 if q else 5, reps=2 if q else 5, **clk))
        step("B5", lambda: b5_download.run(rel, work, rounds=2 if q else 4))
        step("B2", lambda: b2_install.run(rel, model_small, b1_baseline.baseline(remeasure="B1" in only)))
        from benchmarks import b2_cuda
        step("B2C", lambda: b2_cuda.run(work))

    load_after = load()
    text = table(rows)
    print("\n" + text)
    for e in errors:
        print("ERROR", e)
    cmd = ("scripts/dev bench" + ("" if args.only == ",".join(ALL) else f" --only {args.only}")
           + (" --quick" if q else "") + (" --cputime" if args.cputime else ""))
    notes = [f"- **{r.bench} {r.what}**: {r.note}" for r in rows if r.note]
    hook = next((r.extra.get("hook") for r in rows if r.extra.get("hook")), None)
    md = [
        "# Benchmark results",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{cmd}` ({time.time() - started:.0f} s)",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}",
        f"- load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {' / '.join(f'{x:.2f}' for x in load_after)}",
        "- every baseline was measured in the same run, interleaved with the candidate; values are medians",
        "",
        text,
        "## Notes",
        "",
        *notes,
        *(f"- ERROR {e}" for e in errors),
    ]
    if hook:
        md += ["", "### Hook output during the B2 install (pip --log timestamps from the start of pip)", "",
               "```", *hook, "```"]
    extra = HERE / "NOTES.md"
    if extra.exists():
        md += ["", extra.read_text().rstrip()]
    args.results.write_text("\n".join(md) + "\n")
    print(f"wrote {args.results}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
