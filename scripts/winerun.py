"""Run Windows programs under Wine (Debian's ``wine64``) for the Windows variants' tests.

Wine's first start creates a prefix (a fake ``C:`` drive and registry), which takes seconds;
one prefix per Wine version is made once under ``<dev cache>/wine/`` and reused. Everything runs
with ``WINEDEBUG=-all`` (Wine's own diagnostics would drown the program's output).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePath

WINE_HINT = "install Wine (apt-get install wine64)"
MINGW_CC = "x86_64-w64-mingw32-gcc-posix"
REPO = Path(__file__).resolve().parent.parent
DRIVER_SOURCE = REPO / "tests" / "data" / "oracle" / "greedy_win.c"
INCLUDE = REPO / "llama_runtime" / "native" / "include"


class WineError(RuntimeError):
    """Wine or the MinGW compiler is missing or failed; the message says what to do."""


def wine64() -> Path:
    """The 64-bit Wine loader: on PATH, or where Debian's ``wine64`` package puts it."""
    found = shutil.which("wine64")
    for candidate in [found, "/usr/lib/wine/wine64"]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise WineError(f"wine64 not found: {WINE_HINT}")


def _version() -> str:
    out = subprocess.run([str(wine64()), "--version"], capture_output=True, text=True,
                         env=_base_env(), check=False, timeout=60).stdout.strip()
    return out.split()[0] if out else "wine-unknown"


def _base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINE")}
    return {**env, "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml=", **(extra or {})}


def prefix(cache: Path) -> Path:
    """A ready Wine prefix for this Wine version under ``cache/wine/``, made once.

    Made in a temporary folder and renamed, after its wineserver has exited, so no process
    ever sees a half-made prefix; a concurrent maker that loses the rename keeps nothing.
    """
    final = cache / "wine" / f"prefix-{_version()}"
    if (final / "system.reg").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".prefix-"))
    env = _base_env({"WINEPREFIX": str(staging)})
    proc = subprocess.run([str(wine64()), "wineboot", "--init"], capture_output=True,
                          text=True, env=env, check=False, timeout=300)
    subprocess.run([str(wine64().with_name("wineserver")), "-w"], env=env, check=False,
                   timeout=120)
    if not (staging / "system.reg").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise WineError(f"wineboot could not create a prefix (exit {proc.returncode}): "
                        f"{proc.stderr[-1500:]}")
    try:
        os.replace(staging, final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return final


@contextlib.contextmanager
def virtual_display() -> Iterator[str]:
    """An X display (Xvfb) for as long as the block runs; its ``DISPLAY`` value.

    Wine's Vulkan (winevulkan) reaches the host's Vulkan only through its X11 graphics driver:
    without a display, vkEnumerateInstanceVersion answers 1.0 ("Failed to load Wine graphics
    driver supporting Vulkan") and ggml refuses the device ("Vulkan 1.2 required").
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise WineError("Xvfb not found: apt-get install xvfb (Wine's Vulkan needs a display)")
    read, write = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "640x480x24",
                             "-nolisten", "tcp"], pass_fds=(write,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        with os.fdopen(read) as f:
            number = f.readline().strip()  # Xvfb writes the display number when it is ready
        if not number:
            raise WineError(f"Xvfb exited (status {proc.poll()}) before it was ready")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def windows_path(path: Path | str) -> str:
    """``/tmp/x`` as Wine's ``Z:\\tmp\\x`` (Z: is the Unix root in every prefix)."""
    return "Z:" + str(PurePath(Path(path).absolute())).replace("/", "\\")


def run(program: Path, args: Sequence[str], *, cache: Path, env: Mapping[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``program args...`` under Wine in the cached prefix; output captured, never raises on
    the program's exit status."""
    full = _base_env({"WINEPREFIX": str(prefix(cache)), **(env or {})})
    return subprocess.run([str(wine64()), str(program), *args], capture_output=True, text=True,
                          env=full, check=False, timeout=timeout)


def compile_driver(out_dir: Path) -> Path:
    """``tests/data/oracle/greedy_win.c`` cross-compiled into ``out_dir/greedy_win.exe``
    (statically linked: it needs no MinGW runtime DLL either)."""
    cc = shutil.which(MINGW_CC)
    if cc is None:
        raise WineError(f"{MINGW_CC} not found: apt-get install gcc-mingw-w64-x86-64")
    exe = Path(out_dir) / "greedy_win.exe"
    proc = subprocess.run([cc, "-std=gnu11", "-O2", "-Wall", "-Werror", "-I", str(INCLUDE),
                           str(DRIVER_SOURCE), "-static", "-o", str(exe)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise WineError(f"{DRIVER_SOURCE.name} does not build: {proc.stderr[-3000:]}")
    return exe
