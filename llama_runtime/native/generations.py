"""The llama.cpp generations this binding can drive, and why each one is safe.

ctypes trusts the caller with every struct size and offset: a libllama whose ``llama.h`` lays out
``llama_model_params`` or ``llama_context_params`` differently would be misread (crashes,
garbage). So the loader accepts only generations whose header has been compared with the one
``structs.py`` copies. For each generation named here, ``tests/unit/test_generations.py`` compiles
every struct of ``structs.C_NAMES`` against that generation's real header with gcc (``sizeof``
and every ``offsetof``) and finds every prototype of ``functions.FUNCTIONS`` in its text; a real
library of that generation also runs greedy generation against a C program built on its header.

Between v0.4.0 and v0.5.0 (diff of the real headers) llama.h only gained declarations the
binding does not use (``llama_batch_ext_*``, ``llama_process``, ``llama_get_causal_attn``,
``llama_adapter_lora_init_from_file_ptr``, ``LLAMA_VOCAB_TYPE_TEST``) and ggml.h gained
``GGML_PREC_*`` values and ``ggml_prec_set_*``; no struct changed. v0.1.0 (llama-cpp-python
0.3.35's vendored copy) does differ (``llama_model_params`` had no ``load_mode``/``lazy_mode``)
and is refused.
"""

from __future__ import annotations

import re

# The header structs.py copies (include/ beside this file).
BINDING_GENERATION = "0.5.0"

# generation -> where the header it was checked against comes from
COMPATIBLE: dict[str, str] = {
    "0.5.0": "llama_runtime/native/include (vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist)",
    "0.4.0": "tests/data/llama.cpp-v0.4.0 (llama/gitRelease.bundle of the node-llama-cpp 3.21.1 "
             "npm package, llama.cpp commit 80fb11ac73e66d89eae2c6a91d8a77428fa733ed)",
}

# libllama.v0.5.0.so, libllama.metal.v0.4.0.dylib, llama.v0.4.0.dll: npm names carry the version
_TAGGED = re.compile(r"\.v(\d+\.\d+\.\d+)\.(?:so|dylib|dll)$")


def normalize(found: str) -> str:
    """``v0.4.0`` -> ``0.4.0`` (node-llama-cpp writes the tag, the manifest the version)."""
    return found.strip().lstrip("v")


def is_compatible(found: str) -> bool:
    return normalize(found) in COMPATIBLE


def from_filename(name: str) -> str | None:
    """The generation a library's file name declares, or None when it does not say."""
    match = _TAGGED.search(name)
    return match.group(1) if match else None


def describe() -> str:
    """``0.4.0, 0.5.0`` for messages."""
    return ", ".join(sorted(COMPATIBLE))
