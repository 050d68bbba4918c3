"""B6: `Llama(model)` to the first token in a fresh process (variant cached: resolution + load)
vs the same with the library already loaded in that process (a second `Llama`)."""

from __future__ import annotations

import json

from benchmarks.common import PY, Row, interleave, median, timed_run
from benchmarks.release import Release

_CHILD = r"""
import json, sys, time
import llama_runtime
def first(path):
    t = time.perf_counter()
    llm = llama_runtime.Llama(path, n_ctx=128, n_threads=2)
    next(llm.stream("hello world", 4, temperature=0))
    dt = time.perf_counter() - t
    llm.close()
    return dt
cold = first(sys.argv[1])
warm = sorted(first(sys.argv[1]) for _ in range(3))[1]
print(json.dumps({"cold": cold, "warm": warm}))
"""

_SPLIT = r"""
import json, sys, time
import llama_runtime
t = time.perf_counter()
from llama_runtime.runtime import loader
t_imp = time.perf_counter()
loader.load()
t_load = time.perf_counter()
llm = llama_runtime.Llama(sys.argv[1], n_ctx=128, n_threads=2)
next(llm.stream("hello world", 4, temperature=0))
t_end = time.perf_counter()
print(json.dumps({"import_loader": t_imp - t, "load": t_load - t_imp, "llama_first": t_end - t_load}))
"""


def _byte_compile(tree) -> None:
    """Byte-compile the staged tree in place, as pip does when it installs the wheel.

    The benchmark's children otherwise compile every llama_runtime module from source in every
    fresh process (``PYTHONDONTWRITEBYTECODE=1`` in this environment keeps them from caching it):
    ~25 ms that no installed user pays. B3 runs before B6, so its numbers are unaffected.
    """
    _, p = timed_run([PY, "-m", "compileall", "-q", str(tree / "llama_runtime")])
    if p.returncode != 0:
        raise RuntimeError(p.stdout[-2000:] + p.stderr[-2000:])


def run(rel: Release, model, rounds: int = 7) -> list[Row]:
    env = rel.env()
    _byte_compile(rel.tree)
    colds, warms = [], []

    def once() -> float:
        _, p = timed_run([PY, "-c", _CHILD, str(model)], env)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        d = json.loads(p.stdout)
        colds.append(d["cold"])
        warms.append(d["warm"])
        return d["cold"]

    split: list[dict] = []

    def parts() -> float:
        _, p = timed_run([PY, "-c", _SPLIT, str(model)], env)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        split.append(json.loads(p.stdout))
        return 0.0

    interleave({"child": once, "split": parts}, rounds)
    colds, warms, split = colds[1:], warms[1:], split[1:]  # drop the warm-up
    br = {k: median([d[k] for d in split]) * 1000 for k in split[0]}
    c, w = median(colds) * 1000, median(warms) * 1000
    return [Row("B6", "Llama() -> first token, fresh process", c, "ms", w,
                "same, library already loaded (ms)", c / w, "adds <= 50 ms", c - w <= 50,
                f"added {c - w:.1f} ms; split in another fresh process: import of the loader modules "
                f"{br['import_loader']:.0f} ms, llama_runtime.load() (probe, select, cache check, dlopen, "
                f"backend init) {br['load']:.0f} ms, then Llama() to first token {br['llama_first']:.0f} ms; "
                "tiny 2-layer model; staged tree byte-compiled first, as pip install does")]
