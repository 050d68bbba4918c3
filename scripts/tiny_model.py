"""Write a tiny llama-architecture GGUF that real libllama loads and runs.

No model weights can be downloaded on the machines this project is built on, so the tests
make their own: 2 layers, n_embd 64, a SentencePiece-style ("llama") vocabulary of about 300
tokens, weights drawn from a seeded numpy RNG. It is nonsense, but deterministic nonsense.

    python -m scripts.tiny_model OUT.gguf [--seed N] [--f16] [--quantizable]

``--quantizable`` (``**QUANTIZABLE``) gives every weight matrix rows of a multiple of 256
values (n_embd 256, n_ff 512): K-quants and IQ4_NL then apply to every tensor, where the
default shape would make llama.cpp quietly fall back to other types.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError as exc:  # pragma: no cover - the test extra installs it
    raise SystemExit("scripts/tiny_model.py needs the `gguf` package: pip install gguf") from exc

SPIECE_SPACE = "\u2581"  # SentencePiece's "▁", which stands for a space

# Token types as gguf/llama.cpp number them (enum llama_token_type).
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6

_WORDS = (
    "the", "hello", "world", "and", "of", "to", "in", "is", "it", "that", "was", "for", "on",
    "are", "with", "as", "llama", "runtime", "model", "token", "small",
)
_SPECIALS = ("<unk>", "<s>", "</s>")
_N_FIXED = len(_SPECIALS) + 256 + 1 + 26  # specials, bytes, "▁", letters


def build_vocab(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of a SentencePiece-like vocabulary of exactly ``vocab_size``.

    Order follows llama's convention: ``<unk>``=0, ``<s>``=1, ``</s>``=2, then the 256 byte
    tokens, then pieces. llama.cpp's SPM tokenizer only merges a bigram whose concatenation is
    in the vocabulary, so every word is added together with all its ``▁``-prefixes.
    """
    if vocab_size < _N_FIXED:
        raise ValueError(f"vocab_size must be at least {_N_FIXED}, got {vocab_size}")
    tokens = list(_SPECIALS) + [f"<0x{b:02X}>" for b in range(256)]
    types = [_UNKNOWN, _CONTROL, _CONTROL] + [_BYTE] * 256
    pieces = [SPIECE_SPACE] + list(string.ascii_lowercase)
    for word in _WORDS:
        for end in range(1, len(word) + 1):
            piece = SPIECE_SPACE + word[:end]
            if piece not in pieces:
                pieces.append(piece)
    filler = (f"{SPIECE_SPACE}{a}{b}" for a in string.ascii_lowercase for b in string.ascii_lowercase)
    while len(pieces) < vocab_size - len(tokens):
        piece = next(filler)
        if piece not in pieces:
            pieces.append(piece)
    pieces = pieces[: vocab_size - len(tokens)]
    # Longer pieces must win merges: score grows with length, ties broken by list order.
    scores = [0.0] * len(tokens) + [float(len(p)) - i / 1000.0 for i, p in enumerate(pieces)]
    return tokens + pieces, scores, types + [_NORMAL] * len(pieces)


def _output_row_mask(tokens: list[str], types: list[int]) -> np.ndarray:
    """1.0 for tokens the model may emit, a small factor for the rest.

    llama has no output bias, so a token whose output row is near zero gets a logit near
    zero and rarely wins against the positive maxima of the others: this keeps greedy text
    to word pieces and printable ASCII instead of control tokens and stray UTF-8 bytes.
    """
    mask = np.ones(len(tokens), dtype=np.float32)
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ in (_UNKNOWN, _CONTROL):
            mask[i] = 0.0
        elif typ == _BYTE:
            # Printable ASCII stays possible but less likely than the word pieces.
            mask[i] = 0.5 if 0x20 < int(tok[3:5], 16) < 0x7F else 0.0
    return mask


def _tensors(rng: np.random.Generator, *, n_layer: int, n_embd: int, n_ff: int,
             n_vocab: int, row_mask: np.ndarray) -> dict[str, np.ndarray]:
    """All weights of a llama model, numpy shapes (rows = output features)."""
    def mat(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        scale = gain / float(np.sqrt(cols))
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)

    out: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((n_vocab, n_embd)).astype(np.float32),
    }
    for i in range(n_layer):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = norm()
        out[p + "attn_q.weight"] = mat(n_embd, n_embd, 2.0)
        out[p + "attn_k.weight"] = mat(n_embd, n_embd, 2.0)
        out[p + "attn_v.weight"] = mat(n_embd, n_embd)
        out[p + "attn_output.weight"] = mat(n_embd, n_embd)
        out[p + "ffn_norm.weight"] = norm()
        out[p + "ffn_gate.weight"] = mat(n_ff, n_embd)
        out[p + "ffn_up.weight"] = mat(n_ff, n_embd)
        out[p + "ffn_down.weight"] = mat(n_embd, n_ff)
    out["output_norm.weight"] = norm()
    out["output.weight"] = mat(n_vocab, n_embd, 4.0) * row_mask[:, None]
    return out


# Row lengths (n_embd, n_ff) that are multiples of QK_K = 256, the K-quant super-block size.
QUANTIZABLE: dict[str, int] = {"n_embd": 256, "n_ff": 512}

_POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3}  # enum llama_pooling_type


def _write_metadata(w: gguf.GGUFWriter, *, n_layer: int, n_embd: int, n_head: int, n_ff: int,
                    n_ctx: int, f16: bool, pooling: str | None) -> None:
    w.add_name("llama-runtime tiny test model")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(_POOLING[pooling]))


def _write_tokenizer(w: gguf.GGUFWriter, tokens: list[str], scores: list[float],
                     types: list[int], chat_template: str | None) -> None:
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)


def write_tiny_llama(path: Path, *, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
                     n_head: int = 4, n_ff: int = 128, n_ctx: int = 256, vocab_size: int = 300,
                     chat_template: str | None = None, f16: bool = False,
                     pooling: str | None = None) -> Path:
    """Write a tiny llama GGUF to ``path`` and return ``path``.

    The same arguments always give the same bytes. ``f16`` stores 2-D weights as F16
    (norms stay F32, as llama.cpp's converters do). ``pooling`` (``none``, ``mean``, ``cls``,
    ``last``) writes ``llama.pooling_type``: the pooling llama.cpp uses for embeddings.
    """
    if pooling is not None and pooling not in _POOLING:
        raise ValueError(f"pooling must be one of {', '.join(_POOLING)}, got {pooling!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    path = Path(path)
    tokens, scores, types = build_vocab(vocab_size)
    rng = np.random.default_rng(seed)
    tensors = _tensors(rng, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_vocab=len(tokens),
                       row_mask=_output_row_mask(tokens, types))
    w = gguf.GGUFWriter(str(path), "llama")
    _write_metadata(w, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_ff=n_ff, n_ctx=n_ctx,
                    f16=f16, pooling=pooling)
    _write_tokenizer(w, tokens, scores, types, chat_template)
    for name, data in tensors.items():
        w.add_tensor(name, data.astype(np.float16) if f16 and data.ndim == 2 else data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the .gguf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--f16", action="store_true", help="store 2-D weights as F16")
    parser.add_argument("--chat-template", default=None)
    parser.add_argument("--pooling", choices=sorted(_POOLING), default=None)
    parser.add_argument("--quantizable", action="store_true",
                        help="rows of multiples of 256 (n_embd 256, n_ff 512) for every quant type")
    args = parser.parse_args(argv)
    shape = QUANTIZABLE if args.quantizable else {}
    path = write_tiny_llama(args.out, seed=args.seed, f16=args.f16, chat_template=args.chat_template,
                            pooling=args.pooling, **shape)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
