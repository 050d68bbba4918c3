"""What ``Llama(path, vocab_only=True)`` costs against a full load, on SmolLM2-135M Q4_1.

Standalone: ``.venv/bin/python -m benchmarks.b_vocab_only [--reps 5] [--model PATH]``.
Each load runs in a fresh Python (the library opened first, so only the model is timed), the
two modes interleaved; a full load is ``Llama(path)`` with its defaults (n_ctx 512). Prints
the median and best load time and the resident memory the load added (``VmRSS`` after minus
before, and the peak ``VmHWM``); asserts nothing (speed is reported, not tested).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, time
sys.path[:0] = [sys.argv[1] + "/tests", sys.argv[1]]  # a bare child: the checkout and its fixtures
from _native_fixture import find_native_libs
from llama_runtime.llama import Llama

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024  # MiB

native = find_native_libs().open()
before = status("VmRSS")
start = time.perf_counter()
llm = Llama(sys.argv[2], vocab_only=sys.argv[3] == "1", native=native)
seconds = time.perf_counter() - start
n = len(llm.tokenize("The capital of France is Paris."))
print(json.dumps({"s": seconds, "rss": status("VmRSS") - before, "hwm": status("VmHWM"),
                  "tokens": n}))
"""


def _one(model: Path, vocab_only: bool) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(model),
                           "1" if vocab_only else "0"], capture_output=True, text=True,
                          check=True, env=dict(os.environ))
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model", type=Path, default=None, help="default: devrelease.smollm2()")
    args = ap.parse_args()
    if args.model is None:
        from scripts.devrelease import smollm2

        args.model = smollm2()
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.reps):
        for mode in (True, False):
            runs[mode].append(_one(args.model, mode))
    print(f"{args.model.name}, {args.reps} fresh processes per mode")
    for mode, label in ((True, "vocab_only=True"), (False, "full load")):
        ms = [1000 * r["s"] for r in runs[mode]]
        rss = statistics.median(r["rss"] for r in runs[mode])
        hwm = statistics.median(r["hwm"] for r in runs[mode])
        print(f"  {label:16} load median {statistics.median(ms):7.1f} ms (best {min(ms):6.1f}), "
              f"RSS +{rss:6.1f} MiB, process peak {hwm:6.1f} MiB")
    full = statistics.median(r["s"] for r in runs[False])
    vocab = statistics.median(r["s"] for r in runs[True])
    print(f"  full/vocab_only load time: {full / vocab:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
