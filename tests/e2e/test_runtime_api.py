"""The proposal's native-library API, the ABI guard, cache maintenance, hub models and offline use,
each in a fresh process against the real loopback release."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from release_fixtures import Release, network_guard, run_source_cli, run_source_py

pytestmark = pytest.mark.slow



def _py(release: Release, env: dict[str, str], code: str) -> dict:
    proc = run_source_py(release, env, "import json, llama_runtime as l\n" + textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _guarded(release: Release, env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**env, "PYTHONPATH": f"{network_guard(tmp_path / 'guard')}:{release.tree}"}


def test_download_by_cpu_level_and_progress(release: Release, tmp_path: Path) -> None:
    env = release.env(tmp_path / "cache")
    out = _py(release, env, """
        seen = []
        v3 = l.download(backend="cpu", cpu="avx2", progress=lambda done, total: seen.append((done, total)))
        base = l.download(cpu=1)
        print(json.dumps({"v3": v3.name, "base": base.name, "calls": len(seen), "last": seen[-1]}))
    """)
    # the best variant for an AVX2 CPU: the OpenMP backend_dl build (priority over v3)
    assert out["v3"] == "linux-x86_64-cpu-omp" and out["base"] == "linux-x86_64-cpu"
    size = release.lock["manifest"]["variants"]["linux-x86_64-cpu-omp"]["size"]
    assert out["calls"] >= 1 and out["last"] == [size, size]


def test_download_by_name_and_version(release: Release, tmp_path: Path) -> None:
    env = release.env(tmp_path / "cache")
    out = _py(release, env, f"""
        a = l.download("linux-x86_64-cpu.tar.gz", version={release.lock['revision']!r})
        try:
            l.download("linux-x86_64-cpu", version="v9.9.9")
            err = None
        except ValueError as exc:
            err = str(exc)
        print(json.dumps({{"a": a.name, "err": err}}))
    """)
    assert out["a"] == "linux-x86_64-cpu"
    assert "v9.9.9" in out["err"] and release.lock["revision"] in out["err"]


def test_abi_guard_refuses_another_generation(release: Release, tmp_path: Path) -> None:
    folder = tmp_path / "other"
    shutil.copytree(release.variants / "linux-x86_64-cpu", folder)
    # a library naming a generation the binding was never checked against (v0.1.0 is the one
    # llama-cpp-python 0.3.35 vendors: its llama_model_params lacks load_mode and lazy_mode)
    fake = folder / "libllama.v0.1.0.so"
    shutil.copy2(folder / "libllama.v0.5.0.so", fake)
    env = release.env(tmp_path / "cache", LLAMA_RUNTIME_LIB=str(fake))
    proc = run_source_py(release, env, "import llama_runtime as l; l.load()")
    assert proc.returncode != 0
    assert "llama.cpp 0.1.0" in proc.stderr and "generations 0.4.0, 0.5.0" in proc.stderr
    assert "LLAMA_RUNTIME_ABI_CHECK=0" in proc.stderr
    out = _py(release, {**env, "LLAMA_RUNTIME_ABI_CHECK": "0"},
              "lib = l.load(); print(json.dumps({'source': lib.source}))")
    assert out["source"] == "explicit"


def test_cache_verify_and_prune(release: Release, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = release.env(cache)
    _py(release, env, "print(json.dumps(str(l.download_best())))")
    listed = run_source_cli(release, env, "cache", "list")
    assert listed.returncode == 0 and "0.1.0/linux-x86_64-cpu-omp (current)\tcomplete" in listed.stdout
    ok = run_source_cli(release, env, "cache", "verify")
    assert ok.returncode == 0 and "linux-x86_64-cpu-omp: ok" in ok.stdout
    lib = cache / "0.1.0" / "linux-x86_64-cpu-omp" / "libllama.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    bad = run_source_cli(release, env, "cache", "verify")
    assert bad.returncode == 1 and "libllama.so: sha256 differs" in bad.stdout
    (cache / "0.0.9" / "linux-x86_64-cpu").mkdir(parents=True)  # an older release's entry
    kept = run_source_cli(release, env, "cache", "prune", "--keep-current")
    assert kept.returncode == 0 and not (cache / "0.0.9").exists() and lib.exists()
    run_source_cli(release, env, "cache", "prune")
    assert not (cache / "0.1.0" / "linux-x86_64-cpu-omp").exists()


@pytest.mark.parametrize("model", ["tiny_model", "smollm2_gguf"], ids=["tiny-f32", "smollm2-q4_1"])
def test_model_from_hub_then_offline_without_sockets(release: Release, tmp_path: Path, model: str,
                                                     request: pytest.FixtureRequest) -> None:
    from huggingface_hub import HfApi

    path, repo = request.getfixturevalue(model), f"tests/{model.replace('_', '-')}"
    api = HfApi(endpoint=release.hub.url, token=False)
    api.create_repo(repo, exist_ok=True)
    api.upload_file(path_or_fileobj=str(path), path_in_repo="model.gguf", repo_id=repo)
    env = release.env(tmp_path / "cache", HF_HOME=str(tmp_path / "hf"))
    code = f"""
        llm = l.Llama.from_pretrained({repo!r}, "model.gguf", n_threads=1)
        print(json.dumps({{"text": llm.generate("The capital of France is", max_tokens=8,
                                                temperature=0)}}))
    """
    online = _py(release, env, code)
    assert online["text"]
    if model == "smollm2_gguf":  # a real model, downloaded from the hub, answers
        assert "Paris" in online["text"], online
    offline_env = _guarded(release, {**env, "LLAMA_RUNTIME_OFFLINE": "1"}, tmp_path)
    assert _py(release, offline_env, code) == online  # model and library from the caches, no socket
    cli = run_source_cli(release, offline_env, "generate", f"{repo}:model.gguf", "Hello", "-n", "8",
                         "--temp", "0")
    assert cli.returncode == 0, cli.stderr


def test_hf_hub_offline_is_honoured_with_an_empty_cache(release: Release, tmp_path: Path) -> None:
    env = _guarded(release, release.env(tmp_path / "cache", HF_HUB_OFFLINE="1"), tmp_path)
    proc = run_source_py(release, env, "import llama_runtime as l; l.load()")
    assert proc.returncode != 0
    assert "network guard" not in proc.stderr  # refused by us, before any connect
    assert "offline" in proc.stderr.lower() and "llama-runtime fetch" in proc.stderr


def test_corrupt_model_from_the_hub_is_refused_and_removed(release: Release, tmp_path: Path,
                                                           tiny_model: Path) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=release.hub.url, token=False)
    api.create_repo("tests/tiny-llama-corrupt", exist_ok=True)
    api.upload_file(path_or_fileobj=str(tiny_model), path_in_repo="tiny.gguf", repo_id="tests/tiny-llama-corrupt")
    env = release.env(tmp_path / "cache", HF_HOME=str(tmp_path / "hf"))
    assert release.hub.httpd is not None
    release.hub.httpd.add_faults([{"path_glob": "*tiny.gguf", "method": "GET", "kind": "corrupt", "times": 1}])
    try:
        proc = run_source_py(release, env, "import llama_runtime as l\n"
                             "l.Llama.from_pretrained('tests/tiny-llama-corrupt', 'tiny.gguf')")
    finally:
        release.hub.httpd.clear_faults()
    assert proc.returncode != 0 and "IntegrityError" in proc.stderr and "is corrupt" in proc.stderr
    assert not [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and p.stat().st_size > 100_000]
    out = _py(release, env, "llm = l.Llama.from_pretrained('tests/tiny-llama-corrupt', 'tiny.gguf', n_threads=1)\n"
              "print(json.dumps({'ok': bool(llm.generate('Hi', max_tokens=4, temperature=0))}))")
    assert out["ok"]  # the next try downloads good bytes
