"""B4: prompt and generation tokens/s of llama_runtime.Llama on one libllama, against
a C program (the limit) and llama-cpp-python's own high-level API pointed at the same files
(``LLAMA_CPP_LIB_PATH``; the venv B7 builds, so it is the same llama.cpp generation)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from common import PY, ROOT, Row, interleave, median, timed_run

HERE = Path(__file__).resolve().parent
PROMPT = " ".join(["hello world the llama runtime model is a small token and it was for the world"] * 8)


def make_model(path: Path) -> tuple[Path, int]:
    from tiny_model import write_tiny_llama
    kw = dict(n_layer=8, n_embd=512, n_head=8, n_ff=1408, n_ctx=512, vocab_size=960, f16=True)
    if not path.exists():
        write_tiny_llama(path, **kw)
    n_params = 960 * 512 * 2 + 8 * (4 * 512 * 512 + 3 * 512 * 1408 + 2 * 512) + 512
    return path, n_params


def build_c(libdir: Path, out: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc) found")
    inc = ROOT / "llama_runtime" / "native" / "include"
    subprocess.run([cc, "-O2", "-o", str(out), str(HERE / "bench_llama.c"), f"-I{inc}",
                    str(libdir / "libllama.so"), f"-Wl,-rpath,{libdir}"], check=True)
    return out


def llama_cpp_python() -> tuple[str | None, str]:
    """The python of a venv with llama-cpp-python 0.3.36 (built once by B7), or why there is none."""
    try:
        from b7_native import native_venv
        return str(native_venv() / "bin" / "python"), ""
    except Exception as exc:  # the row says why instead of failing B4
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


def run(work: Path, libdir: Path, n_gen: int = 128, threads: int = 2, rounds: int = 12,
        reps: int = 3) -> list[Row]:
    model, n_params = make_model(work / "b4-model.gguf")
    exe = build_c(libdir, work / "bench_llama")
    lcp_python, lcp_missing = llama_cpp_python()
    samples: dict[str, list[dict]] = {"c": [], "py": []}

    def c() -> float:
        _, p = timed_run([str(exe), str(model), PROMPT, str(n_gen), str(threads), str(reps)])
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        samples["c"] += [json.loads(x) for x in p.stdout.splitlines()[1:]]  # first rep = warm-up
        return 0.0

    def py(*flags: str) -> list[dict]:
        _, p = timed_run([PY, str(HERE / "b4_worker.py"), str(libdir), str(model), PROMPT, str(n_gen),
                          str(threads), str(reps), *flags], {"PYTHONPATH": str(ROOT)})
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        return [json.loads(x) for x in p.stdout.splitlines()]

    def pyt() -> float:
        samples["py"] += py()[1:]
        return 0.0

    def lcp(*flags: str) -> list[dict]:
        _, p = timed_run([lcp_python, str(HERE / "b4_llamacpp_worker.py"), str(model), PROMPT, str(n_gen),
                          str(threads), str(reps), *flags], {"LLAMA_CPP_LIB_PATH": str(libdir)})
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        return [json.loads(x) for x in p.stdout.splitlines()]

    def lcpt() -> float:
        samples.setdefault("lcp", []).extend(lcp()[1:])
        return 0.0

    interleave({"c": c, "py": pyt, **({"lcp": lcpt} if lcp_python else {})}, rounds, warmup=0)
    ids_py = py("--ids")[0]["ids"][:n_gen]
    _, p = timed_run([str(exe), str(model), PROMPT, str(n_gen), str(threads), "1"])
    ids_c = json.loads(p.stdout.splitlines()[0])["ids"]
    n_prompt = samples["c"][0]["n_prompt"]
    assert samples["py"][0]["n_prompt"] == n_prompt, "prompt token counts differ"
    pp = {k: median([n_prompt / s["prompt_s"] for s in v]) for k, v in samples.items()}
    ng = {k: median([(n_gen - 1) / s["gen_s"] for s in v]) for k, v in samples.items()}
    over_us = (median([s["gen_s"] for s in samples["py"]]) - median([s["gen_s"] for s in samples["c"]])) / (n_gen - 1) * 1e6
    same = ids_py == ids_c
    best_pp = {k: max(n_prompt / s["prompt_s"] for s in v) for k, v in samples.items()}
    best_ng = {k: max((n_gen - 1) / s["gen_s"] for s in v) for k, v in samples.items()}
    note = (f"{n_params / 1e6:.1f} M params F16, {n_prompt}-token prompt, {n_gen} generated, {threads} threads, "
            f"{len(samples['c'])} samples each; greedy ids identical: {same}; best-of-samples (least disturbed) "
            f"prompt {best_pp['py']:.0f} vs {best_pp['c']:.0f} tok/s = {best_pp['py'] / best_pp['c']:.2f}x")
    return [
        Row("B4", "prompt tok/s (Llama)", pp["py"], "tok/s", pp["c"], "C program, same libllama",
            pp["py"] / pp["c"], ">= 0.97", pp["py"] / pp["c"] >= 0.97, note),
        Row("B4", "generation tok/s (Llama)", ng["py"], "tok/s", ng["c"], "C program, same libllama",
            ng["py"] / ng["c"], ">= 0.97", ng["py"] / ng["c"] >= 0.97 and same,
            f"Python overhead per generated token: {over_us:.0f} µs (median difference); best-of-samples "
            f"gen {best_ng['py']:.0f} vs {best_ng['c']:.0f} tok/s = {best_ng['py'] / best_ng['c']:.2f}x" + ("" if same else f"; ids differ: py {ids_py[:10]} c {ids_c[:10]}")),
        *_versus_llama_cpp_python(samples, pp, ng, n_prompt, n_gen, ids_py, lcp, lcp_python, lcp_missing, libdir),
    ]


def _versus_llama_cpp_python(samples, pp, ng, n_prompt, n_gen, ids_py, lcp, lcp_python, lcp_missing,
                             libdir) -> list[Row]:
    what = "llama-cpp-python 0.3.36, same libllama"
    if not lcp_python:
        return [Row("B4", "vs llama-cpp-python", None, "", None, what, None, ">= 1.0", None,
                    f"not measured: no llama-cpp-python venv ({lcp_missing})")]
    got = lcp("--ids")[0]
    same = got["ids"] == ids_py
    others = [p for p in got["libraries"] if not p.startswith(str(libdir))]
    assert all(s["n_prompt"] == n_prompt for s in samples["lcp"]), "llama-cpp-python tokenized differently"
    assert all(s["n_generated"] == n_gen for s in samples["lcp"]), "llama-cpp-python stopped early"
    note = (f"llama-cpp-python's `Llama.create_completion(stream=True, temperature=0)` with "
            f"LLAMA_CPP_LIB_PATH={libdir.name}/ vs our `Llama.stream`; {len(samples['lcp'])} samples each, "
            f"interleaved with the C program; libraries mapped in its process: "
            f"{', '.join(Path(p).name for p in got['libraries'])} (all from that folder: {not others}); "
            f"greedy ids identical: {same}")
    return [
        Row("B4", "prompt tok/s vs llama-cpp-python", pp["py"], "tok/s", pp["lcp"], what,
            pp["py"] / pp["lcp"], ">= 1.0", pp["py"] / pp["lcp"] >= 1.0 and not others, note),
        Row("B4", "generation tok/s vs llama-cpp-python", ng["py"], "tok/s", ng["lcp"], what,
            ng["py"] / ng["lcp"], ">= 1.0", ng["py"] / ng["lcp"] >= 1.0 and same and not others,
            f"per generated token: ours {1e6 / ng['py']:.0f} µs, llama-cpp-python {1e6 / ng['lcp']:.0f} µs, "
            f"C {1e6 / ng['c']:.0f} µs" + ("" if same else f"; ids differ: ours {ids_py[:10]} theirs {got['ids'][:10]}")),
    ]
