"""The tolerance: when a CPU plugin's greedy tokens agree with the reference's (pure).

Different kernels legitimately disagree a little: they quantize the activations and accumulate
in other orders (scalar C, AVX2, AVX-512, VNNI, repacked 8x8 blocks), so the logits differ by a
fraction and the greedy choice flips where two tokens were nearly tied. A broken kernel (the
AMX tile config GCC drops, an instruction the CPU lacks emulated wrongly, a bad repack) flips
tokens the reference was sure of, or moves the logits far more.

The rule, per quantization type, over ``N_GEN`` steps of the reference's own greedy text
(the candidate decodes the reference's tokens, "teacher-forced", so that every step is judged in
the same context and not only the steps before a first legitimate flip):

* a **sure** step (the reference's top-1/top-2 logit margin is at least ``EPSILON[type]``): the
  candidate's greedy token is the reference's;
* a **near-tie** step (margin below ``EPSILON``): the candidate's token is the reference's top-1
  or top-2, or a third token it ranks within ``EPSILON`` of one of those two (its own runner-up
  is the reference's top-1 or top-2 and its own margin is below ``EPSILON``: a three-way tie);
* wherever the candidate picks the reference's token, its own top-2 margin is within
  ``DRIFT[type]`` of the reference's (a wrong scale can keep the argmax and still be wrong);
* at least ``MIN_SURE`` of the ``N_GEN`` steps are sure (else the check proved too little, and
  says so: "inconclusive", which refuses like a failure).

Free-running, this means: identical greedy text up to the first step where the reference's
margin is below EPSILON, and there only the reference's runner-up may be chosen.

Measured on this project's machine (AMD Zen 5, 2026-12; ``benchmarks/NOTES.md``, B9): the 13
x86 plugins of the npm build that run here, our omp build's and the v3 build, against the npm
``x64`` plugin, 4 prompts x 32 tokens, on the qualification model: the largest margin
difference at agreeing steps was 0.006 (F16), 0.047 (BF16), 0.11 (Q8_0), 0.16 (Q6_K), 0.095
(Q5_K_M), 0.12 (Q4_K_M), 0.23 (Q4_1), 0.26 (Q4_0), 0.14 (IQ4_NL); every disagreement (3 steps,
on every SIMD plugin alike) was a flip to the reference's runner-up at a reference margin of
0.041-0.119. Under qemu-aarch64 (2026-12) the zig build's armv8.2_2 plugin took a third token
at a three-way tie on Q6_K (reference: 4 over 86 by 0.031; the plugin: 20 over 86 by 0.036, all
three within 0.1), which the three-way clause admits. EPSILON is about twice the largest measured difference of its type group, DRIFT
twice EPSILON; the reference's median margin is about 1.2-1.5, so a kernel that is wrong
by more than a few percent of the logits fails on sure steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

N_GEN = 32
MIN_SURE = 16
_FLOAT = {"F16": 0.05, "BF16": 0.1}
EPSILON: Mapping[str, float] = {**_FLOAT, "Q8_0": 0.5, "Q6_K": 0.5, "Q5_K_M": 0.5, "Q4_K_M": 0.5,
                                "Q4_1": 0.5, "Q4_0": 0.5, "IQ4_NL": 0.5}
DRIFT: Mapping[str, float] = {t: 2 * e for t, e in EPSILON.items()}


@dataclass(frozen=True)
class Trace:
    """One greedy run of one model: per step the chosen token, the runner-up, the top-2 margin."""

    ids: Sequence[int]
    second: Sequence[int]
    margin: Sequence[float]

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Trace:
        return cls(list(data["ids"]), list(data["second"]), [float(m) for m in data["margin"]])


@dataclass
class Verdict:
    ok: bool
    why: str = ""  # what failed, in words naming the step and the token ids
    sure: int = 0  # steps where the reference was sure
    flips: list[int] = field(default_factory=list)  # near-tie steps where the runner-up was chosen
    first_difference: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "why": self.why or None, "sure_steps": self.sure,
                "near_tie_flips": self.flips, "first_difference": self.first_difference}


def judge(ref: Trace, got: Trace, kind: str) -> Verdict:
    """``got`` (teacher-forced on ``ref``'s tokens) against ``ref``, for quantization type ``kind``."""
    eps, drift = EPSILON.get(kind, max(EPSILON.values())), DRIFT.get(kind, max(DRIFT.values()))
    n = len(ref.ids)
    if len(got.ids) != n:
        return Verdict(False, f"{len(got.ids)} steps instead of {n}")
    out = Verdict(True, sure=sum(m >= eps for m in ref.margin))
    for i in range(n):
        want, have, margin = ref.ids[i], got.ids[i], ref.margin[i]
        if have != want and out.first_difference is None:
            out.first_difference = i
        if have == want:
            if abs(got.margin[i] - margin) > drift:
                return _fail(out, f"step {i}: same token {want}, but its top-2 margin is {got.margin[i]:.3g}"
                                  f" against the reference's {margin:.3g} (more than {drift:g} apart)")
        elif margin >= eps:
            return _fail(out, f"step {i}: token {have} where the reference chose {want} with a margin of"
                              f" {margin:.3g} (runner-up {ref.second[i]}; a tie below {eps:g} may flip)")
        elif have != ref.second[i] and not (got.second[i] in (want, ref.second[i]) and got.margin[i] < eps):
            return _fail(out, f"step {i}: token {have}, neither the reference's {want} nor its runner-up"
                              f" {ref.second[i]} (margin {margin:.3g}), nor within {eps:g} of them in its own"
                              f" logits (its runner-up {got.second[i]}, margin {got.margin[i]:.3g})")
        else:
            out.flips.append(i)
    if out.sure < MIN_SURE:
        return _fail(out, f"inconclusive: the reference was sure of only {out.sure} of {n} steps"
                          f" (at least {MIN_SURE} needed)")
    return out


def _fail(out: Verdict, why: str) -> Verdict:
    out.ok, out.why = False, why
    return out
