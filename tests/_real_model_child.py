"""One variant, one process: SmolLM2 through the high-level API, reported as one JSON line.

Run by ``tests/e2e/test_real_model.py`` as ``python _real_model_child.py MODEL`` with
``LLAMA_RUNTIME_TEST_LIBDIR`` naming the variant folder (a process holds one llama.cpp, so each
variant gets its own). It only records; the tests assert. A crash in a kernel (SIGILL in a CPU
plugin) kills this process, and the test reports the signal.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from _native_fixture import find_native_libs

from llama_runtime.llama import Llama
from llama_runtime.native import Native
from llama_runtime.native.context import common_prefix

THREADS = 1  # the oracle runs with the same; more threads spin against each other on a busy box
N_CTX = 512
N_GEN = 32
PROMPTS = ("The capital of France is", "Once upon a time")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
FOLLOW_UP = {"role": "user", "content": "And of Germany?"}
GREEDY = {"temperature": 0.0}


def cpu_plugins() -> list[str]:
    """The ggml CPU plugin(s) this process mapped: the one ggml scored best on this CPU."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return []
    names = {Path(line.split()[-1]).name for line in maps.read_text().splitlines() if "/" in line}
    return sorted(n for n in names if n.startswith("libggml-cpu"))


def margins(llm: Llama, native: Native, prompt: str, ids: list[int]) -> list[float]:
    """For each generated id: how far its logit is above the runner-up's (greedy: >= 0).

    Replays the generation one token at a time, as ``sample`` decodes it, and checks that the
    argmax of each step is the id greedy sampling chose.
    """
    ctx = llm._live_context()
    ctx.reset()
    ctx.decode(llm.tokenize(prompt))
    out = []
    for token in ids:
        logits = native.llama_get_logits_ith(ctx.ctx, -1)[: llm.n_vocab]
        best = max(logits)
        if logits.index(best) != token:
            raise AssertionError(f"greedy chose {token}, the logits' argmax is {logits.index(best)}")
        logits[token] = float("-inf")
        out.append(round(best - max(logits), 4))
        ctx.decode([token])
    ctx.reset()
    return out


def completions(llm: Llama, native: Native) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prompt in PROMPTS:
        ids = llm.generate_tokens(prompt, N_GEN, **GREEDY)
        out[prompt] = {"ids": ids, "margins": margins(llm, native, prompt, ids),
                       "text": llm.generate(prompt, N_GEN, **GREEDY),
                       "pieces": list(llm.stream(prompt, N_GEN, **GREEDY))}
    return out


def two_turns(llm: Llama) -> dict[str, Any]:
    """A conversation that grows by one turn: what the second turn decoded, and what it said."""
    llm.reset()
    first = llm.chat(QUESTION, N_GEN, **GREEDY)
    turn1 = llm.tokenize(llm.format_chat(QUESTION), special=True)
    cached = len(llm._live_context().tokens)
    messages = [*QUESTION, {"role": "assistant", "content": first}, FOLLOW_UP]
    full = llm.tokenize(llm.format_chat(messages), special=True)
    reused = common_prefix(llm._live_context().tokens, full)
    before = llm.n_decoded
    second = llm.chat(messages, N_GEN, **GREEDY)
    return {"first": first, "second": second, "turn1_tokens": len(turn1), "cached": cached,
            "full_tokens": len(full), "reused": reused, "decoded": llm.n_decoded - before,
            "after": len(llm._live_context().tokens), "messages": messages}


def main() -> None:
    model = Path(sys.argv[1])
    start = time.perf_counter()
    native = find_native_libs().open()
    with Llama(model, n_ctx=N_CTX, n_threads=THREADS, native=native) as llm:
        loaded = time.perf_counter()
        # before any kernel runs: if one crashes, the test can still name the plugin
        print(f"cpu plugin: {', '.join(cpu_plugins()) or 'none (linked in)'}", file=sys.stderr,
              flush=True)
        report: dict[str, Any] = {
            "plugins": cpu_plugins(), "system_info": native.system_info(),
            "completions": completions(llm, native),
            "chat": llm.chat(QUESTION, N_GEN, **GREEDY),
            "chat_pieces": list(llm.chat(QUESTION, N_GEN, stream=True, **GREEDY)),
            "turns": two_turns(llm),
        }
        with Llama(model, n_ctx=N_CTX, n_threads=THREADS, native=native) as fresh:
            report["turns"]["fresh_second"] = fresh.chat(report["turns"]["messages"], N_GEN, **GREEDY)
    report["seconds"] = {"load": round(loaded - start, 3),
                         "run": round(time.perf_counter() - loaded, 3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
