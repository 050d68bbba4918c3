"""The qualification's pure parts: the model writer, the tolerance rule, where each plugin can run,
the data behind it, and the words of a refusal. (Real children: tests/e2e/test_qualify.py.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from llama_runtime.plugins.rank import ggml_cpu, needed_flags
from llama_runtime.probe.capture import profile_from_captures
from llama_runtime.probe.cpu import x86_64_level
from llama_runtime.qualify import rule
from llama_runtime.qualify.model import SHAPE, write_base_model
from llama_runtime.qualify.report import describe_failure, refusals, summary
from llama_runtime.qualify.rule import EPSILON, MIN_SURE, N_GEN, Trace, judge
from llama_runtime.qualify.where import builtin_runs, plugin_runs, qemu_data, runnable_here

X86 = Path(__file__).parents[1] / "data" / "x86"


def cpu_of(name: str) -> dict[str, Any]:
    data = json.loads((X86 / f"{name}.json").read_text(encoding="utf-8"))
    return profile_from_captures(data).cpu


# --------------------------------------------------------------------------- the model
def test_the_model_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    a = write_base_model(tmp_path / "a.gguf")
    b = write_base_model(tmp_path / "b.gguf")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert not list(tmp_path.glob("*.part"))
    other = write_base_model(tmp_path / "c.gguf", seed=15)
    assert other.read_bytes() != a.read_bytes()


def test_the_model_reads_back_as_written(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")  # only to check our writer against the reference reader
    reader = gguf.GGUFReader(str(write_base_model(tmp_path / "m.gguf")))
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    assert shapes["token_embd.weight"] == [SHAPE["n_embd"], SHAPE["n_vocab"]]
    assert shapes["blk.0.ffn_down.weight"] == [SHAPE["n_ff"], SHAPE["n_embd"]]
    # every matrix row a multiple of 256 (K-quants apply) and a multiple of 8 rows (repacking)
    assert all(s[0] % 256 == 0 and s[1] % 8 == 0 for s in shapes.values() if len(s) == 2)
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == SHAPE["n_vocab"] and bytes(tokens.parts[tokens.data[1]]) == b"<s>"
    assert int(fields["llama.embedding_length"].parts[-1][0]) == SHAPE["n_embd"]


# --------------------------------------------------------------------------- the rule
def trace(ids: list[int], margins: list[float], second: list[int] | None = None) -> Trace:
    return Trace(ids, second or [i + 1 for i in ids], margins)


REF = trace(list(range(10, 10 + N_GEN)), [2.0] * N_GEN)


def test_identical_text_passes() -> None:
    verdict = judge(REF, REF, "Q4_0")
    assert verdict.ok and verdict.sure == N_GEN and verdict.first_difference is None and not verdict.flips


def test_a_near_tie_may_flip_to_the_runner_up_only() -> None:
    margins = [2.0] * N_GEN
    margins[5] = EPSILON["Q4_0"] / 2
    ref = trace(REF.ids, margins)
    flipped = list(REF.ids)
    flipped[5] = ref.second[5]
    verdict = judge(ref, trace(flipped, margins), "Q4_0")
    assert verdict.ok and verdict.flips == [5] and verdict.first_difference == 5
    flipped[5] = 999  # neither the reference's token nor its runner-up
    bad = judge(ref, trace(flipped, margins), "Q4_0")
    assert not bad.ok and "step 5: token 999, neither the reference's 15 nor its runner-up 16" in bad.why


def test_a_three_way_near_tie_may_flip_to_a_third_token_the_candidate_ties_too() -> None:
    """Measured under qemu-aarch64 (rule.py): the reference 4 over 86 by 0.031, the plugin 20 over 86 by 0.036."""
    eps = EPSILON["Q6_K"]
    margins = [2.0] * N_GEN
    margins[17] = 0.031
    ref = trace(REF.ids, margins)
    got_ids, got_margins = list(REF.ids), list(margins)
    got_ids[17], got_margins[17] = 999, 0.036
    got = Trace(got_ids, [*ref.second[:17], ref.second[17], *ref.second[18:]], got_margins)
    verdict = judge(ref, got, "Q6_K")
    assert verdict.ok and verdict.flips == [17]
    far = Trace(got_ids, got.second, [*got_margins[:17], eps * 1.5, *got_margins[18:]])  # it is sure of 999
    bad = judge(ref, far, "Q6_K")
    assert not bad.ok and "nor within 0.5 of them in its own logits" in bad.why
    other = Trace(got_ids, [*ref.second[:17], 777, *ref.second[18:]], got_margins)  # ties with neither
    assert not judge(ref, other, "Q6_K").ok


def test_a_sure_step_may_not_change() -> None:
    got = list(REF.ids)
    got[7] = REF.second[7]
    verdict = judge(REF, trace(got, [2.0] * N_GEN), "Q8_0")
    assert not verdict.ok and verdict.first_difference == 7
    assert verdict.why.startswith("step 7: token 18 where the reference chose 17 with a margin of 2")


def test_the_margin_may_not_drift_even_when_the_token_stays() -> None:
    # a kernel that scales the logits keeps every argmax and moves every margin
    kind = "F16"
    got = trace(REF.ids, [2.0 + rule.DRIFT[kind] * 1.5] * N_GEN)
    verdict = judge(REF, got, kind)
    assert not verdict.ok and "step 0: same token 10" in verdict.why and "apart" in verdict.why
    assert judge(REF, trace(REF.ids, [2.0 + rule.DRIFT[kind] / 2] * N_GEN), kind).ok


def test_too_few_sure_steps_is_inconclusive() -> None:
    margins = [0.01] * (N_GEN - MIN_SURE + 1) + [2.0] * (MIN_SURE - 1)
    ref = trace(REF.ids, margins)
    verdict = judge(ref, ref, "Q4_K_M")
    assert not verdict.ok and verdict.why.startswith("inconclusive") and verdict.sure == MIN_SURE - 1


def test_a_shorter_run_fails() -> None:
    short = trace(REF.ids[:-1], [2.0] * (N_GEN - 1))
    assert not judge(REF, short, "Q4_0").ok


def test_the_tolerance_covers_every_qualified_type() -> None:
    from llama_runtime.qualify.run import TYPES

    assert set(TYPES) == set(EPSILON) == set(rule.DRIFT)
    assert {"Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_NL", "BF16", "F16"} == set(TYPES)


# --------------------------------------------------------------------------- where
def test_this_machine_runs_all_but_amx_and_qemu_runs_the_floors() -> None:
    cpu = cpu_of("this-machine-zen5-kvm")
    runs, why = plugin_runs("libggml-cpu-haswell.so", cpu, qemu=True)
    assert [r.where for r in runs] == ["native", "qemu-x86_64 -cpu Haswell"] and why is None
    assert runs[1].prefix == ("qemu-x86_64", "-cpu", "Haswell")
    zen4, _ = plugin_runs("libggml-cpu-zen4.so", cpu, qemu=True)
    assert [r.where for r in zen4] == ["native"]  # AVX-512: no qemu model
    amx, why = plugin_runs("libggml-cpu-sapphirerapids.so", cpu, qemu=True)
    assert amx == [] and why is not None and "amx_int8" in why and "qemu-x86_64 cannot emulate it" in why


def test_an_amx_machine_runs_the_amx_plugin_natively() -> None:
    runs, why = plugin_runs("libggml-cpu-sapphirerapids.so", cpu_of("spr-xeon-amx-linux"), qemu=True)
    assert [r.where for r in runs] == ["native"] and why is None
    # the same CPU whose kernel never enables the tile state must not run it
    off, why = plugin_runs("libggml-cpu-sapphirerapids.so", cpu_of("spr-xeon-linux-5.15-no-amx-state"), qemu=True)
    assert off == [] and why is not None and "OS disables" in why


def test_without_qemu_a_plugin_the_host_cannot_run_says_how_to_get_it() -> None:
    cpu = cpu_of("no-osxsave")  # an OS without XSAVE: no AVX at all
    runs, why = plugin_runs("libggml-cpu-haswell.so", cpu, qemu=False)
    assert runs == [] and why is not None and "apt-get install qemu-user" in why
    runs, why = plugin_runs("libggml-cpu-haswell.so", cpu, qemu=True)
    assert [r.where for r in runs] == ["qemu-x86_64 -cpu Haswell"] and why is None


def test_a_plugin_the_data_does_not_know_runs_natively_and_scores_itself() -> None:
    runs, why = plugin_runs("libggml-cpu-badkernel.so", cpu_of("this-machine-zen5-kvm"), qemu=True)
    assert [r.where for r in runs] == ["native"] and why is None


def test_a_build_without_plugins_runs_at_its_level() -> None:
    cpu = cpu_of("this-machine-zen5-kvm")
    runs, _ = builtin_runs({"x86_64_level": 3, "cpu_features": ["avx2", "fma"]}, cpu, qemu=True)
    assert [r.where for r in runs] == ["native", "qemu-x86_64 -cpu Haswell"] and runs[0].plugin is None
    v4, why = builtin_runs({"x86_64_level": 4, "cpu_features": ["avx512f"]}, cpu_of("no-osxsave"), qemu=True)
    assert v4 == [] and why is not None and "x86-64-v4" in why


def test_what_cannot_run_here_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_runtime.qualify import cross

    arm = {"os": "linux", "arch": "aarch64", "requires": {"glibc": "2.36"}, "llama_cpp": "0.5.0"}
    monkeypatch.setattr(cross, "missing_tools", lambda: [])  # its own test: tests/test_qualify_cross_units.py
    assert runnable_here(arm, "linux", "x86_64", "2.31") is None  # the cross sysroot's glibc, not the host's
    monkeypatch.setattr(cross, "missing_tools", lambda: ["qemu-user", "gcc-aarch64-linux-gnu"])
    assert str(runnable_here(arm, "linux", "x86_64", "2.36")).endswith(
        "under qemu-aarch64 with the cross-compiled driver needs apt-get install qemu-user gcc-aarch64-linux-gnu")
    assert "Linux x86-64 only" in str(runnable_here(arm, "macos", "x86_64", None))
    monkeypatch.setattr(cross, "missing_tools", lambda: [])
    old = str(runnable_here({**arm, "llama_cpp": "0.4.0"}, "linux", "x86_64", "2.36"))
    assert old.endswith("build of llama.cpp 0.4.0: the driver that runs it under qemu-aarch64 is compiled against"
                        " the 0.5.0 headers")
    mac = {"os": "macos", "arch": "aarch64", "requires": {}}
    assert "macos/aarch64 build" in str(runnable_here(mac, "linux", "x86_64", "2.36"))
    new = {"os": "linux", "arch": "x86_64", "requires": {"glibc": "2.39"}}
    assert runnable_here(new, "linux", "x86_64", "2.36") == "needs glibc 2.39, this machine has 2.36"
    assert runnable_here({**new, "requires": {"glibc": "2.35"}}, "linux", "x86_64", "2.36") is None


# --------------------------------------------------------------------------- the data
def test_each_floor_model_has_what_its_plugin_needs_and_nothing_the_next_needs() -> None:
    data = qemu_data()
    order = list(ggml_cpu()["x86"]["variants"])
    for variant, model in data["floor"]["plugins"].items():
        have = set(data["models"][model]["features"])
        need = set(needed_flags(variant) or ())
        assert need <= have, (variant, model, need - have)
        # the floor is tight: the next plugin up needs something this model lacks
        nxt = order[order.index(variant) + 1]
        assert set(needed_flags(nxt) or ()) - have, (variant, model, nxt)
    for level, model in data["floor"]["levels"].items():
        assert x86_64_level(data["models"][model]["features"]) == int(level) == data["models"][model]["level"]


def test_no_floor_for_what_qemu_cannot_execute() -> None:
    tcg = {f for m in qemu_data()["models"].values() for f in m["features"]}
    for variant in ggml_cpu()["x86"]["variants"]:
        need = set(needed_flags(variant) or ())
        assert (variant in qemu_data()["floor"]["plugins"]) == (need <= tcg), variant


# --------------------------------------------------------------------------- the words
def test_refusal_lines_name_the_variant_plugin_place_types_and_signal() -> None:
    crash = describe_failure({"crash": "SIGILL", "stage": "run", "type": "Q4_0"})
    plugins = {"libggml-cpu-bad.so": {"runs": {"native": {"setup": None, "failed": {"Q4_0": crash, "Q8_0": crash}}}},
               "libggml-cpu-init.so": {"runs": {"native": {"setup": describe_failure({"crash": "SIGILL", "stage": "load"})}}},
               "v": {"runs": {"native": {"setup": None, "failed": {"F16": "step 3: token 5 where ..."}}}}}
    lines = refusals("v", plugins)
    assert lines == ["v: CPU plugin libggml-cpu-bad.so (native) on the Q4_0, Q8_0 models: crashed with SIGILL while decoding",
                     "v: CPU plugin libggml-cpu-init.so (native) crashed with SIGILL when loaded",
                     "v: its CPU backend (native) on the F16 model: step 3: token 5 where ..."]
    assert describe_failure({"error": "OSError: no such file", "stage": "setup"}) == \
        "failed while starting: OSError: no such file"


def test_summary_for_doctor() -> None:
    assert "not qualified" in summary(None)
    record = {"status": "qualified", "machine": "AMD EPYC (x86-64-v4, linux)", "types": ["F16", "Q4_0"],
              "reference": "v/libggml-cpu-x64.so (native)", "failures": [],
              "plugins": {"a.so": {"status": "qualified"}, "b.so": {"status": "not qualified here", "why": "needs AMX"}}}
    text = summary(record)
    assert text.startswith("qualified on AMD EPYC (x86-64-v4, linux): 1 of 2 CPU code(s) ran every type (F16, Q4_0)")
    assert "not qualified here: b.so (needs AMX)" in text


def test_publish_keeps_the_build_record_of_a_variant_it_cannot_run(tmp_path: Path) -> None:
    from llama_runtime.qualify.check import for_publish

    folder = tmp_path / "src" / "macos-arm64-metal"
    folder.mkdir(parents=True)
    built = {"status": "qualified", "machine": "Apple M2 (macos)", "plugins": {"x.so": {"status": "qualified"}},
             "failures": []}
    (folder / "variant.json").write_text(json.dumps({"os": "macos", "arch": "aarch64", "backend": "metal",
                                                     "requires": {}, "libraries": ["libllama.dylib"],
                                                     "qualification": built}))
    bare = tmp_path / "src" / "windows-x86_64-cpu"
    bare.mkdir()
    (bare / "variant.json").write_text(json.dumps({"os": "windows", "arch": "x86_64", "backend": "cpu",
                                                   "requires": {}, "libraries": ["llama.dll"]}))
    records = for_publish(tmp_path / "cache")([folder, bare])  # nothing here runs them: no child starts
    kept = records["macos-arm64-metal"]
    assert {k: kept[k] for k in built} == built and kept["publish_machine"].startswith("not qualified here: a macos")
    assert records["windows-x86_64-cpu"]["status"] == "not qualified here"
    assert "windows/x86_64 build" in records["windows-x86_64-cpu"]["why"]
