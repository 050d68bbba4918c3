"""B7 rows for the old-glibc fallback: what building for glibc 2.28 with zig (no OpenMP) costs
against the gcc 12 + OpenMP build of the same plugins, on the same machine, same C driver.

Both are the development stand-ins (haswell/skylakex/sapphirerapids plugins), so ggml picks the
same plugin in both; the zig build runs with a persistent ggml thread pool attached
(``B7_THREADPOOL=1``), as llama_runtime does for builds without OpenMP
(llama_runtime/native/context.py). Models: B7's 26.7 M-param f16 bench model and SmolLM2-135M
Q4_1 (``scripts/devrelease.py: smollm2()``).

    .venv/bin/python -m benchmarks.b7_glibc [--rounds R] [--reps N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
from benchmarks.common import Row, load  # noqa: E402

OLD, NEW = "linux-x86_64-cpu-glibc228", "linux-x86_64-cpu-omp"


def folders(work: Path) -> dict[str, Path]:
    """The two variant folders (cached source builds; minutes only the first time)."""
    from scripts import build_variants

    out = work / "b7-glibc-variants"
    return {OLD: build_variants.source_variant("glibc228-lite", out),
            NEW: build_variants.source_variant("omp-lite", out)}


def compare(work: Path, model: Path, label: str, rounds: int, reps: int,
            threads: int | None = None) -> list[Row]:
    from benchmarks.b7_native import N_GEN, N_PROMPT, THREADS, Lib, measure

    found = folders(work)
    old = Lib.variant(found[OLD])
    old.env = {"B7_THREADPOOL": "1"}
    new = Lib.variant(found[NEW])
    before = load()
    threads = threads or THREADS
    data = measure([old, new], work, model, rounds, reps, threads)
    o, n = data[OLD], data[NEW]
    same = o["ids"] == n["ids"]
    note = (f"{label}: zig 0.17 (clang) for glibc 2.28, ggml thread pool attached, vs gcc 12 + "
            f"OpenMP; same 3 plugins ({o['system_info'][:60]}...); bench_llama.c, {N_PROMPT}-token "
            f"prompt, {N_GEN} generated, {threads} threads, {len(o['samples'])} samples each, "
            f"interleaved, load {before[0]:.1f} -> {load()[0]:.1f}; greedy ids identical: {same}; "
            f"best prompt {o['prompt_best']:.0f} vs {n['prompt_best']:.0f}, gen "
            f"{o['gen_best']:.0f} vs {n['gen_best']:.0f}")
    rp, rg = o["prompt"] / n["prompt"], o["gen"] / n["gen"]
    base = "gcc 12 + OpenMP build (linux-x86_64-cpu-omp)"
    label = f"{label}, {threads} thread{'s' if threads > 1 else ''}"
    return [Row("B7", f"prompt tok/s (glibc 2.28 build, {label})", o["prompt"], "tok/s",
                n["prompt"], base, rp, "record", None, note),
            Row("B7", f"generation tok/s (glibc 2.28 build, {label})", o["gen"], "tok/s",
                n["gen"], base, rg, "record", None,
                "" if same else f"greedy ids differ: {o['ids'][:12]} vs {n['ids'][:12]}")]


def run(work: Path, rounds: int = 5, reps: int = 5, threads: int | None = None) -> list[Row]:
    from benchmarks.b7_native import make_model
    from scripts.devrelease import smollm2

    bench_model, n_params = make_model(work)
    return [*compare(work, bench_model, f"{n_params / 1e6:.1f} M f16", rounds, reps, threads),
            *compare(work, smollm2(), "SmolLM2-135M Q4_1", rounds, reps, threads)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="default: B7's (2)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/b7-work"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for row in run(args.work, args.rounds, args.reps, args.threads):
        print(f"{row.what:55} {row.value:8.0f} vs {row.baseline:8.0f}  x{row.ratio:.2f}  {row.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
