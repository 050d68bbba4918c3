"""The qualification model: a tiny llama written by this module alone (no ``gguf``, no numpy).

``llama-runtime publish`` is part of the package, and the publishing machine may have neither
``gguf`` nor numpy, so the F32 base model is written here from a seeded pseudo-random stream
(``random.Random(seed).randbytes``: the same bytes on every Python >= 3.9). Each quantized type is
then made from it by the variant's *own* ``llama_model_quantize`` (in a child process, see
:mod:`.run`), so the package ships no model at all: about 120 lines instead of megabytes.

The shape is the smallest that reaches every kernel a user's model reaches: rows of 256 values
(``QK_K``, the K-quant super-block; smaller rows make llama.cpp quietly fall back to other
types), matrices with a multiple of 8 rows (ggml repacks Q4_0/Q4_K/IQ4_NL/Q8_0 into interleaved
8-row blocks, and the AMX path tiles them), a vocabulary of 288 tokens (a multiple of 32). About
0.6 M weights (2.4 MB as F32, 0.3 MB as Q4_0).
"""

from __future__ import annotations

import random
import struct
from array import array
from collections.abc import Iterator
from pathlib import Path

RECIPE = 1  # bump when the bytes this module writes change (the cache keys include it)
SHAPE = {"n_layer": 1, "n_embd": 256, "n_head": 4, "n_ff": 512, "n_vocab": 288, "n_ctx": 256}
SEED = 14

_SPACE = "\u2581"  # SentencePiece's "▁"
# GGUF value types (gguf.h: enum gguf_type)
_U32, _I32, _F32, _BOOL, _STRING, _ARRAY = 4, 5, 6, 7, 8, 9
_ALIGN = 32


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """An SPM vocabulary llama.cpp accepts: <unk> <s> </s>, the 256 byte tokens, then pieces."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [2, 3, 3, *([6] * 256)]  # unknown, control, control, byte
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [_SPACE, *letters, *(_SPACE + a for a in letters)]
    tokens += pieces[: n_vocab - len(tokens)]
    types += [1] * (len(tokens) - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def _weights(rng: random.Random, count: int, scale: float) -> array[float]:
    """``count`` float32 values, uniform in [-scale, scale), from 16 random bits each."""
    raw = array("H", rng.randbytes(2 * count))
    step = 2.0 * scale / 65536.0
    return array("f", [(v - 32768) * step for v in raw])


def _tensors(seed: int) -> Iterator[tuple[str, tuple[int, ...], array[float]]]:
    """(name, ggml shape (row length first), F32 data) of every tensor, in file order."""
    s = SHAPE
    e, f, v = s["n_embd"], s["n_ff"], s["n_vocab"]
    rng = random.Random(seed)
    root3 = 3.0 ** 0.5  # a uniform of this scale has unit variance
    yield "token_embd.weight", (e, v), _weights(rng, e * v, root3)
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", (e,), array("f", [1.0] * e)
        for name, gain in (("attn_q", 2.0), ("attn_k", 2.0), ("attn_v", 1.0), ("attn_output", 1.0)):
            yield p + name + ".weight", (e, e), _weights(rng, e * e, root3 * gain / e ** 0.5)
        yield p + "ffn_norm.weight", (e,), array("f", [1.0] * e)
        yield p + "ffn_gate.weight", (e, f), _weights(rng, e * f, root3 / e ** 0.5)
        yield p + "ffn_up.weight", (e, f), _weights(rng, e * f, root3 / e ** 0.5)
        yield p + "ffn_down.weight", (f, e), _weights(rng, f * e, root3 / f ** 0.5)
    yield "output_norm.weight", (e,), array("f", [1.0] * e)
    # a large output gain keeps the top-2 margins of the logits wide (fewer near-ties to excuse)
    yield "output.weight", (e, v), _weights(rng, e * v, root3 * 6.0 / e ** 0.5)


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, kind: int, value: str | float | bool) -> bytes:
    head = _str(key) + struct.pack("<I", kind)
    if kind == _STRING:
        return head + _str(str(value))
    return head + struct.pack({_U32: "<I", _F32: "<f", _BOOL: "<?"}[kind], value)


def _kv_array(key: str, elem: int, items: list[str] | list[float] | list[int]) -> bytes:
    if elem == _STRING:
        body = b"".join(_str(str(x)) for x in items)
    else:
        body = struct.pack(f"<{len(items)}{ {_F32: 'f', _I32: 'i'}[elem]}", *items)
    return _str(key) + struct.pack("<IIQ", _ARRAY, elem, len(items)) + body


def _metadata() -> list[bytes]:
    s = SHAPE
    tokens, scores, types = _vocab(s["n_vocab"])
    u32 = [("llama.context_length", s["n_ctx"]), ("llama.embedding_length", s["n_embd"]),
           ("llama.block_count", s["n_layer"]), ("llama.feed_forward_length", s["n_ff"]),
           ("llama.attention.head_count", s["n_head"]), ("llama.attention.head_count_kv", s["n_head"]),
           ("llama.rope.dimension_count", s["n_embd"] // s["n_head"]), ("general.file_type", 0),
           ("tokenizer.ggml.unknown_token_id", 0), ("tokenizer.ggml.bos_token_id", 1),
           ("tokenizer.ggml.eos_token_id", 2)]
    return [_kv("general.architecture", _STRING, "llama"),
            _kv("general.name", _STRING, "llama-runtime qualification model"),
            *(_kv(k, _U32, v) for k, v in u32),
            _kv("llama.rope.freq_base", _F32, 10000.0),
            _kv("llama.attention.layer_norm_rms_epsilon", _F32, 1e-5),
            _kv("tokenizer.ggml.model", _STRING, "llama"),
            _kv_array("tokenizer.ggml.tokens", _STRING, tokens),
            _kv_array("tokenizer.ggml.scores", _F32, scores),
            _kv_array("tokenizer.ggml.token_type", _I32, types),
            _kv("tokenizer.ggml.add_bos_token", _BOOL, True),
            _kv("tokenizer.ggml.add_eos_token", _BOOL, False)]


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def write_base_model(path: Path, seed: int = SEED) -> Path:
    """Write the F32 qualification model to ``path`` (GGUF v3); the same bytes every time."""
    tensors = list(_tensors(seed))
    kvs = _metadata()
    infos, offset = [], 0
    for name, shape, data in tensors:
        infos.append(_str(name) + struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape, 0, offset))
        offset += len(data) * 4 + _pad(len(data) * 4)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos)
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        f.write(head + b"\0" * _pad(len(head)))
        for _, _, data in tensors:
            blob = data.tobytes() if struct.pack("=I", 1) == struct.pack("<I", 1) else _swapped(data)
            f.write(blob + b"\0" * _pad(len(blob)))
    part.replace(path)
    return path


def _swapped(data: array[float]) -> bytes:
    copy = array("f", data)
    copy.byteswap()  # GGUF is little-endian
    return copy.tobytes()
