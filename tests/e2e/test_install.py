"""End to end: `pip install` of the real sdist into fresh virtual environments, against the
loopback hub, then real generation with the installed package."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from scripts import devrelease
from release_fixtures import Release, network_guard

pytestmark = pytest.mark.slow


def _run(python: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python.parent / "llama-runtime"), *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def installed(release: Release, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    work = tmp_path_factory.mktemp("installed")
    python = devrelease.make_venv(work / "venv")
    env = release.env(work / "cache")
    before = dict(release.hub.httpd.stats()["bytes_by_path"])
    proc = devrelease.pip_install(python, str(release.sdist), env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = release.hub.httpd.stats()["bytes_by_path"]
    fetched = {p: n - before.get(p, 0) for p, n in after.items() if n != before.get(p, 0)}
    return python, env, proc.stdout + proc.stderr + json.dumps(fetched)


def test_install_ships_one_verified_variant_and_generates(installed, release: Release, tiny_model: Path) -> None:
    python, env, log = installed
    selected = json.loads(_run(python, env, "doctor", "--json").stdout)["selected"]
    # the hub served exactly one archive: the selected one
    fetched = json.loads(log[log.rindex("{"):])
    archives = [p for p in fetched if p.endswith(".tar.gz")]
    assert archives == [f"/{devrelease.REPO}/resolve/{release.lock['commit']}/{release.archive(selected)}"]
    assert "llama-runtime: machine: linux/" in log and f"selected {selected}" in log
    out = _run(python, {**env, "LLAMA_RUNTIME_OFFLINE": "1"}, "generate", str(tiny_model),
               "Once upon a time", "-n", "12", "--temp", "0")
    assert out.returncode == 0, out.stderr
    again = _run(python, {**env, "LLAMA_RUNTIME_OFFLINE": "1"}, "generate", str(tiny_model),
                 "Once upon a time", "-n", "12", "--temp", "0")
    assert out.stdout.strip() and out.stdout == again.stdout  # greedy is deterministic


CHAT = """
import json, sys, llama_runtime
with llama_runtime.Llama(sys.argv[1], n_ctx=512) as llm:
    reply = llm.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=32,
                     temperature=0)
print(json.dumps({"reply": reply, "variant": llama_runtime.load().variant}))
"""


def test_installed_package_chats_with_a_real_quantized_model(installed, smollm2_gguf: Path,
                                                             tmp_path: Path) -> None:
    # the product as a user gets it: the installed wheel's own variant, offline, no sockets at all,
    # on a real Q4_1 model (the quantized kernels of the CPU plugin ggml picks on this CPU)
    python, env, _ = installed
    guarded = {**env, "LLAMA_RUNTIME_OFFLINE": "1",
               "PYTHONPATH": str(network_guard(tmp_path / "guard"))}
    proc = subprocess.run([str(python), "-c", CHAT, str(smollm2_gguf)], capture_output=True,
                          text=True, env=guarded, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Paris" in out["reply"], out
    selected = json.loads(_run(python, env, "doctor", "--json").stdout)["selected"]
    assert out["variant"] == selected
    cli = _run(python, guarded, "generate", str(smollm2_gguf), "The capital of France is", "-n", "8",
               "--temp", "0")
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "Paris" in cli.stdout.split(".")[0], cli.stdout


def test_wheel_is_platform_tagged_with_report(release: Release, tmp_path: Path) -> None:
    env = release.env(tmp_path / "cache")
    proc = subprocess.run([devrelease.sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                           "-w", str(tmp_path / "w"), str(release.sdist)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next((tmp_path / "w").glob("*.whl"))
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl")
    with zipfile.ZipFile(wheel) as zf:
        report = json.loads(zf.read("llama_runtime/_libs/selection.json"))
        names = set(zf.namelist())
    variant = release.lock["manifest"]["variants"][report["selected"]]
    assert {f"llama_runtime/_libs/{lib}" for lib in variant["libraries"]} <= names
    assert report["variant"]["sha256"] == variant["sha256"]
    assert report["source"]["kind"] == "hub" and report["source"]["revision"] == release.lock["commit"]
    assert {c["name"] for c in report["candidates"]} == set(release.lock["manifest"]["variants"])
    assert all(c["reasons"] for c in report["candidates"])


def test_doctor_reports_installed_library(installed) -> None:
    python, env, _ = installed
    result = json.loads(_run(python, env, "doctor", "--json").stdout)
    assert set(result) >= {"profile", "candidates", "selected", "library", "settings"}
    lib = result["library"]
    assert lib["source"] == "installed" and Path(lib["path"]).is_file()
    assert "_libs" in lib["path"] and len(lib["sha256"]) == 64
    assert "CPU :" in lib["system_info"]
    human = _run(python, env, "doctor")
    assert human.returncode == 0 and f"selected: {result['selected']}" in human.stdout


def test_skip_download_fetches_on_first_use_then_stays_offline(release: Release, tmp_path: Path,
                                                               tiny_model: Path) -> None:
    python = devrelease.make_venv(tmp_path / "venv")
    env = release.env(tmp_path / "cache", LLAMA_RUNTIME_SKIP_DOWNLOAD="1")
    proc = devrelease.pip_install(python, str(release.sdist), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = next((tmp_path / "venv" / "lib").glob("python*/site-packages/llama_runtime"))
    assert not list((site / "_libs").glob("*.so"))  # no binary shipped
    first = _run(python, env, "generate", str(tiny_model), "Hello", "-n", "8", "--temp", "0")
    assert first.returncode == 0, first.stderr
    cached = list((tmp_path / "cache" / "0.1.0").iterdir())
    assert [p.name for p in cached if not p.name.startswith(".")], cached
    requests = release.requests()
    second = _run(python, env, "generate", str(tiny_model), "Hello", "-n", "8", "--temp", "0")
    assert second.returncode == 0 and second.stdout == first.stdout
    assert release.requests() == requests  # the second run opened no connection to the hub
    strict = _run(python, {**env, "LLAMA_RUNTIME_STRICT": "1"}, "generate", str(tiny_model), "Hello", "-n", "8",
                  "--temp", "0")
    assert strict.returncode == 0 and "WARNING" not in strict.stderr  # a skipped binary is no fallback


def test_tampered_archive_fails_install_and_installs_nothing(release: Release, tmp_path: Path) -> None:
    python = devrelease.make_venv(tmp_path / "venv")
    assert release.hub.httpd is not None
    release.hub.httpd.add_faults([{"path_glob": "*.tar.gz", "method": "GET", "kind": "corrupt", "times": 5}])
    try:
        proc = devrelease.pip_install(python, str(release.sdist), release.env(tmp_path / "cache"))
    finally:
        release.hub.httpd.clear_faults()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "is not the file this release trusts" in out and "expected sha256" in out and "got      sha256" in out
    assert ".tar.gz" in out
    check = subprocess.run([str(python), "-m", "pip", "show", "llama-runtime"], capture_output=True,
                           cwd=tmp_path)
    assert check.returncode != 0  # nothing was installed
    cache = tmp_path / "cache" / "0.1.0"
    assert not [p for p in cache.glob("*") if not p.name.startswith(".")]


def test_bad_backend_fails_with_valid_values(release: Release, tmp_path: Path) -> None:
    python = devrelease.make_venv(tmp_path / "venv")
    proc = devrelease.pip_install(python, str(release.sdist),
                                  release.env(tmp_path / "cache", LLAMA_BACKEND="cuda99"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "LLAMA_BACKEND='cuda99' is not a known backend" in out
    assert "auto, cpu, cuda, cuda11, cuda12, cuda13, rocm, vulkan, metal" in out


def test_unreachable_hub_names_endpoint_and_ways_out(release: Release, tmp_path: Path) -> None:
    python = devrelease.make_venv(tmp_path / "venv")
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    proc = devrelease.pip_install(python, str(release.sdist),
                                  release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=dead))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert dead in out and "LLAMA_RUNTIME_MIRROR" in out and "LLAMA_RUNTIME_SKIP_DOWNLOAD=1" in out
