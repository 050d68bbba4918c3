"""AMD ROCm: the gfx target of every AMD GPU, from the KFD topology in sysfs or ``rocminfo``.

The kernel's KFD topology needs no ROCm install (a build stage may lack one); ``rocminfo`` is
the fallback. Parsers are pure and fed captured text in the tests.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from ._run import run_tool

KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"


def gfx_from_target_version(value: int) -> str | None:
    """KFD encodes gfx1100 as 110000 and gfx90a as 90010: major, minor and stepping (hex digits)."""
    if value <= 0:
        return None  # CPU nodes report 0
    major, minor, step = value // 10000, (value // 100) % 100, value % 100
    return f"gfx{major}{minor:x}{step:x}"


def parse_kfd_properties(text: str) -> str | None:
    """One node's ``properties`` file -> ``"gfx1100"``, or ``None`` for a CPU node."""
    m = re.search(r"^gfx_target_version\s+(\d+)", text, re.M)
    return gfx_from_target_version(int(m.group(1))) if m else None


def parse_rocminfo(text: str) -> list[dict[str, Any]]:
    """GPU agents in ``rocminfo`` output: ``Name: gfx1100`` plus its ``Marketing Name``."""
    gpus = []
    for agent in re.split(r"\n\*+\s*\nAgent \d+", text):
        gfx = re.search(r"^\s*Name:\s+(gfx[0-9a-f]+)\s*$", agent, re.M)
        if gfx:
            name = re.search(r"^\s*Marketing Name:\s+(.+?)\s*$", agent, re.M)
            gpus.append({"name": name.group(1) if name else None, "gfx": gfx.group(1)})
    return gpus


def _read_kfd(root: str) -> list[dict[str, Any]]:
    gpus = []
    for props in sorted(glob.glob(os.path.join(root, "*", "properties"))):
        try:
            with open(props, encoding="utf-8", errors="replace") as f:
                gfx = parse_kfd_properties(f.read())
        except OSError:
            continue
        if gfx:
            gpus.append({"name": None, "gfx": gfx})
    return gpus


def read_rocm(kfd_root: str = KFD_NODES, use_rocminfo: bool = True) -> dict[str, Any]:
    """AMD GPUs usable by ROCm. Never raises: a failure is recorded in ``error``."""
    gpus = _read_kfd(kfd_root)
    if gpus:
        return {"gpus": gpus, "error": None, "source": "kfd"}
    if not os.path.isdir(kfd_root):
        return {"gpus": [], "error": "no AMD GPU driver found (no KFD topology in sysfs)", "source": None}
    if not use_rocminfo:
        return {"gpus": [], "error": "no AMD GPU in the KFD topology", "source": None}
    text, why = run_tool(["rocminfo"])
    if text is None:
        return {"gpus": [], "error": f"unknown, because {why}", "source": None}
    gpus = parse_rocminfo(text)
    return {"gpus": gpus, "error": None if gpus else "rocminfo lists no GPU agent", "source": "rocminfo"}
