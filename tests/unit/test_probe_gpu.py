"""GPU probes: pure parsers fed captured text, and the real ctypes libcuda probe run against a
tiny fake driver compiled from ``tests/data/fakecuda/fakecuda.c``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llama_runtime.probe import nvidia
from llama_runtime.probe.apple import parse_apple
from llama_runtime.probe.nvidia import (parse_smi_csv, parse_smi_header, parse_sys_module_version,
                                        read_nvidia, run_libcuda)
from llama_runtime.probe.rocm import (gfx_from_target_version, parse_kfd_properties, parse_rocminfo,
                                      read_rocm)
from llama_runtime.probe.vulkan import parse_vulkaninfo_summary
from llama_runtime.probe.windows import features_from_pf


SMI_BANNER_550 = """\
Tue Nov 25 12:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""
SMI_BANNER_470 = """\
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 470.223.02   Driver Version: 470.223.02   CUDA Version: 11.4     |
|-------------------------------+----------------------+----------------------+
"""


@pytest.mark.parametrize(("text", "driver", "cuda"), [
    (SMI_BANNER_550, "550.54.15", "12.4"),
    (SMI_BANNER_470, "470.223.02", "11.4"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", None, None),
    ("", None, None),
], ids=["550", "470", "no-driver", "empty"])
def test_parse_smi_header(text: str, driver: str | None, cuda: str | None) -> None:
    assert parse_smi_header(text) == {"driver": driver, "cuda_driver": cuda}


def test_parse_smi_csv_two_gpus() -> None:
    text = ("NVIDIA GeForce RTX 3090, 8.6, 24576 MiB, 550.54.15\n"
            "NVIDIA H100 80GB HBM3, 9.0, 81559 MiB, 550.54.15\n")
    assert parse_smi_csv(text) == [
        {"name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6", "memory_mib": 24576,
         "driver": "550.54.15"},
        {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_mib": 81559,
         "driver": "550.54.15"},
    ]


@pytest.mark.parametrize("text", [
    'Field "compute_cap" is not a valid field to query.\n\n',
    "No devices were found\n",
    "",
], ids=["old-driver", "no-devices", "empty"])
def test_parse_smi_csv_without_rows(text: str) -> None:
    assert parse_smi_csv(text) == []


def test_parse_smi_csv_na_values_are_none() -> None:
    [gpu] = parse_smi_csv("Tesla K80, [N/A], [N/A], 470.223.02\n")
    assert (gpu["compute_capability"], gpu["memory_mib"]) == (None, None)


@pytest.mark.parametrize(("text", "version"), [("550.54.15\n", "550.54.15"), ("470.82.01", "470.82.01"),
                                               ("", None), ("garbage\n", None)],
                         ids=["550", "470", "empty", "garbage"])
def test_parse_sys_module_version(text: str, version: str | None) -> None:
    assert parse_sys_module_version(text) == version


# --- the real ctypes probe against a fake libcuda ---------------------------------------------

def test_libcuda_probe_reads_the_fake_driver(fakecuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"FAKECUDA_VERSION": "12040", "FAKECUDA_CC": "8.6", "FAKECUDA_COUNT": "2",
                 "FAKECUDA_MEM_MIB": "24576"}.items():
        monkeypatch.setenv(k, v)
    result = run_libcuda(fakecuda)
    assert result["error"] is None
    assert result["cuda_driver"] == "12.4"
    assert [g["compute_capability"] for g in result["gpus"]] == ["8.6", "8.6"]
    assert [g["memory_mib"] for g in result["gpus"]] == [24576, 24576]
    assert result["gpus"][1]["name"] == "NVIDIA GeForce RTX 3090 #1"


@pytest.mark.parametrize(("version", "cc", "cuda"), [("11040", "6.1", "11.4"), ("13000", "9.0", "13.0"),
                                                     ("12080", "7.5", "12.8")],
                         ids=["470-pascal", "580-hopper", "570-turing"])
def test_libcuda_probe_versions(fakecuda: str, monkeypatch: pytest.MonkeyPatch, version: str,
                                cc: str, cuda: str) -> None:
    monkeypatch.setenv("FAKECUDA_VERSION", version)
    monkeypatch.setenv("FAKECUDA_CC", cc)
    out = read_nvidia(libcuda=fakecuda, use_smi=False)
    assert (out["cuda_driver"], out["gpus"][0]["compute_capability"], out["source"]) == (cuda, cc, "libcuda")


def test_libcuda_hang_becomes_unknown_within_the_timeout(fakecuda: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKECUDA_HANG", "1")
    start = time.monotonic()
    out = read_nvidia(libcuda=fakecuda, timeout=1.0, use_smi=False)
    assert time.monotonic() - start < 1.0 + 4.0  # timeout plus a generous margin
    assert out["cuda_driver"] is None
    assert out["error"].startswith("unknown, because") and "did not answer within 1 s" in out["error"]


def test_libcuda_init_error_is_explained(fakecuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKECUDA_INIT_ERROR", "100")
    out = run_libcuda(fakecuda)
    # the driver version came before cuInit failed: it is still worth reporting
    assert out["cuda_driver"] == "12.4" and out["gpus"] == []
    assert out["error"] == "unknown, because cuInit returned CUDA error 100"


def test_libcuda_missing_library(tmp_path: Path) -> None:
    out = run_libcuda(str(tmp_path / "libcuda.so.1"))
    assert out["cuda_driver"] is None and out["error"].startswith("unknown, because libcuda did not load")


def test_no_driver_means_no_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvidia, "_driver_present", lambda libcuda: False)
    monkeypatch.setattr(nvidia, "run_libcuda", lambda *a, **k: pytest.fail("probed libcuda"))
    out = read_nvidia()
    assert out["cuda_driver"] is None and out["error"].startswith("no NVIDIA driver found")


# --- ROCm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "gfx"), [(110000, "gfx1100"), (110001, "gfx1101"), (90010, "gfx90a"),
                                            (90402, "gfx942"), (90008, "gfx908"), (100302, "gfx1032"),
                                            (0, None)],
                         ids=["navi31", "navi32", "mi210", "mi300", "mi100", "navi23", "cpu-node"])
def test_gfx_from_target_version(value: int, gfx: str | None) -> None:
    assert gfx_from_target_version(value) == gfx


def test_parse_kfd_properties() -> None:
    text = "cpu_cores_count 0\nsimd_count 192\ngfx_target_version 110000\nvendor_id 4098\n"
    assert parse_kfd_properties(text) == "gfx1100"
    assert parse_kfd_properties("cpu_cores_count 16\ngfx_target_version 0\n") is None
    assert parse_kfd_properties("") is None


ROCMINFO = """\
ROCk module is loaded
=====================
HSA Agents
==========
*******
Agent 1
*******
  Name:                    AMD Ryzen 9 7950X 16-Core Processor
  Marketing Name:          AMD Ryzen 9 7950X 16-Core Processor
  Device Type:             CPU
*******
Agent 2
*******
  Name:                    gfx1100
  Uuid:                    GPU-5d1d6a1a2b3c4d5e
  Marketing Name:          Radeon RX 7900 XTX
  Vendor Name:             AMD
  Device Type:             GPU
      ISA 1
        Name:                    amdgcn-amd-amdhsa--gfx1100
"""


def test_parse_rocminfo_skips_cpu_agents() -> None:
    assert parse_rocminfo(ROCMINFO) == [{"name": "Radeon RX 7900 XTX", "gfx": "gfx1100"}]
    assert parse_rocminfo("") == []


def test_read_rocm_from_a_fake_sysfs(tmp_path: Path) -> None:
    for node, version in (("0", 0), ("1", 110000), ("2", 90010)):
        (tmp_path / node).mkdir()
        (tmp_path / node / "properties").write_text(f"simd_count 4\ngfx_target_version {version}\n")
    out = read_rocm(str(tmp_path), use_rocminfo=False)
    assert [g["gfx"] for g in out["gpus"]] == ["gfx1100", "gfx90a"] and out["source"] == "kfd"
    missing = read_rocm(str(tmp_path / "absent"))
    assert missing["gpus"] == [] and "no AMD GPU driver" in missing["error"]


# --- Vulkan --------------------------------------------------------------------------------------

VULKAN_LAPTOP = """\
Devices:
========
GPU0:
\tapiVersion         = 1.3.274
\tdriverVersion      = 24.0.9
\tdeviceType         = PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU
\tdeviceName         = Intel(R) Iris(R) Xe Graphics (ADL GT2)
GPU1:
\tapiVersion         = 1.3.277
\tdeviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
\tdeviceName         = NVIDIA GeForce RTX 4070 Laptop GPU
GPU2:
\tapiVersion         = 1.3.274
\tdeviceType         = PHYSICAL_DEVICE_TYPE_CPU
\tdeviceName         = llvmpipe (LLVM 17.0.6, 256 bits)
"""


def test_parse_vulkaninfo_summary_types() -> None:
    devices = parse_vulkaninfo_summary(VULKAN_LAPTOP)
    assert [(d["name"].split()[0], d["type"]) for d in devices] == [
        ("Intel(R)", "integrated"), ("NVIDIA", "discrete"), ("llvmpipe", "cpu")]
    assert devices[0]["api_version"] == "1.3.274"


@pytest.mark.parametrize("text", ["", "ERROR: [Loader Message] Code 0 : vkCreateInstance: Found no drivers!\n"],
                         ids=["empty", "no-drivers"])
def test_parse_vulkaninfo_summary_without_devices(text: str) -> None:
    assert parse_vulkaninfo_summary(text) == []


# --- Apple and Windows ---------------------------------------------------------------------------

@pytest.mark.parametrize(("brand", "arm64", "macos", "machine", "metal", "rosetta"), [
    ("Apple M1", "1", "13.2.1", "arm64", True, False),
    ("Apple M3 Pro", "1", "15.1", "arm64", True, False),
    ("Apple M2", "1", "14.5", "x86_64", False, True),
    ("Intel(R) Core(TM) i9-9980HK CPU @ 2.40GHz", "0", "14.7", "x86_64", False, False),
    ("Intel(R) Core(TM) i7-4870HQ CPU @ 2.50GHz", "", "11.7.10", "x86_64", False, False),
], ids=["m1", "m3", "m2-rosetta", "intel-mac", "old-intel-no-sysctl-key"])
def test_parse_apple(brand: str, arm64: str, macos: str, machine: str, metal: bool, rosetta: bool) -> None:
    out = parse_apple(brand + "\n", arm64 + "\n", macos, machine)
    assert (out["chip"], out["macos"], out["metal"], out["rosetta"]) == (brand, macos, metal, rosetta)


def test_windows_processor_features_to_flags() -> None:
    from llama_runtime.probe.cpu import ggml_features, x86_64_level

    avx2 = features_from_pf([6, 10, 13, 36, 37, 38, 39, 40])
    assert x86_64_level(avx2) == 3 and {"avx2", "fma", "f16c"} <= set(ggml_features("x86_64", avx2))
    sse42 = features_from_pf([6, 10, 13, 36, 37, 38])
    assert x86_64_level(sse42) == 2 and "avx" not in sse42
    assert x86_64_level(features_from_pf([6, 10])) == 1
    assert features_from_pf([29, 43]) == ["asimd", "asimddp"]


@pytest.mark.parametrize(("driver", "cuda"), [("470.223.02", "11.4"), ("525.147.05", "12.0"),
                                              ("550.54.15", "12.4"), ("550.54.14", "12.4"),
                                              ("550.40.07", "12.3"), ("580.65.06", "13.0"),
                                              ("570.124.06", "12.8"), ("440.33.01", None)],
                         ids=["470", "525", "550", "550-exact-floor", "550-beta", "580", "570", "440"])
def test_cuda_from_driver_table(driver: str, cuda: str | None) -> None:
    assert nvidia.cuda_from_driver(driver) == cuda


def test_driver_without_libcuda_or_smi_falls_back_to_the_table(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n")
    monkeypatch.setattr(nvidia, "PROC_VERSION", str(proc))
    monkeypatch.setattr(nvidia.sys, "platform", "linux")
    out = read_nvidia(libcuda=str(tmp_path / "libcuda.so.1"), use_smi=False)
    assert (out["driver"], out["cuda_driver"], out["source"]) == ("535.183.01", "12.2", "driver version table")
    assert "libcuda did not load" in out["error"]  # the failed source is still reported
