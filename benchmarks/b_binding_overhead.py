"""What the Python loop adds per generated token, against the same loop in C.

Standalone: ``.venv/bin/python -m benchmarks.b_binding_overhead [--threads 1] [--n-gen 200]``.
Both sides use the same libllama (the one the binding tests use: ``LLAMA_RUNTIME_TEST_LIBDIR``
or the development variant folders), the same tiny model, threads, context and greedy sampler.
The C side is ``tests/data/oracle/greedy.c`` (decode 1 + sample + token_to_piece per token);
the Python side is ``Llama.stream`` (the same, plus UTF-8 assembly and stop-string checks) and
``Llama.generate_tokens`` (no text). Per token means: after the first token, so the prompt is
not counted. The model is tiny on purpose: decoding is cheap, so the overhead shows.
Prints µs/token; asserts nothing (speed is reported, not tested).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/ is no package: _native_fixture lives there

from _native_fixture import NativeLibs, build_oracle, find_native_libs, run_oracle  # noqa: E402
from scripts.tiny_model import write_tiny_llama  # noqa: E402

from llama_runtime.llama import Llama  # noqa: E402
from llama_runtime.native.sampling import Sampling  # noqa: E402

GREEDY = Sampling(temperature=0.0)

PROMPT = "the llama runtime is a small model of the world"


def _per_token_us(items: Iterable[object]) -> tuple[float, int]:
    """µs per item after the first, and the number of items."""
    it = iter(items)
    next(it)
    start = time.perf_counter()
    n = sum(1 for _ in it)
    return (time.perf_counter() - start) * 1e6 / max(n, 1), n + 1


def _python(llm: Llama, n_gen: int, reps: int,
            run: Callable[[Llama, int], Iterable[object]]) -> tuple[float, int]:
    results = []
    list(run(llm, n_gen))  # warm-up: first-call costs (page faults, ctypes thunks) not counted
    for _ in range(reps):
        llm.reset()  # like the C program: every rep decodes its prompt afresh
        results.append(_per_token_us(run(llm, n_gen)))
    return min(r[0] for r in results), results[-1][1]  # best of: the least disturbed run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-gen", type=int, default=200)
    parser.add_argument("--reps", type=int, default=7)
    # Smaller than the test model by default: the less C does per token, the less its noise
    # hides what Python adds.
    parser.add_argument("--n-embd", type=int, default=32)
    parser.add_argument("--n-layer", type=int, default=1)
    args = parser.parse_args(argv)

    libs: NativeLibs = find_native_libs()
    native = libs.open()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_llama(Path(tmp) / "m.gguf", seed=3, n_embd=args.n_embd,
                                 n_layer=args.n_layer, n_ff=2 * args.n_embd,
                                 n_ctx=max(256, args.n_gen + 64))
        exe = build_oracle(libs, Path(tmp))
        n_ctx = max(256, args.n_gen + 64)
        c_runs = [run_oracle(exe, libs, model, PROMPT, args.n_gen, threads=args.threads,
                             n_ctx=n_ctx, reps=1) for _ in range(args.reps)]
        c_us = min(us for _, us in c_runs)
        with Llama(model, n_ctx=n_ctx, n_threads=args.threads, native=native) as llm:
            tok_us, n_tok = _python(llm, args.n_gen, args.reps,
                                    lambda m, n: m._live_context().sample(
                                        m.tokenize(PROMPT), n, GREEDY, m._vocab, m.n_vocab))
            stream_us, n_str = _python(llm, args.n_gen, args.reps,
                                       lambda m, n: m.stream(PROMPT, n, temperature=0))
            gated, bare = _gate_cost(llm, args.n_gen, args.reps)
    print(f"library: {libs.libraries[-1]}  threads: {args.threads}  "
          f"tokens: {len(c_runs[0][0][0])}  best of {args.reps}")
    print(f"C greedy loop (decode+sample+piece)     {c_us:8.1f} µs/token")
    print(f"Python token loop (Context.sample)      {tok_us:8.1f} µs/token  "
          f"overhead {tok_us - c_us:+7.1f} µs/token  ({n_tok} tokens)")
    print(f"Python Llama.stream (text pieces)       {stream_us:8.1f} µs/token  "
          f"overhead {stream_us - c_us:+7.1f} µs/token  ({n_str} pieces)")
    print(f"thread gate (Gate.pause+resume)         {gated - bare:+8.2f} µs/token  "
          f"(token loop {gated:.1f} with it, {bare:.1f} without, interleaved)")
    return 0


def _gate_cost(llm: Llama, n_gen: int, reps: int) -> tuple[float, float]:
    """The token loop with the Llama's thread gate and with its per-token calls made no-ops,
    interleaved rep by rep (neighbours in time share the machine's load); best of each."""
    gate = llm._gate

    def run(m: Llama, n: int) -> Iterable[object]:
        return m._live_context().sample(m.tokenize(PROMPT), n, GREEDY, m._vocab, m.n_vocab)

    def noop(run: object) -> None:
        pass

    with_gate, without = [], []
    for _ in range(reps):
        with_gate.append(_python(llm, n_gen, 1, run)[0])
        gate.pause = gate.resume = noop  # type: ignore[method-assign]  # sample() reads them per run
        without.append(_python(llm, n_gen, 1, run)[0])
        del gate.pause, gate.resume
    return min(with_gate), min(without)


if __name__ == "__main__":
    sys.exit(main())
