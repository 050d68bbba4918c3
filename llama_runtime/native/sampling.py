"""Sampling parameters and the llama.cpp sampler chain built from them.

Sampling runs in C: Python only assembles a ``llama_sampler`` chain in the order llama.cpp's
own ``common_sampler`` uses (penalties, top-k, top-p, min-p, temperature, then the final
``dist`` draw), or penalties + ``greedy`` when the temperature is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import GenerationError

if TYPE_CHECKING:
    from .binding import Native

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp draws a random seed


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``temperature <= 0`` is greedy (deterministic).

    ``top_k <= 0``, ``top_p >= 1``, ``min_p <= 0`` and ``repeat_penalty == 1`` each switch their
    stage off. ``repeat_last_n`` is how many recent tokens (prompt included) the penalty sees.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = LLAMA_DEFAULT_SEED

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.temperature), "temperature must be a finite number (0 = greedy)"),
            (0.0 <= self.top_p <= 1.0, "top_p must be between 0 and 1"),
            (0.0 <= self.min_p <= 1.0, "min_p must be between 0 and 1"),
            (self.repeat_penalty > 0 and math.isfinite(self.repeat_penalty),
             "repeat_penalty must be > 0 (1 = off)"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self}")

    @property
    def penalised(self) -> bool:
        return self.repeat_penalty != 1.0 and self.repeat_last_n > 0


def build_chain(native: Native, sampling: Sampling, n_vocab: int) -> int:
    """A new ``llama_sampler`` chain; the caller frees it with ``llama_sampler_free``."""
    n = native
    chain = n.llama_sampler_chain_init(n.llama_sampler_chain_default_params())
    if not chain:
        raise GenerationError("llama_sampler_chain_init failed")
    stages = []
    if sampling.penalised:
        stages.append(n.llama_sampler_init_penalties(n_vocab, sampling.repeat_last_n,
                                                     sampling.repeat_penalty, 0.0, 0.0))
    if sampling.temperature <= 0:
        stages.append(n.llama_sampler_init_greedy())
    else:
        if sampling.top_k > 0:
            stages.append(n.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            stages.append(n.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            stages.append(n.llama_sampler_init_min_p(sampling.min_p, 1))
        stages.append(n.llama_sampler_init_temp(sampling.temperature))
        stages.append(n.llama_sampler_init_dist(sampling.seed & 0xFFFFFFFF))
    for stage in stages:  # the chain owns (and frees) what is added to it
        n.llama_sampler_chain_add(chain, stage)
    return int(chain)
