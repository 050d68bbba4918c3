"""The Windows variants, their archives unpacked by llama-runtime, the Linux build to compare
them with, and the models, for tests/e2e/test_windows_build.py.

Built once per session from the build cache (scripts/windows_build.py, build_variants.py);
the first build on a fresh machine is the slow part (see benchmarks/NOTES.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts import build_variants as bv
from scripts import devrelease
from scripts import winerun
from scripts import windows_build
from scripts.tiny_model import write_tiny_llama

try:
    from ._native_fixture import NativeLibs, build_oracle
except ImportError:
    from _native_fixture import NativeLibs, build_oracle

from llama_runtime.release.pack import pack_variant
from llama_runtime.fetch.cache import install, lookup
from llama_runtime.release.publish import load_variant
from llama_runtime.variants import Variant

# The development flavors; LLAMA_RUNTIME_TEST_WINDOWS_CPU=windows-cpu runs the release build.
CPU_FLAVOR = os.environ.get("LLAMA_RUNTIME_TEST_WINDOWS_CPU", "windows-cpu-lite")
VULKAN_FLAVOR = os.environ.get("LLAMA_RUNTIME_TEST_WINDOWS_VULKAN", "windows-vulkan-lite")
VULKAN_NPM = "@node-llama-cpp/linux-x64-vulkan@3.22.1"
LINUX_FLAVOR = "omp-lite"  # linux-x86_64-cpu-omp: the same source, the same three plugins
PROMPT = "the llama runtime is a small model of the world"
N_GEN = 48
THREADS = 2  # ggml's Windows thread pool (CreateThread) against Linux's OpenMP, with 2 workers
QUANTS = ("Q4_0", "Q8_0", "Q4_K_M")
SHAPE = {"n_embd": 256, "n_ff": 512}  # rows of 256: K-quants apply to every weight matrix
_LOADED = re.compile(r"loaded CPU backend from .*?ggml-cpu-(\w+)\.dll")


def need_tools() -> None:
    missing = [t for t in (windows_build.CROSS_CXX, winerun.MINGW_CC) if not shutil.which(t)]
    try:
        winerun.wine64()
    except winerun.WineError:
        missing.append("wine64")
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install g++-mingw-w64-x86-64 wine64 "
                    "glslc libvulkan-dev spirv-headers (scripts/dev does it)")


@dataclass(frozen=True)
class Installed:
    """A variant as llama-runtime has it after a download: parsed entry, verified cache folder."""

    variant: Variant
    folder: Path


def install_like_a_download(folder: Path, work: Path) -> Installed:
    """Pack ``folder`` as publish does, then unpack it through the cache as a fetch does."""
    entry = load_variant(folder)
    work.mkdir(parents=True, exist_ok=True)
    archive = work / f"{folder.name}.tar.gz"
    sha256, size = pack_variant(folder, archive)
    variant = Variant.parse(folder.name, {**entry, "archive": archive.name, "sha256": sha256,
                                          "size": size})
    cached = install(work / "cache", variant, archive, {"path": str(archive)})
    assert lookup(work / "cache", variant) == cached
    return Installed(variant, cached)


def windows_folder(flavor: str, out: Path) -> Path:
    need_tools()
    try:
        return windows_build.windows_variant(flavor, out)
    except bv.BuildVariantError as exc:
        pytest.fail(f"the Windows build {flavor} failed: {exc}")


def only_plugin(folder: Path, tag: str, dest: Path) -> Path:
    """A copy of ``folder`` whose only CPU plugin is ``ggml-cpu-<tag>``: ggml must take it."""
    dest.mkdir(parents=True)
    cpu = re.compile(r"^(lib)?ggml-cpu-(\w+)\.(so|dll)$")
    for f in folder.iterdir():
        m = cpu.match(f.name)
        if m is None or m[2] == tag:
            shutil.copy2(f, dest / f.name)
    return dest


@dataclass(frozen=True)
class Linux:
    """A Linux variant folder of the same llama.cpp and tests/data/oracle/greedy.c linked to it."""

    folder: Path
    oracle: Path

    @property
    def libraries(self) -> list[Path]:
        """The folder's libraries in load order (variant.json), libllama last."""
        names = json.loads((self.folder / "variant.json").read_text())["libraries"]
        return [self.folder / n for n in names]

    def ids(self, model: Path, folder: Path | None = None, gpu_layers: int = 0) -> list[int]:
        env = os.environ.copy()
        if gpu_layers:  # greedy.c reads these (GGML_VK_...: ggml uses the software device)
            env.update(GREEDY_GPU_LAYERS=str(gpu_layers), GGML_VK_VISIBLE_DEVICES="0")
        cmd = [str(self.oracle), str(model), PROMPT, str(N_GEN), str(THREADS), "256", "1",
               str(folder or self.folder)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300,
                             env=env).stdout
        return [int(t) for t in next(ln for ln in out.splitlines() if ln.startswith("ids"))
                .split()[1:]]


def _linux(folder: Path, work: Path) -> Linux:
    names = [p.name for p in Linux(folder, Path()).libraries]
    pick = [next(n for n in names if re.match(rf"^libggml{part}(\.[\w.]+)?\.so$", n))
            for part in ("-base", "")]
    libs = NativeLibs(folder, (folder / pick[0], folder / pick[1], folder / names[-1]), True)
    return Linux(folder, build_oracle(libs, work))


def linux_build(work: Path) -> Linux:
    """The Linux build with the plugins of the Windows one: our omp-lite for the -lite flavor
    (haswell/skylakex/sapphirerapids), node-llama-cpp's 14-plugin build for the release one."""
    if CPU_FLAVOR.endswith("-lite"):
        return _linux(bv.source_variant(LINUX_FLAVOR, work / "variants"), work)
    return _linux(bv.npm_variant(bv.DEFAULT_NPM, work / "variants"), work)


def linux_vulkan(work: Path) -> Linux:
    """node-llama-cpp's Linux Vulkan build (the same llama.cpp v0.5.0) and greedy.c against it."""
    return _linux(bv.npm_variant(VULKAN_NPM, work / "variants"), work)


def quantize(linux: Linux, source: Path, dest: Path, kind: str) -> Path:
    """``llama-runtime quantize`` (llama.cpp's llama_model_quantize) with the Linux library, in
    a child process: the test process never holds a second libllama beside its own."""
    env = {**os.environ, "LLAMA_RUNTIME_LIB": str(linux.libraries[-1])}
    proc = subprocess.run([sys.executable, "-m", "llama_runtime", "quantize", str(source),
                           str(dest), kind], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)
    if proc.returncode != 0 or not dest.is_file():
        raise RuntimeError(f"llama-runtime quantize {kind} failed (exit {proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    return dest


def models(work: Path, linux: Linux) -> dict[str, Path]:
    """f16 and quantized tiny llamas; quantized by libllama's own llama_model_quantize."""
    work.mkdir(parents=True, exist_ok=True)
    out = {"f16": write_tiny_llama(work / "tiny-f16.gguf", seed=3, f16=True, **SHAPE)}
    base = write_tiny_llama(work / "tiny-f32.gguf", seed=3, **SHAPE)
    for kind in QUANTS:
        out[kind] = quantize(linux, base, work / f"tiny-{kind}.gguf", kind)
    return out


@dataclass(frozen=True)
class WineRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ids(self) -> list[int]:
        lines = [ln for ln in self.stdout.splitlines() if ln.startswith("ids")]
        return [int(t) for t in lines[0].split()[1:]] if lines else []

    @property
    def plugin(self) -> str | None:
        m = _LOADED.search(self.stdout)
        return m[1] if m else None

    def lines(self, prefix: str) -> list[str]:
        return [ln[len(prefix) + 1:] for ln in self.stdout.splitlines() if ln.startswith(prefix)]


def run_windows(driver: Path, folder: Path, libraries: tuple[str, ...], model: Path,
                env: dict[str, str] | None = None) -> WineRun:
    """greedy_win.exe under Wine: ``libraries`` of ``folder`` by full path, then load_all."""
    cache = devrelease.dev_cache()
    args = [winerun.windows_path(folder), winerun.windows_path(model), PROMPT, str(N_GEN),
            str(THREADS), "256", "1", *libraries]
    proc = winerun.run(driver, args, cache=cache, env=env)
    return WineRun(proc.returncode, proc.stdout, proc.stderr)
