"""native/buffer.call_sized: llama.cpp's "too small, here is the size" answer, on the real libllama.

Each call starts with a buffer far too small, so the retry path (which the callers' generous
first guesses almost never reach) is what runs, against both of llama.cpp's conventions.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

try:
    from ._native_fixture import CHATML, native_lib, native_libs, smollm2_gguf, tiny_gguf
except ImportError:
    from _native_fixture import CHATML, native_lib, native_libs, smollm2_gguf, tiny_gguf

from llama_runtime.chat import format_chat
from llama_runtime.llama import Llama
from llama_runtime.native import Native
from llama_runtime.native.buffer import call_sized, int32_array
from llama_runtime.native.structs import llama_chat_message

__all__ = ["native_lib", "native_libs", "smollm2_gguf", "tiny_gguf"]  # fixtures, used by name
TEXT = "The capital of France is Paris, and the llama runtime runs it. " * 20


@pytest.fixture(params=["tiny_gguf", "smollm2_gguf"], ids=["tiny-f32", "smollm2-q4_1"])
def llm(request: pytest.FixtureRequest, native_lib: Native) -> Iterator[Llama]:
    with Llama(request.getfixturevalue(request.param), n_ctx=256, n_threads=1, native=native_lib) as model:
        yield model


def test_negative_answer_gets_a_buffer_of_that_size(llm: Llama) -> None:
    data = TEXT.encode()
    sizes: list[int] = []

    def tokenize(out: ctypes.Array[ctypes.c_int32], size: int) -> int:
        sizes.append(size)
        with llm._reading() as vocab:
            n: int = llm._native.llama_tokenize(vocab, data, len(data), out, size, True, False)
        return n

    buf, n = call_sized(tokenize, int32_array, 4)
    expected = llm.tokenize(TEXT)
    assert list(buf[:n]) == expected and n == len(expected) > 4
    assert sizes == [4, len(expected)]  # exactly the size llama.cpp asked for, once

    arr = (ctypes.c_int32 * n)(*expected)
    with llm._reading() as vocab:
        text, m = call_sized(lambda out, size: llm._native.llama_detokenize(
            vocab, arr, n, out, size, False, False), ctypes.create_string_buffer, 8)
    assert text.raw[:m] == llm._detokenize_bytes(expected, special=False) and m > 8


def test_length_answer_gets_a_buffer_one_longer(native_lib: Native) -> None:
    messages = [{"role": "user", "content": TEXT}]
    whole = format_chat(native_lib, CHATML, messages)
    arr = (llama_chat_message * 1)(llama_chat_message(b"user", TEXT.encode()))
    sizes: list[int] = []

    def apply(out: ctypes.Array[ctypes.c_char], size: int) -> int:
        sizes.append(size)
        n: int = native_lib.llama_chat_apply_template(CHATML.encode(), arr, 1, True, out, size)
        return n

    buf, n = call_sized(apply, ctypes.create_string_buffer, 16, returns_length=True)
    assert buf.raw[:n].decode() == whole and n > 16
    assert sizes == [16, n + 1]


def test_an_error_answer_is_returned_not_retried(native_lib: Native) -> None:
    messages = (llama_chat_message * 1)(llama_chat_message(b"user", b"hi"))
    calls: list[int] = []

    def apply(out: ctypes.Array[ctypes.c_char], size: int) -> int:
        calls.append(size)
        n: int = native_lib.llama_chat_apply_template(b"no-such-template", messages, 1, True, out, size)
        return n

    _, n = call_sized(apply, ctypes.create_string_buffer, 64, returns_length=True)
    assert n < 0 and calls == [64]  # a refused template: the caller raises, no second call
