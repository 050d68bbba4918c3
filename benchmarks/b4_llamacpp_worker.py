"""B4, llama-cpp-python's side: its high-level API on the libllama of LIBDIR (LLAMA_CPP_LIB_PATH).

usage (with the python of a venv that has llama-cpp-python==0.3.36):
    LLAMA_CPP_LIB_PATH=LIBDIR b4_llamacpp_worker.py MODEL PROMPT N_GEN THREADS REPS [--ids]
Per rep, one JSON line like b4_worker.py: the prompt time runs from the call to the first streamed
chunk (tokenize + prompt decode + first sample), the generation time from there to the last chunk.
The first line also lists the llama.cpp libraries mapped into the process, to prove which ones ran.
"""

import json
import os
import sys
import time

model, prompt = sys.argv[1], sys.argv[2]
n_gen, threads, reps = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

import llama_cpp  # noqa: E402

# flash_attn=True: llama-cpp-python's default (False) sets LLAMA_FLASH_ATTN_TYPE_DISABLED, where
# llama.cpp's own default (AUTO, what our Llama and bench_llama.c keep) turns it on for the CPU;
# without it the two sides ran different attention kernels: other greedy ids on the quantized
# bench models, and other work per token (not the binding's cost)
llm = llama_cpp.Llama(model, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads,
                      n_threads_batch=threads, flash_attn=True, verbose=False)
n_prompt = len(llm.tokenize(prompt.encode()))


def mapped() -> list[str]:
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if line.rstrip().endswith((".so", ".so.1"))}
    return sorted(p for p in paths if os.path.basename(p).startswith(("libllama", "libggml", "libgomp")))


if "--ids" in sys.argv:  # untimed: the greedy ids through the token-level generator
    llm.reset()
    ids = []
    for token in llm.generate(llm.tokenize(prompt.encode()), temp=0.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(ids) == n_gen:
            break
        ids.append(int(token))
    print(json.dumps({"ids": ids, "libraries": mapped(), "lib_path": os.environ.get("LLAMA_CPP_LIB_PATH")}))
    sys.exit(0)

for _ in range(reps):
    llm.reset()  # no prefix reuse between reps: the same work as the C program
    t0, c0 = time.perf_counter(), time.process_time()
    it = llm.create_completion(prompt, max_tokens=n_gen, temperature=0.0, stream=True)
    next(it)
    t1, c1 = time.perf_counter(), time.process_time()
    pieces = 1
    for _ in it:
        pieces += 1
    t2, c2 = time.perf_counter(), time.process_time()
    print(json.dumps({"n_prompt": n_prompt, "prompt_s": t1 - t0, "gen_s": t2 - t1, "prompt_cpu_s": c1 - c0, "gen_cpu_s": c2 - c1,
                      "pieces": pieces,
                      "n_generated": llm.n_tokens - n_prompt + 1}), flush=True)
