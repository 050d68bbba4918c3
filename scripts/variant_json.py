"""Writing a variant folder: its ``variant.json`` (validated by ``llama_runtime.variants.entry``,
the checks ``publish`` makes), the library facts of a Linux folder, atomic replacement."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.binfacts.elf import dependency_closure, elf_needed, glibc_floor, libstdcxx_floor, load_order
from scripts.tools import BuildVariantError

# Libraries every glibc Linux provides (the manylinux policy's core); never shipped.
SYSTEM_LIBS = frozenset({
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libgcc_s.so.1",
    "libstdc++.so.6", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
})
# Outside libraries a GPU backend plugin may NEED, and the pip package that provides each
# (None: the driver or the OS provides it).
BACKEND_EXTERNAL: Mapping[str, str | None] = {
    "libcuda.so.1": None, "libvulkan.so.1": None,
    "libcudart.so.13": "nvidia-cuda-runtime>=13,<14", "libcublas.so.13": "nvidia-cublas>=13,<14",
    "libcublasLt.so.13": "nvidia-cublas>=13,<14",
    "libcudart.so.12": "nvidia-cuda-runtime-cu12", "libcublas.so.12": "nvidia-cublas-cu12",
    "libcublasLt.so.12": "nvidia-cublas-cu12",
}
# Minimum Linux driver of each CUDA major (NVIDIA's CUDA toolkit release notes, table 3).
CUDA_MIN_DRIVER: Mapping[int, str] = {12: "525.60.13", 13: "580.65.06"}
# libllama.so, libllama.cuda.v0.5.0.so, libllama.metal.v0.4.0.dylib; llama.dll on Windows
# (scripts/windows_build.py)
LIBLLAMA = re.compile(r"^(libllama(\.[\w.]+)?\.(so|dylib)|llama(\.[\w.]+)?\.dll)$")


def write_variant_json(folder: Path, **facts: Any) -> dict[str, Any]:
    """Validate ``facts`` against the files in ``folder`` and write ``variant.json``."""
    keys = ("os", "arch", "backend", "requires", "libraries", "plugins", "backend_dl",
            "python_requires", "external_libraries", "llama_cpp", "source", "description")
    missing = [k for k in keys if k not in facts]
    if missing:
        raise BuildVariantError(f"variant facts lack {missing}")
    entry = {k: facts[k] for k in keys} | {k: v for k, v in facts.items() if k not in keys}
    from llama_runtime.errors import LlamaRuntimeError
    from llama_runtime.variants.entry import check_folder

    try:  # the checks publish makes, so a folder built here always publishes (one validator)
        check_folder(Path(folder), entry, strict=True)
    except LlamaRuntimeError as exc:
        raise BuildVariantError(str(exc)) from exc
    (Path(folder) / "variant.json").write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def library_facts(folder: Path, bundled: Sequence[str] = ()) -> dict[str, Any]:
    """libraries (load order), plugins, external NEEDs, glibc and libstdc++ floors of a staged folder.

    ``bundled`` (e.g. ``libgomp.so.1``) are outside libraries copied in; one that only plugins
    NEED comes first in ``libraries``, so the loader maps the shipped copy before ggml opens them.
    """
    from llama_runtime.runtime.binformat import wrong_format

    problems = [w for w in (wrong_format(p, "linux", strict=True)
                            for p in sorted(folder.iterdir()) if p.name != "variant.json") if w]
    if problems:
        raise BuildVariantError("; ".join(problems))
    roots = [p.name for p in sorted(folder.glob("libllama*.so")) if LIBLLAMA.match(p.name)]
    if len(roots) != 1:
        raise BuildVariantError(f"expected one libllama in {folder}, found {roots}")
    closure = dependency_closure(folder, roots[0])
    plugins = sorted(p.name for p in folder.glob("libggml-*.so") if p.name not in closure)
    extra = [b for b in bundled if b not in closure]
    shipped = [*extra, *closure, *plugins]
    external = sorted({d for n in shipped for d in elf_needed(folder / n)} - set(shipped))
    unknown = [d for d in external if d not in SYSTEM_LIBS and d not in BACKEND_EXTERNAL]
    if unknown:
        raise BuildVariantError(f"{folder.name} needs {unknown}, which it neither ships nor can "
                                "expect on a user's machine: bundle them or build without them")
    return {"libraries": [*extra, *load_order(folder, closure)], "plugins": plugins,
            "external_libraries": [d for d in external if d not in SYSTEM_LIBS],
            "glibc": glibc_floor(folder / n for n in shipped),
            "libstdcxx": libstdcxx_floor(folder / n for n in shipped)}


def replace_dir(staging: Path, final: Path) -> Path:
    staging.chmod(0o755)  # mkdtemp makes it 0700; a published folder is world-readable
    for lib in [*staging.glob("*.so*"), *staging.glob("*.dylib")]:
        lib.chmod(0o755)
    if final.exists() and same_files(staging, final):
        shutil.rmtree(staging)  # already current: never pull a folder from under a reader
        return final
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)
    return final


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all(_same_variant_json(a / n, b / n) if n == "variant.json" else filecmp.cmp(a / n, b / n, shallow=False)
               for n in names)


def _same_variant_json(a: Path, b: Path) -> bool:
    """Equal but for ``qualification``, which the qualification (run after) writes into the folder."""
    def facts(path: Path) -> Any:
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "qualification"}

    return bool(facts(a) == facts(b))


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
