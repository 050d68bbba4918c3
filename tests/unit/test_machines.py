"""Golden machines: captured tool output of real machine types, built into a profile through the
same pure parsers the live probe uses, and run against one realistic manifest.

Each ``tests/data/machines/<name>.json`` holds the captures and ``expected``: the selected variant,
a key phrase of some candidates' reasons, and (optionally) a phrase of the warning and the
selection under other ``LLAMA_BACKEND`` values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llama_runtime.probe import MachineProfile
from llama_runtime.variants import Manifest, select

from golden_machines import load

DATA = Path(__file__).parents[1] / "data"
MACHINES = sorted((DATA / "machines").glob("*.json"))
V3 = ["avx", "avx2", "bmi2", "f16c", "fma"]
V4 = ["avx512bw", "avx512f", "avx512vl"]
ROCM_TARGETS = ["gfx1030", "gfx1100", "gfx1101", "gfx90a", "gfx942"]


def _variant(os: str, arch: str, backend: str, **requires: Any) -> dict[str, Any]:
    ext = {"macos": "dylib", "windows": "dll"}.get(os, "so")
    glibc = "2.28" if os == "linux" and "musl" not in requires else None
    return {"archive": "x.tar.gz", "sha256": "ab" * 32, "size": 1000, "os": os, "arch": arch,
            "backend": backend, "requires": {"glibc": glibc, **requires},
            "libraries": [f"libggml-base.{ext}", f"libggml.{ext}", f"libllama.{ext}"], "backend_dl": True}


VARIANTS = {
    "linux-x86_64-cpu": _variant("linux", "x86_64", "cpu", x86_64_level=1),
    # needing GLIBCXX_3.4.30 as npm's CUDA and Vulkan builds do (benchmarks/NOTES.md, glibc floors);
    # the v1 one none, like the zig builds (libc++ linked in)
    "linux-x86_64-cpu-v3": _variant("linux", "x86_64", "cpu", x86_64_level=3, cpu_features=V3, libstdcxx="3.4.30"),
    "linux-x86_64-cpu-v4": _variant("linux", "x86_64", "cpu", x86_64_level=4, cpu_features=V3 + V4,
                                    libstdcxx="3.4.30"),
    "linux-x86_64-cuda12": _variant("linux", "x86_64", "cuda", cuda_driver="12.4", compute_capability="5.0"),
    "linux-x86_64-cuda13": _variant("linux", "x86_64", "cuda", cuda_driver="13.0", compute_capability="7.5"),
    "linux-x86_64-rocm": _variant("linux", "x86_64", "rocm", gfx=ROCM_TARGETS),
    "linux-x86_64-vulkan": _variant("linux", "x86_64", "vulkan"),
    "linux-x86_64-musl": _variant("linux", "x86_64", "cpu", musl="1.2", x86_64_level=1),
    "linux-aarch64-cpu": _variant("linux", "aarch64", "cpu"),
    "macos-arm64-metal": _variant("macos", "aarch64", "metal", macos="13.3"),
    "macos-arm64-cpu": _variant("macos", "aarch64", "cpu", macos="11.0"),
    "windows-x86_64-cpu-v3": _variant("windows", "x86_64", "cpu", x86_64_level=3, cpu_features=V3),
}
for _name, _v in VARIANTS.items():
    _v["archive"] = f"{_name}.tar.gz"
MANIFEST = Manifest.parse({"schema": 1, "llama_cpp": "b6000", "variants": VARIANTS})


def test_enough_golden_machines() -> None:
    assert len(MACHINES) >= 15


@pytest.mark.parametrize("path", MACHINES, ids=[p.stem for p in MACHINES])
def test_golden_machine(path: Path) -> None:
    data, profile = load(path)
    expected = data["expected"]
    s = select(MANIFEST, profile, backend=data.get("backend", "auto"))
    assert s.selected == expected["selected"], s.why()
    for name, phrase in expected["reasons"].items():
        assert phrase in "; ".join(s.candidate(name).reasons), (name, s.candidate(name).reasons)
    warning = expected.get("warning")
    if warning:
        assert any(warning in w for w in s.warnings), s.warnings
    else:
        assert s.warnings == []
    for backend, name in (expected.get("backends") or {}).items():
        assert select(MANIFEST, profile, backend=backend).selected == name, backend


@pytest.mark.parametrize("path", MACHINES, ids=[p.stem for p in MACHINES])
def test_golden_profile_round_trips_through_doctor_json(path: Path) -> None:
    _, profile = load(path)
    again = MachineProfile.from_dict(json.loads(json.dumps({"profile": profile.to_dict()})))
    assert again == profile
    assert select(MANIFEST, again).selected == select(MANIFEST, profile).selected


def test_every_variant_is_selected_somewhere() -> None:
    chosen = {select(MANIFEST, load(p)[1], backend=json.loads(p.read_text())
                     .get("backend", "auto")).selected for p in MACHINES}
    assert set(VARIANTS) - chosen == set()


def test_an_old_profile_without_the_new_parts_still_selects() -> None:
    _, profile = load(DATA / "machines" / "apple-m3-macos15.json")
    old = profile.to_dict()
    for key in ("rocm", "vulkan", "apple"):
        del old[key]
    assert select(MANIFEST, MachineProfile.from_dict(old)).selected == "macos-arm64-metal"


def test_forced_vulkan_on_llvmpipe_is_kept_with_a_warning() -> None:
    _, profile = load(DATA / "machines" / "container-llvmpipe-only.json")
    s = select(MANIFEST, profile, backend="vulkan")
    assert s.selected == "linux-x86_64-vulkan"
    assert any("software renderer" in w for w in s.warnings)


def test_named_variant_never_warns_about_an_idle_gpu() -> None:
    _, profile = load(DATA / "machines" / "nvidia-470-pascal-gtx1080.json")
    s = select(MANIFEST, profile, variant="linux-x86_64-cpu")
    assert s.selected == "linux-x86_64-cpu" and s.warnings == []


@pytest.mark.parametrize(("gpu", "declared", "ok"), [
    ("7.0", "7.5", False), ("7.5", "7.5", True), ("8.6", ["7.5", "8.0", "9.0"], True),
    ("8.9", ["7.5", "8.0", "9.0"], True), ("7.0", ["7.5", "8.0"], False),
    ("10.0", ["7.5", "9.0"], True), ("6.1", ["6.0", "7.0"], True), ("12.0", "7.5", True),
], ids=["v100-vs-75", "equal", "86-via-sm80", "89-via-sm80", "below-list", "newer-via-ptx",
        "61-via-sm60", "blackwell"])
def test_compute_capability_rules(gpu: str, declared: Any, ok: bool) -> None:
    from llama_runtime.variants.select import cc_supported

    assert cc_supported(gpu, declared) is ok


def test_idle_gpu_warning_names_the_gpu_and_only_builds_that_saw_it() -> None:
    _, profile = load(DATA / "machines" / "nvidia-470-pascal-gtx1080.json")
    [warning] = select(MANIFEST, profile).warnings
    assert warning.startswith("an NVIDIA GPU (NVIDIA GeForce GTX 1080) is present but linux-x86_64-cuda13")
    assert "vulkan" not in warning and "rocm" not in warning  # no device: nothing to explain


def test_doctor_report_lists_every_gpu() -> None:
    from llama_runtime.diagnostics.report import format_doctor

    _, profile = load(DATA / "machines" / "laptop-intel-igpu-nvidia-dgpu.json")
    s = select(MANIFEST, profile)
    text = format_doctor({"profile": profile.to_dict(), "candidates": [c.to_dict() for c in s.candidates],
                          "selected": s.selected, "warnings": s.warnings, "library": None})
    gpus = [line for line in text.splitlines() if line.startswith("gpu:")]
    assert gpus[0] == ("gpu:      NVIDIA GeForce RTX 4070 Laptop GPU (CUDA, compute capability 8.9,"
                       " 8188 MiB)")
    assert any("Iris(R) Xe" in g and "integrated" in g for g in gpus)
    assert "rocm:" not in text  # no AMD GPU is normal, not a failed probe


BACKEND_REQUESTS = ["cpu", "cuda", "cuda12", "cuda13", "rocm", "vulkan", "metal"]


@pytest.mark.parametrize("path", MACHINES, ids=[p.stem for p in MACHINES])
def test_a_named_variant_is_honoured_at_least_as_much_as_its_backend(path: Path) -> None:
    """Whatever ``LLAMA_BACKEND=B`` builds on a machine, ``LLAMA_RUNTIME_VARIANT=<that variant>``
    builds too, with the same warning; what the backend refuses here, the name may not rescue
    beyond an absent device (a driver too old is a refusal for both)."""
    _, profile = load(path)
    for backend in BACKEND_REQUESTS:
        forced = select(MANIFEST, profile, backend=backend)
        if forced.selected is None:
            continue
        named = select(MANIFEST, profile, variant=forced.selected)
        assert named.selected == forced.selected, (backend, named.candidate(forced.selected).reasons)
        assert len(named.warnings) == len(forced.warnings), (backend, named.warnings, forced.warnings)
        if forced.warnings:  # the same fact, said with the setting that asked for it
            assert f"LLAMA_RUNTIME_VARIANT={forced.selected}" in named.warnings[0], named.warnings


def test_named_cuda_variant_on_a_driver_too_old_is_refused_like_the_backend() -> None:
    _, profile = load(DATA / "machines" / "nvidia-470-pascal-gtx1080.json")
    for s in (select(MANIFEST, profile, backend="cuda12"),
              select(MANIFEST, profile, variant="linux-x86_64-cuda12")):
        assert s.selected is None
        assert "needs a driver supporting CUDA 12.4" in "; ".join(s.candidate("linux-x86_64-cuda12").reasons)


def test_docker_build_stage_with_a_named_cuda_variant_builds_it_with_a_warning() -> None:
    _, profile = load(DATA / "machines" / "docker-build-stage-forced-cuda.json")
    s = select(MANIFEST, profile, variant="linux-x86_64-cuda13")
    assert s.selected == "linux-x86_64-cuda13"
    [warning] = s.warnings
    assert warning.startswith("linux-x86_64-cuda13: no NVIDIA driver detected")
    assert warning.endswith("(kept: LLAMA_RUNTIME_VARIANT=linux-x86_64-cuda13 asked for it)")


def test_named_vulkan_variant_on_llvmpipe_is_kept_like_the_backend() -> None:
    _, profile = load(DATA / "machines" / "container-llvmpipe-only.json")
    s = select(MANIFEST, profile, variant="linux-x86_64-vulkan")
    assert s.selected == "linux-x86_64-vulkan"
    assert any("software renderer" in w and "LLAMA_RUNTIME_VARIANT=linux-x86_64-vulkan" in w for w in s.warnings)
