"""One Llama shared by threads (issue 15, point 7): what a threaded web server does.

Four threads calling ``generate`` on one SmolLM2 ``Llama`` aborted the process
(``GGML_ASSERT(i1 >= 0 && i1 < ne1)``, exit 134). Each case runs in a child process
(``_threads_worker.py``) so that a regression cannot kill pytest, on SmolLM2 Q4_1 and on the tiny
toy model with a chat template, as F32 and quantized to Q8_0. Every threaded result must equal
what the same call gives when one thread uses the Llama alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

try:
    from ._native_fixture import NativeLibs
except ImportError:
    from _native_fixture import NativeLibs

from scripts.tiny_model import write_tiny_llama

from llama_runtime.native import Native

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "_threads_worker.py"
CLOSED = "GenerationError: this Llama is closed"


@pytest.fixture(scope="module", params=[pytest.param("smollm2-Q4_1", marks=pytest.mark.slow),
                                        "tiny-F32", "tiny-Q8_0"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          native_lib: Native) -> Path:
    if request.param == "smollm2-Q4_1":
        smollm2: Path = request.getfixturevalue("smollm2_gguf")
        return smollm2
    tiny: Path = request.getfixturevalue("chat_gguf")
    if request.param == "tiny-F32":
        return tiny
    from llama_runtime.quant import quantize

    return quantize(tiny, tiny.with_name("chat-Q8_0.gguf"), "Q8_0", native=native_lib).path


def run(scenario: str, model: Path, libs: NativeLibs, n_gen: int = 24) -> dict[str, Any]:
    spec = json.dumps({"folder": str(libs.folder), "libraries": [str(p) for p in libs.libraries],
                       "backend_dl": libs.backend_dl})
    proc = subprocess.run([sys.executable, str(WORKER), scenario, str(model), spec, str(n_gen)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    crash = "\n".join(line for line in proc.stderr.splitlines() if "GGML_ASSERT" in line or "Error" in line)
    assert proc.returncode == 0, f"exit {proc.returncode}: {crash or proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_four_threads_generating_on_one_llama(model: Path, native_libs: NativeLibs) -> None:
    out = run("generate4", model, native_libs)
    assert out["threads"] == out["alone"]
    assert all(text for text in out["alone"].values())


def test_generate_chat_embed_and_tokenize_mixed_across_threads(model: Path, native_libs: NativeLibs) -> None:
    out = run("mixed", model, native_libs)
    assert out["threads"] == out["alone"]
    assert len(out["alone"]["embed"][0]) > 0 and len(out["alone"]["stream"]) > 1


def test_a_stream_being_read_keeps_its_turn(model: Path, native_libs: NativeLibs) -> None:
    """Thread A reads a stream while B calls generate: B waits for A's stream to end, A's text is
    whole, B's is what it would be alone; tokenizing does not wait at all."""
    out = run("turns", model, native_libs)
    assert out["stream"] == out["alone"]["stream"] and out["generate"] == out["alone"]["generate"]
    assert out["waited"] and out["generated_after_the_stream"]
    assert out["tokenized_while_open"]


def test_close_from_another_thread_ends_the_stream_and_the_waiter(model: Path, native_libs: NativeLibs) -> None:
    out = run("closing", model, native_libs)
    assert out["closed"] and out["waiter_done"]
    assert out["generate"].startswith(CLOSED) and out["stream"].startswith(CLOSED)
    assert out["tokenize"].startswith(CLOSED)


def test_fork_while_another_thread_holds_a_stream(model: Path, native_libs: NativeLibs) -> None:
    out = run("forked", model, native_libs)
    assert out["child"] == 0  # generated what it would alone, instead of waiting for a lost thread


def test_reset_abandons_an_open_stream_of_its_thread(native_lib: Native, tmp_path: Path) -> None:
    from llama_runtime.errors import GenerationError
    from llama_runtime.llama import Llama

    with Llama(write_tiny_llama(tmp_path / "tiny.gguf", seed=0), n_ctx=128, n_threads=1,
               native=native_lib) as llm:
        stream = llm.stream("hello", 16, temperature=0)
        next(stream)
        llm.reset()  # the stream's KV cache is gone: it may not go on as if it were there
        with pytest.raises(GenerationError, match="another generation"):
            list(stream)
        assert llm.generate("hello", 16, temperature=0) == "".join(llm.stream("hello", 16, temperature=0))
