"""The qualification of the Linux aarch64 variants for real (issue 14.3): every ARM plugin of our
gcc cross build, npm's linux-arm64 and our zig glibc-2.28 build, on its own, under
``qemu-aarch64 -cpu MODEL`` through the C driver (llama_runtime/qualify/driver.c) cross-compiled
with aarch64-linux-gnu-gcc, on the qualification model quantized by the aarch64 build's own
quantizer (under qemu) into every type, teacher-forced against npm's x86 ``x64`` plugin.

And real failures under qemu, refused by name: a plugin whose kernel executes ``udf #0`` (SIGILL),
one whose logits are off by one token, a plugin under a model without its features, a truncated
libllama. The driver itself, compiled natively, gives the Python child's traces bit for bit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scripts import build_variants as bv
from _ggml_source import compile_badkernel
from llama_runtime.config import resolve
from llama_runtime.plugins.rank import cpu_plugins
from llama_runtime.qualify import check, cross
from llama_runtime.qualify.report import describe_failure, summary
from llama_runtime.qualify.run import TYPES, Store, ensure_models, run_plugin
from llama_runtime.qualify.where import Run

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(cross.missing_tools()) or shutil.which("gcc") is None,
                                 reason=f"apt-get install {' '.join(cross.missing_tools())} (scripts/dev does)")]
NPM = "linux-x86_64-cpu"
HWCAPS = Path(__file__).parents[1] / "data" / "cross" / "hwcaps.c"
MAKERS: dict[str, Callable[[Path], Path]] = {
    "linux-aarch64-cpu-omp": lambda out: bv.source_variant("aarch64-omp", out),
    "linux-aarch64-cpu": lambda out: bv.npm_variant("@node-llama-cpp/linux-arm64@3.22.1", out),
    "linux-aarch64-cpu-glibc228": lambda out: bv.source_variant("aarch64-glibc228", out),
}
# udf #0 (permanently undefined) where badkernel.c traps: on aarch64 __builtin_trap is brk (SIGTRAP);
# an instruction the CPU does not have is SIGILL, which is what a bad plugin really dies of
UDF = ('-D__builtin_trap()=__asm__ volatile("udf #0")',)


@pytest.fixture(scope="module")
def arm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("arm")


def arm_folder(arm_dir: Path, name: str) -> Path:
    return arm_dir / name if (arm_dir / name / "variant.json").is_file() else MAKERS[name](arm_dir)


def store() -> Store:
    return Store.in_cache(resolve().cache_dir)  # what build_variants and publish use: cached by hashes


@pytest.mark.parametrize("name", list(MAKERS))
def test_every_arm_plugin_is_qualified_under_its_floor_model(variants_dir: Path, arm_dir: Path, name: str) -> None:
    from scripts import qualify_variants

    folder = arm_folder(arm_dir, name)
    records, failures = qualify_variants.qualify_and_record([variants_dir / NPM, folder])
    rec = json.loads((folder / "variant.json").read_text())["qualification"]
    assert rec == records[name] and failures == [] and rec["status"] == "qualified", rec["failures"]
    assert rec["reference"] == f"{NPM}/libggml-cpu-x64.so (native, another variant)"
    assert rec["qemu"] and rec["qemu"].startswith("qemu-aarch64 version")
    meta = json.loads((folder / "variant.json").read_text())
    assert sorted(rec["plugins"]) == cpu_plugins(meta["plugins"], "linux") and len(rec["plugins"]) >= 6
    for file, entry in rec["plugins"].items():
        want = [r.where for r in cross.arm_runs(file)[0]]
        assert sorted(entry["runs"]) == sorted(want) and entry["status"] == "qualified", (file, entry)
        for where, run in entry["runs"].items():
            assert run["passed"] == list(TYPES) and run["failed"] == {} and run["setup"] is None, (file, where)
            assert run["score"] and run["score"] > 0  # ggml's own score under that model: it would pick it
    text = summary(rec)
    assert text.startswith(f"qualified on {check.host()['machine']}: {len(rec['plugins'])} of {len(rec['plugins'])}")


def test_the_driver_gives_the_python_childs_traces_bit_for_bit(variants_dir: Path, tmp_path: Path) -> None:
    """Natively, on the same x86 build and plugin: what the aarch64 driver reports is what the
    Python child would report, so the ARM verdicts are judged by the x86 rule unchanged."""
    st = store()
    _, build = check.read_build(variants_dir / NPM)
    models, problem = ensure_models(build, st, check._child)
    assert problem is None
    exe = cross.build_driver(tmp_path, "gcc")
    got = {}
    for who, child in (("python", check._child), ("driver", lambda j, p, t: cross.run_driver(exe, j, p, t))):
        answer = run_plugin(build, Run("libggml-cpu-haswell.so", "native", "test"), models, force=None,
                            place=f"{who} {time.time()}", store=Store(tmp_path / "runs"), run_child=child)
        assert answer.setup is None and answer.failed == {}, who
        got[who] = answer.traces
    assert sorted(got["driver"]) == sorted(TYPES) and len(got["driver"]["Q4_K_M"]["ids"]) == 32
    assert got["driver"] == got["python"]


@pytest.fixture(scope="module")
def planted(variants_dir: Path, arm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Our aarch64 build with two broken plugins in the places of real ones (each wrapping the real
    one, renamed): armv8.0_1 executes udf at its first decode, armv8.2_2 shifts the logits by one."""
    real = arm_folder(arm_dir, "linux-aarch64-cpu-omp")
    bad = shutil.copytree(real, tmp_path_factory.mktemp("planted") / "arm-bad")
    for tag, how in (("armv8.0_1", {"flags": UDF}), ("armv8.2_2", {"wrong": 1})):
        (bad / f"libggml-cpu-{tag}.so").rename(bad / f"libggml-cpu-real{tag}.so")
        compile_badkernel(bad / f"libggml-cpu-{tag}.so", f"libggml-cpu-real{tag}.so", cc="aarch64-linux-gnu-gcc", **how)
    data = json.loads((bad / "variant.json").read_text())
    data.pop("qualification", None)
    (bad / "variant.json").write_text(json.dumps(data))
    return {"folder": bad, "records": check.qualify_folders([variants_dir / NPM, bad], store())}


def test_a_plugin_that_dies_under_qemu_is_refused_by_name_type_and_signal(planted: dict[str, Any]) -> None:
    rec = planted["records"]["arm-bad"]
    assert rec["status"] == "refused"
    every = ", ".join(TYPES)
    assert (f"arm-bad: CPU plugin libggml-cpu-armv8.0_1.so (qemu-aarch64 -cpu cortex-a53) on the {every} models:"
            " crashed with SIGILL while decoding") in rec["failures"]
    wrong = [line for line in rec["failures"] if "armv8.2_2" in line]
    assert len(wrong) == len(TYPES) and all("(qemu-aarch64 -cpu neoverse-n1) on the " in line for line in wrong)
    assert all(" model: step 0: token " in line and "where the reference chose" in line for line in wrong)
    assert len(rec["failures"]) == 1 + len(TYPES)  # the real plugins beside them pass
    assert [f for f, e in rec["plugins"].items() if e["status"] == "qualified"] == [
        f"libggml-cpu-{t}.so" for t in ("armv8.2_1", "armv8.2_3", "armv8.6_1", "armv8.6_2")]


def test_publish_refuses_the_planted_variant(planted: dict[str, Any], variants_dir: Path) -> None:
    from llama_runtime.errors import QualificationError

    with pytest.raises(QualificationError) as err:  # from the store: no child runs again
        check.for_publish(resolve().cache_dir)([variants_dir / NPM, planted["folder"]])
    assert "armv8.0_1.so (qemu-aarch64 -cpu cortex-a53)" in str(err.value) and "SIGILL" in str(err.value)


def test_a_plugin_under_a_model_without_its_features_is_refused_when_loaded(arm_dir: Path) -> None:
    folder = arm_folder(arm_dir, "linux-aarch64-cpu-omp")
    st = store()
    _, build = check.read_build(folder)
    child = cross.arm_child(st.root)
    models, problem = ensure_models(build, st, child)
    assert problem is None
    run = Run("libggml-cpu-armv8.6_1.so", "qemu-aarch64 -cpu neoverse-n1", "test")  # no SVE, no i8mm
    answer = run_plugin(build, run, {"Q4_0": models["Q4_0"]}, force=None, place=f"test {time.time()}",
                        store=Store(arm_dir / "unused"), run_child=child)
    assert answer.score == 0 and answer.setup is not None
    assert describe_failure(answer.setup).startswith("failed when loaded: ggml refused the CPU plugin")


def test_a_truncated_library_is_refused_before_any_plugin_runs(arm_dir: Path, tmp_path: Path) -> None:
    real = arm_folder(arm_dir, "linux-aarch64-cpu-omp")
    bad = shutil.copytree(real, tmp_path / "arm-truncated")
    lib = bad / "libllama.so"
    lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 3])
    rec = check.qualify_folder(bad, Store(tmp_path / "store"))
    assert rec["status"] == "refused" and rec["plugins"] == {}
    (line,) = rec["failures"]
    # measured: qemu's loader maps the missing tail and the child dies of SIGBUS before its first line
    # (natively dlopen says "file too short"); either way the variant is refused before any plugin ran
    assert line in ("arm-truncated: its own llama_model_quantize crashed with SIGBUS while starting",
                    f"arm-truncated: its own llama_model_quantize failed while starting: cannot load: {lib}: file too short")


@pytest.mark.parametrize("model", list(cross.arm_data()["models"]))
def test_each_qemu_aarch64_model_reports_the_hwcaps_the_data_says(model: str, tmp_path: Path) -> None:
    exe = tmp_path / "hwcaps"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", str(HWCAPS), "-o", str(exe)], check=True)
    out = subprocess.run(["qemu-aarch64", "-L", str(cross.sysroot()), "-cpu", model, str(exe)],
                         capture_output=True, text=True, check=True, timeout=120)
    assert sorted(out.stdout.split()) == sorted(cross.arm_data()["models"][model])
