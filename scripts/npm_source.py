"""Variants from node-llama-cpp's prebuilt npm packages (Linux, macOS; CUDA in npm_cuda.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.binfacts.elf import elf_needed
from scripts.flavors import ALL_X86_CPU_VARIANTS, X86_PLUGIN_NEEDS
from scripts.tools import BuildVariantError, cache_root, run, tool
from scripts.variant_json import BACKEND_EXTERNAL, library_facts, replace_dir, write_variant_json

DEFAULT_NPM = "@node-llama-cpp/linux-x64@3.22.1"
# Served only at 3.21.1 (llama.cpp 0.4.0, whose structs the binding also drives: see
# llama_runtime/native/generations.py): Metal on Apple Silicon, CPU (14 x86 plugins) on Intel.
MACOS_NPM = ("@node-llama-cpp/mac-arm64-metal@3.21.1", "@node-llama-cpp/mac-x64@3.21.1")
NPM_ARCH: Mapping[str, str] = {"x64": "x86_64", "arm64": "aarch64"}


def npm_pack(package_spec: str, cache: Path) -> Path:
    """The npm tarball of ``package_spec`` (``@scope/name@version``), packed once and cached."""
    match = re.fullmatch(r"@([^/@]+)/([^/@]+)@([\w.+-]+)", package_spec)
    if match is None:
        raise BuildVariantError(f"{package_spec!r}: give a pinned spec like {DEFAULT_NPM}")
    dest = cache / "npm" / f"{match[1]}-{match[2]}-{match[3]}.tgz"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    npm = tool("npm", "install Node.js (apt-get install npm)")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = run([npm, "pack", package_spec, "--json", "--pack-destination", tmp], "npm pack")
        os.replace(Path(tmp) / json.loads(out)[0]["filename"].replace("/", "-").lstrip("@"), dest)
    return dest


def unpack_npm_bins(tgz: Path, into: Path) -> Path:
    """Extract ``package/bins/<platform>/`` of an npm tarball; return that folder."""
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/bins/") and m.isfile()]
        tar.extractall(into, members=members, filter="data")
    platforms = [p for p in (into / "package" / "bins").iterdir() if p.is_dir()]
    if len(platforms) != 1:
        raise BuildVariantError(f"{tgz.name}: expected one bins/<platform>/, found {platforms}")
    return platforms[0]


def _npm_gpu_facts(staged: Path, gpu: str, plugins: Sequence[str]) -> dict[str, Any]:
    """backend, name suffix and requires of a node-llama-cpp GPU build, read from its plugin."""
    plugin = staged / f"libggml-{gpu}.so"
    needed = elf_needed(plugin)
    facts: dict[str, Any] = {"backend": gpu, "suffix": gpu, "cuda_driver": None,
                             "compute_capability": None, "python_requires": []}
    facts["python_requires"] = sorted({BACKEND_EXTERNAL[n] for n in needed
                                       if BACKEND_EXTERNAL.get(n)})
    if gpu == "cuda":
        from scripts import (
            npm_cuda,  # the CUDA facts (fatbin targets, PTX toolkit, wheels) live there
        )

        facts |= npm_cuda.cuda_facts(plugin)
    return facts


def npm_variant(package_spec: str, out_dir: Path, *, cache: Path | None = None) -> Path:
    """Turn one node-llama-cpp prebuilt npm package into ``out_dir/<variant-name>/``."""
    cache = cache or cache_root(os.environ)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "-cuda-ext@" in package_spec:  # a CUDA 12 plugin for the CUDA package's other files
        from scripts import npm_cuda

        return npm_cuda.cuda_ext_variant(package_spec, out_dir, cache)
    tgz = npm_pack(package_spec, cache)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".npm-") as tmp:
        bins = unpack_npm_bins(tgz, Path(tmp))
        meta = json.loads((bins / "_nlcBuildMetadata.json").read_text())["buildOptions"]
        staged = Path(tmp) / "stage"
        staged.mkdir()
        if meta["platform"] == "mac":
            return npm_macos_variant(package_spec, bins, staged, meta, out_dir)
        for lib in bins.glob("*.so"):  # leaves out llama-addon.node
            shutil.copy2(lib, staged / lib.name)
        (staged / "libllama-common.so").unlink(missing_ok=True)  # node-llama-cpp's own helper
        libs = library_facts(staged)
        arch = NPM_ARCH[meta["arch"]]
        gpu = _npm_gpu_facts(staged, meta["gpu"], libs["plugins"]) if meta["gpu"] else {
            "backend": "cpu", "suffix": "cpu", "cuda_driver": None, "compute_capability": None,
            "python_requires": []}
        name = f"linux-{arch}-{gpu['suffix']}"
        release = meta["llamaCpp"]["release"]
        write_variant_json(
            staged, os="linux", arch=arch, backend=gpu["backend"],
            requires={"glibc": libs["glibc"], "libstdcxx": libs["libstdcxx"], "x86_64_level": 1 if arch == "x86_64" else None,
                      "cpu_features": [], "cuda_driver": gpu["cuda_driver"],
                      "compute_capability": gpu["compute_capability"], "macos": None},
            libraries=libs["libraries"], plugins=libs["plugins"], backend_dl=True,
            python_requires=gpu["python_requires"], external_libraries=libs["external_libraries"],
            llama_cpp=release.lstrip("v"),
            source=f"npm {package_spec} (node-llama-cpp prebuilt, {meta['llamaCpp']['repo']} "
                   f"{release}, built on {meta['platformInfo']['name']} "
                   f"{meta['platformInfo']['version']}, GGML_BACKEND_DL)",
            description=f"llama.cpp {gpu['backend']} for {arch} Linux; ggml loads the best of "
                        f"{len(libs['plugins'])} backend plugins at run time",
            **gpu.get("extra", {}))
        return replace_dir(staged, out_dir / name)


def npm_macos_variant(package_spec: str, bins: Path, staged: Path, meta: dict[str, Any],
                       out_dir: Path) -> Path:
    """``macos-<arch>-<backend>/`` from a mac npm package, every fact read from its Mach-O files
    (scripts/npm_macos.py, scripts/macho.py)."""
    from llama_runtime.runtime.binformat import wrong_format
    from llama_runtime.native.functions import FUNCTIONS
    from scripts import npm_macos
    from scripts.binfacts import macho

    for lib in [*bins.glob("*.dylib"), *bins.glob("*.so")]:
        if lib.name not in npm_macos.NOT_SHIPPED:
            shutil.copy2(lib, staged / lib.name)
    problems = [w for w in (wrong_format(p, "macos", strict=True)
                            for p in sorted(staged.iterdir())) if w]
    if problems:
        raise BuildVariantError("; ".join(problems))
    try:
        facts = npm_macos.variant_facts(
            staged, meta, required_symbols=[f.name for f in FUNCTIONS if not f.optional],
            x86_needs=X86_PLUGIN_NEEDS, x86_order=ALL_X86_CPU_VARIANTS)
    except macho.MachOError as exc:
        raise BuildVariantError(f"{package_spec}: {exc}") from exc
    backend = "metal" if meta["gpu"] == "metal" else "cpu" if not meta["gpu"] else meta["gpu"]
    arch, release = facts["arch"], meta["llamaCpp"]["release"]
    write_variant_json(
        staged, os="macos", arch=arch, backend=backend,
        requires={"glibc": None, "x86_64_level": facts["x86_64_level"],
                  "cpu_features": facts["cpu_features"], "cuda_driver": None,
                  "compute_capability": None, "macos": facts["macos"]},
        libraries=facts["libraries"], plugins=facts["plugins"], backend_dl=True,
        python_requires=[], external_libraries=[], llama_cpp=release.lstrip("v"),
        source=f"npm {package_spec} (node-llama-cpp prebuilt, {meta['llamaCpp']['repo']} "
               f"{release}, built on {meta['platformInfo']['name']} "
               f"{meta['platformInfo']['version']}, GGML_BACKEND_DL)",
        description=f"llama.cpp {backend} for {arch} macOS {facts['macos']}+; ggml loads the "
                    f"best of {len(facts['plugins'])} backend plugins at run time",
        frameworks=facts["frameworks"], system_libraries=facts["system_libraries"],
        macho=facts["macho"])
    apple = "arm64" if arch == "aarch64" else arch
    return replace_dir(staged, out_dir / f"macos-{apple}-{backend}")
