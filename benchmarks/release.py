"""The loopback release every install/run-time benchmark starts from (built once per run).

real variant folders -> staged source tree -> `llama-runtime publish` to a HubServer -> sdist;
plus a cache that already holds the variant this machine selects (for B3 doctor and B6).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import PY, timed_run

from scripts import devrelease
from scripts.hubserver import HubServer  # noqa: E402


@dataclass
class Release:
    work: Path
    hub: HubServer
    variants: Path
    tree: Path
    lock: Path
    sdist: Path
    cache: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.lock.read_text())["manifest"]

    def env(self, **extra: str) -> dict[str, str]:
        """Run from the staged tree (with its lock) against the warm cache, offline."""
        return {"PYTHONPATH": str(self.tree), "LLAMA_RUNTIME_CACHE": str(self.cache),
                "LLAMA_RUNTIME_OFFLINE": "1", **extra}


def make_release(work: Path, hub: HubServer) -> Release:
    variants = devrelease.build_variant_dirs(devrelease.dev_cache() / "variants")
    tree = devrelease.stage_source(work / "src")
    lock = devrelease.publish_release(tree, variants, hub.url)
    sdist = devrelease.build_sdist(tree, work / "dist")
    cache = work / "cache"
    env = {"PYTHONPATH": str(tree), "LLAMA_RUNTIME_CACHE": str(cache),
           "LLAMA_RUNTIME_ENDPOINT": hub.url}
    _, proc = timed_run([PY, "-m", "llama_runtime", "fetch", "--best"], env)
    if proc.returncode != 0:
        raise RuntimeError(f"fetch --best failed:\n{proc.stdout}\n{proc.stderr}")
    return Release(work, hub, variants, tree, lock, sdist, cache)


def selected_variant(rel: Release) -> str:
    """The variant doctor says this machine gets."""
    _, proc = timed_run([PY, "-m", "llama_runtime", "doctor", "--json"], rel.env())
    data = json.loads(proc.stdout)
    for key in ("selected", "selection", "choice"):
        v = data.get(key)
        if isinstance(v, dict) and v.get("variant"):
            return str(v["variant"])
        if isinstance(v, str):
            return v
    return os.environ.get("LLAMA_RUNTIME_VARIANT", "?")
