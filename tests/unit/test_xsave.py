"""What the CPU reports (CPUID) and what the OS enables (XCR0, arch_prctl), and what selection and
the plugin ranking make of it.

Fixtures in tests/data/x86: this machine's real registers, and register values of machines we do
not have (each file says how it was made): a Sapphire Rapids Xeon with AMX permission, the same
CPU under a kernel that never enables tile state, a Skylake-SP whose OS enables no AVX-512 state,
Windows 10 on the Xeon, macOS's lazily enabled AVX-512, an OS without XSAVE.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llama_runtime.plugins.rank import rank
from llama_runtime.probe.capture import profile_from_captures
from llama_runtime.probe.cpu import read_cpu, x86_64_level
from llama_runtime.probe.xsave import os_state, parse_cpuid, read_x86, x86_facts
from llama_runtime.variants import select
from test_machines import MANIFEST

X86 = Path(__file__).parents[1] / "data" / "x86"
NPM_VARIANTS = ("alderlake", "cannonlake", "cascadelake", "cooperlake", "haswell", "icelake", "ivybridge",
                "piledriver", "sandybridge", "sapphirerapids", "skylakex", "sse42", "x64", "zen4")
NPM_PLUGINS = [f"libggml-cpu-{n}.so" for n in NPM_VARIANTS]


def plugin_file(os_name: str, variant: str) -> str:
    return f"ggml-cpu-{variant}.dll" if os_name == "windows" else f"libggml-cpu-{variant}.so"
AVX512 = ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"]


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((X86 / f"{name}.json").read_text(encoding="utf-8"))
    return data


# (fixture, states avx/avx512/amx enabled, CPUID features the OS disables, x86-64 level used,
#  the variant selection picks, the plugin ggml would pick, the best plugin that may run)
CASES = [
    ("this-machine-zen5-kvm", (True, True, False), [], 4, "linux-x86_64-cpu-v4", "zen4", "zen4"),
    ("spr-xeon-amx-linux", (True, True, True), [], 4, "linux-x86_64-cpu-v4", "sapphirerapids", "sapphirerapids"),
    ("spr-xeon-linux-5.15-no-amx-state", (True, True, False), ["amx_bf16", "amx_int8", "amx_tile"], 4,
     "linux-x86_64-cpu-v4", "sapphirerapids", "zen4"),
    ("skylakex-os-without-avx512-state", (True, False, False), sorted(AVX512), 3,
     "linux-x86_64-cpu-v3", "skylakex", "haswell"),
    ("windows10-spr-no-amx-state", (True, True, False), ["amx_bf16", "amx_int8", "amx_tile"], 4,
     "windows-x86_64-cpu-v3", "sapphirerapids", "zen4"),
    ("macos-intel-avx512-lazy", (True, True, False), [], 4, None, "skylakex", "skylakex"),
    ("no-osxsave", (False, False, False), sorted(["avx", "avx2", "fma", "f16c", *AVX512]), 2,
     "linux-x86_64-cpu", "skylakex", "sse42"),
]


@pytest.mark.parametrize(("name", "states", "disabled", "level", "variant", "pick", "best"), CASES,
                         ids=[c[0] for c in CASES])
def test_cpuid_and_os_state(name: str, states: tuple[bool, bool, bool], disabled: list[str], level: int,
                            variant: str | None, pick: str, best: str) -> None:
    data = fixture(name)
    profile = profile_from_captures(data)
    cpu = profile.cpu
    groups = cpu["os"]["groups"]
    assert (groups["avx"]["enabled"], groups["avx512"]["enabled"], groups["amx"]["enabled"]) == states, groups
    assert sorted(cpu["os"]["disabled"]) == disabled
    assert cpu["x86_64_level"] == level
    assert not set(disabled) & set(cpu["features"]), "a feature the OS disables reached selection"
    # neither choice relies on a disabled state: the variant...
    selection = select(MANIFEST, profile)
    assert selection.selected == variant, selection.why()
    # ...nor the plugin: ggml (CPUID only) would take `pick`, the ranking starts at `best`
    ranking = rank([plugin_file(profile.os, n) for n in NPM_VARIANTS], cpu, profile.os)
    assert ranking.ggml_pick == plugin_file(profile.os, pick)
    assert ranking.ranked[0] == plugin_file(profile.os, best)
    for file in ranking.ranked:
        assert not any("OS disables" in r for r in ranking.candidates[[c.file for c in ranking.candidates].index(file)].reasons)


def test_os_filter_is_what_changes_the_level() -> None:
    """CPUID alone says v4 on the Skylake-SP; only XCR0 says the OS cannot run AVX-512 there."""
    cpu = profile_from_captures(fixture("skylakex-os-without-avx512-state")).cpu
    assert x86_64_level(cpu["cpuid"]["features"]) == 4
    assert cpu["x86_64_level"] == 3
    why = cpu["os"]["groups"]["avx512"]["why"]
    assert "XCR0 lacks bit(s) 5, 6, 7" in why
    ranking = rank(NPM_PLUGINS, cpu, "linux")
    skx = next(c for c in ranking.candidates if c.file == "libggml-cpu-skylakex.so")
    assert not skx.usable and skx.score == 192  # ggml scores it (CPUID) but it would die here
    assert any("AVX-512 (opmask/ZMM) register state" in r for r in skx.reasons)


def test_amx_permission_words() -> None:
    spr = fixture("spr-xeon-amx-linux")
    leaves, xcr0 = spr["cpuid"], int(spr["xcr0"], 16)
    flags = parse_cpuid(leaves)["flags"]
    granted = os_state(flags, xcr0, {"supp": 0x602E7, "perm": 0x602E7}, "linux")["groups"]["amx"]
    grantable = os_state(flags, xcr0, {"supp": 0x602E7, "perm": 0x202E7}, "linux")["groups"]["amx"]
    refused = os_state(flags, xcr0, {"supp": 0x202E7, "perm": 0x202E7}, "linux")["groups"]["amx"]
    old = os_state(flags, 0x2E7, {"error": "ARCH_GET_XCOMP_SUPP: EINVAL (Invalid argument)"}, "linux")["groups"]["amx"]
    assert granted["enabled"] is True and "granted" in granted["why"]
    assert grantable["enabled"] is True and "grantable" in grantable["why"]
    assert refused["enabled"] is False and "lacks bit 18" in refused["why"]
    assert old["enabled"] is False and "XCR0 lacks bit(s) 17, 18" in old["why"]
    # Windows has no permission step: XCR0 decides
    assert os_state(flags, xcr0, None, "windows")["groups"]["amx"]["enabled"] is True


def test_unknown_xcr0_disables_nothing_and_arch_prctl_stands_in() -> None:
    flags = parse_cpuid(fixture("spr-xeon-amx-linux")["cpuid"])["flags"]
    unknown = os_state(flags, None, None, "linux")
    assert {g["enabled"] for g in unknown["groups"].values()} == {None} and unknown["disabled"] == []
    via_kernel = os_state(flags, None, {"supp": 0x2E7, "perm": 0x2E7}, "linux")
    assert via_kernel["xcr0"] == "0x2e7" and via_kernel["xcr0_source"].startswith("arch_prctl")
    assert via_kernel["groups"]["amx"]["enabled"] is False


def test_leaves_above_the_maximum_are_ignored() -> None:
    leaves = dict(fixture("spr-xeon-amx-linux")["cpuid"])
    assert "avx512_bf16" in parse_cpuid(leaves)["flags"]  # leaf 7.1
    leaves["7.0"] = ["00000000", *leaves["7.0"][1:]]  # max subleaf 0: 7.1 holds another leaf's data
    assert "avx512_bf16" not in parse_cpuid(leaves)["flags"]
    leaves["0.0"] = ["00000001", *leaves["0.0"][1:]]  # max basic leaf 1: no leaf 7 at all
    assert "avx2" not in parse_cpuid(leaves)["flags"] and "avx" in parse_cpuid(leaves)["flags"]


def test_facts_without_cpuid_say_why() -> None:
    facts = x86_facts(None, None, None, "linux", "unknown, because CPUID/XGETBV could not run (PermissionError: x)")
    assert facts["cpuid"]["features"] == [] and "PermissionError" in facts["cpuid"]["error"]
    assert facts["os"]["disabled"] == []


# --- the readers, on this machine --------------------------------------------------------------

_REFERENCE = r"""
#include <stdio.h>
#include <stdint.h>
#include <cpuid.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    unsigned a, b, c, d; uint32_t lo, hi; uint64_t supp = 0, perm = 0;
    __cpuid_count(7, 0, a, b, c, d);
    printf("{\"7.0\": [\"%08x\", \"%08x\", \"%08x\", \"%08x\"], ", a, b, c, d);
    __cpuid_count(1, 0, a, b, c, d);
    printf("\"1.0.ecx\": \"%08x\", ", c);
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    long rs = syscall(SYS_arch_prctl, 0x1021, &supp), rp = syscall(SYS_arch_prctl, 0x1022, &perm);
    printf("\"xcr0\": \"%#llx\", \"supp\": \"%#llx\", \"perm\": \"%#llx\", \"rc\": [%ld, %ld]}\n",
           ((unsigned long long) hi << 32) | lo, (unsigned long long) supp, (unsigned long long) perm, rs, rp);
    return 0;
}
"""

x86_linux = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                               reason="the machine-code readers are x86-64; the reference program is Linux C")


@x86_linux
def test_reader_matches_a_c_reference(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the reference program")
    src = tmp_path / "ref.c"
    src.write_text(_REFERENCE)
    subprocess.run([cc, "-O1", str(src), "-o", str(tmp_path / "ref")], check=True)
    ref = json.loads(subprocess.run([str(tmp_path / "ref")], capture_output=True, text=True, check=True).stdout)
    facts = read_x86("linux")
    assert facts["cpuid"]["error"] is None
    assert facts["cpuid"]["leaves"]["7.0"] == ref["7.0"]
    assert facts["cpuid"]["leaves"]["1.0"][2] == ref["1.0.ecx"]
    assert facts["os"]["xcr0"] == ref["xcr0"] and facts["os"]["xcr0_source"] == "xgetbv"
    assert ref["rc"] == [0, 0], "arch_prctl(ARCH_GET_XCOMP_*) should answer on Linux >= 5.16"
    assert (facts["os"]["xcomp_supp"], facts["os"]["xcomp_perm"]) == (ref["supp"], ref["perm"])


@x86_linux
def test_this_machine_capture_is_current() -> None:
    """The captured fixture is this kind of machine: same CPUID feature bits and XCR0."""
    data = fixture("this-machine-zen5-kvm")
    facts = read_x86("linux")
    if facts["cpuid"]["vendor"] != "AuthenticAMD" or facts["cpuid"]["leaves"]["1.0"][0] != data["cpuid"]["1.0"][0]:
        pytest.skip("not the machine the fixture was captured on")
    assert facts["cpuid"]["leaves"]["7.0"] == data["cpuid"]["7.0"]
    assert facts["os"]["xcr0"] == data["xcr0"]


@x86_linux
def test_refused_executable_memory_is_unknown_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied (execmem)")

    monkeypatch.setattr(mmap, "mmap", refuse)
    facts = read_x86("linux")
    assert facts["cpuid"]["error"].startswith("unknown, because CPUID/XGETBV could not run (PermissionError")
    # Linux's arch_prctl still tells the kernel's XCR0
    assert facts["os"]["xcr0_source"] == "arch_prctl ARCH_GET_XCOMP_SUPP"
    cpu = read_cpu(detail=False)
    assert cpu["features"] and cpu["x86_64_level"], "the /proc/cpuinfo flags still decide"


def test_import_reads_no_register() -> None:
    code = ("import sys, llama_runtime, llama_runtime.runtime.loader; "
            "print(sorted(m for m in sys.modules if m.endswith(('xsave', 'plugins.prove', 'plugins.rank'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
