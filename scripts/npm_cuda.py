"""CUDA variants from node-llama-cpp's npm packages: CUDA 13, CUDA 12, and one-target copies.

* ``@node-llama-cpp/linux-x64-cuda@3.22.1`` is a CUDA 13 build (``libggml-cuda.so`` NEEDs
  ``libcudart.so.13``): ``linux-x86_64-cuda13``.
* ``@node-llama-cpp/linux-x64-cuda-ext@3.22.1`` holds only ``bins/linux-x64-cuda/fallback/
  libggml-cuda.so``, a CUDA 12 build of the same ggml (same compiler, the same ggml-base symbols
  imported; node-llama-cpp loads it when the CUDA 13 one does not). With the rest of the CUDA
  package (the CPU plugins, ggml-base, ggml, llama: identical files) it is ``linux-x86_64-cuda12``.
* :func:`target_variants` cuts a CUDA variant into one folder per GPU target
  (``linux-x86_64-cuda12-sm_86``): the same files, with ``libggml-cuda.so``'s fatbins listing
  one target only (scripts/cuda_fatbin.py), so a user downloads the GPU code of their GPU only.

Every CUDA fact in ``variant.json`` is read from the plugin: the CUDA major from its NEEDED
``libcudart.so.N``, the targets and the PTX ISA (hence the toolkit and the driver that can JIT
it) from the fatbin.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts import npm_source, tools
from scripts import variant_json as vj
from scripts.binfacts import cuda_fatbin, elf

CUDA_PLUGIN = "libggml-cuda.so"
EXT_MEMBER = "package/bins/linux-x64-cuda/fallback/libggml-cuda.so"
# The pip packages of NVIDIA's CUDA runtime wheels, by CUDA major (-cu12 names before 13).
RUNTIME_WHEELS = {12: ("nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12"),
                  13: ("nvidia-cuda-runtime", "nvidia-cublas")}


def python_requires(major: int, toolkit: str | None) -> list[str]:
    """NVIDIA's wheels for a plugin that NEEDs ``libcudart.so.<major>``/``libcublas.so.<major>``.

    The runtime is at least the toolkit the plugin was built with (it may call what that
    release added); cuBLAS's version numbers do not follow the toolkit's, so only its major.
    """
    runtime, cublas = RUNTIME_WHEELS[major]
    low = toolkit if toolkit and toolkit.split(".")[0] == str(major) else str(major)
    return sorted([f"{runtime}>={low},<{major + 1}", f"{cublas}>={major},<{major + 1}"])


def lowest_cc(found: list[cuda_fatbin.Image]) -> str:
    """The lowest compute capability any image of ``found`` runs on (``requires``' minimum)."""
    arch = min(i.arch for i in found)
    return f"{arch // 10}.{arch % 10}"


def cuda_facts(plugin: Path) -> dict[str, Any]:
    """backend facts of a ggml CUDA plugin for ``variant.json`` (see ``npm_variant``)."""
    needed = elf.elf_needed(plugin)
    runtime = [n for n in needed if n.startswith("libcudart.so.")]
    if len(runtime) != 1:
        raise tools.BuildVariantError(f"{plugin}: expected one libcudart.so.N in NEEDED, got {needed}")
    major = int(runtime[0].rsplit(".", 1)[1])
    found = cuda_fatbin.images(plugin)
    if not found:
        raise tools.BuildVariantError(f"{plugin} holds no fatbin: not a CUDA build")
    ptx_driver = cuda_fatbin.ptx_driver_cuda(found)
    targets = cuda_fatbin.targets(found)
    return {"suffix": f"cuda{major}", "cuda_driver": f"{major}.0",
            "compute_capability": lowest_cc(found),
            "python_requires": python_requires(major, ptx_driver),
            "extra": {"cuda_runtime": str(major), "min_driver_version": vj.CUDA_MIN_DRIVER[major],
                      "cuda_architectures": targets, "cuda_ptx_driver": ptx_driver,
                      "cuda_target_bytes": cuda_fatbin.target_bytes(found)}}


def cuda_ext_variant(ext_spec: str, out_dir: Path, cache: Path) -> Path:
    """``linux-x86_64-cuda12``: the CUDA package with the ``-ext`` package's CUDA 12 plugin."""
    base_spec = ext_spec.replace("-cuda-ext@", "-cuda@")
    base = npm_source.npm_variant(base_spec, out_dir / ".base", cache=cache)
    tgz = npm_source.npm_pack(ext_spec, cache)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ext-") as tmp:
        import tarfile

        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, members=[tar.getmember(EXT_MEMBER)], filter="data")
        staged = Path(tmp) / "stage"
        shutil.copytree(base, staged)
        shutil.copy2(Path(tmp) / EXT_MEMBER, staged / CUDA_PLUGIN)
        name = _rewrite_cuda_facts(staged, source=f"npm {ext_spec} ({EXT_MEMBER}) with the rest"
                                                  f" of {base_spec}")
        shutil.rmtree(out_dir / ".base")
        return vj.replace_dir(staged, out_dir / name)


def _rewrite_cuda_facts(folder: Path, source: str) -> str:
    """Re-read the CUDA facts of ``folder`` after its plugin changed; return its variant name."""
    meta = json.loads((folder / "variant.json").read_text())
    libs = vj.library_facts(folder)
    facts = cuda_facts(folder / CUDA_PLUGIN)
    meta["requires"] |= {"glibc": libs["glibc"], "cuda_driver": facts["cuda_driver"],
                         "compute_capability": facts["compute_capability"]}
    meta |= facts["extra"] | {"python_requires": facts["python_requires"],
                              "external_libraries": libs["external_libraries"],
                              "source": f"{source}; those: {meta['source']}",
                              "description": meta["description"].replace(
                                  "llama.cpp cuda", f"llama.cpp CUDA {facts['extra']['cuda_runtime']}")}
    (folder / "variant.json").write_text(json.dumps(meta, indent=2) + "\n")
    return f"linux-{meta['arch']}-{facts['suffix']}"


def target_variants(folder: Path, out_dir: Path, targets: Sequence[str] | None = None) -> list[Path]:
    """One folder per GPU target of CUDA variant ``folder``: ``<name>-<target>``."""
    meta = json.loads((folder / "variant.json").read_text())
    wanted = list(targets or meta["cuda_architectures"])
    made = []
    for target in wanted:
        name = f"{folder.name}-{target.replace('_', '')}"
        staged = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}-"))
        for item in folder.iterdir():
            if item.name != CUDA_PLUGIN:
                shutil.copy2(item, staged / item.name)
        cuda_fatbin.keep_only(folder / CUDA_PLUGIN, staged / CUDA_PLUGIN,
                              lambda image, t=target: image.target == t)
        one = json.loads((staged / "variant.json").read_text())
        kept = cuda_fatbin.images(staged / CUDA_PLUGIN)
        one["requires"]["compute_capability"] = lowest_cc(kept)
        one |= {"cuda_architectures": cuda_fatbin.targets(kept), "cuda_target": target,
                "cuda_full": folder.name, "cuda_ptx_driver": cuda_fatbin.ptx_driver_cuda(kept),
                "cuda_target_bytes": cuda_fatbin.target_bytes(kept),
                "description": f"{meta['description']}; GPU code for {target} only (the fatbins"
                               f" of {folder.name} cut to that target)"}
        (staged / "variant.json").write_text(json.dumps(one, indent=2) + "\n")
        made.append(vj.replace_dir(staged, out_dir / name))
    return made
