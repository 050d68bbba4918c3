"""Which GPU code of a CUDA variant a GPU would run, under the rules of NVIDIA's runtime.

A CUDA build carries cubins (``sm_86``: machine code) and PTX (``compute_75``: compiled by the
driver at first use). The runtime takes a cubin of the GPU's own major with a minor at or below
the GPU's (``sm_86`` runs on 8.6, 8.7 and 8.9; an arch-specific ``sm_120a`` only on 12.0), else
the newest PTX at or below the GPU's compute capability, which only a driver that knows that
PTX ISA can compile ("the PTX was compiled with an unsupported toolchain", CUDA error 222). So
the npm CUDA 12 build (PTX of CUDA 12.4) runs a Tesla T4 on R550 but not on R525, and the CUDA
13 build (PTX of CUDA 13.1, cubins only for 8.6/8.9/12.0/12.1) runs an H100 only on a driver
of CUDA 13.1 or newer. ``variant.json`` records the targets (``cuda_architectures``, read from
the fatbin by scripts/cuda_fatbin.py) and ``cuda_ptx_driver``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..versions import version_tuple


def _cc(text: Any) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def _target(name: str) -> tuple[str, tuple[int, int], bool] | None:
    """``sm_120a`` -> ("sm", (12, 0), True); ``compute_75`` -> ("compute", (7, 5), False)."""
    m = re.fullmatch(r"(sm|compute)_(\d+?)(\d)(a?)", name)
    if m is None:
        return None
    return m[1], (int(m[2]), int(m[3])), bool(m[4])


@dataclass(frozen=True)
class Fit:
    """The code a GPU would run (``target`` None: none) and why, in words."""

    target: str | None
    jit: bool
    words: str


def gpu_fit(cc: str, targets: Sequence[str], driver_cuda: str | None, ptx_driver: str | None) -> Fit:
    """The target the CUDA runtime would pick for a GPU of compute capability ``cc``."""
    gpu = _cc(cc)
    parsed = [(name, t) for name in targets if (t := _target(name)) is not None]
    cubins = [(t[1], name) for name, t in parsed if t[0] == "sm" and t[1][0] == gpu[0]
              and (t[1] == gpu if t[2] else t[1][1] <= gpu[1])]
    if cubins:
        return Fit(max(cubins)[1], False, f"runs {max(cubins)[1]} machine code")
    ptx = [(t[1], name) for name, t in parsed if t[0] == "compute" and t[1] <= gpu]
    held = ", ".join(targets) or "nothing"
    if not ptx:
        return Fit(None, False, f"the build holds {held}, nothing for compute capability {cc}")
    best = max(ptx)[1]
    if ptx_driver and driver_cuda and version_tuple(driver_cuda) < version_tuple(ptx_driver):
        return Fit(None, True, f"would need to JIT-compile {best} PTX, which needs a driver"
                               f" supporting CUDA {ptx_driver}; this one supports CUDA {driver_cuda}")
    return Fit(best, True, f"runs {best} PTX, JIT-compiled by the driver at first use")


def check_targets(v: Any, nv: dict[str, Any]) -> tuple[list[str], list[Fit]]:
    """Problems (a GPU this build has no code for) and each GPU's fit, for a variant that
    records ``cuda_architectures``. Every GPU must be served: ggml uses all it sees."""
    targets = list(v.extra.get("cuda_architectures") or ())
    gpus = [g for g in nv.get("gpus") or [] if g.get("compute_capability")]
    if v.extra.get("cuda_target") and not gpus:
        return [f"built only for {', '.join(targets)}; no GPU's compute capability is known to"
                f" check it against (the full {v.extra.get('cuda_full') or 'CUDA'} build covers"
                " every GPU)"], []
    fits = [gpu_fit(g["compute_capability"], targets, nv.get("cuda_driver"),
                    v.extra.get("cuda_ptx_driver")) for g in gpus]
    problems = [f"{g.get('name')} (cc {g['compute_capability']}): {f.words}"
                for g, f in zip(gpus, fits) if f.target is None]
    return problems, fits


def preference(v: Any, nv: dict[str, Any]) -> float:
    """Score points among CUDA variants that fit, averaged over the GPUs: machine code over PTX
    (no JIT wait at first use), the GPU's exact architecture over an older one, and the newest
    PTX over older PTX (compute_50 code has no tensor-core paths: ggml picks its kernels by
    ``__CUDA_ARCH__``); then a one-target archive (a smaller download) over the full build."""
    if not v.extra.get("cuda_architectures"):
        return 0.0
    _, fits = check_targets(v, nv)
    if not fits or any(f.target is None for f in fits):
        return 0.0
    gpus = [g for g in nv.get("gpus") or [] if g.get("compute_capability")]
    points = []
    for gpu, fit in zip(gpus, fits):
        parsed = _target(fit.target or "")
        arch = parsed[1][0] * 10 + parsed[1][1] if parsed else 0
        exact = parsed is not None and parsed[1] == _cc(gpu["compute_capability"])
        points.append(arch / 1000 + (0.0 if fit.jit else 2.0 + float(exact)))
    return sum(points) / len(points) + (0.5 if v.extra.get("cuda_target") else 0.0)
