"""Rank a variant's ggml CPU plugins for a machine, best first, and explain every rejection.

ggml itself (``ggml_backend_load_best``) dlopens every ``libggml-cpu-*.so`` of the folder, calls its
``ggml_backend_score()`` and keeps the highest score above 0; the score reads CPUID only. This
ranking starts from the same scores (measured in a child process by :mod:`.child`, or predicted
from ``ggml_cpu.json`` for doctor) and also drops a plugin that needs a register state the OS
does not enable (:mod:`llama_runtime.probe.xsave`) or that crashed in a test run. Pure: the
machine is the profile's ``cpu`` dict, the scores and failures are arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def ggml_cpu() -> dict[str, Any]:
    """What each ggml CPU variant needs and how ggml scores it (``ggml_cpu.json``)."""
    data: dict[str, Any] = json.loads((Path(__file__).parent / "ggml_cpu.json").read_text(encoding="utf-8"))
    return data


def _pattern(os_name: str, backend: str) -> re.Pattern[str]:
    template = ggml_cpu()["file"].get(os_name, ggml_cpu()["file"]["linux"])
    head, _, tail = template.format(backend=backend, variant="\0").partition("\0")
    return re.compile(re.escape(head) + r"(.+)" + re.escape(tail) + "$")


def plugin_variant(file: str, os_name: str, backend: str = "cpu") -> str | None:
    """``libggml-cpu-zen4.so`` -> ``zen4``; None when ``file`` is not such a plugin."""
    match = _pattern(os_name, backend).match(file)
    return match.group(1) if match else None


def base_plugin(os_name: str, backend: str = "cpu") -> str:
    """``libggml-cpu.so``: what ggml loads when no ``libggml-cpu-*.so`` scores above 0."""
    base: str = ggml_cpu()["base_file"].get(os_name, ggml_cpu()["base_file"]["linux"])
    return base.format(backend=backend)


def cpu_plugins(files: Iterable[str], os_name: str) -> list[str]:
    """The files ggml would consider as CPU plugins, in name order (the base one if alone)."""
    files = list(files)
    found = sorted(f for f in files if plugin_variant(f, os_name) is not None)
    return found or [f for f in files if f == base_plugin(os_name)]


def needed_flags(variant: str) -> list[str] | None:
    """The CPU flags an x86 ggml variant was compiled for; None for a variant the data lacks."""
    x86 = ggml_cpu()["x86"]
    feats = x86["variants"].get(variant)
    if feats is None:
        return None
    return [flag for feat in feats for flag in x86["features"][feat]["flags"]]


def predicted_score(variant: str, cpuid_flags: Iterable[str]) -> tuple[int | None, list[str]]:
    """ggml_backend_cpu_x86_score's answer from CPUID flags, and the flags it found missing."""
    x86 = ggml_cpu()["x86"]
    feats = x86["variants"].get(variant)
    if feats is None:
        return None, []
    have, score, missing = set(cpuid_flags), int(x86["base_score"]), []
    for feat in feats:
        spec = x86["features"][feat]
        if spec["score"] is None:  # compiled in, never checked by ggml
            continue
        missing += [f for f in spec["flags"] if f not in have]
        score += int(spec["score"])
    return (0 if missing else score), missing


def os_blockers(variant: str | None, os_state: Mapping[str, Any] | None, cpuid_flags: Iterable[str]) -> list[str]:
    """Why the OS keeps ``variant`` from running: each register state it needs that CPUID
    reports but the OS disables (a feature the CPU lacks is ggml's score's business)."""
    from ..probe.xsave import x86_data

    need = set(needed_flags(variant) or ()) & set(cpuid_flags) if variant else set()
    groups = (os_state or {}).get("groups") or {}
    spec = x86_data()["state_groups"]
    return [g["why"] for name, g in groups.items()
            if g.get("enabled") is False and need & set(spec[name]["features"])]


@dataclass
class PluginCandidate:
    file: str
    variant: str | None
    score: int | None
    measured: bool  # the plugin's own ggml_backend_score(), not a prediction
    usable: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "variant": self.variant, "score": self.score, "measured": self.measured,
                "usable": self.usable, "reasons": self.reasons}


@dataclass
class PluginRanking:
    candidates: list[PluginCandidate]

    @property
    def ranked(self) -> list[str]:
        """Usable plugins, best first."""
        return [c.file for c in self.candidates if c.usable]

    @property
    def ggml_pick(self) -> str | None:
        """What ``ggml_backend_load_all_from_path`` loads: the highest score above 0, OS or not.

        ggml keeps the first of equal scores in directory order; equal scores mean the same
        features, and this ranking breaks the tie by name.
        """
        scored = [c for c in self.candidates if (c.score or 0) > 0]
        return scored[0].file if scored else None

    def to_dict(self) -> dict[str, Any]:
        return {"ranked": self.ranked, "ggml_pick": self.ggml_pick,
                "candidates": [c.to_dict() for c in self.candidates]}


def _judge(file: str, cpu: Mapping[str, Any], os_name: str, scores: Mapping[str, int | None] | None,
           failed: Mapping[str, str]) -> PluginCandidate:
    variant = plugin_variant(file, os_name)
    cpuid = (cpu.get("cpuid") or {}).get("features") or cpu.get("features") or ()
    predicted, missing = predicted_score(variant, cpuid) if variant else (None, [])
    measured = scores is not None and file in scores
    score = scores[file] if scores is not None and measured else predicted
    reasons = []
    if score is None:
        reasons.append("not scored" if measured else "a plugin ggml_cpu.json does not know: its score comes from the plugin itself")
    elif score <= 0:
        reasons.append("ggml scores it 0: " + (f"this CPU lacks {', '.join(missing)}" if missing else "not for this CPU"))
    reasons += [f"needs a state the OS disables: {why}" for why in os_blockers(variant, cpu.get("os"), cpuid)]
    if file in failed:
        reasons.append(failed[file])
    usable = (score or 0) > 0 and len(reasons) == 0
    if usable:
        reasons.append(f"ggml score {score}" + ("" if measured else " (predicted from CPUID)"))
    return PluginCandidate(file, variant, score, measured, usable, reasons)


def rank(files: Iterable[str], cpu: Mapping[str, Any], os_name: str, *,
         scores: Mapping[str, int | None] | None = None, failed: Mapping[str, str] | None = None) -> PluginRanking:
    """Judge every CPU plugin among ``files`` (other files are ignored)."""
    judged = [_judge(f, cpu, os_name, scores, failed or {}) for f in cpu_plugins(files, os_name)]
    judged.sort(key=lambda c: (-(c.score or 0), c.file))
    return PluginRanking(judged)
