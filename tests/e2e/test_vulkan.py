"""Vulkan for real on a software device: the npm @node-llama-cpp/linux-x64-vulkan@3.22.1 build,
published next to the CPU one, loaded through the chain with LLAMA_BACKEND=vulkan, offloading
layers to Mesa's llvmpipe (Debian's mesa-vulkan-drivers) and generating the CPU's greedy text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import devrelease
from scripts.hubserver import HubServer

pytestmark = pytest.mark.slow
VULKAN = "@node-llama-cpp/linux-x64-vulkan@3.22.1"
CPU = "@node-llama-cpp/linux-x64@3.22.1"
RUN = """
import json, logging, sys, llama_runtime as l
lines = []
handler = logging.Handler(); handler.emit = lambda r: lines.append(r.getMessage())
logging.getLogger("llama_runtime.native").addHandler(handler)
logging.getLogger("llama_runtime.native").setLevel(logging.DEBUG)
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
lib = l.load()
llm = l.Llama(sys.argv[1], n_gpu_layers=99, n_threads=1)
if sys.argv[2:] == ["chat"]:
    text = llm.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12,
                    temperature=0)
else:
    text = llm.generate("Once upon a time", max_tokens=16, temperature=0)
print(json.dumps({"variant": lib.variant, "devices": lib.native.devices(), "text": text,
                  "offload": [x for x in lines if "offloaded" in x]}))
"""


@pytest.fixture(scope="module")
def vk_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    if not list(Path("/usr/share/vulkan/icd.d").glob("lvp_icd*.json")):
        pytest.fail("Mesa's lavapipe is not installed (apt-get install mesa-vulkan-drivers libvulkan1;"
                    " scripts/dev does it)")
    variants = devrelease.build_variant_dirs(devrelease.dev_cache() / "variants-vk", "--npm", VULKAN, "--npm", CPU)
    work = tmp_path_factory.mktemp("vk-release")
    with HubServer(work / "hub") as hub:
        tree = devrelease.stage_source(work / "src")
        devrelease.publish_release(tree, variants, hub.url)
        yield tree, hub.url


def _run(release: tuple[Path, str], cache: Path, model: Path, *args: str,
         **extra: str) -> subprocess.CompletedProcess[str]:
    tree, endpoint = release
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_", "GGML_"))}
    env.update(PYTHONPATH=str(tree), LLAMA_RUNTIME_ENDPOINT=endpoint, LLAMA_RUNTIME_CACHE=str(cache), **extra)
    return subprocess.run([sys.executable, "-c", RUN, str(model), *args], env=env, cwd=tree,
                          capture_output=True, text=True, timeout=300)


def test_vulkan_offloads_to_llvmpipe_and_matches_cpu(vk_release, tmp_path: Path, tiny_model: Path) -> None:
    cpu = _run(vk_release, tmp_path / "cache", tiny_model, LLAMA_BACKEND="cpu")
    vk = _run(vk_release, tmp_path / "cache", tiny_model, LLAMA_BACKEND="vulkan", GGML_VK_VISIBLE_DEVICES="0")
    assert cpu.returncode == 0 and vk.returncode == 0, cpu.stderr + vk.stderr
    cpu_out, vk_out = json.loads(cpu.stdout), json.loads(vk.stdout)
    assert vk_out["variant"] == "linux-x86_64-vulkan" and cpu_out["variant"] == "linux-x86_64-cpu"
    assert {"name": "Vulkan0", "type": "gpu"}.items() <= vk_out["devices"][0].items()
    assert "llvmpipe" in vk_out["devices"][0]["description"]
    assert any("offloaded 3/3 layers to GPU" in x for x in vk_out["offload"])
    assert vk_out["text"] and vk_out["text"] == cpu_out["text"]


def test_vulkan_chats_on_a_quantized_model(vk_release, tmp_path: Path, smollm2_gguf: Path) -> None:
    # SmolLM2 Q4_1 through Vulkan's quantized matmul shaders, every layer on llvmpipe (about
    # 10 s on a quiet machine here: lavapipe compiles its pipelines, then runs 1-2 tokens/s).
    # Greedy text is not compared with the CPU's: Vulkan's kernels round differently, and this
    # model meets a near-tie at its 6th token of "Once upon a time"-like continuations (see
    # tests/e2e/test_real_model.py); the chat answer must still be right.
    proc = _run(vk_release, tmp_path / "cache", smollm2_gguf, "chat", LLAMA_BACKEND="vulkan",
                GGML_VK_VISIBLE_DEVICES="0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["variant"] == "linux-x86_64-vulkan" and "llvmpipe" in out["devices"][0]["description"]
    assert any("offloaded 31/31 layers to GPU" in x for x in out["offload"]), out["offload"]
    assert "Paris" in out["text"], out["text"]


def test_software_device_is_skipped_without_opt_in(vk_release, tmp_path: Path, tiny_model: Path) -> None:
    proc = _run(vk_release, tmp_path / "cache", tiny_model, LLAMA_BACKEND="vulkan")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["variant"] == "linux-x86_64-cpu"  # fell back, with a warning
    assert "GGML_VK_VISIBLE_DEVICES=0" in proc.stderr and "WARNING" in proc.stderr


def test_auto_never_picks_a_software_vulkan_device(vk_release, tmp_path: Path, tiny_model: Path) -> None:
    proc = _run(vk_release, tmp_path / "cache", tiny_model, GGML_VK_VISIBLE_DEVICES="0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["variant"] == "linux-x86_64-cpu"
