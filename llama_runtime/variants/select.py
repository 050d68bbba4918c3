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
from ..versions import padded, version_tuple
from .manifest import Manifest, Variant


@lru_cache(maxsize=1)
def hardware() -> dict[str, Any]:
    """The hardware knowledge (backends, ranks, request names) shipped as data."""
    data: dict[str, Any] = json.loads((Path(__file__).parent / "hardware.json").read_text(encoding="utf-8"))
    return data


@dataclass(frozen=True)
class Problem:
    """One reason a GPU build does not fit, with the facts the selection decides by."""

    text: str
    absent: bool = False  # no such device here at all (a build stage): an explicit backend keeps the build
    other_cuda: bool = False  # built for another CUDA major than LLAMA_BACKEND=cudaNN asked for


@dataclass
class Candidate:
    name: str
    compatible: bool
    score: float
    reasons: list[str] = field(default_factory=list)
    requested: bool = True
    # kept although its device is absent, because the request named its backend or the variant
    forced: bool = False
    # refused only because its device is not here (nothing a newer driver or another build fixes)
    no_device: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compatible": self.compatible, "score": self.score,
                "reasons": self.reasons, "requested": self.requested, "forced": self.forced}


@dataclass
class Selection:
    candidates: list[Candidate]
    backend: str
    warnings: list[str] = field(default_factory=list)
    variant: str | None = None  # LLAMA_RUNTIME_VARIANT, when one was named

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

    def _refusal_lines(self) -> list[str]:
        """One line per candidate; a one-target copy of a CUDA build (``<name>-sm86``) refused
        for its build's own first reason points at that build instead of repeating it."""
        lines = []
        for c in self.candidates:
            parent = next((p for p in self.candidates if c.name.startswith(f"{p.name}-")
                           and not p.compatible and c.reasons[:1] == p.reasons[:1]), None)
            why = f"refused as {parent.name} is (a one-target copy of it)" if parent else "; ".join(c.reasons)
            lines.append(f"  - {c.name}: {why}")
        return lines

    def require(self) -> str:
        """The selected variant's name, or an error listing every candidate and why it was refused."""
        if self.selected is not None:
            return self.selected
        lines = self._refusal_lines()
        asked = f"LLAMA_BACKEND={self.backend}"
        if self.variant is not None:
            asked = f"LLAMA_RUNTIME_VARIANT={self.variant} with {asked}"
        raise NoCompatibleVariantError(
            f"no variant fits this machine for {asked}:\n" + "\n".join(lines)
            + "\nChoose another backend (LLAMA_BACKEND), name a variant (LLAMA_RUNTIME_VARIANT),"
              " build for the machine that will run it (LLAMA_RUNTIME_TARGET=<variant name, or the"
              " `llama-runtime doctor --json` output of that machine>), or point LLAMA_RUNTIME_LIB at"
              " a llama.cpp you built."
        )


def _check_libc(name: str, floor: Any, libc: dict[str, Any]) -> list[str]:
    if libc.get("name") != name:
        return [f"needs {name} {floor}, this machine uses {libc.get('name') or 'an unknown libc'}"]
    have = libc.get("version")
    # an unknown glibc version cannot prove the floor; musl rarely reports one, so it passes
    if (have or name == "glibc") and version_tuple(have or 0) < version_tuple(floor):
        return [f"needs {name} >= {floor}, this machine has {have}"]
    return []


def _check_platform(v: Variant, p: MachineProfile) -> list[str]:
    problems = []
    if v.os != p.os:
        problems.append(f"built for {v.os}, this machine runs {p.os}")
    if v.arch != p.arch:
        problems.append(f"built for {v.arch}, this CPU is {p.arch}" + _rosetta_note(v, p))
    # a glibc build needs ld-linux, a musl build ld-musl: neither loads on the other
    for libc_name in ("glibc", "musl"):
        floor = v.requires.get(libc_name)
        if floor and p.os == "linux":
            problems += _check_libc(libc_name, floor, p.libc or {})
    return problems


def _check_libstdcxx(v: Variant, p: MachineProfile) -> list[str]:
    """C++ libraries built against a newer libstdc++ fail to load ("GLIBCXX_3.4.30 not found",
    RHEL 9). Not a platform mismatch: the build is for this OS, so the idle-GPU warning names it.
    A libstdc++ the probe did not find cannot prove the floor wrong, so it passes."""
    cxx, have = v.requires.get("libstdcxx"), ((p.libc or {}).get("libstdcxx") or {}).get("version")
    if cxx and have and p.os == "linux" and version_tuple(have) < version_tuple(cxx):
        return [f"needs libstdc++ GLIBCXX_{cxx}, this machine has {have}"]
    return []


def _rosetta(p: MachineProfile) -> bool:
    return p.os == "macos" and p.arch == "x86_64" and bool((p.apple or {}).get("rosetta"))


def _rosetta_note(v: Variant, p: MachineProfile) -> str:
    if not (_rosetta(p) and v.arch == "aarch64"):
        return ""
    chip = (p.apple or {}).get("chip") or "an Apple Silicon Mac"
    return (f" (this Python is an x86_64 process under Rosetta 2 on {chip}, and such a process"
            " loads x86_64 libraries only; an arm64 Python gets this build)")


def _rosetta_warning(selection: Selection, manifest: Manifest, p: MachineProfile) -> str | None:
    """What to tell an x86_64 Python under Rosetta 2: it works, translated and without Metal."""
    chosen = selection.selected
    if not _rosetta(p) or chosen is None or manifest.variants[chosen].arch != "x86_64":
        return None
    native = [c.name for c in selection.candidates if manifest.variants[c.name].arch == "aarch64"
              and manifest.variants[c.name].os == "macos"]
    better = f" to get {' or '.join(native)}" if native else ""
    return (f"this x86_64 Python runs under Rosetta 2 on {(p.apple or {}).get('chip') or 'Apple Silicon'}:"
            f" using {chosen}, x86_64 code translated by Rosetta, without Metal and several times"
            f" slower than native. Install an arm64 Python (python.org's universal2 installer, or"
            f" an arm64 Homebrew/conda Python; `python3 -c 'import platform; print(platform.machine())'`"
            f" must say arm64) and reinstall llama-runtime{better}")


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


def _cc(text: Any) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def cc_supported(gpu: str, declared: Any) -> bool:
    """Can a build for ``declared`` (lowest cc, or the list it was built for) run on ``gpu``?

    CUDA binaries run on the same major with a higher minor (sm_80 code on an 8.6 GPU), and the
    PTX of the highest listed target is JIT-compiled for anything newer.
    """
    g = _cc(gpu)
    if not isinstance(declared, list):
        return g >= _cc(declared)
    listed = [_cc(x) for x in declared]
    return any(c[0] == g[0] and c[1] <= g[1] for c in listed) or g > max(listed)


def _cc_words(declared: Any) -> str:
    if isinstance(declared, list):
        return f"compute capability {', '.join(str(x) for x in declared)}"
    return f"compute capability {declared} or newer"


def _check_cuda(v: Variant, p: MachineProfile, request: dict[str, Any]) -> list[Problem]:
    problems = []
    nv = p.nvidia or {}
    need, have = v.requires.get("cuda_driver"), nv.get("cuda_driver")
    why = f" ({nv['error']})" if nv.get("error") else ""
    if have is None and nv.get("driver"):
        problems.append(Problem(f"no CUDA version known for NVIDIA driver {nv['driver']}{why}", absent=True))
    elif have is None:
        problems.append(Problem("no NVIDIA driver detected" + why, absent=True))
    elif need and version_tuple(have) < version_tuple(need):
        floor = v.extra.get("min_driver_version")
        problems.append(Problem(f"needs a driver supporting CUDA {need}, driver {nv.get('driver')} supports"
                                f" CUDA {have} (upgrade the NVIDIA driver"
                                + (f" to {floor} or newer" if floor else "") + ", or use another backend)"))
    if v.extra.get("cuda_architectures"):
        from .cuda import check_targets

        problems += [Problem(t) for t in check_targets(v, nv)[0]]
    else:
        problems += [Problem(t) for t in _check_declared_cc(v, nv)]
    major = request.get("cuda_major")
    if major and need and version_tuple(need)[:1] != (major,):
        problems.append(Problem(f"built for CUDA {need}, not CUDA {major}", other_cuda=True))
    return problems


def _check_declared_cc(v: Variant, nv: dict[str, Any]) -> list[str]:
    """Manifests without ``cuda_architectures``: the declared compute capability only."""
    declared = v.requires.get("compute_capability")
    gpus = [g for g in nv.get("gpus") or [] if g.get("compute_capability")]
    if declared and gpus and not any(cc_supported(g["compute_capability"], declared) for g in gpus):
        found = ", ".join(f"{g.get('name')} has {g['compute_capability']}" for g in gpus)
        return [f"built for {_cc_words(declared)}; {found}"]
    return []


def _check_rocm(v: Variant, p: MachineProfile, request: dict[str, Any]) -> list[Problem]:
    rocm = p.rocm or {}
    gpus = rocm.get("gpus") or []
    if not gpus:
        return [Problem("no AMD GPU detected" + (f" ({rocm['error']})" if rocm.get("error") else ""), absent=True)]
    targets = v.requires.get("gfx")
    if targets and not any(g.get("gfx") in targets for g in gpus):
        found = ", ".join(str(g.get("gfx")) for g in gpus)
        return [Problem(f"built for {', '.join(targets)}; this machine's AMD GPU is {found}")]
    return []


def _vulkan_best(p: MachineProfile, allow_software: bool) -> dict[str, Any] | None:
    ranks = hardware()["vulkan_device_rank"]
    devices = [d for d in (p.vulkan or {}).get("devices") or [] if allow_software or d.get("type") != "cpu"]
    return max(devices, key=lambda d: ranks.get(d.get("type"), 0), default=None)


def _check_vulkan(v: Variant, p: MachineProfile, request: dict[str, Any]) -> list[Problem]:
    if _vulkan_best(p, allow_software=request["backend"] == "vulkan") is not None:
        return []
    soft = _vulkan_best(p, allow_software=True)
    if soft is not None:
        return [Problem(f"the only Vulkan device is {soft.get('name')}, a software renderer slower than"
                        " the CPU build; never picked automatically (LLAMA_BACKEND=vulkan would use it)")]
    err = (p.vulkan or {}).get("error")
    return [Problem("no Vulkan device detected" + (f" ({err})" if err else ""), absent=True)]


def _check_metal(v: Variant, p: MachineProfile, request: dict[str, Any]) -> list[Problem]:
    apple = p.apple or {}
    if p.os == "macos" and p.arch == "aarch64" and apple.get("metal", True):
        return []  # every Apple Silicon Mac has a Metal GPU (old profiles lack the apple part)
    if _rosetta(p):
        return [Problem("no Metal from this process: ggml's Metal backend runs in an arm64 process only",
                        absent=True)]
    return [Problem("no Metal GPU detected (Metal builds need Apple Silicon)", absent=True)]


_GPU_CHECKS = {"cuda": _check_cuda, "rocm": _check_rocm, "vulkan": _check_vulkan, "metal": _check_metal}


def _check_gpu(v: Variant, p: MachineProfile, request: dict[str, Any]) -> list[Problem]:
    if v.backend == "cpu":
        return []
    check = _GPU_CHECKS.get(v.backend)
    return check(v, p, request) if check else [Problem(f"no {v.backend} device detected", absent=True)]


def _check_macos(v: Variant, p: MachineProfile) -> list[str]:
    need, have = v.requires.get("macos"), (p.apple or {}).get("macos")
    # padded: macOS "11" is 11.0 (sw_vers prints 11.0, a captured name may say 11)
    if v.os == "macos" and p.os == "macos" and need and have and \
            padded(have) < padded(need):
        return [f"needs macOS {need} or newer, this Mac runs macOS {have} (the build's"
                f" LC_BUILD_VERSION minos; update macOS, or point LLAMA_RUNTIME_LIB at a"
                f" llama.cpp built for {have})"]
    return []


def _score(v: Variant, p: MachineProfile | None = None) -> float:
    rank = float(hardware()["backends"].get(v.backend, {}).get("rank", 0))
    if v.backend == "vulkan" and p is not None:
        # an integrated GPU ranks below the CPU build, a discrete one where the data puts it
        best = _vulkan_best(p, allow_software=True)
        rank = float(hardware()["vulkan_device_rank"].get(best.get("type"), 0)) if best else rank
    level = v.requires.get("x86_64_level") or 0
    if v.backend == "cuda" and v.requires.get("cuda_driver"):
        # the newest CUDA a known driver allows; with no driver seen (a build stage), the oldest
        major = (version_tuple(v.requires["cuda_driver"]) or (0,))[0] / 100
        rank += major if p is not None and (p.nvidia or {}).get("cuda_driver") else -major
        if p is not None:
            from .cuda import preference

            rank += preference(v, p.nvidia or {}) / 10
    return float(rank * 100 + level * 10 + len(v.requires.get("cpu_features") or ())
                 + float(v.extra.get("priority", 0)))


def _judge(v: Variant, p: MachineProfile, backend: str, variant: str | None = None) -> Candidate:
    named = variant is not None and v.name == variant
    request = hardware()["requests"][backend]
    asked = f"LLAMA_BACKEND={backend}"
    if named and request["backend"] is None:
        # naming a variant asks for its backend more exactly than LLAMA_BACKEND can: honoured at
        # least as much (an absent device is a warning), never less
        request, asked = {"backend": v.backend, "cuda_major": None}, f"LLAMA_RUNTIME_VARIANT={variant}"
    wanted = request["backend"]
    requested = wanted is None or v.backend == wanted
    hard = _check_platform(v, p) + _check_libstdcxx(v, p) + _check_macos(v, p) + _check_cpu(v, p)
    gpu = _check_gpu(v, p, request)
    other_cuda = any(g.other_cuda for g in gpu)
    kept: list[Problem] = []
    if wanted == v.backend and not other_cuda:
        # An explicit GPU backend on a machine without the device (a Docker build stage) is
        # honoured; the missing device becomes a warning, never a silent switch. A device that
        # is there but too old (a driver below the CUDA the build needs) is still a refusal:
        # that library would not load here.
        kept = [g for g in gpu if g.absent]
        gpu = [g for g in gpu if not g.absent]
    problems = hard + [g.text for g in gpu]
    if other_cuda:
        requested = False
    reasons = problems or [f"{g.text} (kept: {asked} asked for it)" for g in kept] or [_fit_reason(v, p)]
    if not requested and not problems:
        reasons = [f"fits, but LLAMA_BACKEND={backend} asked for another backend (fallback only)"]
    return Candidate(v.name, not problems, _score(v, p), reasons, requested,
                     forced=bool(kept) and not problems and requested,
                     no_device=bool(gpu) and not hard and all(g.absent for g in gpu))


def _fit_reason(v: Variant, p: MachineProfile) -> str:
    bits = [f"{v.backend} build for {v.os}/{v.arch}"]
    if v.requires.get("x86_64_level"):
        bits.append(f"x86-64-v{v.requires['x86_64_level']} <= CPU's v{p.cpu.get('x86_64_level')}")
    if v.requires.get("glibc"):
        bits.append(f"glibc {v.requires['glibc']} <= {p.libc.get('version')}")
    bits += _gpu_fit(v, p)
    return "fits: " + ", ".join(bits)


def _gpu_fit(v: Variant, p: MachineProfile) -> list[str]:
    if v.backend == "cuda" and (p.nvidia or {}).get("cuda_driver"):
        gpus = [f"{g.get('name')} (cc {g.get('compute_capability')})" for g in p.nvidia.get("gpus") or []]
        if v.extra.get("cuda_architectures"):
            from .cuda import check_targets

            seen = [g for g in p.nvidia.get("gpus") or [] if g.get("compute_capability")]
            gpus = [f"{g.get('name')} (cc {g['compute_capability']}) {f.words}"
                    for g, f in zip(seen, check_targets(v, p.nvidia)[1])]
        return [f"driver {p.nvidia.get('driver')} supports CUDA {p.nvidia['cuda_driver']}"] + gpus
    if v.backend == "rocm":
        return [f"AMD {g.get('name') or 'GPU'} {g.get('gfx')}" for g in (p.rocm or {}).get("gpus") or []]
    if v.backend == "vulkan":
        best = _vulkan_best(p, allow_software=True)
        return [f"Vulkan device {best.get('name')} ({best.get('type')})"] if best else []
    if v.backend == "metal" and (p.apple or {}).get("macos"):
        return [f"macOS {p.apple['macos']}"]
    return []


def _idle_gpus(p: MachineProfile) -> list[str]:
    """GPUs a GPU build could use: NVIDIA, AMD, and hardware Vulkan devices that are discrete."""
    names = [f"an NVIDIA GPU ({g.get('name')})" for g in (p.nvidia or {}).get("gpus") or []]
    if not names and (p.nvidia or {}).get("driver"):
        names.append(f"an NVIDIA driver ({p.nvidia['driver']})")
    names += [f"an AMD GPU ({g.get('name') or g.get('gfx')})" for g in (p.rocm or {}).get("gpus") or []]
    if not names:
        names += [f"a Vulkan GPU ({d.get('name')})" for d in (p.vulkan or {}).get("devices") or []
                  if d.get("type") == "discrete"]
    return names


def _gpu_unused_warning(selection: Selection, manifest: Manifest, p: MachineProfile) -> str | None:
    chosen = selection.selected
    if chosen is None or manifest.variants[chosen].backend != "cpu" or selection.backend != "auto":
        return None
    gpus = _idle_gpus(p)
    if not gpus:
        return None
    why = [f"{c.name} {'; '.join(c.reasons)}" for c in selection.candidates
           if not c.compatible and manifest.variants[c.name].backend != "cpu"
           and not _check_platform(manifest.variants[c.name], p)
           and not c.no_device]
    because = "; ".join(why) or f"the manifest has no GPU build for {p.os}/{p.arch}"
    return f"{gpus[0]} is present but {because}; using CPU ({chosen})"


def select(manifest: Manifest, profile: MachineProfile | None = None, *,
           backend: str = "auto", variant: str | None = None) -> Selection:
    """Judge every variant of ``manifest`` for ``profile`` (default: this machine)."""
    if profile is None:
        from ..probe import probe

        profile = probe()
    if variant is not None:
        manifest.get(variant)  # raises with the known names
    candidates = [_judge(v, profile, backend, variant) for v in manifest.variants.values()]
    for c in candidates:
        if variant is not None and c.name != variant:
            c.requested = c.forced = False
            if c.compatible:
                c.reasons = [f"fits, but LLAMA_RUNTIME_VARIANT={variant} was asked for (fallback only)"]
    selection = Selection(sorted(candidates, key=lambda c: (-c.score, c.name)), backend, variant=variant)
    chosen = selection.selected
    if chosen and selection.candidate(chosen).forced:
        selection.warnings.append(f"{chosen}: {selection.candidate(chosen).reasons[0]}")
    idle = _gpu_unused_warning(selection, manifest, profile) if variant is None else None
    if idle:
        selection.warnings.append(idle)
    translated = _rosetta_warning(selection, manifest, profile)
    if translated:
        selection.warnings.append(translated)
    if chosen and manifest.variants[chosen].backend == "vulkan":
        best = _vulkan_best(profile, allow_software=True)
        if best and best.get("type") == "cpu":
            asked = f"LLAMA_RUNTIME_VARIANT={variant}" if variant and backend == "auto" else f"LLAMA_BACKEND={backend}"
            selection.warnings.append(f"{chosen}: Vulkan runs on {best.get('name')}, a software renderer"
                                      f" (kept: {asked} asked for it)")
    return selection
