"""Errors, tools and the cache root shared by the variant builders (development only)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class BuildVariantError(RuntimeError):
    """A variant could not be produced; the message says what to do."""



def tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildVariantError(f"{name} not found on PATH: {hint}")
    return path


def run(cmd: Sequence[str], what: str, **kwargs: Any) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise BuildVariantError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return str(proc.stdout)



def cache_root(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/llama-runtime-dev``."""
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "llama-runtime-dev"
