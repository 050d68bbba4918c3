"""Qualify a Windows x86-64 variant on an x86-64 Linux machine: each CPU plugin this CPU runs,
on its own, under Wine (Debian's ``wine64``), driven by ``driver.c`` cross-compiled with MinGW-w64
(``x86_64-w64-mingw32-gcc-posix``, linked statically: it needs no MinGW DLL). Wine runs the
plugin's instructions on this CPU, so what this CPU lacks (AMX here) is "not qualified here";
qemu-x86_64 cannot run Wine. The Wine prefix is made once under ``<store>/wine/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from .where import Run

WINE = "wine"  # the place of a run under Wine (on this CPU)
COMPILER = "x86_64-w64-mingw32-gcc-posix"
PACKAGES = {"wine64": "wine64", COMPILER: "gcc-mingw-w64-x86-64"}


def wine64() -> Path | None:
    """The 64-bit Wine loader: on PATH, or where Debian's ``wine64`` package puts it."""
    for found in (shutil.which("wine64"), "/usr/lib/wine/wine64"):
        if found and Path(found).is_file():
            return Path(found)
    return None


def missing_tools() -> list[str]:
    return [pkg for tool, pkg in PACKAGES.items() if (wine64() if tool == "wine64" else shutil.which(tool)) is None]


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    # Wine's own diagnostics would drown the driver's lines; no Mono/Gecko install dialogs
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINE")}
    return {**env, "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml=", **extra}


@lru_cache(maxsize=1)
def version() -> str:
    exe = wine64()
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=_env({}), check=False,
                         timeout=60).stdout.strip() if exe else ""
    return out.split()[0] if out else "wine-unknown"


def prefix(root: Path) -> Path:
    """A ready Wine prefix for this Wine under ``root/wine/``: made in a temporary folder and
    renamed once its wineserver exited, so no process sees a half-made one."""
    final = root / "wine" / f"prefix-{version()}"
    if (final / "system.reg").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".prefix-"))
    env, exe = _env({"WINEPREFIX": str(staging)}), wine64()
    assert exe is not None  # runnable_here checked it
    proc = subprocess.run([str(exe), "wineboot", "--init"], capture_output=True, text=True, env=env,
                          check=False, timeout=300)
    subprocess.run([str(exe.with_name("wineserver")), "-w"], env=env, check=False, timeout=120)
    if not (staging / "system.reg").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"wineboot could not create a prefix (exit {proc.returncode}): {proc.stderr[-1500:]}")
    try:
        os.replace(staging, final)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return final


def windows_path(path: str) -> str:
    """``/tmp/x`` as Wine's ``Z:\\tmp\\x`` (Z: is the Unix root in every prefix)."""
    return "Z:" + str(PurePath(Path(path).absolute())).replace("/", "\\")


def windows_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """The child's job with every path as Wine sees it."""
    out = {**job, "libraries": [windows_path(p) for p in job["libraries"]]}
    if job.get("plugin") and job.get("folder"):
        out["plugin_path"] = windows_path(str(Path(job["folder"]) / job["plugin"]))
    for key in ("folder", "backend_dir", "source"):
        if out.get(key):
            out[key] = windows_path(out[key])
    for key in ("models", "quantize"):
        if out.get(key):
            out[key] = [[t, windows_path(p)] for t, p in out[key]]
    return out


def wine_runs(file: str, cpu: Mapping[str, Any]) -> tuple[list[Run], str | None]:
    """A plugin of a Windows variant runs under Wine when this CPU runs it; else why not."""
    from ..plugins.rank import rank

    (judged,) = rank([file], cpu, "windows").candidates
    if judged.usable or judged.score is None:  # one the data does not know scores itself in the child
        return [Run(file, WINE, "this CPU, under Wine")], None
    why = "; ".join(judged.reasons) or "ggml scores it 0 here"
    return [], f"{why} on {cpu.get('model_name') or 'this CPU'}, and Wine runs it on this CPU only"


def wine_child(root: Path) -> Any:
    """A ``run_child`` for :mod:`.run`: the MinGW driver under Wine, paths made Windows paths."""
    from .cross import build_driver, run_driver

    exe, loader = build_driver(root, COMPILER, ".exe"), wine64()
    env = {"WINEPREFIX": str(prefix(root))}

    def child(job: dict[str, Any], run_prefix: Sequence[str], timeout: float) -> Any:
        return run_driver(exe, windows_job(job), (str(loader),), timeout, env=_env(env))

    return child
