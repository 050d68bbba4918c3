"""The probe: pure parsers fed captured text, and the real probe of this machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llama_runtime.errors import ConfigError
from llama_runtime.probe import MachineProfile, probe
from llama_runtime.probe.cpu import (
    GGML_X86_FEATURES,
    ggml_features,
    normalize_arch,
    parse_cpuinfo,
    x86_64_level,
)
from llama_runtime.probe.gpu import cuda_version_from_int, parse_nvidia_proc_version
from llama_runtime.probe.libc import parse_glibc_version, parse_musl_version

CPUINFO = Path(__file__).parents[1] / "data" / "cpuinfo"


def cpuinfo(name: str) -> str:
    return (CPUINFO / f"{name}.txt").read_text(encoding="utf-8")


# --- cpu ---------------------------------------------------------------------------------------

# (fixture, vendor, model name, x86-64 level or None for aarch64, ggml features)
CPUS = [
    ("core2-penryn", "GenuineIntel", "Intel(R) Core(TM)2 Duo CPU     E8400  @ 3.00GHz", 1, []),
    ("nehalem-i7-920", "GenuineIntel", "Intel(R) Core(TM) i7 CPU         920  @ 2.67GHz", 2,
     ["sse4_2"]),
    ("haswell-xeon-e5-2680-v3", "GenuineIntel", "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz", 3,
     ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"]),
    ("graviton2-neoverse-n1", "0x41", None, None, ["asimd", "asimddp"]),
    ("graviton3-neoverse-v1", "0x41", None, None, ["asimd", "asimddp", "i8mm", "sve"]),
]


@pytest.mark.parametrize(("name", "vendor", "model", "level", "features"), CPUS,
                         ids=[c[0] for c in CPUS])
def test_captured_cpuinfo(name: str, vendor: str, model: str | None, level: int | None,
                          features: list[str]) -> None:
    info = parse_cpuinfo(cpuinfo(name))
    assert info["vendor"] == vendor
    assert info["model_name"] == model
    assert info["flags"], "the flags/Features line was not found"
    arch = "aarch64" if level is None else "x86_64"
    if level is not None:
        assert x86_64_level(info["flags"]) == level
    assert ggml_features(arch, info["flags"]) == features


def test_this_machine_capture_is_v4_with_avx512() -> None:
    info = parse_cpuinfo(cpuinfo("this-machine-xeon-kvm"))
    assert info["vendor"] == "GenuineIntel"
    assert x86_64_level(info["flags"]) == 4
    features = ggml_features("x86_64", info["flags"])
    assert {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile"} <= set(features)
    # ggml's order is kept, so logs and manifests compare stably
    assert features == [f for f in GGML_X86_FEATURES if f in features]


def test_parse_cpuinfo_reads_only_the_first_processor() -> None:
    text = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: sse4_2 avx\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: sse4_2 avx avx2 avx512f\n"
    )
    info = parse_cpuinfo(text)
    assert info == {"vendor": "GenuineIntel", "model_name": None, "flags": ["sse4_2", "avx"]}


@pytest.mark.parametrize("text", ["", "\n\n", "garbage without colons\n"],
                         ids=["empty", "blank-lines", "no-keys"])
def test_parse_cpuinfo_on_nothing_useful(text: str) -> None:
    assert parse_cpuinfo(text) == {"vendor": None, "model_name": None, "flags": []}


LEVEL_CASES = [
    ([], 1),
    (["sse4_2", "popcnt", "ssse3", "sse4_1", "cx16"], 1),  # lahf_lm missing: still v1
    (["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"], 2),
    # all of v4's AVX-512 but missing v2: levels are cumulative, so v1
    (["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"], 1),
    # v2 + AVX2 family but no movbe: stays v2
    (["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3",
      "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "xsave"], 2),
]


@pytest.mark.parametrize(("flags", "level"), LEVEL_CASES,
                         ids=["none", "v2-minus-lahf", "v2", "avx512-only", "v3-minus-movbe"])
def test_x86_64_level_is_cumulative(flags: list[str], level: int) -> None:
    assert x86_64_level(flags) == level


def test_ggml_features_per_arch() -> None:
    flags = ["asimd", "avx2", "sve", "sse4_2"]
    assert ggml_features("x86_64", flags) == ["sse4_2", "avx2"]
    assert ggml_features("aarch64", flags) == ["asimd", "sve"]


@pytest.mark.parametrize(("machine", "arch"),
                         [("AMD64", "x86_64"), ("x86_64", "x86_64"), ("arm64", "aarch64"),
                          ("aarch64", "aarch64"), (" x64 ", "x86_64"), ("riscv64", "riscv64")],
                         ids=["windows-amd64", "linux-x86_64", "macos-arm64", "linux-aarch64",
                              "padded-x64", "unknown-kept"])
def test_normalize_arch(machine: str, arch: str) -> None:
    assert normalize_arch(machine) == arch


# --- libc --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "version"),
                         [("glibc 2.36", "2.36"), ("glibc 2.17", "2.17"),
                          ("glibc 2.41.9000", "2.41"),
                          (" glibc 2.28\n", "2.28"), ("", None), ("musl 1.2.4", None),
                          ("glibc", None)],
                         ids=["debian12", "centos7", "devel-snapshot", "padded", "empty", "musl",
                              "no-version"])
def test_parse_glibc_version(text: str, version: str | None) -> None:
    assert parse_glibc_version(text) == version


MUSL_BANNERS = [
    ("musl libc (x86_64)\nVersion 1.2.4\nDynamic Program Loader\n"
     "Usage: /lib/ld-musl-x86_64.so.1 [options] [--] pathname [args]\n", "1.2.4"),
    ("musl libc (aarch64)\nVersion 1.2.2\nDynamic Program Loader\n"
     "Usage: /lib/ld-musl-aarch64.so.1 [options] [--] pathname [args]\n", "1.2.2"),
    ("musl libc (x86_64)\nVersion 1.1.24\nDynamic Program Loader\n", "1.1.24"),
    ("\n  musl libc (x86_64)\n  Version 1.2.5\n", "1.2.5"),
    ("musl libc (x86_64)\nVersion 1.2\n", "1.2"),
    ("", None),
    ("musl libc (x86_64)\n", None),
    ("GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36.\n", None),
    ("musl libc (x86_64)\nversion unknown\n", None),
]


@pytest.mark.parametrize(("banner", "version"), MUSL_BANNERS,
                         ids=["alpine319-x86_64", "alpine315-aarch64", "alpine312-old",
                              "indented", "two-part", "empty", "no-version-line", "glibc-banner",
                              "garbled-version"])
def test_parse_musl_version(banner: str, version: str | None) -> None:
    assert parse_musl_version(banner) == version


# --- gpu ---------------------------------------------------------------------------------------

NVIDIA_VERSIONS = [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\n"
     "GCC version:  gcc version 9.4.0 (Ubuntu 9.4.0-1ubuntu1~20.04.2) \n", "470.256.02"),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n"
     "GCC version:  gcc version 11.4.0 (Ubuntu 11.4.0-1ubuntu1~22.04) \n", "535.183.01"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.104.05  Release Build  "
     "(dvs-builder@U16-T02-35-3)  Sat Aug 19 01:13:39 UTC 2023\n"
     "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n", "535.104.05"),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
     "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", "550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
     "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\n"
     "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04) \n", "580.65.06"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  580.82.07  Release Build  "
     "(dvs-builder@U22-I3-AF03-09-1)  Wed Aug 27 17:40:52 UTC 2025\n"
     "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04) \n", "580.82.07"),
    ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  550.90.07  Fri May 31 09:30:47 UTC 2024\n",
     "550.90.07"),
    ("", None),
    ("NVRM version: something unexpected\n", None),
]


@pytest.mark.parametrize(("text", "driver"), NVIDIA_VERSIONS,
                         ids=["470-proprietary", "535-proprietary", "535-open", "550-proprietary",
                              "580-open", "580-open-aarch64", "550-aarch64", "empty", "unparsable"])
def test_parse_nvidia_proc_version(text: str, driver: str | None) -> None:
    assert parse_nvidia_proc_version(text) == driver


@pytest.mark.parametrize(("value", "version"),
                         [(12040, "12.4"), (11080, "11.8"), (13000, "13.0"), (12090, "12.9"),
                          (10020, "10.2")],
                         ids=["12.4", "11.8", "13.0", "12.9", "10.2"])
def test_cuda_version_from_int(value: int, version: str) -> None:
    assert cuda_version_from_int(value) == version


# --- profile -----------------------------------------------------------------------------------

def test_probe_this_machine_is_sane_and_fast() -> None:
    probe()  # the first call pays for imports (archspec); the budget is for a warm probe
    start = time.perf_counter()
    profile = probe()
    elapsed_ms = (time.perf_counter() - start) * 1000
    assert elapsed_ms < 300
    assert profile.os in {"linux", "macos", "windows"}
    assert profile.arch == normalize_arch(profile.arch)
    assert profile.probe_ms is not None and 0 <= profile.probe_ms < 300
    for part in (profile.libc, profile.cpu, profile.nvidia):
        assert "error" in part  # every probe reports success or why it failed
    assert profile.cpu["arch"] == profile.arch
    if profile.arch == "x86_64" and profile.cpu["error"] is None:
        assert profile.cpu["x86_64_level"] in {1, 2, 3, 4}
    if profile.nvidia["driver"] is None and profile.nvidia["cuda_driver"] is None:
        assert profile.nvidia["error"]
    if profile.os == "linux" and profile.libc["name"] == "glibc":
        assert parse_glibc_version(f"glibc {profile.libc['version']}") == profile.libc["version"]
    assert profile.os in profile.summary()


def _profile() -> MachineProfile:
    return MachineProfile(
        os="linux", arch="x86_64", libc={"name": "glibc", "version": "2.36", "error": None},
        cpu={"arch": "x86_64", "vendor": "GenuineIntel", "microarchitecture": "haswell",
             "x86_64_level": 3, "features": ["avx", "avx2"], "error": None},
        nvidia={"driver": "550.54.15", "cuda_driver": "12.4", "gpus": [], "error": None},
        probe_ms=12.5,
    )


def test_profile_round_trip_through_json() -> None:
    profile = _profile()
    again = MachineProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again == profile
    assert MachineProfile.from_dict(probe().to_dict()).arch == probe().arch


def test_from_dict_accepts_a_doctor_json_object() -> None:
    doctor = {"profile": _profile().to_dict(), "candidates": [], "selected": None,
              "library": None, "settings": {}}
    assert MachineProfile.from_dict(doctor) == _profile()


def test_from_dict_normalizes_arch_and_tolerates_missing_parts() -> None:
    profile = MachineProfile.from_dict({"os": "macos", "arch": "arm64"})
    assert (profile.arch, profile.libc, profile.cpu, profile.nvidia) == ("aarch64", {}, {}, {})


@pytest.mark.parametrize("data", [{"os": "linux"}, {"arch": "x86_64"}, {"profile": None}, [1, 2],
                                  "linux", None],
                         ids=["no-arch", "no-os", "null-profile", "list", "string", "null"])
def test_from_dict_rejects_non_profiles(data: object) -> None:
    with pytest.raises(ConfigError, match="not a machine profile"):
        MachineProfile.from_dict(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", [b"not json at all {", b"\xff\xfe\x00garbage", b"[1, 2, 3]",
                                     b'{"os": "linux"}'],
                         ids=["not-json", "binary", "json-list", "missing-arch"])
def test_from_file_on_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "target.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="profile"):
        MachineProfile.from_file(path)


def test_from_file_missing_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json"):
        MachineProfile.from_file(path)


def test_from_file_reads_a_doctor_json(tmp_path: Path) -> None:
    path = tmp_path / "doctor.json"
    path.write_text(json.dumps({"profile": _profile().to_dict()}), encoding="utf-8")
    assert MachineProfile.from_file(path) == _profile()


def test_profiles_from_before_the_gpu_parts_load_with_empty_parts() -> None:
    old = _profile().to_dict()
    for key in ("rocm", "vulkan", "apple"):
        old.pop(key)
    profile = MachineProfile.from_dict({"profile": old})
    assert (profile.rocm, profile.vulkan, profile.apple) == ({}, {}, {})
    assert profile.nvidia["cuda_driver"] == "12.4"


def test_new_gpu_parts_round_trip() -> None:
    profile = MachineProfile.from_dict({
        **_profile().to_dict(),
        "rocm": {"gpus": [{"name": None, "gfx": "gfx1100"}], "error": None, "source": "kfd"},
        "vulkan": {"devices": [{"name": "llvmpipe", "type": "cpu", "api_version": "1.3.274"}], "error": None},
        "apple": {"macos": "15.1", "chip": "Apple M3", "apple_silicon": True, "rosetta": False, "metal": True,
                  "error": None},
    })
    assert MachineProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    assert "gfx1100" in profile.summary()
