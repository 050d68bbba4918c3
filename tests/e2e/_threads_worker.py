"""The child process of ``tests/e2e/test_threads.py``: one Llama shared by several threads.

Run in a child so that a regression (llama.cpp aborting on two decodes at once) cannot kill
pytest: ``python tests/_threads_worker.py SCENARIO MODEL LIBS_JSON N_GEN`` prints one JSON line.
Every scenario first computes what each call gives when the Llama is used by one thread alone.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_runtime.errors import GenerationError
from llama_runtime.llama import Llama
from llama_runtime.native import Native

GREEDY: dict[str, Any] = {"temperature": 0.0}
PROMPTS = ["The capital of France is", "Once upon a time", "Water boils at", "My favourite colour is"]
MESSAGES = [[{"role": "user", "content": "What is the capital of France?"}],
            [{"role": "user", "content": "Name a colour."}]]
TEXTS = ["hello world", "the llama runtime", "a small model of the world"]


def _open(spec: str) -> Native:
    libs = json.loads(spec)
    return Native.open([Path(p) for p in libs["libraries"]],
                       backend_dir=Path(libs["folder"]) if libs["backend_dl"] else None)


def _threads(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run every job in a thread of its own, all released at once; results (or errors) by name."""
    out: dict[str, Any] = {}
    barrier = threading.Barrier(len(jobs))

    def run(name: str, job: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            out[name] = job()
        except Exception as exc:  # noqa: BLE001 - reported, the parent asserts on it
            out[name] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return out


def generate4(llm: Llama, n: int) -> dict[str, Any]:
    jobs = {p: (lambda p=p: llm.generate(p, n, **GREEDY)) for p in PROMPTS}
    alone = {name: job() for name, job in jobs.items()}
    return {"alone": alone, "threads": _threads(jobs)}


def mixed(llm: Llama, n: int) -> dict[str, Any]:
    jobs: dict[str, Callable[[], Any]] = {
        "generate": lambda: [llm.generate(p, n, **GREEDY) for p in PROMPTS[:2]],
        "stream": lambda: list(llm.stream(PROMPTS[2], n, **GREEDY)),
        "chat": lambda: [llm.chat(m, n, **GREEDY) for m in MESSAGES],
        "chat-stream": lambda: "".join(llm.chat(MESSAGES[0], n, stream=True, **GREEDY)),
        "embed": lambda: [llm.embed(t) for t in TEXTS],
        "tokenize": lambda: [llm.tokenize(t) for t in TEXTS * 20],
        "detokenize": lambda: [llm.detokenize(llm.tokenize(t)) for t in TEXTS * 10],
    }
    alone = {name: job() for name, job in jobs.items()}
    return {"alone": alone, "threads": _threads(jobs)}


def turns(llm: Llama, n: int) -> dict[str, Any]:
    """A stream consumed by this thread while others generate and tokenize."""
    alone = {"stream": "".join(llm.stream(PROMPTS[0], n, **GREEDY)),
             "generate": llm.generate(PROMPTS[1], n, **GREEDY)}
    stream = llm.stream(PROMPTS[0], n, **GREEDY)
    pieces = [next(stream)]  # this thread's stream owns the context now
    got: dict[str, Any] = {}

    def other() -> None:
        got["generate"] = llm.generate(PROMPTS[1], n, **GREEDY)
        got["generate_done"] = time.monotonic()

    def count() -> None:
        got["tokenize"] = llm.tokenize(PROMPTS[1])

    generating, tokenizing = threading.Thread(target=other), threading.Thread(target=count)
    generating.start()
    tokenizing.start()
    tokenizing.join(30)
    tokenized_while_open = "tokenize" in got
    generating.join(1.0)
    waited = generating.is_alive()
    for piece in stream:
        pieces.append(piece)
        time.sleep(0.01)  # a slow reader: the other thread must still wait
    stream_done = time.monotonic()
    generating.join(600)
    return {"alone": alone, "stream": "".join(pieces), "generate": got.get("generate"),
            "waited": waited, "tokenized_while_open": tokenized_while_open,
            "generated_after_the_stream": got.get("generate_done", 0) >= stream_done}


def closing(llm: Llama, n: int) -> dict[str, Any]:
    """close() from a third thread while a stream is open and another thread waits for its turn."""
    stream = llm.stream(PROMPTS[0], n, **GREEDY)
    next(stream)
    got: dict[str, str] = {}

    def waiting() -> None:
        try:
            got["generate"] = llm.generate(PROMPTS[1], n, **GREEDY)
        except GenerationError as exc:
            got["generate"] = f"GenerationError: {exc}"

    waiter = threading.Thread(target=waiting)
    waiter.start()
    time.sleep(0.5)
    closer = threading.Thread(target=llm.close)
    closer.start()
    closer.join(30)
    waiter.join(30)
    for name, call in (("stream", lambda: list(stream)), ("tokenize", lambda: llm.tokenize("x"))):
        try:
            got[name] = repr(call())
        except GenerationError as exc:
            got[name] = f"GenerationError: {exc}"
    return {"closed": not closer.is_alive(), "waiter_done": not waiter.is_alive(), **got}


def forked(llm: Llama, n: int) -> dict[str, Any]:
    """fork() while another thread holds an open stream: the child's Llama must not wait for a
    thread that does not exist there."""
    import os

    alone = llm.generate(PROMPTS[1], n, **GREEDY)
    opened, finish = threading.Event(), threading.Event()

    def holder() -> None:
        stream = llm.stream(PROMPTS[0], n, **GREEDY)
        next(stream)
        opened.set()
        finish.wait(120)
        stream.close()

    thread = threading.Thread(target=holder)
    thread.start()
    opened.wait(120)
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if llm.generate(PROMPTS[1], n, **GREEDY) == alone else 3)
        except BaseException:  # noqa: BLE001 - any failure is an exit status here
            os._exit(4)
    deadline, status = time.monotonic() + 120, None
    while time.monotonic() < deadline and status is None:
        done, code = os.waitpid(pid, os.WNOHANG)
        status = os.waitstatus_to_exitcode(code) if done else None
        time.sleep(0.1)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    finish.set()
    thread.join(60)
    return {"child": "hung" if status is None else status}


SCENARIOS = {"generate4": generate4, "mixed": mixed, "turns": turns, "closing": closing, "forked": forked}


def main(argv: list[str]) -> int:
    scenario, model, libs, n_gen = argv[0], argv[1], argv[2], int(argv[3])
    embeddings = scenario == "mixed"  # generation on a Llama that embeds too
    llm = Llama(model, n_ctx=512, n_threads=2, embeddings=embeddings, pooling="mean" if embeddings else None,
                native=_open(libs))
    print(json.dumps(SCENARIOS[scenario](llm, n_gen)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
