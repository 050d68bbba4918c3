"""B8: what the CPU plugin's proof costs `llama_runtime.load()` in a fresh process (issue 14.4b).

First load of a variant on a CPU: no proof record, so child processes decode the proof model
(one per plugin tried). Every later load: the record is read. Both against the same cached variant,
interleaved; the proof's own time is `Library.plugin["ms"]` (measured around `plugins.prove.choose`).
"""

from __future__ import annotations

import json
import shutil

from benchmarks.common import PY, Row, interleave, median, timed_run
from benchmarks.release import Release

_LOAD = r"""
import json, time
import llama_runtime
t = time.perf_counter()
lib = llama_runtime.load()
print(json.dumps({"load": time.perf_counter() - t, "proof_ms": lib.plugin["ms"], "source": lib.plugin["source"],
                  "mode": lib.plugin["mode"], "plugin": lib.plugin["cpu_plugin"], "variant": lib.variant}))
"""


def run(rel: Release, rounds: int = 7) -> list[Row]:
    env = rel.env()
    proofs = next(rel.cache.glob("*/")) / ".proofs"
    samples: dict[str, list[dict]] = {"first": [], "later": []}

    def load(kind: str) -> float:
        if kind == "first":
            shutil.rmtree(proofs, ignore_errors=True)
        _, p = timed_run([PY, "-c", _LOAD], env)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        d = json.loads(p.stdout.strip().splitlines()[-1])
        if d["source"] != {"first": "child", "later": "record"}[kind]:
            raise RuntimeError(f"{kind} load took its proof from {d['source']}")
        samples[kind].append(d)
        return float(d["load"])

    interleave({"first": lambda: load("first"), "later": lambda: load("later")}, rounds)
    first, later = samples["first"][1:], samples["later"][1:]  # drop the warm-up
    f_load, l_load = median([d["load"] for d in first]) * 1000, median([d["load"] for d in later]) * 1000
    f_proof, l_proof = median([d["proof_ms"] for d in first]), median([d["proof_ms"] for d in later])
    what = f"{later[0]['variant']}, {later[0]['plugin']} ({later[0]['mode']})"
    return [
        Row("B8", "load(), first on this CPU (proof in a child)", f_load, "ms", l_load,
            "later load, proof record read (ms)", f_load / l_load, "-", None,
            f"{what}; the proof itself {f_proof:.0f} ms (median of {len(first)})"),
        Row("B8", "proof record read, every later load()", l_proof, "ms", None, "", None, "nearly free", None,
            f"plugins.prove.choose with a record: CPU identity, record path, read, validate; median of {len(later)}"),
    ]
