"""Windows variants under Wine: generation speed of ggml's thread pool against OpenMP, and of the
Windows build against the Linux one (same source, same plugin), on SmolLM2-135M Q4_1.

    .venv/bin/python -m benchmarks.b_windows_wine [--rounds 5] [--threads 2]

Runs tests/data/oracle/greedy_win.c (under Wine) and greedy.c (natively), interleaved, each
``--rounds`` times; prints the median µs per generated token and the ratios. Wine adds little
to compute-bound code, but this is not a Windows measurement: see benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/ is no package: _native_fixture lives there

from scripts import build_variants as bv  # noqa: E402
from scripts import devrelease  # noqa: E402
from scripts import windows_build  # noqa: E402
from scripts import winerun  # noqa: E402
from _native_fixture import NativeLibs, build_oracle, run_oracle  # noqa: E402

PROMPT = "The capital of France is"


def _win_us(exe: Path, folder: Path, model: Path, n_gen: int, threads: int) -> float:
    import json

    libs = json.loads((folder / "variant.json").read_text())["libraries"]
    proc = winerun.run(exe, [winerun.windows_path(folder), winerun.windows_path(model), PROMPT,
                             str(n_gen), str(threads), "512", "3", *libs],
                       cache=devrelease.dev_cache())
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return float(next(ln.split()[1] for ln in proc.stdout.splitlines()
                      if ln.startswith("gen_us")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-gen", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="b-windows-"))
    model = devrelease.smollm2()
    pool = windows_build.windows_variant("windows-cpu-lite", work / "win")
    omp = windows_build.windows_variant("windows-cpu-omp-lite", work / "win")
    linux = bv.source_variant("omp-lite", work / "linux")
    libs = NativeLibs(linux, tuple(linux / n for n in ("libggml-base.so", "libggml.so",
                                                        "libllama.so")), True)
    oracle, exe = build_oracle(libs, work), winerun.compile_driver(work)
    rows: dict[str, list[float]] = {"windows pool": [], "windows openmp": [], "linux openmp": []}
    for _ in range(args.rounds):
        rows["windows pool"].append(_win_us(exe, pool, model, args.n_gen, args.threads))
        rows["windows openmp"].append(_win_us(exe, omp, model, args.n_gen, args.threads))
        rows["linux openmp"].append(run_oracle(oracle, libs, model, PROMPT, args.n_gen,
                                               threads=args.threads, n_ctx=512, reps=3)[1])
    med = {k: statistics.median(v) for k, v in rows.items()}
    for name, values in rows.items():
        print(f"{name:16} median {med[name]:8.1f} us/token  "
              f"({', '.join(f'{v:.0f}' for v in values)})")
    print(f"openmp / pool (Windows, tok/s): {med['windows pool'] / med['windows openmp']:.3f}")
    print(f"windows pool / linux openmp (tok/s): {med['linux openmp'] / med['windows pool']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
