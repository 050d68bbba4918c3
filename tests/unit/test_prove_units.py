"""The pieces of the CPU plugin proof without a release: the child's report, the record, the proof
model, and loading plugins explicitly (with a real GPU plugin: the npm Vulkan build on lavapipe)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import devrelease
from llama_runtime.plugins import trial
from llama_runtime.plugins.prove import PluginChoice, gpu_plugins
from llama_runtime.plugins.trial import crash_name, parse_child
from llama_runtime.plugins.record import cpu_identity, cpu_key, read_proof, record_path, write_proof
from llama_runtime.probe.capture import profile_from_captures

X86 = Path(__file__).parents[1] / "data" / "x86"


def test_crash_names() -> None:
    assert crash_name(-signal.SIGILL) == "SIGILL" and crash_name(-signal.SIGSEGV) == "SIGSEGV"
    assert crash_name(0xC000001D) == "STATUS_ILLEGAL_INSTRUCTION (SIGILL)"
    assert crash_name(-1073741795) == "STATUS_ILLEGAL_INSTRUCTION (SIGILL)"  # the same, as a signed int
    assert crash_name(0) is None and crash_name(1) is None and crash_name(3) is None


def test_the_last_step_before_a_crash_names_the_plugin() -> None:
    stdout = "\n".join([json.dumps({"score": "a.so"}), json.dumps({"scored": "a.so", "value": 7}),
                        "plugin chatter on stdout", json.dumps({"load": "a.so"}), json.dumps({"run": "a.so"})])
    out = parse_child(stdout, -signal.SIGILL)
    assert (out.ok, out.stage, out.plugin, out.crash, out.scores) == (False, "run", "a.so", "SIGILL", {"a.so": 7})
    dlopen = parse_child(json.dumps({"score": "b.so"}), -signal.SIGSEGV)
    assert (dlopen.stage, dlopen.plugin, dlopen.crash) == ("score", "b.so", "SIGSEGV")


def test_a_reported_error_and_a_traceback_are_not_crashes() -> None:
    refused = parse_child(json.dumps({"error": "LibraryLoadError: x", "stage": "load", "plugin": "c.so"}), 3)
    assert (refused.ok, refused.crash, refused.stage, refused.plugin) == (False, None, "load", "c.so")
    broken = parse_child("", 1, "Traceback ...\nModuleNotFoundError: No module named 'llama_runtime'")
    assert broken.stage == "setup" and "No module named" in (broken.error or "")
    ok = parse_child(json.dumps({"ok": True, "plugin": "d.so", "ids": [1, 2]}), 0)
    assert ok.ok and ok.ids == [1, 2]
    assert not parse_child(json.dumps({"ok": True, "ids": []}), -signal.SIGABRT).ok  # died on the way out


def test_warning_names_plugin_and_signal() -> None:
    choice = PluginChoice(mode="explicit", cpu_plugin="libggml-cpu-zen4.so", ggml_pick="libggml-cpu-sapphirerapids.so",
                          source="child", record="/c/r.json",
                          failed={"libggml-cpu-sapphirerapids.so": "crashed with SIGILL while decoding a quantized model"})
    text = choice.warning("linux-x86_64-cpu")
    assert text is not None
    assert "libggml-cpu-sapphirerapids.so crashed with SIGILL" in text and "loading libggml-cpu-zen4.so" in text
    assert PluginChoice("default", "x.so", "x.so", "record").warning("v") is None


def _cpu(name: str) -> dict:
    return profile_from_captures(json.loads((X86 / f"{name}.json").read_text())).cpu


def test_cpu_identity_ignores_the_core_and_the_permission_but_not_the_cpu() -> None:
    cpu = _cpu("spr-xeon-amx-linux")
    other_core = json.loads(json.dumps(cpu))
    other_core["cpuid"]["leaves"]["1.0"][1] = "05020800"  # leaf 1 EBX: another core's APIC id
    other_core["os"]["xcomp_perm"] = "0x202e7"  # before ggml's ARCH_REQ_XCOMP_PERM
    assert cpu_key(cpu_identity(cpu, "linux")) == cpu_key(cpu_identity(other_core, "linux"))
    assert cpu_key(cpu_identity(cpu, "linux")) != cpu_key(cpu_identity(_cpu("spr-xeon-linux-5.15-no-amx-state"), "linux"))
    assert cpu_key(cpu_identity(cpu, "linux")) != cpu_key(cpu_identity(_cpu("this-machine-zen5-kvm"), "linux"))


def test_record_round_trip_and_refusals(tmp_path: Path) -> None:
    identity = cpu_identity(_cpu("this-machine-zen5-kvm"), "linux")
    expect = {"variant": "v", "library_sha256": "a" * 64, "archive_sha256": "b" * 64, "cpu": identity}
    path = record_path(tmp_path, "v", "a" * 64, cpu_key(identity))
    body = {**expect, "mode": "explicit", "chosen": "libggml-cpu-zen4.so", "scores": {}, "failed": {}}
    assert write_proof(path, body) is None
    assert read_proof(path, expect)[0] is not None
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
    record, why = read_proof(path, {**expect, "archive_sha256": "c" * 64})
    assert record is None and "another library or CPU" in (why or "")
    assert "another library or CPU" in (read_proof(path, {**expect, "cpu": {**identity, "xcr0": "0x7"}})[1] or "")
    path.write_text("{")
    record, why = read_proof(path, expect)
    assert record is None and "unreadable" in (why or "")
    assert read_proof(tmp_path / "missing.json", expect) == (None, None)


def test_an_unwritable_cache_is_said_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert "could not be written" in (write_proof(blocker / "0.1.0" / ".proofs" / "r.json", {"a": 1}) or "")


def test_gpu_plugins_follow_ggml_order(tmp_path: Path) -> None:
    files = ["libggml-base.so", "libggml-cpu-zen4.so", "libggml-vulkan.so", "libggml-cuda.so", "libllama.so"]
    assert gpu_plugins(files, tmp_path, "linux", {}) == [tmp_path / "libggml-cuda.so", tmp_path / "libggml-vulkan.so"]
    extra = gpu_plugins(files, tmp_path, "linux", {"GGML_BACKEND_PATH": "/opt/x/libggml-foo.so"})
    assert extra[-1] == Path("/opt/x/libggml-foo.so")
    assert gpu_plugins(["ggml-cuda.dll", "ggml-cpu-zen4.dll"], tmp_path, "windows", {}) == [tmp_path / "ggml-cuda.dll"]


_VK = """
import json, sys
from pathlib import Path
from typing import Any
from llama_runtime.native.binding import Native
from llama_runtime.plugins.prove import gpu_plugins
folder = Path(sys.argv[1])
files = [p.name for p in folder.iterdir()]
libs = [folder / n for n in json.loads((folder / "variant.json").read_text())["libraries"]]
n = Native.open(libs, cpu_plugin=folder / "libggml-cpu-haswell.so", extra_plugins=gpu_plugins(files, folder, "linux", {}))
with open("/proc/self/maps") as f:
    cpu = sorted({l.split("/")[-1].strip() for l in f if "libggml-cpu" in l})
print(json.dumps({"devices": n.devices(), "cpu": cpu, "features": n.cpu_features()}))
"""


@pytest.mark.slow  # the npm Vulkan variant from the dev cache
def test_explicit_cpu_plugin_keeps_the_gpu_plugins() -> None:
    """Loading a CPU plugin by path must not lose the GPU: the npm Vulkan build on Mesa's lavapipe."""
    folder = devrelease.dev_cache() / "variants-vk" / "linux-x86_64-vulkan"
    if not folder.is_dir() or not list(Path("/usr/share/vulkan/icd.d").glob("lvp_icd*.json")):
        pytest.skip("the Vulkan variant (tests/e2e/test_vulkan.py builds it) or lavapipe is missing")
    env = {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", _VK, str(folder)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cpu"] == ["libggml-cpu-haswell.so"]  # the one asked for, not ggml's pick (zen4 here)
    assert "AVX512" not in (out["features"] or {}) and (out["features"] or {}).get("AVX2") == "1"
    types = {d["name"]: d["type"] for d in out["devices"]}
    assert types.get("CPU") == "cpu" and any(n.startswith("Vulkan") for n in types), types


@pytest.mark.slow  # our v3 source build from the dev cache
def test_the_proof_model_is_what_the_script_makes(tmp_path: Path) -> None:
    """Reproducible: scripts/make_proof_model.py with llama.cpp's quantizer gives the committed bytes."""
    lib = devrelease.dev_cache() / "variants" / "linux-x86_64-cpu-v3" / "libllama.so"
    if not lib.is_file():
        pytest.skip("the source build is not in the dev cache (scripts/build_variants.py)")
    out = tmp_path / "proof.gguf"
    proc = subprocess.run([sys.executable, "-m", "scripts.make_proof_model", "--lib", str(lib),
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(trial.PROOF_MODEL.read_bytes()).hexdigest()
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(trial.PROOF_MODEL)).tensors}
    weights = {n: t for n, t in types.items() if n.startswith("blk.") and n.endswith(".weight") and "norm" not in n}
    assert set(weights.values()) == {"Q4_0"} and types["output.weight"] == "Q8_0"
    assert max(trial.PROMPT) < 288 and len(trial.PROMPT) > 1  # a batch of rows, ids inside the vocabulary
    assert trial.PROOF_MODEL.stat().st_size < 100_000


# --- the loop of test runs, with scripted children (the real ones run in tests/e2e/test_prove.py) ----

def _variant(plugins: list[str]) -> Any:
    from llama_runtime.variants.manifest import Variant

    return Variant.parse("v", {"archive": "v.tar.gz", "sha256": "ab" * 32, "size": 1, "os": "linux", "arch": "x86_64",
                               "backend": "cpu", "libraries": ["libllama.so"], "backend_dl": bool(plugins),
                               "plugins": plugins})


def _script(monkeypatch: pytest.MonkeyPatch, outcomes: list[trial.Outcome]) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []

    def fake(job: dict[str, Any]) -> trial.Outcome:
        jobs.append(job)
        return outcomes[len(jobs) - 1]

    monkeypatch.setattr(trial, "_run_child", fake)
    return jobs


SCORES = {"libggml-cpu-haswell.so": 64, "libggml-cpu-skylakex.so": 192}


def _decided(plugins: list[str], outcomes: list[trial.Outcome], monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list]:
    jobs = _script(monkeypatch, outcomes)
    cpu = _cpu("this-machine-zen5-kvm")
    v = _variant(plugins)
    out, facts = trial.run_proofs(v, Path("/v"), cpu, "linux")
    return trial.decide(v, out, facts, cpu, "linux"), jobs


def test_a_crash_while_decoding_moves_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    record, jobs = _decided(list(SCORES), [
        trial.Outcome(ok=False, stage="run", plugin="libggml-cpu-skylakex.so", crash="SIGILL", scores=SCORES),
        trial.Outcome(ok=True, stage="run", plugin="libggml-cpu-haswell.so", scores=SCORES, ids=[1])], monkeypatch)
    assert jobs[1]["skip"] == ["libggml-cpu-skylakex.so"] and jobs[1]["no_touch"] == []
    assert (record["mode"], record["chosen"], record["ggml_pick"]) == ("explicit", "libggml-cpu-haswell.so",
                                                                       "libggml-cpu-skylakex.so")
    assert record["failed"] == {"libggml-cpu-skylakex.so": "crashed with SIGILL while decoding a quantized model"}


def test_a_crash_in_the_scan_rules_out_ggmls_own_load(monkeypatch: pytest.MonkeyPatch) -> None:
    record, jobs = _decided(list(SCORES), [
        trial.Outcome(ok=False, stage="score", plugin="libggml-cpu-haswell.so", crash="SIGSEGV"),
        trial.Outcome(ok=True, stage="run", plugin="libggml-cpu-skylakex.so", scores={"libggml-cpu-skylakex.so": 192})],
        monkeypatch)
    assert jobs[1]["no_touch"] == ["libggml-cpu-haswell.so"]
    # skylakex is ggml's pick, but ggml's scan would dlopen haswell and die: load it by path
    assert (record["mode"], record["chosen"]) == ("explicit", "libggml-cpu-skylakex.so")


def test_a_crash_no_plugin_explains_refuses_the_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    record, jobs = _decided(list(SCORES), [trial.Outcome(ok=False, crash="SIGILL")], monkeypatch)
    assert len(jobs) == 1 and record["mode"] == "refused"
    assert record["failed"] == {"v": "crashed with SIGILL while starting"}
    builtin, _ = _decided([], [trial.Outcome(ok=False, stage="run", crash="SIGILL")], monkeypatch)
    assert builtin["mode"] == "refused" and "v" in builtin["failed"]


def test_a_broken_test_run_is_unproven_not_blamed(monkeypatch: pytest.MonkeyPatch) -> None:
    record, jobs = _decided(list(SCORES), [trial.Outcome(ok=False, stage="setup", error="OSError: no libllama")],
                            monkeypatch)
    assert len(jobs) == 1 and record["mode"] == "unproven" and record["failed"] == {}
    assert "no libllama" in record["error"]


def test_every_plugin_crashing_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    record, jobs = _decided(list(SCORES), [
        trial.Outcome(ok=False, stage="run", plugin="libggml-cpu-skylakex.so", crash="SIGILL", scores=SCORES),
        trial.Outcome(ok=False, stage="load", plugin="libggml-cpu-haswell.so", crash="SIGILL", scores=SCORES),
        trial.Outcome(ok=False, stage="choose", error="no CPU plugin left that scores above 0 here")], monkeypatch)
    assert len(jobs) == 3 and record["mode"] == "refused" and set(record["failed"]) == set(SCORES)


def test_a_read_only_cache_keeps_its_record_in_a_private_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("x")
    identity = cpu_identity(_cpu("this-machine-zen5-kvm"), "linux")
    expect = {"variant": "v", "library_sha256": "a" * 64, "archive_sha256": "ab" * 32, "cpu": identity}
    path = record_path(blocked, "v", "a" * 64, cpu_key(identity))
    from llama_runtime.plugins.prove import _read, _write

    assert _read(_variant(["libggml-cpu-zen4.so"]), path, expect) == (None, path)
    assert not list((tmp_path / "tmp").iterdir()), "reading made the private folder"
    body = {**expect, "mode": "default", "chosen": "libggml-cpu-zen4.so", "scores": {}, "failed": {}}
    written = _write(path, body)
    assert written != path and written.is_file() and (written.parent.parent.stat().st_mode & 0o077) == 0
    record, where = _read(_variant(["libggml-cpu-zen4.so"]), path, expect)
    assert record is not None and where == written
    # a record naming a plugin the variant does not ship is not trusted
    assert _read(_variant(["libggml-cpu-haswell.so"]), path, expect)[0] is None
