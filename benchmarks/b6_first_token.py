"""B6: `Llama(model)` to the first token in a fresh process (variant cached: resolution + load)
vs the same with the library already loaded in that process (a second `Llama`)."""

from __future__ import annotations

import json

from common import PY, Row, interleave, median, timed_run
from release import Release

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


def run(rel: Release, model, rounds: int = 7) -> list[Row]:
    env = rel.env()
    colds, warms = [], []

    def once() -> float:
        _, p = timed_run([PY, "-c", _CHILD, str(model)], env)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        d = json.loads(p.stdout)
        colds.append(d["cold"])
        warms.append(d["warm"])
        return d["cold"]

    interleave({"child": once}, rounds)
    colds, warms = colds[1:], warms[1:]  # drop the warm-up
    c, w = median(colds) * 1000, median(warms) * 1000
    return [Row("B6", "Llama() -> first token, fresh process", c, "ms", w,
                "same, library already loaded (ms)", c / w, "adds <= 50 ms", c - w <= 50,
                f"added {c - w:.1f} ms (resolution from cache + dlopen + backend init); tiny 2-layer model")]
