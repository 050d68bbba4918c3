"""NVIDIA: the driver, the highest CUDA version *the driver* supports, and every GPU.

The toolkit (``nvcc``, ``libcudart``) says nothing about what the driver can run, so it is never
read. Sources, best first: ``libcuda`` through ctypes (in a child process with a timeout, because
a wedged driver can block ``cuInit`` forever and must not hang a ``pip install`` or an import),
then ``nvidia-smi``; the driver version also comes from ``/proc/driver/nvidia/version`` or
``/sys/module/nvidia/version``. Each parser is pure and fed captured text in the tests.
"""

from __future__ import annotations

import json
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..versions import version_tuple
from ._run import run_tool
from .gpu import cuda_version_from_int, parse_nvidia_proc_version

PROC_VERSION = "/proc/driver/nvidia/version"
SYS_MODULE_VERSION = "/sys/module/nvidia/version"
# WSL2 exposes the Windows driver's libcuda here, with no /proc/driver/nvidia.
_WSL_LIBCUDA = "/usr/lib/wsl/lib/libcuda.so.1"
LIBCUDA_TIMEOUT_S = 5.0
SMI_TIMEOUT_S = 5.0
SMI_QUERY = ["--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader"]

# Runs in a fresh interpreter (``python -I -c``): stdlib only, prints one JSON object.
# CUdevice_attribute 75/76 = COMPUTE_CAPABILITY_MAJOR/MINOR (cuda.h).
_LIBCUDA_SCRIPT = r"""
import ctypes, json, sys
try:
    lib = ctypes.CDLL(sys.argv[1])
except OSError as exc:
    print(json.dumps({"absent": str(exc)}))
    raise SystemExit(0)
def call(fn, *args):
    rc = getattr(lib, fn)(*args)
    if rc != 0:
        raise RuntimeError(f"{fn} returned CUDA error {rc}")
out = {"gpus": []}
try:
    v = ctypes.c_int(0)
    call("cuDriverGetVersion", ctypes.byref(v))
    out["version"] = v.value
    call("cuInit", 0)
    n = ctypes.c_int(0)
    call("cuDeviceGetCount", ctypes.byref(n))
    for i in range(n.value):
        dev = ctypes.c_int(i)
        if hasattr(lib, "cuDeviceGet"):
            call("cuDeviceGet", ctypes.byref(dev), i)
        major, minor, mem = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_size_t(0)
        name = ctypes.create_string_buffer(256)
        call("cuDeviceGetAttribute", ctypes.byref(major), 75, dev)
        call("cuDeviceGetAttribute", ctypes.byref(minor), 76, dev)
        call("cuDeviceGetName", name, 256, dev)
        call("cuDeviceTotalMem_v2", ctypes.byref(mem), dev)
        out["gpus"].append({"name": name.value.decode("utf-8", "replace"),
                            "compute_capability": f"{major.value}.{minor.value}",
                            "memory_mib": mem.value // (1024 * 1024)})
except Exception as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def parse_sys_module_version(text: str) -> str | None:
    """``/sys/module/nvidia/version`` holds just ``"550.54.15\\n"``."""
    m = re.fullmatch(r"\s*(\d+\.\d+(?:\.\d+)?)\s*", text)
    return m.group(1) if m else None


def parse_smi_header(text: str) -> dict[str, str | None]:
    """The banner of plain ``nvidia-smi``: ``Driver Version: 550.54.15  CUDA Version: 12.4``."""
    driver = re.search(r"Driver Version:\s*(\d+\.\d+(?:\.\d+)?)", text)
    cuda = re.search(r"CUDA Version:\s*(\d+\.\d+)", text)
    return {"driver": driver.group(1) if driver else None, "cuda_driver": cuda.group(1) if cuda else None}


def _mib(text: str) -> int | None:
    m = re.match(r"\s*(\d+)\s*MiB", text)
    return int(m.group(1)) if m else None


def parse_smi_csv(text: str) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader``.

    Drivers before ~510 do not know ``compute_cap`` and print an error instead of rows; a row
    may also hold ``[N/A]``. Both become ``None`` rather than a guess.
    """
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not re.match(r"\d+\.\d+", parts[3]):
            continue
        cc = parts[1] if re.fullmatch(r"\d+\.\d+", parts[1]) else None
        gpus.append({"name": parts[0], "compute_capability": cc, "memory_mib": _mib(parts[2]),
                     "driver": parts[3]})
    return gpus


def parse_libcuda_result(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON the libcuda child prints -> ``cuda_driver``, ``gpus``, ``error``."""
    if "absent" in data:
        return {"cuda_driver": None, "gpus": [], "error": f"unknown, because libcuda did not load ({data['absent']})"}
    version = data.get("version")
    return {"cuda_driver": cuda_version_from_int(version) if version else None,
            "gpus": list(data.get("gpus") or []),
            "error": f"unknown, because {data['error']}" if data.get("error") else None}


@lru_cache(maxsize=1)
def _driver_table() -> dict[str, str]:
    path = Path(__file__).with_name("cuda_drivers.json")
    return dict(json.loads(path.read_text(encoding="utf-8"))["linux_min_driver"])


def cuda_from_driver(driver: str) -> str | None:
    """The highest CUDA a Linux driver supports, from NVIDIA's published minimum versions.

    Used only when neither libcuda nor nvidia-smi answered (e.g. a container that sees the
    kernel module but has no user-space driver mounted): the driver version alone decides.
    """
    fits = [cuda for cuda, floor in _driver_table().items() if version_tuple(driver) >= version_tuple(floor)]
    return max(fits, key=version_tuple) if fits else None


def libcuda_name() -> str:
    return "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"


def run_libcuda(path: str | None = None, timeout: float = LIBCUDA_TIMEOUT_S) -> dict[str, Any]:
    """Ask ``libcuda`` (``path``, default the system's) in a child process. Never raises or hangs."""
    path = path or libcuda_name()
    if not sys.executable:  # embedded interpreters: no python to start the child with
        return {"cuda_driver": None, "gpus": [], "error": "unknown, because there is no Python executable to run the libcuda probe"}
    import subprocess  # lazily: only machines with an NVIDIA driver get here

    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _LIBCUDA_SCRIPT, path],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"cuda_driver": None, "gpus": [],
                "error": f"unknown, because libcuda ({path}) did not answer within {timeout:g} s (a hung driver?)"}
    except OSError as exc:
        return {"cuda_driver": None, "gpus": [], "error": f"unknown, because the libcuda probe could not start ({exc})"}
    try:
        return parse_libcuda_result(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"cuda_driver": None, "gpus": [], "error": f"unknown, because the libcuda probe crashed ({tail})"}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _run_smi(args: list[str], timeout: float) -> str | None:
    return run_tool(["nvidia-smi", *args], timeout)[0]


def _driver_present(libcuda: str | None) -> bool:
    if libcuda is not None or sys.platform == "win32":
        return True
    return any(os.path.exists(p) for p in (PROC_VERSION, SYS_MODULE_VERSION, "/dev/nvidiactl", _WSL_LIBCUDA))


def read_nvidia(libcuda: str | None = None, timeout: float = LIBCUDA_TIMEOUT_S,
                use_smi: bool = True) -> dict[str, Any]:
    """The NVIDIA driver and GPUs of this machine. Never raises: failures land in ``error``.

    ``libcuda`` overrides the library path (tests load a fake driver through it).
    """
    out: dict[str, Any] = {"driver": None, "cuda_driver": None, "gpus": [], "error": None, "source": None}
    text = _read(PROC_VERSION)
    out["driver"] = parse_nvidia_proc_version(text) if text else None
    if out["driver"] is None:
        text = _read(SYS_MODULE_VERSION)
        out["driver"] = parse_sys_module_version(text) if text else None
    if not _driver_present(libcuda):
        out["error"] = "no NVIDIA driver found (no /proc/driver/nvidia/version, no libcuda)"
        return out
    cuda = run_libcuda(libcuda, timeout)
    out.update(cuda, source="libcuda" if cuda["cuda_driver"] else None)
    if (cuda["cuda_driver"] is None or not cuda["gpus"]) and use_smi:
        _fill_from_smi(out)
    if out["driver"] and out["cuda_driver"] is None and sys.platform.startswith("linux"):
        out["cuda_driver"] = cuda_from_driver(out["driver"])
        if out["cuda_driver"]:
            out["source"] = "driver version table"
    if out["driver"] is None and out["cuda_driver"] is None and out["error"] is None:
        out["error"] = "no NVIDIA driver found"
    return out


def _fill_from_smi(out: dict[str, Any]) -> None:
    csv = _run_smi(SMI_QUERY, SMI_TIMEOUT_S)
    gpus = parse_smi_csv(csv or "")
    header = parse_smi_header(_run_smi([], SMI_TIMEOUT_S) or "") if out["cuda_driver"] is None else {}
    if not gpus and not header.get("cuda_driver"):
        return
    if header.get("cuda_driver"):
        out["cuda_driver"], out["source"], out["error"] = header["cuda_driver"], "nvidia-smi", None
    if gpus and not out["gpus"]:
        out["gpus"] = [{k: g[k] for k in ("name", "compute_capability", "memory_mib")} for g in gpus]
    out["driver"] = out["driver"] or header.get("driver") or (gpus[0]["driver"] if gpus else None)
