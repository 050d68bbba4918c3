"""CUDA 12 beside CUDA 13: selection on the real variants' facts (the fatbin targets and PTX
toolkit that scripts/build_variants.py reads from the npm builds, kept in
``tests/data/cuda_variants.json``), for captured NVIDIA machines and for the real libcuda probe
run against the fake driver of ``tests/data/fakecuda``.

Each captured machine with a ``cuda_release`` key says what this release selects there, under
``LLAMA_BACKEND=auto`` and forced backends, which code its GPU runs, and why a variant is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llama_runtime.errors import NoCompatibleVariantError
from llama_runtime.probe import MachineProfile
from llama_runtime.probe.nvidia import read_nvidia
from llama_runtime.variants import Manifest, select
from llama_runtime.variants.cuda import gpu_fit
from test_machines import DATA, VARIANTS, load

REAL = json.loads((DATA / "cuda_variants.json").read_text(encoding="utf-8"))["variants"]
CASES = [p for p in sorted((DATA / "machines").glob("*.json"))
         if "cuda_release" in json.loads(p.read_text(encoding="utf-8"))]


def _manifest() -> Manifest:
    variants: dict[str, Any] = {n: {"archive": f"{n}.tar.gz", "sha256": "ab" * 32, "size": 1000, **v}
                                for n, v in REAL.items()}
    variants |= {n: VARIANTS[n] for n in ("linux-x86_64-cpu", "linux-x86_64-cpu-v3")}
    return Manifest.parse({"schema": 1, "llama_cpp": "0.5.0", "variants": variants})


MANIFEST = _manifest()


def test_enough_nvidia_machines() -> None:
    drivers = {load(p)[1].nvidia.get("driver") for p in CASES} - {None}
    assert len(CASES) >= 12 and len(drivers) >= 10


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_cuda_release_selection(path: Path) -> None:
    data, profile = load(path)
    expected = data["cuda_release"]
    for backend in ("auto", "cuda", "cuda12", "cuda13"):
        if backend in expected:
            s = select(MANIFEST, profile, backend=backend)
            assert s.selected == expected[backend], (backend, s.why())
    default = select(MANIFEST, profile, backend=data.get("backend", "auto"))
    if expected.get("runs"):
        assert expected["runs"] in "; ".join(default.candidate(default.selected or "").reasons)
    for name, phrase in (expected.get("refused") or {}).items():
        candidate = default.candidate(name)
        assert not candidate.compatible and phrase in "; ".join(candidate.reasons), candidate.reasons


def test_every_cuda_major_is_selected_on_some_captured_driver() -> None:
    chosen = {select(MANIFEST, load(p)[1]).selected for p in CASES}
    assert {"linux-x86_64-cuda12-sm86", "linux-x86_64-cuda13-sm120a",
            "linux-x86_64-cuda13-compute90", "linux-x86_64-cuda12"} <= chosen


def test_cuda12_forced_on_a_cuda11_driver_is_refused_naming_the_driver() -> None:
    _, profile = load(DATA / "machines" / "nvidia-470-pascal-gtx1080.json")
    s = select(MANIFEST, profile, backend="cuda12")
    with pytest.raises(NoCompatibleVariantError) as info:
        s.require()
    text = str(info.value)
    assert "LLAMA_BACKEND=cuda12" in text
    [line] = [x for x in text.splitlines() if x.startswith("  - linux-x86_64-cuda12") and "470" in x]
    assert "  - linux-x86_64-cuda12-sm86: refused as linux-x86_64-cuda12 is" in text
    assert line.startswith("  - linux-x86_64-cuda12: ")
    assert ("needs a driver supporting CUDA 12.0, driver 470.223.02 supports CUDA 11.4 (upgrade the"
            " NVIDIA driver to 525.60.13 or newer") in line
    assert not any(c.compatible and c.requested for c in s.candidates)  # never a silent CPU


@pytest.mark.parametrize(("cc", "targets", "driver", "ptx", "target"), [
    ("8.9", ["sm_86", "compute_80"], "12.0", "12.4", "sm_86"),
    ("8.0", ["sm_86", "compute_80"], "12.4", "12.4", "compute_80"),
    ("8.0", ["sm_86", "compute_80"], "12.2", "12.4", None),
    ("12.1", ["sm_120a", "compute_90"], "13.0", "13.1", None),
    ("12.0", ["sm_120a", "compute_90"], "13.0", "13.1", "sm_120a"),
    ("3.7", ["compute_50"], "12.4", "12.4", None),
    ("9.0", ["sm_86", "sm_89", "compute_75", "compute_80"], "13.1", "13.1", "compute_80"),
], ids=["ada-runs-sm86", "a100-jits-ptx", "ptx-too-new-for-driver", "sm120a-is-not-for-12.1",
        "sm120a-exact", "kepler-too-old", "newest-ptx-below-cc"])
def test_gpu_fit_follows_the_cuda_runtime(cc: str, targets: list[str], driver: str, ptx: str,
                                          target: str | None) -> None:
    assert gpu_fit(cc, targets, driver, ptx).target == target


def _with_nvidia(nvidia: dict[str, Any]) -> MachineProfile:
    _, base = load(DATA / "machines" / "nvidia-550-ampere-rtx3090.json")
    return MachineProfile.from_dict({**base.to_dict(), "nvidia": nvidia})


@pytest.mark.parametrize(("version", "cc", "selected"), [
    ("12020", "8.6", "linux-x86_64-cuda12-sm86"),
    ("12080", "7.5", "linux-x86_64-cuda12-compute75"),
    ("12030", "7.5", "linux-x86_64-cpu-v3"),
    ("13000", "8.9", "linux-x86_64-cuda13-sm89"),
    ("13000", "9.0", "linux-x86_64-cuda12-compute80"),
    ("13010", "9.0", "linux-x86_64-cuda13-compute90"),
    ("11080", "8.6", "linux-x86_64-cpu-v3"),
], ids=["r535-ampere", "r570-turing", "r545-turing-ptx-too-new", "r580-ada", "r580-hopper",
        "r590-hopper", "r520-cuda11"])
def test_selection_from_the_real_libcuda_probe(fakecuda: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                               version: str, cc: str, selected: str) -> None:
    monkeypatch.setenv("FAKECUDA_VERSION", version)
    monkeypatch.setenv("FAKECUDA_CC", cc)
    nvidia = read_nvidia(libcuda=fakecuda, use_smi=False)
    assert nvidia["source"] == "libcuda"
    assert select(MANIFEST, _with_nvidia(nvidia)).selected == selected


def test_a_libstdcxx_older_than_the_cuda_builds_need_refuses_them_by_name() -> None:
    """RHEL 9 (GCC 11's libstdc++, GLIBCXX up to 3.4.29) on an A10G: npm's CUDA builds need
    3.4.30 and would fail to load there, so they are refused saying so, never tried."""
    import dataclasses

    _, profile = load(DATA / "machines" / "nvidia-535-ampere-a10g.json")
    assert select(MANIFEST, profile).selected.startswith("linux-x86_64-cuda12")  # type: ignore[union-attr]
    libc = {**profile.libc, "libstdcxx": {"version": "3.4.29", "path": "/usr/lib64/libstdc++.so.6", "error": None}}
    rhel9 = dataclasses.replace(profile, libc=libc)
    s = select(MANIFEST, rhel9)
    assert s.selected == "linux-x86_64-cpu", s.why()  # the v1 build needs no GLIBCXX_3.4.30
    for name in REAL:
        assert "needs libstdc++ GLIBCXX_3.4.30, this machine has 3.4.29" in s.candidate(name).reasons, name
    [warning] = s.warnings  # the idle GPU is said, with the reason, never silent
    assert "NVIDIA A10G" in warning and "needs libstdc++ GLIBCXX_3.4.30" in warning, warning
