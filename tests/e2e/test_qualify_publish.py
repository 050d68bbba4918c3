"""`publish` qualifies before it uploads (issue 15.2, issue 14.3): every variant this machine can
run loads and decodes the qualification model in every type; a broken one (a real folder whose
CPU plugins are missing, a real plugin that dies with SIGILL) is refused by name and nothing
reaches the hub. doctor shows the record of the selected variant.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from scripts import devrelease
from _ggml_source import compile_badkernel
from scripts.hubserver import HubServer
from llama_runtime.config import resolve
from llama_runtime.errors import PublishError, QualificationError
from llama_runtime.release.publish import publish
from release_fixtures import Release, run_source_cli

pytestmark = pytest.mark.slow
REPO = "llama-runtime/binaries"
NPM = "linux-x86_64-cpu"


def copy_variant(variants_dir: Path, name: str, src: Path, as_name: str | None = None) -> Path:
    folder = shutil.copytree(variants_dir / name, src / (as_name or name))
    data = json.loads((folder / "variant.json").read_text())
    data.pop("qualification", None)  # publish makes its own
    (folder / "variant.json").write_text(json.dumps(data))
    return folder


def set_plugins(folder: Path, plugins: list[str]) -> None:
    data = json.loads((folder / "variant.json").read_text())
    (folder / "variant.json").write_text(json.dumps({**data, "plugins": plugins}))


def run(src: Path, hub: HubServer, lock: Path, tag: str = "v1") -> dict[str, Any]:
    # the default cache: the qualification of the real variants is already there from build_variants
    return publish(src, repo=REPO, revision=tag, endpoint=hub.url, lock_path=lock,
                   qualify_cache=resolve().cache_dir)


def nothing_uploaded(hub: HubServer) -> bool:
    try:
        HfApi(endpoint=hub.url).list_repo_refs(REPO)
    except RepositoryNotFoundError:
        return True
    return False


def test_a_good_release_carries_its_qualification_and_republishes_as_a_no_op(
        variants_dir: Path, hub: HubServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    copy_variant(variants_dir, NPM, src)
    lock = run(src, hub, tmp_path / "lock.json")
    rec = lock["manifest"]["variants"][NPM]["qualification"]
    assert rec["status"] == "qualified" and rec["failures"] == []
    assert rec["plugins"]["libggml-cpu-x64.so"]["runs"]["native"]["passed"] == rec["types"]
    again = run(src, hub, tmp_path / "lock2.json")  # the same files: the same record, the same commit
    assert again["commit"] == lock["commit"] and again["manifest"] == lock["manifest"]


def test_a_folder_without_its_cpu_plugins_is_refused_and_nothing_is_uploaded(
        variants_dir: Path, hub: HubServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    copy_variant(variants_dir, NPM, src)
    broken = copy_variant(variants_dir, NPM, src, "linux-x86_64-cpu-broken")
    for plugin in broken.glob("libggml-cpu-*.so"):
        plugin.unlink()
    set_plugins(broken, [])  # variant.json lists what is there: only the libraries
    with pytest.raises(QualificationError) as info:
        run(src, hub, tmp_path / "lock.json")
    message = str(info.value)
    assert isinstance(info.value, PublishError)  # callers that catch PublishError still do
    assert message.startswith("1 variant(s) failed their qualification on ")
    assert "linux-x86_64-cpu-broken: its CPU backend (native) failed when loaded" in message
    assert "ggml found no usable backend" in message and "nothing was uploaded" in message
    assert f"{NPM}:" not in message  # the good variant beside it is not blamed
    assert nothing_uploaded(hub) and not (tmp_path / "lock.json").exists()


def test_a_plugin_that_dies_with_sigill_is_refused_through_the_cli(
        variants_dir: Path, hub: HubServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    bad = copy_variant(variants_dir, NPM, src, "linux-x86_64-cpu-bad")
    compile_badkernel(bad / "libggml-cpu-badkernel.so", "libggml-cpu-skylakex.so")
    set_plugins(bad, sorted([*json.loads((bad / "variant.json").read_text())["plugins"], "libggml-cpu-badkernel.so"]))
    tree = devrelease.stage_source(tmp_path / "tree")
    lock = tree / "llama_runtime" / "binaries.lock.json"
    proc = devrelease.run_cli(tree, "publish", str(src), "--repo", REPO, "--revision", "v1",
                              "--endpoint", hub.url, "--lock", str(lock))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert err.startswith("llama-runtime: error: 1 variant(s) failed their qualification")
    assert ("linux-x86_64-cpu-bad: CPU plugin libggml-cpu-badkernel.so (native) on the F16, BF16, Q8_0, Q6_K,"
            " Q5_K_M, Q4_K_M, Q4_1, Q4_0, IQ4_NL models: crashed with SIGILL while decoding") in err
    assert "Traceback" not in err and nothing_uploaded(hub) and not lock.exists()


def test_doctor_shows_the_selected_variants_qualification(release: Release, tmp_path: Path) -> None:
    env = release.env(tmp_path / "cache")
    proc = run_source_cli(release, env, "doctor", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    q = out["qualification"]
    assert q["variant"] == (out["library"] or {}).get("variant") == out["selected"]
    assert q["status"] == "qualified" and q["summary"].startswith("qualified on ")
    recorded = release.lock["manifest"]["variants"][q["variant"]]["qualification"]
    assert set(q["plugins"]) == set(recorded["plugins"])
    text = run_source_cli(release, env, "doctor").stdout
    assert f"qualified: {q['variant']}: qualified on " in text
