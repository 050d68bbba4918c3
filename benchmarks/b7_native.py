"""B7: the variant `pip install` of our sdist selects vs llama-cpp-python 0.3.36 compiled here.

Both libraries are driven by the same C program (bench_llama.c: same model, threads, prompt ids
and token count, greedy), so the comparison is of the binaries alone; the greedy ids must match.
llama-cpp-python is built from source once (`pip install --no-binary llama-cpp-python`, ccache,
-j2) into a virtual environment kept in the dev cache (<dev cache>/llama-cpp-python-0.3.36-native);
later runs reuse it.

    .venv/bin/python benchmarks/b7_native.py [--variants DIR NAME ...] [--rounds R] [--reps N]

run standalone: compares the given variant folders (default: every folder of the dev cache's
variants/ plus the native build) on one model, interleaved, and prints medians (the gap study
in NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ROOT, Row, interleave, load, median, timed_run  # noqa: E402

NATIVE_REQ = "llama-cpp-python==0.3.36"
SDIST = "llama_cpp_python-0.3.36.tar.gz"
N_PROMPT, N_GEN, THREADS = 64, 128, 2
PROMPT = " ".join(["hello world the llama runtime model is a small token and it was for the world"] * 8)


def dev_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-runtime-dev"


def native_venv(log=print) -> Path:
    """The cached venv with llama-cpp-python built from source here; build it when missing."""
    venv = dev_cache() / "llama-cpp-python-0.3.36-native"
    if (venv / ".installed").is_file():
        return venv
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    sdist = dev_cache() / "src" / SDIST  # scripts/build_variants.py keeps it there
    target = str(sdist) if sdist.is_file() else NATIVE_REQ
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2",
           "CMAKE_ARGS": "-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"}
    log(f"    building {NATIVE_REQ} from source into {venv} (minutes, once)")
    t0 = time.perf_counter()
    # --no-binary for llama-cpp-python only: its numpy/jinja2 wheels do not touch the library
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-cache-dir",
                           "--no-binary", "llama-cpp-python", target],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building {NATIVE_REQ} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    (venv / ".installed").write_text(f"{time.perf_counter() - t0:.0f} s\n")
    return venv


def native_libdir(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages/llama_cpp/lib/libllama.so"))
    if not found:
        raise RuntimeError(f"no llama_cpp/lib/libllama.so in {venv}")
    return found[0].parent


@dataclass
class Lib:
    """One libllama to measure: the file to link and, for GGML_BACKEND_DL builds, its plugins."""

    name: str
    libllama: Path
    backend_dir: Path | None = None
    env: dict[str, str] | None = None  # e.g. B7_THREADPOOL=1 (see bench_llama.c)

    @classmethod
    def variant(cls, folder: Path) -> "Lib":
        meta = json.loads((folder / "variant.json").read_text())
        return cls(folder.name, folder / meta["libraries"][-1],
                   folder if meta.get("backend_dl") else None)


def build_c(lib: Lib, work: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc) found")
    out = work / f"bench_llama-{lib.name}"
    inc = ROOT / "llama_runtime" / "native" / "include"
    subprocess.run([cc, "-O2", "-o", str(out), str(HERE / "bench_llama.c"), f"-I{inc}",
                    str(lib.libllama), f"-Wl,-rpath,{lib.libllama.parent}", "-ldl"], check=True)
    return out


def make_model(work: Path) -> tuple[Path, int]:
    from b4_tokens import make_model as b4_model  # the same 26.7 M-param f16 llama as B4
    return b4_model(work / "b4-model.gguf")


def measure(libs: list[Lib], work: Path, model: Path, rounds: int, reps: int,
            threads: int = THREADS, env: dict[str, str] | None = None) -> dict[str, dict]:
    """Interleaved runs of each library; per library the samples, medians and greedy ids."""
    exes = {lib.name: build_c(lib, work) for lib in libs}
    data: dict[str, dict] = {lib.name: {"samples": [], "system_info": ""} for lib in libs}

    def runner(lib: Lib):
        def go() -> float:
            cmd = [str(exes[lib.name]), str(model), PROMPT, str(N_PROMPT), str(N_GEN), str(threads),
                   str(reps + 1), str(lib.backend_dir or "")]
            _, p = timed_run(cmd, {**(env or {}), **(lib.env or {})})
            if p.returncode != 0:
                raise RuntimeError(f"{lib.name}: {p.stderr[-2000:]}")
            lines = [json.loads(x) for x in p.stdout.splitlines()]
            data[lib.name]["samples"] += lines[1:]  # the first rep warms caches and threads
            data[lib.name]["ids"] = lines[0]["ids"]
            data[lib.name]["system_info"] = p.stderr.splitlines()[0] if p.stderr else ""
            return 0.0
        return go

    interleave({lib.name: runner(lib) for lib in libs}, rounds, warmup=0)
    for d in data.values():
        s = d["samples"]
        d["prompt"] = median([N_PROMPT / x["prompt_s"] for x in s])
        d["gen"] = median([(x["n_gen"] - 1) / x["gen_s"] for x in s])
        d["prompt_best"] = max(N_PROMPT / x["prompt_s"] for x in s)
        d["gen_best"] = max((x["n_gen"] - 1) / x["gen_s"] for x in s)
    return data


def run(rel, work: Path, rounds: int = 5, reps: int = 5) -> list[Row]:
    from release import selected_variant
    name = selected_variant(rel)
    ours = Lib.variant(rel.variants / name)
    native = Lib("llama-cpp-python-native", native_libdir(native_venv()) / "libllama.so")
    model, n_params = make_model(work)
    before = load()
    data = measure([ours, native], work, model, rounds, reps)
    after = load()
    o, n = data[ours.name], data[native.name]
    same = o["ids"] == n["ids"]
    note = (f"ours = `{name}` (what doctor/pip select here; {o['system_info'][:90]}...); native = "
            f"{NATIVE_REQ} built here with its defaults (GGML_NATIVE=ON, OpenMP); both driven by "
            f"bench_llama.c: {n_params / 1e6:.1f} M params f16, {N_PROMPT}-token prompt, {N_GEN} "
            f"generated, {THREADS} threads, {len(o['samples'])} samples each, interleaved; load "
            f"{before[0]:.1f} -> {after[0]:.1f}; greedy ids identical: {same}; best-of-samples prompt "
            f"{o['prompt_best']:.0f} vs {n['prompt_best']:.0f}, gen {o['gen_best']:.0f} vs {n['gen_best']:.0f}")
    rp, rg = o["prompt"] / n["prompt"], o["gen"] / n["gen"]
    from b7_glibc import run as glibc_rows  # what the glibc 2.28 fallback build costs
    return [
        Row("B7", f"prompt tok/s ({name})", o["prompt"], "tok/s", n["prompt"],
            "llama-cpp-python built here", rp, ">= 0.95", rp >= 0.95 and same, note),
        Row("B7", f"generation tok/s ({name})", o["gen"], "tok/s", n["gen"],
            "llama-cpp-python built here", rg, ">= 0.95", rg >= 0.95 and same,
            "" if same else f"greedy ids differ: ours {o['ids'][:12]} native {n['ids'][:12]}"),
        *glibc_rows(work, rounds, reps),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", type=Path, default=None,
                    help="variant folders (default: every folder under <dev cache>/variants)")
    ap.add_argument("--no-native", action="store_true", help="leave llama-cpp-python out")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--threadpool", action="store_true",
                    help="also run each library with a persistent ggml thread pool (NAME+tp)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/b7-work"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folders = args.variants if args.variants is not None else sorted(
        p for p in (dev_cache() / "variants").iterdir() if (p / "variant.json").is_file())
    libs = [Lib.variant(f) for f in folders]
    if not args.no_native:
        libs.append(Lib("llama-cpp-python-native", native_libdir(native_venv()) / "libllama.so"))
    if args.threadpool:
        libs += [Lib(f"{lib.name}+tp", lib.libllama, lib.backend_dir, {"B7_THREADPOOL": "1"})
                 for lib in list(libs)]
    model, n_params = make_model(args.work)
    before = load()
    data = measure(libs, args.work, model, args.rounds, args.reps, args.threads)
    after = load()
    print(f"{n_params / 1e6:.1f} M params f16, {N_PROMPT}-token prompt, {N_GEN} generated, "
          f"{args.threads} threads, load {before[0]:.2f} -> {after[0]:.2f}")
    print(f"{'library':32} {'prompt':>8} {'best':>6} {'gen':>6} {'best':>6}  n  ids==first  system info")
    first = next(iter(data.values()))["ids"]
    for name, d in data.items():
        print(f"{name:32} {d['prompt']:8.0f} {d['prompt_best']:6.0f} {d['gen']:6.0f} {d['gen_best']:6.0f} "
              f"{len(d['samples']):2} {str(d['ids'] == first):5}  {d['system_info'][:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
