"""B4, our side: the same measurement as bench_llama.c (N_PROMPT 0) through llama_runtime.Llama.

usage: b4_worker.py LIBDIR MODEL PROMPT N_GEN THREADS REPS [--ids]
The library is opened from LIBDIR (the same files the C program links) with Native.open.
"""

import json
import sys
import time
from pathlib import Path

libdir, model, prompt = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
n_gen, threads, reps = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
want_ids = "--ids" in sys.argv

from llama_runtime.llama import Llama  # noqa: E402
from llama_runtime.native import Native  # noqa: E402

spec = json.loads((libdir / "variant.json").read_text())
native = Native.open([libdir / name for name in spec["libraries"]],
                     backend_dir=libdir if spec.get("backend_dl") else None)
llm = Llama(model, n_ctx=512, n_batch=512, n_threads=threads, native=native)
n_prompt = len(llm.tokenize(prompt))
for _ in range(reps):
    ids: list[int] = []
    if want_ids:  # untimed: record the greedy ids by wrapping the sampler call
        real = native.llama_sampler_sample

        def spy(*a, _real=real):
            t = _real(*a)
            ids.append(int(t))
            return t
        native.llama_sampler_sample = spy
    # the same work as the C program each rep: an empty KV cache (newer Llama reuses a prefix)
    if hasattr(llm, "reset"):
        llm.reset()
    elif hasattr(getattr(llm, "_context", None), "reset"):
        llm._context.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    it = llm.stream(prompt, n_gen, temperature=0)
    pieces = 1
    next(it)
    t1, c1 = time.perf_counter(), time.process_time()
    for _ in it:
        pieces += 1
    t2, c2 = time.perf_counter(), time.process_time()
    if want_ids:
        native.llama_sampler_sample = real
    print(json.dumps({"n_prompt": n_prompt, "prompt_s": t1 - t0, "gen_s": t2 - t1, "prompt_cpu_s": c1 - c0, "gen_cpu_s": c2 - c1,
                      "pieces": pieces,
                      "ids": ids}), flush=True)
