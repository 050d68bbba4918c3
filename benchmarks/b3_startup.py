"""B3: `import llama_runtime` vs `python -c pass`; `doctor --json` cold (fresh process)."""

from __future__ import annotations

import json

from benchmarks.common import PY, Row, interleave, median, timed_run
from benchmarks.release import Release


def run(rel: Release, rounds: int = 15) -> list[Row]:
    env = rel.env()

    def cmd(code: str):
        def f() -> float:
            t, p = timed_run([PY, "-c", code], env)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-2000:])
            return t
        return f

    s = interleave({"pass": cmd("pass"), "import": cmd("import llama_runtime")}, rounds)
    base, imp = median(s["pass"]), median(s["import"])
    added = (imp - base) * 1000
    # what the import pulls in (top modules by cumulative time), for the notes
    _, p = timed_run([PY, "-X", "importtime", "-c", "import llama_runtime"], env)
    heavy = []
    for line in p.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            heavy.append((int(parts[1]), parts[2].rstrip()))
    top = [f"{n.strip()} {us / 1000:.1f} ms" for us, n in sorted(heavy, reverse=True)[:4]]

    def doctor() -> float:
        t, p = timed_run([PY, "-m", "llama_runtime", "doctor", "--json"], env)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        json.loads(p.stdout)
        return t

    d = interleave({"pass": cmd("pass"), "doctor": doctor}, max(5, rounds // 2))
    dt = median(d["doctor"]) * 1000
    return [
        Row("B3", "import llama_runtime, added ms", added, "ms", base * 1000, "python -c pass (ms)",
            imp / base, "adds <= 15 ms", added <= 15,
            f"import median {imp * 1000:.1f} ms; slowest imports (cumulative): {'; '.join(top)}"),
        Row("B3", "doctor --json cold", dt, "ms", median(d["pass"]) * 1000, "python -c pass (ms)",
            dt / (median(d["pass"]) * 1000), "<= 300 ms", dt <= 300,
            "fresh process, staged tree with lock, warm cache, offline; loads libllama for system_info"),
    ]
