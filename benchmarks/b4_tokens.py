"""B4: prompt and generation tokens/s, llama_runtime.Llama vs a C program on the same libllama."""

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


def run(work: Path, libdir: Path, n_gen: int = 48, threads: int = 2, rounds: int = 5,
        reps: int = 3) -> list[Row]:
    model, n_params = make_model(work / "b4-model.gguf")
    exe = build_c(libdir, work / "bench_llama")
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

    interleave({"c": c, "py": pyt}, rounds, warmup=0)
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
        Row("B4", "vs llama-cpp-python", None, "", None, "llama-cpp-python on the same lib", None, ">= 1.0", None,
            "not measured: llama-cpp-python is not installed and building it from source takes many minutes on 2 cores"),
    ]
