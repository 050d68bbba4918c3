"""The aarch64 side of the qualification without running anything (issue 14.3): which qemu-aarch64
model runs which ARM plugin, the data against the build's own list of plugins, the driver's job,
what is missing. The runs themselves: tests/test_qualify_arm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import cross_builds
from llama_runtime.qualify import check, cross
from llama_runtime.qualify.run import Store
from llama_runtime.qualify.targets import Target


def test_the_plugin_table_is_what_the_cross_build_compiles() -> None:
    """qemu_aarch64.json's features per plugin are the -march extensions cross_builds.py builds."""
    plugins = cross.arm_data()["plugins"]
    assert list(plugins) == list(cross_builds.ALL_ARM_CPU_VARIANTS)
    for tag, march in cross_builds.ALL_ARM_CPU_VARIANTS.items():
        assert set(plugins[tag]) == set(march.split("+")[1:]), tag


def test_each_plugin_runs_under_the_least_capable_model_that_has_its_features() -> None:
    models = cross.arm_data()["models"]
    seen = set()
    for tag, needs in cross.arm_data()["plugins"].items():
        runs, why = cross.arm_runs(f"libggml-cpu-{tag}.so")
        assert why is None and runs
        model = runs[0].where.removeprefix("qemu-aarch64 -cpu ")
        assert set(needs) <= set(models[model]), tag
        assert all(not set(needs) <= set(f) or len(f) >= len(models[model]) for f in models.values()), tag
        seen.add(model)
    assert seen == set(models)  # every measured model is some plugin's floor


def test_an_sve_plugin_also_runs_at_128_and_256_bits() -> None:
    runs, _ = cross.arm_runs("libggml-cpu-armv8.2_3.so")
    assert [r.where for r in runs] == ["qemu-aarch64 -cpu max,sme=off",
                                       "qemu-aarch64 -cpu max,sme=off,sve-default-vector-length=16",
                                       "qemu-aarch64 -cpu max,sme=off,sve-default-vector-length=32"]
    assert [r.prefix for r in runs][1] == ("qemu-aarch64", "-cpu", "max,sme=off,sve-default-vector-length=16")
    neon, _ = cross.arm_runs("libggml-cpu-armv8.2_2.so")
    assert [r.where for r in neon] == ["qemu-aarch64 -cpu neoverse-n1"]


def test_a_plugin_the_data_does_not_know_is_not_qualified_here_with_the_reason() -> None:
    runs, why = cross.arm_runs("libggml-cpu-armv9.5_1.so")
    assert runs == [] and why is not None and "armv9.5_1" in why and "qemu_aarch64.json" in why
    meta = {"plugins": ["libggml-base.so", "libggml-cpu-armv8.0_1.so", "libggml-cpu-armv9.5_1.so"]}
    runs_of, not_here = Target("aarch64").plan(meta, check.host()["cpu"], True, "v")
    assert sorted(runs_of) == ["libggml-cpu-armv8.0_1.so", "libggml-cpu-armv9.5_1.so"]
    assert list(not_here) == ["libggml-cpu-armv9.5_1.so"]


def test_the_driver_job_is_the_childs_job_in_lines() -> None:
    job = {"libraries": ["/v/libgomp.so.1", "/v/libllama.so"], "folder": "/v", "plugin": "libggml-cpu-armv8.0_1.so",
           "plugins": [], "backend_dir": None, "prompt": [1, 259], "n_gen": 32, "n_threads": 1,
           "force": {"Q4_0": [5, 6]}, "models": [["Q4_0", "/m/Q4 0.gguf"], ["F16", "/m/F16.gguf"]]}
    assert cross.job_text(job).splitlines() == [
        "lib /v/libgomp.so.1", "lib /v/libllama.so", "plugin /v/libggml-cpu-armv8.0_1.so", "prompt 1 259",
        "n_gen 32", "threads 1", "model Q4_0 /m/Q4 0.gguf", "model F16 /m/F16.gguf", "force Q4_0 5 6"]
    quant = {"libraries": ["/v/libllama.so"], "source": "/t/F32.gguf", "quantize": [["Q4_K_M", "/t/Q4_K_M.gguf"]]}
    assert cross.job_text(quant).splitlines() == ["lib /v/libllama.so", "source /t/F32.gguf",
                                                  "quantize Q4_K_M 15 /t/Q4_K_M.gguf"]


def test_missing_tools_name_the_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert cross.missing_tools()[:2] == ["qemu-user", "gcc-aarch64-linux-gnu"]


def test_no_qemu_leaves_an_aarch64_variant_not_qualified_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if check.host()["arch"] == "aarch64":
        pytest.skip("an aarch64 machine runs it natively")
    monkeypatch.setattr(cross, "missing_tools", lambda: [])  # the tools are not what this is about
    folder = tmp_path / "linux-aarch64-cpu-omp"
    folder.mkdir()
    (folder / "variant.json").write_text(json.dumps({"os": "linux", "arch": "aarch64", "requires": {}, "llama_cpp": "0.5.0",
                                                     "libraries": ["libllama.so"], "backend_dl": True}))
    rec = check.qualify_folder(folder, Store(tmp_path / "store"), qemu=False)
    assert rec["status"] == "not qualified here" and "--no-qemu" in rec["why"]
    assert not (tmp_path / "store").exists()  # nothing ran


def test_doctor_says_where_each_plugin_ran() -> None:
    from llama_runtime.qualify.report import summary

    record = {"status": "qualified", "machine": "AMD EPYC (x86-64-v4, linux)", "types": ["Q4_0"], "failures": [],
              "reference": "linux-x86_64-cpu/libggml-cpu-x64.so (native, another variant)",
              "plugins": {"libggml-cpu-armv8.0_1.so": {"status": "qualified", "runs": {"qemu-aarch64 -cpu cortex-a53": {}}},
                          "libggml-cpu-armv9.5_1.so": {"status": "not qualified here", "runs": {}, "why": "unknown"}}}
    text = summary(record)
    assert "1 of 2 CPU code(s)" in text and "; where: qemu-aarch64 -cpu cortex-a53;" in text
    assert text.endswith("not qualified here: libggml-cpu-armv9.5_1.so (unknown)")


# --------------------------------------------------------------------------- Windows, under Wine
def test_a_windows_job_has_every_path_as_wine_sees_it() -> None:
    from llama_runtime.qualify.wine import windows_job

    job = {"libraries": ["/v/llama.dll"], "folder": "/v", "plugin": "ggml-cpu-zen4.dll", "backend_dir": None,
           "models": [["Q4_0", "/m/Q4_0.gguf"]], "prompt": [1], "n_gen": 2, "n_threads": 1}
    lines = cross.job_text(windows_job(job)).splitlines()
    assert lines[:2] == ["lib Z:\\v\\llama.dll", "plugin Z:\\v\\ggml-cpu-zen4.dll"]
    assert "model Q4_0 Z:\\m\\Q4_0.gguf" in lines


def test_wine_runs_what_this_cpu_runs_and_names_what_it_lacks() -> None:
    from llama_runtime.probe.capture import profile_from_captures
    from llama_runtime.qualify.wine import WINE, wine_runs

    captures = Path(__file__).parents[1] / "data" / "x86" / "this-machine-zen5-kvm.json"
    cpu = profile_from_captures(json.loads(captures.read_text(encoding="utf-8"))).cpu
    runs, why = wine_runs("ggml-cpu-zen4.dll", cpu)
    assert [r.where for r in runs] == [WINE] and why is None
    runs, why = wine_runs("ggml-cpu-sapphirerapids.dll", cpu)
    assert runs == [] and why is not None and "amx" in why and "Wine runs it on this CPU only" in why


def test_a_crash_wine_reports_is_named_by_its_ntstatus() -> None:
    from llama_runtime.plugins.trial import parse_child

    out = parse_child('{"load": "ggml-cpu-zen4.dll"}\n{"ntstatus": 3221225501}\n', 3)
    assert out.crash == "STATUS_ILLEGAL_INSTRUCTION (SIGILL)" and out.stage == "load" and not out.ok


def test_which_variants_run_through_the_driver() -> None:
    from llama_runtime.qualify.targets import target_for

    assert target_for({"os": "linux", "arch": "aarch64"}, "linux", "x86_64") == Target("aarch64")
    assert target_for({"os": "windows", "arch": "x86_64"}, "linux", "x86_64") == Target("windows")
    assert target_for({"os": "linux", "arch": "x86_64"}, "linux", "x86_64") is None
    assert target_for({"os": "windows", "arch": "x86_64"}, "macos", "aarch64") is None


def test_a_windows_gpu_plugin_is_named_apart_from_the_cpu_ones() -> None:
    meta = {"os": "windows", "backend": "vulkan", "plugins": ["ggml-cpu-haswell.dll", "ggml-vulkan.dll"]}
    assert list(check._gpu(meta)) == ["ggml-vulkan.dll"]
