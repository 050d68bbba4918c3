"""B5: a ~200 MB file from the loopback hub through llama_runtime.fetch.download.fetch vs curl;
then the bytes re-fetched after the hub cuts the body once (fault injection)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from benchmarks.common import PY, ROOT, Row, interleave, median, timed_run
from benchmarks.release import Release

REPO = "bench/big"
SIZE = 200 * 1024 * 1024

_FETCH = r"""
import sys, time
from pathlib import Path
from llama_runtime.fetch.download import fetch
t = time.perf_counter()
fetch(sys.argv[1], Path(sys.argv[2]), headers={}, timeout=300)
print(time.perf_counter() - t)
"""


def _publish(rel: Release, work: Path) -> str:
    httpd = rel.hub.httpd
    assert httpd is not None
    store = httpd.store
    data = os.urandom(SIZE)
    try:
        store.create_repo(REPO, f"{rel.hub.url}/{REPO}")
    except Exception:
        pass
    digest = store.put_blob(data)
    store.commit(REPO, "main", [{"key": "lfsFile", "value": {"path": "big.bin", "oid": digest}}])
    return f"{rel.hub.url}/{REPO}/resolve/main/big.bin"


def run(rel: Release, work: Path, rounds: int = 4) -> list[Row]:
    if shutil.which("curl") is None:
        return [Row("B5", "download 200 MB", None, "", note="not measured: curl is not installed")]
    url = _publish(rel, work)
    httpd = rel.hub.httpd
    assert httpd is not None
    dest = work / "b5"
    dest.mkdir(exist_ok=True)
    env = {"PYTHONPATH": str(ROOT)}
    walls: dict[str, list[float]] = {"fetch": [], "curl": []}

    def ours() -> float:
        out = dest / "ours.bin"
        out.unlink(missing_ok=True)
        wall, p = timed_run([PY, "-c", _FETCH, url, str(out)], env)
        if p.returncode != 0 or out.stat().st_size != SIZE:
            raise RuntimeError(p.stderr[-2000:])
        walls["fetch"].append(wall)
        return float(p.stdout.strip())  # the fetch() call itself, without interpreter start

    def curl() -> float:
        out = dest / "curl.bin"
        wall, p = timed_run(["curl", "-s", "-o", str(out), "-w", "%{time_total}", url])
        if p.returncode != 0 or out.stat().st_size != SIZE:
            raise RuntimeError(p.stderr[-2000:])
        walls["curl"].append(wall)
        return float(p.stdout.strip())

    s = interleave({"fetch": ours, "curl": curl}, rounds)
    mb = SIZE / 1e6
    tf, tc = mb / median(s["fetch"]), mb / median(s["curl"])
    wf, wc = mb / median(walls["fetch"][1:]), mb / median(walls["curl"][1:])
    # interruption: the hub cuts the first GET body halfway; fetch resumes with Range
    out = dest / "cut.bin"
    out.unlink(missing_ok=True)
    httpd.reset_stats()
    httpd.add_faults([{"path_glob": "*big*", "method": "GET", "kind": "cut", "times": 1}])
    _, p = timed_run([PY, "-c", _FETCH, url, str(out)], env)
    st = httpd.stats()
    ok = p.returncode == 0 and out.stat().st_size == SIZE
    served = st["bytes_served"]
    extra = (served - SIZE) / SIZE
    for f in dest.glob("*.bin"):
        f.unlink()
    return [
        Row("B5", "fetch() throughput, 200 MiB", tf, "MB/s", tc, "curl -s -o (MB/s)", tf / tc, ">= 0.9",
            tf / tc >= 0.9, f"in-call time vs curl's time_total; with interpreter start: ours {wf:.0f} MB/s, "
            f"curl {wc:.0f} MB/s ({wf / wc:.2f}x); hub in the benchmark process"),
        Row("B5", "re-fetched after one cut", extra * 100, "% extra", 0.0, "no cut", None, "<= 10 %",
            ok and extra <= 0.10, f"bytes served {served} for a {SIZE}-byte file; requests {json.dumps(st['requests'])}"
            + ("" if ok else f"; FAILED: {p.stderr[-300:]}")),
    ]
