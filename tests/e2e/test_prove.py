"""The CPU plugin's test run on first load, for real: a plugin that dies with SIGILL the way issue 14's
AMX kernel does, beside copies of a real variant's plugins, published to the loopback hub.

No real plugin crashes on this AMD machine, so tests/data/plugins/badkernel.c is compiled against
the pinned ggml headers: it scores above every real plugin (ggml would pick it) and hands out the
real registry of the plugin ggml picks here with graph_compute replaced by ``__builtin_trap()`` (ud2: SIGILL on the
first decode); a second build traps in ``ggml_backend_init``. Variants of the release:

* ``linux-x86_64-cpu-omp``: the real source build (its plugins; ``pick`` is the one ggml picks here:
  zen4 on an AMD Zen 4/5, skylakex on an AVX-512 Intel without AMX, sapphirerapids with AMX);
* ``...-omp-bad``: the same files plus both crashing plugins;
* ``...-omp-allbad``: the libraries with the init-crashing plugin only (no plugin can run).

Every load is a fresh process from the staged release tree; greedy ids come from SmolLM2 Q4_1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts import devrelease
from _ggml_source import compile_badkernel
from scripts.hubserver import HubServer

pytestmark = pytest.mark.slow
GOOD, BAD, ALLBAD = "linux-x86_64-cpu-omp", "linux-x86_64-cpu-omp-bad", "linux-x86_64-cpu-omp-allbad"
BAD_PLUGINS = ("libggml-cpu-badinit.so", "libggml-cpu-badkernel.so")
PROMPT = "The capital of France is"
RUN = r"""
import json, logging, subprocess, sys, time
children = []
_init = subprocess.Popen.__init__
def _spy(self, *args, **kwargs):
    cmd = args[0] if args else kwargs.get("args")
    if "llama_runtime.plugins.child" in " ".join(map(str, cmd)):
        children.append(cmd)
    _init(self, *args, **kwargs)
subprocess.Popen.__init__ = _spy
records = []
handler = logging.Handler(); handler.emit = lambda r: records.append([r.levelname, r.getMessage()])
logging.getLogger("llama_runtime").addHandler(handler)
logging.getLogger("llama_runtime").setLevel(logging.INFO)
import llama_runtime
out = {"children": 0}
try:
    t = time.perf_counter()
    lib = llama_runtime.load()
    out.update(ok=True, load_ms=(time.perf_counter() - t) * 1000, **lib.to_dict())
    if len(sys.argv) > 1:
        with llama_runtime.Llama(sys.argv[1], n_ctx=256, n_threads=2) as llm:
            out["ids"] = llm.generate_tokens(sys.argv[2], 16, temperature=0)
    with open("/proc/self/maps") as f:
        out["mapped"] = sorted({l.split("/")[-1].strip() for l in f if "libggml-cpu" in l})
except Exception as exc:
    out.update(ok=False, types=[c.__name__ for c in type(exc).__mro__], message=str(exc))
out["children"] = len(children)
out["log"] = [r for r in records if r[0] in ("WARNING", "ERROR", "INFO")]
print(json.dumps(out))
"""


def _variant_json(folder: Path, **changes: Any) -> None:
    path = folder / "variant.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, normal: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    real = devrelease.build_variant_dirs(devrelease.dev_cache() / "variants") / GOOD
    work = tmp_path_factory.mktemp("prove")
    variants = work / "variants"
    shutil.copytree(real, variants / GOOD)
    bad = shutil.copytree(real, variants / BAD)
    compile_badkernel(bad / BAD_PLUGINS[0], normal["mapped"][0], at_init=True)
    compile_badkernel(bad / BAD_PLUGINS[1], normal["mapped"][0])
    plugins = json.loads((real / "variant.json").read_text())["plugins"]
    _variant_json(bad, plugins=sorted([*plugins, *BAD_PLUGINS]), priority=40)
    allbad = variants / ALLBAD
    allbad.mkdir()
    for name in [*json.loads((real / "variant.json").read_text())["libraries"], "variant.json"]:
        shutil.copy2(real / name, allbad / name)
    shutil.copy2(bad / BAD_PLUGINS[0], allbad / BAD_PLUGINS[0])
    _variant_json(allbad, plugins=[BAD_PLUGINS[0]], priority=50)
    with HubServer(work / "hub") as hub:
        tree = devrelease.stage_source(work / "src")
        # the crashing plugins are the point here: publish's qualification would refuse them
        devrelease.publish_release(tree, variants, hub.url, qualify=False)
        yield tree, hub.url


@pytest.fixture(scope="module")
def model() -> Path:
    return devrelease.smollm2()


def run(release: tuple[Path, str], cache: Path, *args: str, **env: str) -> dict[str, Any]:
    tree, endpoint = release
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_", "GGML_"))}
    proc = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=600, cwd=tree,
                          env={**base, "PYTHONPATH": str(tree), "LLAMA_RUNTIME_ENDPOINT": endpoint,
                               "LLAMA_RUNTIME_CACHE": str(cache), **env})
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def normal(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The normal path: the real variant, loaded as given (LLAMA_RUNTIME_LIB: no proof, ggml's own pick)."""
    lib = devrelease.dev_cache() / "variants" / GOOD / "libllama.so"
    out = run((devrelease.ROOT, "http://127.0.0.1:9"), tmp_path_factory.mktemp("ref-cache"), str(model), PROMPT,
              LLAMA_RUNTIME_LIB=str(lib))
    assert out["ok"] and out["plugin"] is None and out["children"] == 0, out
    assert len(out["mapped"]) == 1, out["mapped"]  # ggml maps the one plugin it picks
    assert len(out["ids"]) == 16
    return out


@pytest.fixture(scope="module")
def pick(normal: dict[str, Any]) -> str:
    name: str = normal["mapped"][0]
    return name


@pytest.fixture(scope="module")
def reference_ids(normal: dict[str, Any]) -> list[int]:
    ids: list[int] = normal["ids"]
    return ids


def _records(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/.proofs/*.json"))


@pytest.fixture(scope="module")
def proven(release: tuple[Path, str], model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    cache = tmp_path_factory.mktemp("bad-cache")
    return cache, run(release, cache, str(model), PROMPT, LLAMA_RUNTIME_VARIANT=BAD)


def test_crashing_plugins_are_named_and_the_next_real_one_runs(proven: tuple[Path, dict[str, Any]],
                                                               reference_ids: list[int], pick: str) -> None:
    cache, out = proven
    assert out["ok"], out
    plugin = out["plugin"]
    assert plugin["mode"] == "explicit" and plugin["source"] == "child"
    assert plugin["cpu_plugin"] == pick
    assert plugin["failed"] == {"libggml-cpu-badinit.so": "crashed with SIGILL when initialised",
                                "libggml-cpu-badkernel.so": "crashed with SIGILL while decoding a quantized model"}
    assert out["children"] == 3  # badinit, badkernel, then the real pick ran the proof model
    (warning,) = [m for level, m in out["log"] if level == "WARNING"]
    assert BAD in warning and "SIGILL" in warning
    assert "libggml-cpu-badkernel.so" in warning and f"{pick} explicitly instead" in warning
    # only the proven plugin is in this process, and it computes what the normal path computes
    assert out["mapped"] == [pick]
    assert out["ids"] == reference_ids
    (record_path,) = _records(cache)
    record = json.loads(record_path.read_text())
    assert record["chosen"] == pick and record["mode"] == "explicit"
    assert record["ggml_pick"] in BAD_PLUGINS and record["scores"]["libggml-cpu-badkernel.so"] == 1 << 20
    assert record["library_sha256"] == out["sha256"] and len(record["ids"]) == 4


def test_the_record_is_reused_without_a_child(proven: tuple[Path, dict[str, Any]], release: tuple[Path, str],
                                              model: Path, reference_ids: list[int], pick: str) -> None:
    cache, _ = proven
    (record_path,) = _records(cache)
    before = record_path.stat().st_mtime_ns
    out = run(release, cache, str(model), PROMPT, LLAMA_RUNTIME_VARIANT=BAD)
    assert out["ok"] and out["children"] == 0, out
    assert out["plugin"]["source"] == "record" and out["plugin"]["cpu_plugin"] == pick
    assert any("SIGILL" in m for level, m in out["log"] if level == "WARNING")  # still a fallback, still said
    assert out["ids"] == reference_ids and out["mapped"] == [pick]
    assert record_path.stat().st_mtime_ns == before


def _tampered(proven: tuple[Path, dict[str, Any]], tmp_path: Path, change: Any) -> tuple[Path, Path]:
    cache = shutil.copytree(proven[0], tmp_path / "cache")
    (record_path,) = _records(cache)
    record = json.loads(record_path.read_text())
    text = change(record)
    record_path.write_text(text if isinstance(text, str) else json.dumps(record))
    return cache, record_path


TAMPER = {
    "another-cpu": lambda r: r["cpu"].update(signature="000806f8", model_name="Intel(R) Xeon(R) Platinum 8480+"),
    "another-library": lambda r: r.update(library_sha256="0" * 64),
    "corrupt-json": lambda r: '{"schema": 1, "mode": "explic',
    "wrong-types": lambda r: r.update(chosen=[r["chosen"]], failed="none"),
}


@pytest.mark.parametrize("how", list(TAMPER))
def test_a_record_that_does_not_match_is_ignored(how: str, proven: tuple[Path, dict[str, Any]],
                                                 release: tuple[Path, str], tmp_path: Path, pick: str) -> None:
    cache, record_path = _tampered(proven, tmp_path, TAMPER[how])
    out = run(release, cache, LLAMA_RUNTIME_VARIANT=BAD)
    assert out["ok"], out
    assert out["children"] == 3 and out["plugin"]["source"] == "child"  # proved again, the same way
    assert out["plugin"]["cpu_plugin"] == pick
    assert any("proving again" in m for level, m in out["log"] if level == "INFO")
    fresh = json.loads(record_path.read_text())  # rewritten for this CPU and library
    assert fresh["cpu"] == json.loads(_records(proven[0])[0].read_text())["cpu"]
    assert fresh["library_sha256"] == out["sha256"]


def test_strict_makes_the_crash_an_error(release: tuple[Path, str], tmp_path: Path) -> None:
    for children in (3, 0):  # the first load proves and records; the next one errors from the record
        out = run(release, tmp_path / "cache", LLAMA_RUNTIME_VARIANT=BAD, LLAMA_RUNTIME_STRICT="1")
        assert not out["ok"] and "LibraryLoadError" in out["types"], out
        assert "libggml-cpu-badkernel.so crashed with SIGILL" in out["message"]
        assert "LLAMA_RUNTIME_STRICT=1" in out["message"]
        assert out["children"] == children


def test_a_variant_no_plugin_can_run_is_refused_for_the_next(release: tuple[Path, str], tmp_path: Path) -> None:
    out = run(release, tmp_path / "cache", LLAMA_RUNTIME_VARIANT=ALLBAD)
    assert out["ok"], out
    assert out["variant"] != ALLBAD
    (attempt,) = out["attempts"]
    assert attempt.startswith(f"download {ALLBAD}: {ALLBAD} cannot run on this CPU")
    assert "libggml-cpu-badinit.so crashed with SIGILL when initialised" in attempt


def test_a_good_variant_loads_the_way_ggml_does(release: tuple[Path, str], model: Path, tmp_path: Path,
                                                reference_ids: list[int], pick: str) -> None:
    for source, children in (("child", 1), ("record", 0)):
        out = run(release, tmp_path / "cache", str(model), PROMPT, LLAMA_RUNTIME_VARIANT=GOOD)
        assert out["ok"] and out["children"] == children, out
        plugin = out["plugin"]
        assert (plugin["mode"], plugin["source"], plugin["failed"]) == ("default", source, {})
        assert plugin["cpu_plugin"] == plugin["ggml_pick"] == pick
        assert not [m for level, m in out["log"] if level == "WARNING"]
        assert out["ids"] == reference_ids


def test_doctor_shows_cpuid_os_state_and_the_proof(release: tuple[Path, str], tmp_path: Path, pick: str) -> None:
    tree, endpoint = release
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_"))}
    env.update(PYTHONPATH=str(tree), LLAMA_RUNTIME_ENDPOINT=endpoint, LLAMA_RUNTIME_CACHE=str(tmp_path / "cache"),
               LLAMA_RUNTIME_VARIANT=BAD)

    def doctor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llama_runtime", "doctor", *args], capture_output=True,
                              text=True, env=env, cwd=tree, timeout=300)

    run(release, tmp_path / "cache", LLAMA_RUNTIME_VARIANT=BAD)  # cached and proven
    text = doctor()
    assert text.returncode == 0, text.stderr
    assert "cpuid:    " in text.stdout and "avx512f" in text.stdout
    assert "os:       XCR0 0x" in text.stdout and "(xgetbv)" in text.stdout
    assert "ggml would pick libggml-cpu-bad" in text.stdout
    assert f"CPU plugin {pick}, loaded explicit (proof: record" in text.stdout
    assert "crashed in its test run: libggml-cpu-badinit.so crashed with SIGILL" in text.stdout
    js = json.loads(doctor("--json").stdout)
    cpu = js["profile"]["cpu"]
    assert cpu["cpuid"]["features"] and cpu["os"]["xcr0"].startswith("0x")
    assert set(cpu["os"]["groups"]) == {"avx", "avx512", "amx"}
    assert js["library"]["plugin"]["cpu_plugin"] == pick
    assert js["plugins"]["ggml_pick"] in BAD_PLUGINS
