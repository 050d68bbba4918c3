"""Greedy output of :class:`Llama` equals, token for token, a C program on the same libllama.

``tests/data/oracle/greedy.c`` is compiled here against the pinned ``llama.h`` and linked to the
libraries the binding tests load (either build kind: a ``GGML_BACKEND_DL`` one loads its
backends first). Same model, same threads, same context and batch sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    from ._native_fixture import NativeLibs, run_oracle
except ImportError:
    from _native_fixture import NativeLibs, run_oracle

from scripts.tiny_model import write_tiny_llama

from llama_runtime.llama import Llama
from llama_runtime.native import Native

N_GEN = 48


@pytest.mark.parametrize("prompt", ["hello", "the llama runtime is a small model of the world"])
@pytest.mark.parametrize("f16", [False, True], ids=["f32", "f16"])
def test_greedy_tokens_equal_the_c_program(oracle: Path, native_libs: NativeLibs,
                                           native_lib: Native, tmp_path: Path, prompt: str,
                                           f16: bool) -> None:
    model = write_tiny_llama(tmp_path / "m.gguf", seed=3, f16=f16)
    (expected,), _ = run_oracle(oracle, native_libs, model, prompt, N_GEN)
    assert len(expected) > 8  # a real comparison, not two empty lists
    with Llama(model, n_ctx=256, n_threads=1, native=native_lib) as llm:
        assert llm.generate_tokens(prompt, N_GEN, temperature=0) == expected
        # again on the same context: the KV reuse path must not change the answer
        assert llm.generate_tokens(prompt, N_GEN, temperature=0) == expected
        pieces = b"".join(llm.token_to_piece(t) for t in expected)
        assert llm.generate(prompt, N_GEN, temperature=0) == pieces.decode("utf-8", "replace")


def test_greedy_tokens_of_a_quantized_model_equal_the_c_program(
        oracle: Path, native_libs: NativeLibs, native_lib: Native, smollm2_gguf: Path) -> None:
    # SmolLM2 Q4_1: the CPU plugin's quantized (repacked) kernels and a real BPE vocabulary
    # (tests/e2e/test_real_model.py does the same on every variant, with 2 threads)
    prompt = "The capital of France is"
    (expected,), _ = run_oracle(oracle, native_libs, smollm2_gguf, prompt, N_GEN)
    assert len(expected) == N_GEN  # a real continuation, no early end
    with Llama(smollm2_gguf, n_ctx=256, n_threads=1, native=native_lib) as llm:
        assert llm.generate_tokens(prompt, N_GEN, temperature=0) == expected
        assert llm.generate_tokens(prompt, N_GEN, temperature=0) == expected
