"""B7: the variant `pip install` of our sdist selects vs llama-cpp-python 0.3.36 compiled here.

Both libraries are driven by the same C program (bench_llama.c: same model, threads, prompt ids
and token count, greedy), so the comparison is of the binaries alone. The f16 bench llama runs
against llama-cpp-python's defaults (greedy ids must match); what users run (the bench llama as
Q4_K_M and Q8_0, SmolLM2 Q4_1: bench_models.py) runs against its defaults and against the same
build with its AMX kernels compiled out, which also runs where the defaults die (issue 14: a
crash is recorded as the row's result). llama-cpp-python is built from source once per flavor
(`pip install --no-binary llama-cpp-python`, ccache, -j2) into a virtual environment kept in the
dev cache (<dev cache>/llama-cpp-python-0.3.36-FLAVOR-KEY, KEY: the recipe and what
-march=native means on this CPU); later runs reuse it.

    .venv/bin/python -m benchmarks.b7_native [--variants DIR ...] [--noamx] [--models f16,Q4_K_M,Q8_0,SmolLM2]
        [--threads 1 --clock cpu] [--rounds R] [--reps N]

run standalone: compares the given variant folders (default: every folder of the dev cache's
variants/ plus the native build) on each model, interleaved, and prints medians (the gap study
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
from benchmarks.common import ROOT, Row, crash, interleave, load, median, timed_run  # noqa: E402

NATIVE_REQ = "llama-cpp-python==0.3.36"
SDIST = "llama_cpp_python-0.3.36.tar.gz"
N_PROMPT, N_GEN, THREADS = 64, 128, 2
PROMPT = " ".join(["hello world the llama runtime model is a small token and it was for the world"] * 8)


def dev_cache() -> Path:
    from scripts.devrelease import dev_cache as scripts_dev_cache  # the one place that says where

    return scripts_dev_cache()


# The baselines built from source. "native" is llama-cpp-python's defaults (GGML_NATIVE=ON:
# -march=native, so on an AMX CPU ggml's AMX kernels are compiled in, and with GCC 11/12 they
# die with SIGILL on quantized models: issue 14). "native-noamx" is the same build without them.
# GGML_AMX_TILE/INT8/BF16=OFF would do nothing: ggml-cpu/CMakeLists.txt reads them only when
# GGML_NATIVE is OFF. -mno-amx-* in CMAKE_C(XX)_FLAGS would not work either: CMake puts those
# flags before the target's -march=native, which the driver expands to explicit -mamx-* on an
# AMX CPU, and the last flag wins. Undefining the macro that gates every AMX source
# (`__AMX_INT8__` in amx/amx.cpp, amx/mmq.cpp, ggml-cpu.cpp) works in any position.
_NO_AMX = "-U__AMX_TILE__ -U__AMX_INT8__ -U__AMX_BF16__"
NATIVE_FLAVORS: dict[str, list[str]] = {
    "native": [],
    "native-noamx": [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"],
}
_CCACHE = ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]


def native_target() -> list[str]:
    """What -march=native means to this compiler on this CPU (gcc -###): the build's CPU key."""
    cc = shutil.which("gcc") or shutil.which("cc") or "gcc"
    p = subprocess.run([cc, "-march=native", "-###", "-E", "-"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True)
    version = subprocess.run([cc, "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    cc1 = next((line for line in p.stderr.splitlines() if "cc1" in line), p.stderr)
    return [version, *sorted(x.strip('"') for x in cc1.split() if x.strip('"').startswith(("-march", "-mtune", "-m")))]


def venv_path(flavor: str) -> Path:
    """<dev cache>/llama-cpp-python-0.3.36-FLAVOR-KEY: KEY covers the recipe and native_target()."""
    import hashlib
    cmake = [*_CCACHE, *NATIVE_FLAVORS[flavor]]
    key = hashlib.sha256(json.dumps([NATIVE_REQ, cmake, native_target()]).encode()).hexdigest()[:12]
    return dev_cache() / f"llama-cpp-python-0.3.36-{flavor}-{key}"


def native_venv(flavor: str = "native", log=print) -> Path:
    """The cached venv with llama-cpp-python built from source here (``flavor``, see
    NATIVE_FLAVORS); built when missing. Its folder name carries a digest of the recipe and of
    what -march=native means here, so another CPU or compiler never gets a stale build."""
    cmake = [*_CCACHE, *NATIVE_FLAVORS[flavor]]
    venv = venv_path(flavor)
    if (venv / ".installed").is_file():
        return venv
    tmp = venv.with_name(f".{venv.name}.{os.getpid()}.tmp")  # renamed when complete: atomic
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
    sdist = dev_cache() / "src" / SDIST  # scripts/build_variants.py keeps it there
    target = str(sdist) if sdist.is_file() else NATIVE_REQ
    import shlex
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2", "CMAKE_ARGS": shlex.join(cmake)}
    log(f"    building {NATIVE_REQ} ({flavor}) from source into {venv} (minutes, once)")
    t0 = time.perf_counter()
    # --no-binary for llama-cpp-python only: its numpy/jinja2 wheels do not touch the library
    proc = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir",
                           "--no-binary", "llama-cpp-python", target],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"building {NATIVE_REQ} ({flavor}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    (tmp / ".installed").write_text(json.dumps({"seconds": round(time.perf_counter() - t0), "cmake": cmake,
                                                "load_after": load()[0]}) + "\n")
    try:
        os.rename(tmp, venv)
    except OSError:  # another process finished the same build first: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
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
    wrapper: tuple[str, ...] = ()  # a command prefix, e.g. ("qemu-x86_64", "-cpu", "Haswell")

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
    from benchmarks.b4_tokens import make_model as b4_model  # the same 26.7 M-param f16 llama as B4
    return b4_model(work / "b4-model.gguf")


CLOCKS = {"wall": ("prompt_s", "gen_s", "tok/s"), "cpu": ("prompt_cpu_s", "gen_cpu_s", "tok/CPU-s")}


def measure(libs: list[Lib], work: Path, model: Path, rounds: int, reps: int,
            threads: int = THREADS, env: dict[str, str] | None = None,
            clock: str = "wall") -> dict[str, dict]:
    """Interleaved runs of each library; per library the samples, medians and greedy ids, or
    ``crash`` ("SIGILL in FUNCTION (LIBRARY)") for one killed by a signal: that is a result, and
    the library is not run again. ``clock="cpu"``: rates per process CPU-second."""
    exes = {lib.name: build_c(lib, work) for lib in libs}
    data: dict[str, dict] = {lib.name: {"samples": [], "system_info": "", "crash": None} for lib in libs}

    def runner(lib: Lib):
        def go() -> float:
            d = data[lib.name]
            if d["crash"]:
                return 0.0
            cmd = [*lib.wrapper, str(exes[lib.name]), str(model), PROMPT, str(N_PROMPT), str(N_GEN), str(threads),
                   str(reps + 1), str(lib.backend_dir or "")]
            _, p = timed_run(cmd, {**(env or {}), **(lib.env or {})})
            d["system_info"] = p.stderr.splitlines()[0] if p.stderr else ""
            d["crash"] = crash(p)
            if d["crash"] is None and p.returncode != 0:
                raise RuntimeError(f"{lib.name}: {p.stderr[-2000:]}")
            if d["crash"] is None:
                lines = [json.loads(x) for x in p.stdout.splitlines()]
                d["samples"] += lines[1:]  # the first rep warms caches and threads
                d["ids"] = lines[0]["ids"]
            return 0.0
        return go

    interleave({lib.name: runner(lib) for lib in libs}, rounds, warmup=0)
    pk, gk, _ = CLOCKS[clock]
    for d in data.values():
        s = d["samples"]
        if d["crash"] or not s:
            continue
        d["prompt"] = median([N_PROMPT / x[pk] for x in s])
        d["gen"] = median([(x["n_gen"] - 1) / x[gk] for x in s])
        d["prompt_best"] = max(N_PROMPT / x[pk] for x in s)
        d["gen_best"] = max((x["n_gen"] - 1) / x[gk] for x in s)
    return data


BASELINE_NAMES = {"native": "llama-cpp-python built here",
                  "native-noamx": "llama-cpp-python built here, AMX compiled out"}


def native_lib(flavor: str = "native") -> tuple[Lib, str]:
    """A llama-cpp-python baseline (built when missing) and how a row names it."""
    lib = Lib(f"llama-cpp-python-{flavor}", native_libdir(native_venv(flavor)) / "libllama.so")
    return lib, BASELINE_NAMES[flavor]


def run(rel, work: Path, rounds: int = 5, reps: int = 5, model_rounds: int | None = None,
        threads: int = THREADS, clock: str = "wall") -> list[Row]:
    """The f16 rows against llama-cpp-python's defaults, then for each quantized model (Q4_K_M,
    Q8_0, SmolLM2) the same rows against its defaults and against its build without AMX."""
    from benchmarks.bench_models import f16_model, quantized_models
    from benchmarks.release import selected_variant
    name = selected_variant(rel)
    ours = Lib.variant(rel.variants / name)
    native, noamx = native_lib("native"), native_lib("native-noamx")
    rows = compare(ours, name, [native], f16_model(work), "", work, rounds, reps, threads, clock)
    for m in quantized_models(work, rel.variants / name):
        rows += compare(ours, name, [native, noamx], m, f", {m.label}", work,
                        model_rounds or rounds, reps, threads, clock)
    from benchmarks.b7_glibc import run as glibc_rows  # what the glibc 2.28 fallback build costs
    return [*rows, *glibc_rows(work, rounds, reps)]


def compare(ours: Lib, name: str, bases: list[tuple[Lib, str]], m, suffix: str, work: Path,
            rounds: int, reps: int, threads: int, clock: str) -> list[Row]:
    """Rows for one model: prompt and generation of ours against each baseline."""
    before = load()
    data = measure([ours, *(b for b, _ in bases)], work, m.path, rounds, reps, threads, clock=clock)
    after = load()
    o, unit = data[ours.name], CLOCKS[clock][2]
    strict = suffix == ""  # f16: the same kernels everywhere, so the greedy ids must match
    rows = []
    for i, (base, what) in enumerate(bases):
        n = data[base.name]
        vs = "" if i == 0 else " vs no-AMX build"
        for key, metric in (("prompt", "prompt"), ("gen", "generation")):
            rows.append(_row(f"{metric} {unit} ({name}{suffix}){vs}", key, o, n, what, unit, strict))
    first = rows[0]
    first.note = (f"ours = `{name}` (what doctor/pip select here; ran {isa(o['system_info'])}); native = "
                  f"{NATIVE_REQ} built here with its defaults (GGML_NATIVE=ON, OpenMP; ran "
                  f"{isa(data[bases[0][0].name]['system_info'])})"
                  + (f"; no-AMX = the same with `__AMX_INT8__` undefined (NOTES.md; ran "
                     f"{isa(data[bases[1][0].name]['system_info'])})" if len(bases) > 1 else "")
                  + f"; all driven by bench_llama.c: {m.describe()}; {N_PROMPT}-token prompt, {N_GEN} generated, "
                  f"{threads} threads, {len(o['samples'])} samples each, interleaved; load {before[0]:.1f} -> "
                  f"{after[0]:.1f}; " + "; ".join(_agreement(o, data[b.name], w) for b, w in bases)
                  + (f"; {first.note}" if first.note else ""))
    if not strict and not data[bases[0][0].name]["crash"]:
        amx = "AMX_INT8" in isa(data[bases[0][0].name]["system_info"])
        first.note += ("; llama-cpp-python's defaults ran with AMX compiled in and did not crash" if amx else
                       "; llama-cpp-python's defaults have no AMX compiled in on this CPU (-march=native enables "
                       "it only on an AMX CPU, where GCC 11/12 builds die with SIGILL on quantized models: "
                       "issue 14), so they ran")
    return rows


def _row(what: str, key: str, o: dict, n: dict, base_what: str, unit: str, strict: bool) -> Row:
    target = ">= 0.95"
    if o["crash"]:
        return Row("B7", what, None, unit, n.get(key), base_what, None, target, False, f"ours died: {o['crash']}")
    if n["crash"]:
        return Row("B7", what, o[key], unit, None, f"{base_what}: **{n['crash']}**", None, target, None,
                   f"{base_what} died on this model ({n['crash']}): a result, not a benchmark failure; "
                   f"the no-AMX row gives the ratio")
    ratio = o[key] / n[key]
    same = o["ids"] == n["ids"]
    met = ratio >= 0.95 and (same or not strict)
    note = f"best samples {o[key + '_best']:.0f} vs {n[key + '_best']:.0f}"
    return Row("B7", what, o[key], unit, n[key], base_what, ratio, target, met, note)


def isa(system_info: str) -> str:
    """The CPU features beyond AVX2 that llama_print_system_info() reports for the CPU backend
    (for a GGML_BACKEND_DL build: of the plugin ggml picked), e.g. "AVX512, AVX512_VNNI, AMX_INT8"."""
    cpu = next((part for part in system_info.split("CPU :")[1:2]), system_info)
    on = [f.split("=")[0].strip() for f in cpu.split("|") if f.strip().endswith("= 1")]
    wide = [f for f in on if f.startswith(("AVX512", "AMX", "AVX_VNNI"))]
    return ", ".join(wide) or ("AVX2 or less" if on else "?")


def _agreement(o: dict, n: dict, what: str) -> str:
    """How far the greedy ids of ours and a baseline agree (quantized kernels may diverge late)."""
    if o["crash"] or n["crash"]:
        return f"ids vs {what}: - (a side died)"
    a, b = o["ids"], n["ids"]
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    same = a == b
    return f"greedy ids vs {what}: " + ("identical" if same else f"first {k} of {len(a)} agree")


def _models(names: str, work: Path, libdir: Path) -> list:
    from benchmarks.bench_models import f16_model, quantized, smollm2_model
    pick = {"f16": lambda: f16_model(work), "smollm2": smollm2_model}
    return [pick[k.lower()]() if k.lower() in pick else quantized(work, libdir, k) for k in names.split(",")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", type=Path, default=None,
                    help="variant folders (default: every folder under <dev cache>/variants)")
    ap.add_argument("--no-native", action="store_true", help="leave llama-cpp-python out")
    ap.add_argument("--noamx", action="store_true", help="add llama-cpp-python built without AMX")
    ap.add_argument("--models", default="f16",
                    help="comma-separated: f16, SmolLM2, or a quantization type of the bench model (Q4_K_M, Q8_0)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="cpu: tokens per process CPU-second (load-independent with --threads 1)")
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
        libs += [native_lib(f)[0] for f in (("native", "native-noamx") if args.noamx else ("native",))]
    if args.threadpool:
        libs += [Lib(f"{lib.name}+tp", lib.libllama, lib.backend_dir, {"B7_THREADPOOL": "1"})
                 for lib in list(libs)]
    for m in _models(args.models, args.work, folders[0]):
        before = load()
        data = measure(libs, args.work, m.path, args.rounds, args.reps, args.threads, clock=args.clock)
        after = load()
        print(f"{m.describe()}; {N_PROMPT}-token prompt, {N_GEN} generated, {args.threads} threads, "
              f"{CLOCKS[args.clock][2]}, load {before[0]:.2f} -> {after[0]:.2f}")
        print(f"{'library':32} {'prompt':>8} {'best':>6} {'gen':>6} {'best':>6}  n  ids==first  system info")
        first = next((d["ids"] for d in data.values() if "ids" in d), None)
        for name, d in data.items():
            if d["crash"]:
                print(f"{name:32} died: {d['crash']}")
                continue
            print(f"{name:32} {d['prompt']:8.0f} {d['prompt_best']:6.0f} {d['gen']:6.0f} {d['gen_best']:6.0f} "
                  f"{len(d['samples']):2} {str(d['ids'] == first):5}  {d['system_info'][:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
