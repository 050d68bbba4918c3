"""B4: prompt and generation tokens/s of llama_runtime.Llama on one libllama, against
a C program (the limit) and llama-cpp-python's own high-level API pointed at the same files
(``LLAMA_CPP_LIB_PATH``; the venv B7 builds, so it is the same llama.cpp generation).

Run on the f16 bench llama (the original rows) and on what users run (bench_models.py:
the bench llama quantized to Q4_K_M and Q8_0, SmolLM2 Q4_1), one block of rows per model."""

from __future__ import annotations

import json
from pathlib import Path

from typing import TYPE_CHECKING

from benchmarks.common import PY, ROOT, Row, interleave, load, median, timed_run

if TYPE_CHECKING:
    from benchmarks.bench_models import BenchModel

HERE = Path(__file__).resolve().parent
PROMPT = " ".join(["hello world the llama runtime model is a small token and it was for the world"] * 8)
MODEL_SHAPE = dict(n_layer=8, n_embd=512, n_head=8, n_ff=1408, n_ctx=512, vocab_size=960, f16=True)


def make_model(path: Path) -> tuple[Path, int]:
    from scripts.tiny_model import write_tiny_llama
    if not path.exists():
        write_tiny_llama(path, **MODEL_SHAPE)
    n_params = 960 * 512 * 2 + 8 * (4 * 512 * 512 + 3 * 512 * 1408 + 2 * 512) + 512
    return path, n_params


def llama_cpp_python() -> tuple[str | None, str]:
    """The python of a venv with llama-cpp-python 0.3.36 (built once by B7), or why there is none."""
    try:
        from benchmarks.b7_native import native_venv
        return str(native_venv() / "bin" / "python"), ""
    except Exception as exc:  # the row says why instead of failing B4
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


def run(work: Path, libdir: Path, n_gen: int = 128, threads: int = 2, rounds: int = 12,
        reps: int = 3, model_rounds: int | None = None, clock: str = "wall") -> list[Row]:
    """The f16 rows (``rounds``), then the same rows for each quantized model (``model_rounds``,
    default ``rounds``). ``clock="cpu"``: rates per process CPU-second (use with threads=1)."""
    from benchmarks.bench_models import f16_model, quantized_models
    from benchmarks.b7_native import Lib, build_c
    exe = build_c(Lib(f"b4-{libdir.name}", libdir / "libllama.so"), work)
    lcp = llama_cpp_python()
    rows = measure_model(exe, f16_model(work), libdir, lcp, "", n_gen, threads, rounds, reps, clock)
    for m in quantized_models(work, libdir):
        rows += measure_model(exe, m, libdir, lcp, f", {m.label}", n_gen, threads,
                              model_rounds or rounds, reps, clock)
    return rows


def _commands(exe: Path, model: Path, libdir: Path, lcp_python: str | None, n_gen: int,
              threads: int) -> dict[str, tuple[list[str], dict[str, str] | None]]:
    args = [str(model), PROMPT, str(n_gen), str(threads)]
    commands = {
        "c": ([str(exe), str(model), PROMPT, "0", *args[2:]], None),  # 0: whole prompt, tokenized in the timing
        "py": ([PY, str(HERE / "b4_worker.py"), str(libdir), *args], {"PYTHONPATH": str(ROOT)}),
    }
    if lcp_python:
        commands["lcp"] = ([lcp_python, str(HERE / "b4_llamacpp_worker.py"), *args],
                           {"LLAMA_CPP_LIB_PATH": str(libdir)})
    return commands


def measure_model(exe: Path, m: BenchModel, libdir: Path, lcp: tuple[str | None, str], suffix: str, n_gen: int,
                  threads: int, rounds: int, reps: int, clock: str) -> list[Row]:
    """Each round runs the C program, our worker and llama-cpp-python's once (order alternating),
    each for ``reps`` reps in one process (the first is a warm-up). Ratios are the median over
    rounds of the ratio within a round: neighbours in time share the machine's load."""
    lcp_python, lcp_missing = lcp
    commands = _commands(exe, m.path, libdir, lcp_python, n_gen, threads)

    def call(side: str, n: int, *flags: str) -> list[dict]:
        cmd, env = commands[side]
        _, p = timed_run([*cmd, str(n), *flags], env)
        if p.returncode != 0:
            raise RuntimeError(f"B4 {side} on {m.label} failed:\n{p.stderr[-2000:]}")
        return [json.loads(x) for x in p.stdout.splitlines()]

    per_round: dict[str, list[list[dict]]] = {side: [] for side in commands}

    def sampler(side: str):
        return lambda: per_round[side].append(call(side, reps)[1:]) or 0.0  # first rep = warm-up

    before = load()
    interleave({side: sampler(side) for side in commands}, rounds, warmup=0)
    after = load()
    ids = {"c": call("c", 1)[0]["ids"], "py": call("py", 1, "--ids")[0]["ids"][:n_gen]}
    flat = {k: [s for rnd in v for s in rnd] for k, v in per_round.items()}
    n_prompt = flat["c"][0]["n_prompt"]
    n_out = flat["c"][0]["n_gen"]  # fewer than n_gen when a real model stops (end of generation)
    for side, got in flat.items():
        assert all(s["n_prompt"] == n_prompt for s in got), f"{side} tokenized the prompt differently"
        if side != "py":  # ours streams text pieces, not tokens: its ids are compared below instead
            assert all(_generated(s) == n_out for s in got), f"{side} generated another number of tokens"
    key = {"wall": ("prompt_s", "gen_s"), "cpu": ("prompt_cpu_s", "gen_cpu_s")}[clock]
    unit = "tok/s" if clock == "wall" else "tok/CPU-s"

    def rates(key: str, n: int, samples: list[dict]) -> float:
        return median([n / s[key] for s in samples])

    def paired(side: str, base: str, key: str, n: int) -> float:
        return median([rates(key, n, a) / rates(key, n, b) for a, b in zip(per_round[side], per_round[base])])

    pp = {k: rates(key[0], n_prompt, v) for k, v in flat.items()}
    ng = {k: rates(key[1], n_out - 1, v) for k, v in flat.items()}
    same = ids["py"] == ids["c"]
    c_pp, c_ng = paired("py", "c", key[0], n_prompt), paired("py", "c", key[1], n_out - 1)
    best = {k: max((n_out - 1) / s[key[1]] for s in v) for k, v in flat.items()}
    clock_note = "" if clock == "wall" else "; rates per process CPU-second (time.process_time / CLOCK_PROCESS_CPUTIME_ID)"
    note = (f"{m.describe()}; {n_prompt}-token prompt, {n_out} generated, {threads} threads, {rounds} rounds x "
            f"{reps - 1} timed reps per side, one process per side and round; ratio = median of the per-round "
            f"ratios; greedy ids identical: {same}; load {before[0]:.1f} -> {after[0]:.1f}{clock_note}")
    rows = [
        Row("B4", f"prompt {unit} (Llama){suffix}", pp["py"], unit, pp["c"], "C program, same libllama",
            c_pp, ">= 0.97", c_pp >= 0.97, note),
        Row("B4", f"generation {unit} (Llama){suffix}", ng["py"], unit, ng["c"], "C program, same libllama",
            c_ng, ">= 0.97", c_ng >= 0.97 and same,
            f"per token: ours {1e6 / ng['py']:.0f} µs, C {1e6 / ng['c']:.0f} µs (difference of medians "
            f"{(1 / ng['py'] - 1 / ng['c']) * 1e6:.0f} µs); best samples {best['py']:.0f} vs {best['c']:.0f}"
            + ("" if same else f"; ids differ: py {ids['py'][:10]} c {ids['c'][:10]}")),
    ]
    what = "llama-cpp-python 0.3.36, same libllama"
    if not lcp_python:
        return rows + [Row("B4", f"vs llama-cpp-python{suffix}", None, "", None, what, None, ">= 1.0", None,
                           f"not measured: no llama-cpp-python venv ({lcp_missing})")]
    got = call("lcp", 1, "--ids")[0]
    same_lcp = got["ids"] == ids["py"]
    others = [p for p in got["libraries"] if not p.startswith(str(libdir))]
    r_pp, r_ng = paired("py", "lcp", key[0], n_prompt), paired("py", "lcp", key[1], n_out - 1)
    note = (f"llama-cpp-python's `Llama.create_completion(stream=True, temperature=0)` with "
            f"LLAMA_CPP_LIB_PATH={libdir.name}/ vs our `Llama.stream`, in the same rounds; libraries mapped in "
            f"its process: {', '.join(Path(p).name for p in got['libraries'])} (all from that folder: "
            f"{not others}); greedy ids identical: {same_lcp}")
    return rows + [
        Row("B4", f"prompt {unit} vs llama-cpp-python{suffix}", pp["py"], unit, pp["lcp"], what,
            r_pp, ">= 1.0", r_pp >= 1.0 and not others, note),
        Row("B4", f"generation {unit} vs llama-cpp-python{suffix}", ng["py"], unit, ng["lcp"], what,
            r_ng, ">= 1.0", r_ng >= 1.0 and same_lcp and not others,
            f"per generated token: ours {1e6 / ng['py']:.0f} µs, llama-cpp-python {1e6 / ng['lcp']:.0f} µs"
            + ("" if same_lcp else f"; ids differ: ours {ids['py'][:10]} theirs {got['ids'][:10]}")),
    ]


def _generated(sample: dict) -> int:
    """Tokens generated in one rep, whichever side wrote the sample."""
    for k in ("n_gen", "n_generated"):
        if k in sample:
            return int(sample[k])
    raise KeyError("no token count in sample")
