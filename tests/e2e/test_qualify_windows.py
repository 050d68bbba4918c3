"""The qualification of a Windows x86-64 variant for real, under Wine (issue 14.3): every CPU plugin
of our MinGW build that this CPU runs, on its own, through the C driver (llama_runtime/qualify/
driver.c) cross-compiled with MinGW-w64, on models its own quantizer made under Wine, against the
Linux npm build's ``x64`` plugin; what this CPU lacks (the AMX plugin on this Zen 5) is "not
qualified here". And a plugin that executes ud2 when ggml initialises it, refused with the NTSTATUS
Wine reported for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import windows_build
from llama_runtime.plugins.rank import cpu_plugins, rank
from llama_runtime.qualify import check, wine
from llama_runtime.config import resolve
from llama_runtime.qualify.run import TYPES, Store

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(wine.missing_tools()),
                                                   reason=f"apt-get install {' '.join(wine.missing_tools())}")]
NPM = "linux-x86_64-cpu"
FLAVOR = os.environ.get("LLAMA_RUNTIME_TEST_WINDOWS_CPU", "windows-cpu-lite")  # as tests/_windows_fixture.py
BAD = """__declspec(dllexport) int ggml_backend_score(void) { return 1; }
__declspec(dllexport) void *ggml_backend_init(void) { __builtin_trap(); }  /* ud2 */
"""


@pytest.fixture(scope="module")
def win(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return windows_build.windows_variant(FLAVOR, tmp_path_factory.mktemp("win"))


def test_every_plugin_this_cpu_runs_is_qualified_under_wine(variants_dir: Path, win: Path) -> None:
    from scripts import qualify_variants

    records, failures = qualify_variants.qualify_and_record([variants_dir / NPM, win])
    rec = json.loads((win / "variant.json").read_text())["qualification"]
    assert rec == records[win.name] and failures == [] and rec["status"] == "qualified", rec["failures"]
    assert rec["reference"] == f"{NPM}/libggml-cpu-x64.so (native, another variant)" and rec["qemu"] == wine.version()
    meta = json.loads((win / "variant.json").read_text())
    ranking = {c.file: c for c in rank(meta["plugins"], check.host()["cpu"], "windows").candidates}
    assert sorted(rec["plugins"]) == cpu_plugins(meta["plugins"], "windows") and rec["plugins"]
    for file, entry in rec["plugins"].items():
        if not ranking[file].usable:  # the AMX plugin on a CPU without AMX: named, with the reason
            assert entry["status"] == "not qualified here" and entry["runs"] == {}
            assert "Wine runs it on this CPU only" in entry["why"]
            continue
        assert list(entry["runs"]) == ["wine"] and entry["status"] == "qualified", (file, entry)
        assert entry["runs"]["wine"]["passed"] == list(TYPES)


def test_a_plugin_that_dies_under_wine_is_refused_with_its_ntstatus(variants_dir: Path, win: Path,
                                                                    tmp_path: Path) -> None:
    bad = shutil.copytree(win, tmp_path / "win-bad")
    meta = json.loads((bad / "variant.json").read_text())
    meta.pop("qualification", None)
    (bad / "variant.json").write_text(json.dumps(meta))
    victim = next(f for f in cpu_plugins(meta["plugins"], "windows")
                  if rank([f], check.host()["cpu"], "windows").candidates[0].usable)
    (tmp_path / "bad.c").write_text(BAD)
    subprocess.run([wine.COMPILER, "-shared", "-O1", str(tmp_path / "bad.c"), "-o", str(bad / victim)], check=True)
    rec = check.qualify_folders([variants_dir / NPM, bad], Store.in_cache(resolve().cache_dir))[bad.name]
    assert rec["status"] == "refused"
    assert (f"win-bad: CPU plugin {victim} (wine) crashed with STATUS_ILLEGAL_INSTRUCTION (SIGILL) when loaded"
            in rec["failures"]), rec["failures"]
    assert len(rec["failures"]) == 1

