"""The qualification for real (issue 14.3): every CPU plugin of the real variants, each in its own
child, on the qualification model quantized by the variant's own llama_model_quantize into every
type, natively and under qemu-x86_64; and real broken plugins (tests/data/plugins/badkernel.c:
SIGILL at decode or at init, an off-by-one in the logits, logits tripled) refused by name.

What this machine cannot run (the AMX plugin on this AMD CPU) must be "not qualified here" with
its reason; on an AMX machine the same test expects it qualified instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from _ggml_source import compile_badkernel
from llama_runtime.config import resolve
from llama_runtime.plugins.rank import cpu_plugins, plugin_variant
from llama_runtime.qualify import check
from llama_runtime.qualify.run import TYPES, Store, ensure_models, run_plugin
from llama_runtime.qualify.where import Run, plugin_runs, qemu_data, qemu_path

pytestmark = pytest.mark.slow
NPM, OMP, V3 = "linux-x86_64-cpu", "linux-x86_64-cpu-omp", "linux-x86_64-cpu-v3"
needs_qemu = pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                                reason="qemu-x86_64 missing: apt-get install qemu-user (scripts/dev does)")


def record(variants_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((variants_dir / name / "variant.json").read_text())["qualification"]
    return data


def expected_runs(file: str) -> list[str]:
    runs, _ = plugin_runs(file, check.host()["cpu"], qemu=qemu_path() is not None)
    return [r.where for r in runs]


@pytest.mark.parametrize("name", [NPM, OMP, V3])
def test_build_variants_qualified_every_plugin_this_machine_can_run(variants_dir: Path, name: str) -> None:
    rec = record(variants_dir, name)
    assert rec["status"] == "qualified" and rec["failures"] == [], rec["failures"]
    meta = json.loads((variants_dir / name / "variant.json").read_text())
    codes = cpu_plugins(meta["plugins"], "linux") if meta["backend_dl"] else [name]
    assert sorted(rec["plugins"]) == sorted(codes)
    for code, entry in rec["plugins"].items():
        want = expected_runs(code) if code != name else ["native", *(["qemu-x86_64 -cpu Haswell"] if qemu_path() else [])]
        assert sorted(entry["runs"]) == sorted(want), code
        if not want:  # e.g. the AMX plugin on this AMD CPU: named, with the reason
            assert entry["status"] == "not qualified here" and plugin_variant(code, "linux") in ("sapphirerapids",)
            assert "qemu-x86_64 cannot emulate it" in entry["why"] and "lacks" in entry["why"]
            continue
        assert entry["status"] == "qualified", entry
        for where, run in entry["runs"].items():
            assert run["passed"] == list(TYPES) and run["failed"] == {} and run["setup"] is None, (code, where)
    x64 = check.X64
    assert rec["reference"] == (f"{name}/{x64} (native)" if x64 in codes else f"{NPM}/{x64} (native, another variant)")


def test_a_second_run_starts_no_child_and_gives_the_same_records(variants_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    children: list[Any] = []
    real = check._child
    monkeypatch.setattr(check, "_child", lambda *a: children.append(a) or real(*a))
    start = time.monotonic()
    folders = [variants_dir / n for n in (NPM, OMP, V3)]
    again = check.qualify_folders(folders, Store.in_cache(resolve().cache_dir))
    seconds = time.monotonic() - start
    assert children == [] and seconds < 10, seconds  # about 0.3 s here: file hashes and the store
    assert again == {n: record(variants_dir, n) for n in (NPM, OMP, V3)}


@pytest.fixture(scope="module")
def npm_models(variants_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, Path]]:
    store = Store(tmp_path_factory.mktemp("store"))
    _, build = check.read_build(variants_dir / NPM)
    models, problem = ensure_models(build, store, check._child)
    assert problem is None and sorted(models) == sorted(TYPES)
    return store, models


@needs_qemu
def test_qemu_gives_the_native_traces_bit_for_bit(variants_dir: Path, npm_models: tuple[Store, dict[str, Path]]) -> None:
    store, models = npm_models
    _, build = check.read_build(variants_dir / NPM)
    key = check.host()["key"]
    traces = {}
    for where in ("native", "qemu-x86_64 -cpu Haswell"):
        answer = run_plugin(build, Run("libggml-cpu-haswell.so", where, "test"), models, force=None,
                            place=f"{where}:{key}", store=store, run_child=check._child)
        assert answer.setup is None and answer.failed == {}
        traces[where] = answer.traces
    assert traces["native"] == traces["qemu-x86_64 -cpu Haswell"]
    assert len(traces["native"]["Q4_K_M"]["ids"]) == 32


def _variant_json(folder: Path, **changes: Any) -> None:
    data = json.loads((folder / "variant.json").read_text())
    data.pop("qualification", None)
    (folder / "variant.json").write_text(json.dumps({**data, **changes}))


BAD = {"libggml-cpu-badkernel.so": {}, "libggml-cpu-badinit.so": {"at_init": True},
       "libggml-cpu-wrongindex.so": {"wrong": 1}, "libggml-cpu-wrongscale.so": {"wrong": 2}}


@pytest.fixture(scope="module")
def planted(variants_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The omp build with four broken plugins beside its real ones, and npm's libraries without
    any CPU plugin; qualified with npm (the reference) in a fresh store, natively."""
    work = tmp_path_factory.mktemp("planted")
    bad = shutil.copytree(variants_dir / OMP, work / "omp-bad")
    for file, how in BAD.items():
        compile_badkernel(bad / file, "libggml-cpu-skylakex.so", **how)
    plugins = json.loads((bad / "variant.json").read_text())["plugins"]
    _variant_json(bad, plugins=sorted([*plugins, *BAD]))
    bare = (work / "npm-no-plugins")
    bare.mkdir()
    meta = json.loads((variants_dir / NPM / "variant.json").read_text())
    for lib in meta["libraries"]:
        shutil.copy2(variants_dir / NPM / lib, bare / lib)
    shutil.copy2(variants_dir / NPM / "variant.json", bare / "variant.json")
    _variant_json(bare, plugins=[])
    start = time.monotonic()
    out = check.qualify_folders([variants_dir / NPM, bad, bare], Store(work / "store"), qemu=False)
    return {"records": out, "seconds": time.monotonic() - start}


def test_planted_plugins_are_refused_by_name_type_and_signal(planted: dict[str, Any]) -> None:
    rec = planted["records"]["omp-bad"]
    assert rec["status"] == "refused"
    lines = rec["failures"]
    every = ", ".join(TYPES)
    assert f"omp-bad: CPU plugin libggml-cpu-badkernel.so (native) on the {every} models: crashed with SIGILL while decoding" in lines
    assert "omp-bad: CPU plugin libggml-cpu-badinit.so (native) crashed with SIGILL when loaded" in lines
    index = [line for line in lines if "wrongindex" in line]
    assert len(index) == len(TYPES)  # an off-by-one: every type, the first step, a sure token
    assert all(" model: step 0: token " in line and "where the reference chose" in line for line in index)
    scale = [line for line in lines if "wrongscale" in line]
    assert len(scale) == len(TYPES) and all("same token" in line and "apart" in line for line in scale)
    assert len(lines) == 2 + 2 * len(TYPES)  # and nothing about the real plugins beside them
    for real in ("libggml-cpu-haswell.so", "libggml-cpu-skylakex.so"):
        assert rec["plugins"][real]["status"] == "qualified"
    assert planted["records"][NPM]["status"] == "qualified"


def test_a_variant_without_its_cpu_plugins_is_refused(planted: dict[str, Any]) -> None:
    rec = planted["records"]["npm-no-plugins"]
    assert rec["status"] == "refused"
    (line,) = rec["failures"]
    assert line.startswith("npm-no-plugins: its CPU backend (native) failed when loaded")
    assert "ggml found no usable backend" in line


@needs_qemu
@pytest.mark.parametrize("model", sorted(qemu_data()["models"]))
def test_each_qemu_model_reports_the_cpuid_the_data_says(model: str) -> None:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from llama_runtime.probe.xsave import read_x86;"
            " print(json.dumps(sorted(read_x86('linux')['cpuid']['features'])))")
    proc = subprocess.run(["qemu-x86_64", "-cpu", model, sys.executable, "-c", code, str(Path(check.__file__).parents[2])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == qemu_data()["models"][model]["features"]
