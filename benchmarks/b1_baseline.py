"""B1 baseline: `pip install llama-cpp-python==0.3.36` from source, as a user without a compiler cache.

A cold CPU build takes minutes on 2 cores, so its result is cached in
`<dev cache>/b1-baseline.json` (wall time, CPU time, load, date) and the B1 row says so.
`benchmarks/run.py --only B1` measures it again; a full run measures it only when no record exists.

usage: python -m benchmarks.b1_baseline   (measure now and print the record)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import load

from scripts import devrelease  # noqa: E402

SDIST = "llama_cpp_python-0.3.36.tar.gz"
REQ = "llama-cpp-python==0.3.36"


def record_path() -> Path:
    return devrelease.dev_cache() / "b1-baseline.json"


def cached() -> dict | None:
    try:
        rec = json.loads(record_path().read_text())
        return rec if float(rec["seconds"]) > 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure(log=print) -> dict:
    """Build llama-cpp-python from source into a throwaway venv; ccache off, pip's cache as the user has it."""
    sdist = devrelease.dev_cache() / "src" / SDIST  # scripts/build_variants.py keeps it there
    target = str(sdist) if sdist.is_file() else REQ
    with tempfile.TemporaryDirectory(prefix="b1-native-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "CMAKE_BUILD_PARALLEL_LEVEL")}
        # llama.cpp picks up ccache by itself (GGML_CCACHE=ON): a user's first build has no cache
        env.update(CCACHE_DISABLE="1", CMAKE_ARGS="-DGGML_CCACHE=OFF")
        log(f"    B1 baseline: pip install {target} from source, ccache off (minutes)")
        before = load()
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-binary", "llama-cpp-python", target],
                              env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"building {REQ} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        check = subprocess.run([str(venv / "bin" / "python"), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                               capture_output=True, text=True, cwd="/")
        if check.returncode != 0:
            raise RuntimeError(f"the built llama_cpp does not import:\n{check.stderr[-2000:]}")
    rec = {
        "seconds": round(seconds, 1),
        "cpu_seconds": round((usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime), 1),
        "load_before": [round(x, 2) for x in before],
        "load_after": [round(x, 2) for x in load()],
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        "command": f"pip install --no-binary llama-cpp-python {Path(target).name} (CCACHE_DISABLE=1, pip cache warm)",
        "cores": os.cpu_count(),
    }
    tmp_rec = record_path().with_suffix(".tmp")
    tmp_rec.parent.mkdir(parents=True, exist_ok=True)
    tmp_rec.write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(tmp_rec, record_path())
    return rec


def baseline(remeasure: bool = False, log=print) -> dict:
    return (None if remeasure else cached()) or measure(log)


if __name__ == "__main__":
    if shutil.which("cmake") is None:
        sys.exit("cmake is needed to build llama-cpp-python from source")
    print(json.dumps(measure(), indent=1))
