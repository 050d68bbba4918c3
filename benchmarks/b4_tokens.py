"""B4: prompt and generation tokens/s of llama_runtime.Llama on one libllama, against
a C program (the limit) and llama-cpp-python's own high-level API pointed at the same files
(``LLAMA_CPP_LIB_PATH``; the venv B7 builds, so it is the same llama.cpp generation)."""

from __future__ import annotations

import json
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


def llama_cpp_python() -> tuple[str | None, str]:
    """The python of a venv with llama-cpp-python 0.3.36 (built once by B7), or why there is none."""
    try:
        from b7_native import native_venv
        return str(native_venv() / "bin" / "python"), ""
    except Exception as exc:  # the row says why instead of failing B4
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


def run(work: Path, libdir: Path, n_gen: int = 128, threads: int = 2, rounds: int = 12,
        reps: int = 3) -> list[Row]:
    """Each round runs the C program, our worker and llama-cpp-python's once (order alternating),
    each for ``reps`` reps in one process (the first is a warm-up). Ratios are the median over
    rounds of the ratio within a round: neighbours in time share the machine's load."""
    model, n_params = make_model(work / "b4-model.gguf")
    from b7_native import Lib, build_c
    exe = build_c(Lib(f"b4-{libdir.name}", libdir / "libllama.so"), work)
    lcp_python, lcp_missing = llama_cpp_python()
    args = [str(model), PROMPT, str(n_gen), str(threads)]
    commands = {
        "c": ([str(exe), str(model), PROMPT, "0", *args[2:]], None),  # 0: whole prompt, tokenized in the timing
        "py": ([PY, str(HERE / "b4_worker.py"), str(libdir), *args], {"PYTHONPATH": str(ROOT)}),
    }
    if lcp_python:
        commands["lcp"] = ([lcp_python, str(HERE / "b4_llamacpp_worker.py"), *args],
                           {"LLAMA_CPP_LIB_PATH": str(libdir)})

    def call(side: str, n: int, *flags: str) -> list[dict]:
        cmd, env = commands[side]
        _, p = timed_run([*cmd, str(n), *flags], env)
        if p.returncode != 0:
            raise RuntimeError(f"B4 {side} failed:\n{p.stderr[-2000:]}")
        return [json.loads(x) for x in p.stdout.splitlines()]

    per_round: dict[str, list[list[dict]]] = {side: [] for side in commands}

    def sampler(side: str):
        return lambda: per_round[side].append(call(side, reps)[1:]) or 0.0  # first rep = warm-up

    interleave({side: sampler(side) for side in commands}, rounds, warmup=0)
    ids = {"c": call("c", 1)[0]["ids"], "py": call("py", 1, "--ids")[0]["ids"][:n_gen]}
    n_prompt = per_round["c"][0][0]["n_prompt"]
    flat = {k: [s for rnd in v for s in rnd] for k, v in per_round.items()}
    for side, got in flat.items():
        assert all(s["n_prompt"] == n_prompt for s in got), f"{side} tokenized the prompt differently"

    def rates(side: str, key: str, n: int, samples: list[dict] | None = None) -> float:
        return median([n / s[key] for s in (flat[side] if samples is None else samples)])

    def paired(side: str, base: str, key: str, n: int) -> float:
        return median([rates(side, key, n, a) / rates(base, key, n, b)
                       for a, b in zip(per_round[side], per_round[base])])

    pp = {k: rates(k, "prompt_s", n_prompt) for k in flat}
    ng = {k: rates(k, "gen_s", n_gen - 1) for k in flat}
    same = ids["py"] == ids["c"]
    c_pp, c_ng = paired("py", "c", "prompt_s", n_prompt), paired("py", "c", "gen_s", n_gen - 1)
    over_us = (1 / ng["py"] - 1 / ng["c"]) * 1e6
    best = {k: max((n_gen - 1) / s["gen_s"] for s in v) for k, v in flat.items()}
    note = (f"{n_params / 1e6:.1f} M params F16, {n_prompt}-token prompt, {n_gen} generated, {threads} threads, "
            f"{rounds} rounds x {reps - 1} timed reps per side, one process per side and round; ratio = median of "
            f"the per-round ratios; greedy ids identical: {same}")
    rows = [
        Row("B4", "prompt tok/s (Llama)", pp["py"], "tok/s", pp["c"], "C program, same libllama",
            c_pp, ">= 0.97", c_pp >= 0.97, note),
        Row("B4", "generation tok/s (Llama)", ng["py"], "tok/s", ng["c"], "C program, same libllama",
            c_ng, ">= 0.97", c_ng >= 0.97 and same,
            f"per token: ours {1e6 / ng['py']:.0f} µs, C {1e6 / ng['c']:.0f} µs (difference of medians "
            f"{over_us:.0f} µs); best samples {best['py']:.0f} vs {best['c']:.0f} tok/s"
            + ("" if same else f"; ids differ: py {ids['py'][:10]} c {ids['c'][:10]}")),
    ]
    what = "llama-cpp-python 0.3.36, same libllama"
    if not lcp_python:
        return rows + [Row("B4", "vs llama-cpp-python", None, "", None, what, None, ">= 1.0", None,
                           f"not measured: no llama-cpp-python venv ({lcp_missing})")]
    got = call("lcp", 1, "--ids")[0]
    same_lcp = got["ids"] == ids["py"]
    others = [p for p in got["libraries"] if not p.startswith(str(libdir))]
    assert all(s["n_generated"] == n_gen for s in flat["lcp"]), "llama-cpp-python stopped early"
    r_pp, r_ng = paired("py", "lcp", "prompt_s", n_prompt), paired("py", "lcp", "gen_s", n_gen - 1)
    note = (f"llama-cpp-python's `Llama.create_completion(stream=True, temperature=0)` with "
            f"LLAMA_CPP_LIB_PATH={libdir.name}/ vs our `Llama.stream`, in the same rounds; libraries mapped in "
            f"its process: {', '.join(Path(p).name for p in got['libraries'])} (all from that folder: "
            f"{not others}); greedy ids identical: {same_lcp}")
    return rows + [
        Row("B4", "prompt tok/s vs llama-cpp-python", pp["py"], "tok/s", pp["lcp"], what,
            r_pp, ">= 1.0", r_pp >= 1.0 and not others, note),
        Row("B4", "generation tok/s vs llama-cpp-python", ng["py"], "tok/s", ng["lcp"], what,
            r_ng, ">= 1.0", r_ng >= 1.0 and same_lcp and not others,
            f"per generated token: ours {1e6 / ng['py']:.0f} µs, llama-cpp-python {1e6 / ng['lcp']:.0f} µs"
            + ("" if same_lcp else f"; ids differ: ours {ids['py'][:10]} theirs {got['ids'][:10]}")),
    ]
