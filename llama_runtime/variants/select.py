"""Choose the variant that fits a machine, best first, and explain every rejection.

Like ``packaging.tags.sys_tags()``: the result is an ordered list of compatible candidates
(intersected with what the manifest has), so the loader can fall back to the next one.
The machine is a value (``MachineProfile``) the caller may replace, e.g. with a target file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import NoCompatibleVariantError
from ..probe.profile import MachineProfile
from .manifest import Manifest, Variant


@lru_cache(maxsize=1)
def hardware() -> dict[str, Any]:
    """The hardware knowledge (backends, ranks, request names) shipped as data."""
    return json.loads((Path(__file__).parent / "hardware.json").read_text(encoding="utf-8"))


def _version(text: Any) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".") if p.isdigit())


@dataclass
class Candidate:
    name: str
    compatible: bool
    score: float
    reasons: list[str] = field(default_factory=list)
    requested: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compatible": self.compatible, "score": self.score,
                "reasons": self.reasons, "requested": self.requested}


@dataclass
class Selection:
    candidates: list[Candidate]
    backend: str
    warnings: list[str] = field(default_factory=list)

    @property
    def ranked(self) -> list[str]:
        """Compatible variants, best first: the requested ones, then fallbacks."""
        ok = [c for c in self.candidates if c.compatible]
        ok.sort(key=lambda c: (not c.requested, -c.score, c.name))
        return [c.name for c in ok]

    @property
    def selected(self) -> str | None:
        best = self.ranked[:1]
        if best and self.candidate(best[0]).requested:
            return best[0]
        return None

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def why(self) -> str:
        """One sentence on the choice, for logs and the demo."""
        name = self.selected
        if name is None:
            return "no variant fits"
        c = self.candidate(name)
        others = [x.name for x in self.candidates if x.name != name]
        return f"{name} (score {c.score:g}): {'; '.join(c.reasons)}; other candidates: {', '.join(others) or 'none'}"

    def require(self) -> str:
        """The selected variant's name, or an error listing every candidate and why it was refused."""
        if self.selected is not None:
            return self.selected
        lines = [f"  - {c.name}: {'; '.join(c.reasons)}" for c in self.candidates]
        raise NoCompatibleVariantError(
            f"no variant fits this machine for LLAMA_BACKEND={self.backend}:\n" + "\n".join(lines)
            + "\nChoose another backend (LLAMA_BACKEND), name a variant (LLAMA_RUNTIME_VARIANT),"
              " or point LLAMA_RUNTIME_LIB at a llama.cpp you built."
        )


def _check_platform(v: Variant, p: MachineProfile) -> list[str]:
    problems = []
    if v.os != p.os:
        problems.append(f"built for {v.os}, this machine runs {p.os}")
    if v.arch != p.arch:
        problems.append(f"built for {v.arch}, this CPU is {p.arch}")
    floor = v.requires.get("glibc")
    if floor and p.os == "linux":
        libc = p.libc or {}
        if libc.get("name") != "glibc":
            problems.append(f"needs glibc {floor}, this machine uses {libc.get('name') or 'an unknown libc'}")
        elif _version(libc.get("version") or 0) < _version(floor):
            problems.append(f"needs glibc >= {floor}, this machine has {libc.get('version')}")
    return problems


def _check_cpu(v: Variant, p: MachineProfile) -> list[str]:
    problems = []
    level = v.requires.get("x86_64_level")
    have_level = (p.cpu or {}).get("x86_64_level")
    if level and v.arch == "x86_64" and (have_level or 0) < level:
        problems.append(f"needs x86-64-v{level}, this CPU is x86-64-v{have_level or '?'}")
    missing = sorted(set(v.requires.get("cpu_features") or ()) - set((p.cpu or {}).get("features") or ()))
    if missing:
        problems.append(f"needs CPU features {', '.join(missing)} that this CPU lacks (would crash with 'Illegal instruction')")
    return problems


def _check_gpu(v: Variant, p: MachineProfile, request: dict[str, Any]) -> list[str]:
    if v.backend == "metal" and p.os == "macos" and p.arch == "aarch64":
        return []  # every Apple Silicon Mac has a Metal GPU
    if v.backend != "cuda":
        return [] if v.backend == "cpu" else [f"no {v.backend} device detected"]
    problems = []
    need = v.requires.get("cuda_driver")
    have = (p.nvidia or {}).get("cuda_driver")
    if have is None:
        problems.append("no NVIDIA driver detected" + (f" ({p.nvidia['error']})" if (p.nvidia or {}).get("error") else ""))
    elif need and _version(have) < _version(need):
        problems.append(f"needs a driver supporting CUDA {need}, driver {p.nvidia.get('driver')} supports CUDA {have}")
    major = request.get("cuda_major")
    if major and need and _version(need)[0] != major:
        problems.append(f"built for CUDA {need}, not CUDA {major}")
    return problems


def _score(v: Variant) -> float:
    rank = hardware()["backends"].get(v.backend, {}).get("rank", 0)
    level = v.requires.get("x86_64_level") or 0
    return rank * 100 + level * 10 + len(v.requires.get("cpu_features") or ()) + float(v.extra.get("priority", 0))


def _judge(v: Variant, p: MachineProfile, backend: str) -> Candidate:
    request = hardware()["requests"][backend]
    wanted = request["backend"]
    requested = wanted is None or v.backend == wanted
    hard = _check_platform(v, p) + _check_cpu(v, p)
    gpu = _check_gpu(v, p, request)
    cuda_mismatch = [g for g in gpu if g.startswith("built for CUDA")]
    if wanted == v.backend and not cuda_mismatch:
        # An explicit GPU backend on a machine without the device (a Docker build stage) is
        # honoured; the missing device becomes a warning, never a silent switch. A device that
        # is there but too old (a driver below the CUDA the build needs) is still a refusal:
        # that library would not load here.
        absent = [g for g in gpu if g.startswith("no ")]
        notes = [f"{g} (kept: LLAMA_BACKEND={backend} asked for it)" for g in absent]
        gpu = [g for g in gpu if g not in absent]
    else:
        notes = []
    problems = hard + gpu
    if cuda_mismatch:
        requested = False
    reasons = problems or notes or [_fit_reason(v, p)]
    if not requested and not problems:
        reasons = [f"fits, but LLAMA_BACKEND={backend} asked for another backend (fallback only)"]
    return Candidate(v.name, not problems, _score(v), reasons, requested)


def _fit_reason(v: Variant, p: MachineProfile) -> str:
    bits = [f"{v.backend} build for {v.os}/{v.arch}"]
    if v.requires.get("x86_64_level"):
        bits.append(f"x86-64-v{v.requires['x86_64_level']} <= CPU's v{p.cpu.get('x86_64_level')}")
    if v.requires.get("glibc"):
        bits.append(f"glibc {v.requires['glibc']} <= {p.libc.get('version')}")
    return "fits: " + ", ".join(bits)


def select(manifest: Manifest, profile: MachineProfile | None = None, *,
           backend: str = "auto", variant: str | None = None) -> Selection:
    """Judge every variant of ``manifest`` for ``profile`` (default: this machine)."""
    if profile is None:
        from ..probe import probe

        profile = probe()
    if variant is not None:
        manifest.get(variant)  # raises with the known names
    candidates = [_judge(v, profile, backend) for v in manifest.variants.values()]
    for c in candidates:
        if variant is not None and c.name != variant:
            c.requested = False
            if c.compatible:
                c.reasons = [f"fits, but LLAMA_RUNTIME_VARIANT={variant} was asked for (fallback only)"]
    selection = Selection(sorted(candidates, key=lambda c: (-c.score, c.name)), backend)
    chosen = selection.selected
    if chosen and selection.candidate(chosen).reasons[0].endswith("asked for it)"):
        selection.warnings.append(f"{chosen}: {selection.candidate(chosen).reasons[0]}")
    return selection
