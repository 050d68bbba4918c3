#!/usr/bin/env python3
"""Prove the CUDA 12 and CUDA 13 variants on a machine with an NVIDIA GPU, offline.

Two steps, because the GPU machine has no internet and the payload (NVIDIA's wheels alone are
~1.2 GB) is far above what a device run carries (64 MiB):

1. ``python -m scripts.gpu_check prepare DIR`` here (npm + PyPI reachable): the real variants
   (npm CPU build, ``linux-x86_64-cuda12``/``-cuda13`` and their one-target copies) published to
   a loopback hub and fetched into ``DIR/mirror`` (hub layout, sha256-checked against the lock of
   the staged source tree ``DIR/src``); NVIDIA's runtime wheels of both majors in ``DIR/wheels``;
   SmolLM2-135M-Instruct Q4_1 in ``DIR/model``. Copy DIR to the GPU machine (about 2 GB).
2. ``python3 scripts/gpu_check.py run DIR`` there (a few minutes; nothing but the driver needed):
   a CPU reference, then for CUDA 12 and 13 each a fresh venv that gets only that major's NVIDIA
   wheels (``pip install --no-index --find-links DIR/wheels``), in which the package from
   ``DIR/src`` (offline, ``LLAMA_RUNTIME_MIRROR``, ``LLAMA_RUNTIME_STRICT=1``: no silent CPU)
   loads what selection picks for ``LLAMA_BACKEND=cuda12``/``cuda13`` (a one-target copy) and the
   full archive, offloads every layer (llama.cpp's "offloaded N/N layers to GPU" and the device
   list), and generates greedily: the same ids as the CPU for the first ``--match`` tokens, the
   copy the same ids as the full build. A variant selection refuses (a driver that cannot JIT its
   PTX) is loaded anyway from its folder to confirm the refusal. One JSON line + a table.

``run --dry-run`` does all of it on a machine without a GPU, where each CUDA case must fail with
the loader's "libcuda.so.1" message and nothing else (the wheels resolve, the package imports).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NPM = ("@node-llama-cpp/linux-x64@3.22.1", "@node-llama-cpp/linux-x64-cuda@3.22.1",
       "@node-llama-cpp/linux-x64-cuda-ext@3.22.1")
CPU = "linux-x86_64-cpu"
FULL = {12: "linux-x86_64-cuda12", 13: "linux-x86_64-cuda13"}
PROMPT = "The capital of France is"
TOKENS = 32
CHILD_TIMEOUT_S = 420  # a PTX build JIT-compiles its kernels at first use: minutes, not seconds

# Runs inside the per-major venv: load through the package's own chain, one JSON line.
CHILD = r"""
import json, logging, sys, time
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
native_log = logging.getLogger("llama_runtime.native")
native_log.addHandler(Keep()); native_log.setLevel(logging.DEBUG); native_log.propagate = False
model, ngl, prompt, n, explicit_deps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:]
out = {"python": sys.version.split()[0]}
t0 = time.perf_counter()
try:
    import llama_runtime as lr
    if explicit_deps:  # a forced run (LLAMA_RUNTIME_LIB): NVIDIA's wheels first, as the loader does
        from llama_runtime.runtime.nativedeps import resolve_all
        out["deps"] = resolve_all(explicit_deps)
    else:
        doc = lr.doctor()
        out["selected"] = doc.get("selected")
        out["reasons"] = {c["name"]: c["reasons"] for c in doc.get("candidates", [])
                          if c["name"] == doc.get("selected") or c["name"].startswith("linux-x86_64-cuda")}
    lib = lr.load()
    out["library"] = {"variant": lib.variant, "source": lib.source, "path": str(lib.path),
                      "attempts": lib.attempts}
    out["devices"] = lib.native.devices()
    t1 = time.perf_counter()
    m = lr.Llama(model, n_ctx=256, n_gpu_layers=ngl, seed=0)
    t2 = time.perf_counter()
    out["ids"] = m.generate_tokens(prompt, n, temperature=0)
    t3 = time.perf_counter()
    out["text"] = m.detokenize(out["ids"])
    out["chat"] = m.chat([{"role": "user", "content": "What is the capital of France?"}],
                         max_tokens=16, temperature=0)
    out["seconds"] = {"load_library": round(t1 - t0, 2), "load_model": round(t2 - t1, 2),
                      "generate": round(t3 - t2, 2)}
except BaseException as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
out["offload"] = [l.strip() for l in lines if "offloaded" in l]
out["log_tail"] = [l.strip() for l in lines[-12:]]
print("GPU_CHECK_JSON " + json.dumps(out), flush=True)
"""


# --------------------------------------------------------------------------- prepare (here)
def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def prepare(dest: Path) -> None:
    from scripts import devrelease
    from scripts.hubserver import HubServer

    dest.mkdir(parents=True, exist_ok=True)
    flags = [x for spec in NPM for x in ("--npm", spec)] + ["--cuda-targets", "--no-check"]
    variants = devrelease.build_variant_dirs(devrelease.dev_cache() / "variants-cuda", *flags)
    with tempfile.TemporaryDirectory() as tmp, HubServer(Path(tmp) / "hub") as hub:
        tree = devrelease.stage_source(dest / "src")
        devrelease.publish_release(tree, variants, hub.url)
        env = {**os.environ, "LLAMA_RUNTIME_ENDPOINT": hub.url, "LLAMA_RUNTIME_CACHE": f"{tmp}/cache",
               "PYTHONPATH": str(tree)}
        for name in sorted(p.name for p in variants.iterdir() if (p / "variant.json").is_file()):
            # from inside the staged tree: its lock, not this checkout's (python -m puts cwd first)
            _run([sys.executable, "-m", "llama_runtime", "fetch", "--variant", name, "--dest",
                  str(dest / "mirror")], env=env, cwd=tree)
    manifest = json.loads((dest / "mirror" / "manifest.json").read_text())["variants"]
    wants = sorted({r for name in FULL.values() for r in manifest[name]["python_requires"]})
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d",
          str(dest / "wheels"), *wants])
    (dest / "model").mkdir(exist_ok=True)
    shutil.copy2(devrelease.smollm2(), dest / "model" / devrelease.smollm2().name)
    sizes = {d: sum(f.stat().st_size for f in (dest / d).rglob("*") if f.is_file())
             for d in ("src", "mirror", "wheels", "model")}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    (dest / "PREPARED.json").write_text(json.dumps(
        {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "python_requires": wants, "bytes": sizes}, indent=2) + "\n")
    print(json.dumps({"prepared": str(dest), "MB": {k: round(v / 1e6, 1) for k, v in sizes.items()}}))


# --------------------------------------------------------------------------- run (GPU machine)
def _venv(path: Path, wheels: Path, requires: list[str]) -> Path:
    if path.exists():
        shutil.rmtree(path)
    try:
        import ensurepip  # noqa: F401  (Debian/Ubuntu ship it separately)
    except ImportError:
        raise SystemExit("this Python cannot make a venv with pip: install python3-venv "
                         "(apt-get install python3-venv) or run with another python3") from None
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    python = path / "bin" / "python"
    if requires:
        _run([str(python), "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check",
              "--find-links", str(wheels), *requires])
    return python


def _child(python: Path, folder: Path, env: dict[str, str], ngl: int,
           deps: list[str] | None = None) -> dict[str, Any]:
    model = next((folder / "model").glob("*.gguf"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_"))}
    full_env = {**base, "PYTHONPATH": str(folder / "src"), "LLAMA_RUNTIME_OFFLINE": "1",
                "LLAMA_RUNTIME_MIRROR": str(folder / "mirror"),
                "LLAMA_RUNTIME_CACHE": str(folder / "run" / "cache"),
                "CUDA_CACHE_PATH": str(folder / "run" / "nv-jit-cache"),
                "CUDA_CACHE_MAXSIZE": str(4 << 30), **env}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([str(python), "-c", CHILD, str(model), str(ngl), PROMPT, str(TOKENS),
                               *(deps or [])], env=full_env, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, cwd=folder / "run")
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s", "wall": CHILD_TIMEOUT_S}
    found = [line for line in proc.stdout.splitlines() if line.startswith("GPU_CHECK_JSON ")]
    out: dict[str, Any] = json.loads(found[-1].split(" ", 1)[1]) if found else {
        "error": f"exit {proc.returncode} before a result (a crash in the library?)"}
    out["exit"], out["wall"] = proc.returncode, round(time.perf_counter() - t0, 1)
    out["stderr_tail"] = proc.stderr.strip().splitlines()[-6:]
    return out


def _unpack(folder: Path, name: str) -> Path:
    sys.path.insert(0, str(folder / "src"))
    from llama_runtime.fetch.archive import safe_extract

    manifest = json.loads((folder / "mirror" / "manifest.json").read_text())["variants"]
    dest = folder / "run" / "forced" / name
    if not dest.is_dir():
        safe_extract(folder / "mirror" / manifest[name]["archive"], dest)
    return dest / manifest[name]["libraries"][-1]


def _offloaded(result: dict[str, Any]) -> tuple[int, int] | None:
    import re

    for line in result.get("offload") or ():
        m = re.search(r"offloaded (\d+)/(\d+) layers to GPU", line)
        if m:
            return int(m[1]), int(m[2])
    return None


def _same_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _judge(case: dict[str, Any], ref: list[int], match: int, dry: bool) -> str:
    """PASS/FAIL and why, for one loaded CUDA case."""
    r = case["result"]
    if dry:  # the CUDA build must fail on the driver alone, then the CPU fallback loads
        text = " ".join(r.get("library", {}).get("attempts") or []) + " " + (r.get("error") or "")
        missing = text.split("missing:")[-1] if "missing:" in text else ""
        ok = ("libcuda.so.1: cannot open shared object file" in text
              and "libcudart" not in missing and "libcublas" not in missing)
        return "PASS (dry run: only libcuda.so.1 is missing)" if ok else f"FAIL (dry run: {text[:300]})"
    if r.get("error"):
        return f"FAIL ({r['error'][:300]})"
    off = _offloaded(r)
    gpus = [d for d in r.get("devices") or [] if d["type"] == "gpu" and d["name"].startswith("CUDA")]
    same = _same_prefix(r.get("ids") or [], ref)
    problems = [p for p, bad in (
        (f"offload {off}", off is None or off[0] != off[1]),
        ("no CUDA device", not gpus),
        (f"same ids as the CPU for {same} tokens, wanted {match}", same < min(match, len(ref))),
        (f"loaded {r['library']['variant']}, wanted {case['want']}",
         case.get("want") and r["library"]["variant"] != case["want"])) if bad]
    return "FAIL (" + "; ".join(problems) + ")" if problems else (
        f"PASS (offloaded {off[0]}/{off[1]}, {gpus[0]['description']}, {same}/{len(ref)} ids = CPU)")


def _cases(folder: Path, major: int, python: Path, dry: bool) -> list[dict[str, Any]]:
    """What selection picks for LLAMA_BACKEND=cuda<major>, then the full archive (if other)."""
    # strict: a CUDA build that does not load is an error, never a quiet CPU run (not in a dry
    # run, where the CPU fallback after the driver-less failure is what is checked)
    env = {"LLAMA_BACKEND": f"cuda{major}", **({} if dry else {"LLAMA_RUNTIME_STRICT": "1"})}
    picked = _child(python, folder, env, 99)
    cases = [{"case": f"LLAMA_BACKEND=cuda{major}", "want": picked.get("selected"), "result": picked}]
    if picked.get("selected") is None and not dry:
        # selection refused every CUDA <major> build here: load the full one anyway to see why
        lib = _unpack(folder, FULL[major])
        manifest = json.loads((folder / "mirror" / "manifest.json").read_text())["variants"]
        deps = manifest[FULL[major]]["external_libraries"]
        forced = _child(python, folder, {"LLAMA_RUNTIME_LIB": str(lib)}, 99, deps)
        cases.append({"case": f"forced {FULL[major]} (selection refused it)", "want": None,
                      "result": forced, "forced": True})
    elif picked.get("selected") != FULL[major]:
        full = _child(python, folder, {**env, "LLAMA_RUNTIME_VARIANT": FULL[major]}, 99)
        cases.append({"case": f"LLAMA_RUNTIME_VARIANT={FULL[major]}", "want": FULL[major],
                      "result": full})
    return cases


def run(folder: Path, match: int, dry: bool) -> int:
    folder = folder.resolve()
    (folder / "run").mkdir(exist_ok=True)
    manifest = json.loads((folder / "mirror" / "manifest.json").read_text())["variants"]
    started = time.perf_counter()
    cpu_py = _venv(folder / "run" / "venv-cpu", folder / "wheels", [])
    cpu = _child(cpu_py, folder, {"LLAMA_RUNTIME_VARIANT": CPU, "LLAMA_BACKEND": "cpu"}, 0)
    ref = cpu.get("ids") or []
    report: dict[str, Any] = {"cpu": cpu, "cuda": {}}
    rows = [("CPU reference", CPU, "PASS" if ref else f"FAIL ({cpu.get('error')})", cpu)]
    for major in (12, 13):
        python = _venv(folder / "run" / f"venv-cu{major}", folder / "wheels",
                       manifest[FULL[major]]["python_requires"])
        cases = _cases(folder, major, python, dry)
        for case in cases:
            if case["want"] is None and not case.get("forced") and not dry:
                why = (case["result"].get("reasons") or {}).get(FULL[major]) or [case["result"].get("error")]
                case["verdict"] = f"REFUSED by selection ({'; '.join(map(str, why))[:300]})"
            elif case.get("forced"):
                refused = bool(case["result"].get("error")) or not case["result"].get("ids")
                case["verdict"] = ("PASS (it does fail here, as selection said)" if refused else
                                   "FAIL (selection refused a build that runs here)")
            else:
                case["verdict"] = _judge(case, ref, match, dry)
            rows.append((case["case"], case["result"].get("library", {}).get("variant"),
                         case["verdict"], case["result"]))
        ran = [c["result"]["ids"] for c in cases if not c.get("forced") and c["result"].get("ids")]
        if len(ran) == 2 and not dry:  # the one-target copy runs the image the full build would
            rows.append(("one-target copy = full build", "", "PASS (identical ids)" if ran[0] == ran[1]
                         else "FAIL (different ids)", {}))
        report["cuda"][major] = cases
    report["seconds"] = round(time.perf_counter() - started, 1)
    print("GPU_CHECK_REPORT " + json.dumps(report, default=str))
    print(f"\nCPU text: {cpu.get('text')!r}\nchat: {cpu.get('chat')!r}\n")
    for what, variant, verdict, r in rows:
        secs = r.get("seconds") or {}
        print(f"{what:48} {variant or '':32} {verdict}"
              + (f"  [{secs}]" if secs else "") + (f"  text={r.get('text')!r}" if r.get("text") and r is not cpu else ""))
    print(f"\ntotal {report['seconds']} s")
    return 0 if all(v.startswith(("PASS", "REFUSED")) for _, _, v, _ in rows) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare").add_argument("dir", type=Path)
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("--match", type=int, default=16, help="leading ids that must equal the CPU's")
    r.add_argument("--dry-run", action="store_true", help="no GPU here: expect libcuda.so.1 missing")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        prepare(args.dir.resolve())
        return 0
    return run(args.dir, args.match, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
