"""The macOS side of node-llama-cpp's npm prebuilts: ``variant.json`` facts from the Mach-O files.

``@node-llama-cpp/mac-arm64-metal`` and ``@node-llama-cpp/mac-x64`` hold ``.dylib`` libraries
(``libggml-base``, ``libggml[.metal].v<ver>``, ``libllama[.metal].v<ver>``) and ggml's backend
plugins as ``.so`` bundles: ggml looks for ``libggml-<name>-*.so`` on every Unix, macOS included
(``backend_filename_extension`` in ggml-backend-reg.cpp). ``libllama-common.dylib`` and
``llama-addon.node`` are node-llama-cpp's own and are not shipped.

Read from the files: the architecture (one for the whole folder), the macOS floor (the highest
``minos`` of any file), the load order (from ``LC_LOAD_DYLIB`` through ``@rpath``), the system
frameworks and libraries, and that every function the binding binds is exported. Read from the
build's data: what the least demanding CPU plugin needs (ggml/src/CMakeLists.txt, v0.4.0:
``apple_m1`` DOTPROD, ``apple_m2_m3`` DOTPROD MATMUL_INT8, ``apple_m4`` DOTPROD MATMUL_INT8 SME).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.binfacts import macho

NOT_SHIPPED = ("libllama-common.dylib", "llama-addon.node")
# ggml's CPU feature names for the Apple plugins (probe/cpu.py's GGML_ARM_FEATURES)
APPLE_PLUGIN_NEEDS: Mapping[str, tuple[str, ...]] = {
    "apple_m1": ("asimddp",), "apple_m2_m3": ("asimddp", "i8mm"),
    "apple_m4": ("asimddp", "i8mm", "sme"),
}
NPM_ARCH = {"arm64": "aarch64", "x64": "x86_64"}


def _libllama(names: Sequence[str]) -> str:
    roots = [n for n in names if n.startswith("libllama") and n.endswith(".dylib")]
    if len(roots) != 1:
        raise macho.MachOError(f"expected one libllama*.dylib, found {roots}")
    return roots[0]


def cpu_requirement(plugins: Sequence[str], arch: str,
                    x86_needs: Mapping[str, tuple[int, tuple[str, ...]]],
                    x86_order: Sequence[str]) -> tuple[int | None, list[str]]:
    """(x86_64_level, cpu_features) of the least demanding CPU plugin: ggml runs the best one
    that fits, so the variant runs wherever its weakest plugin does."""
    tags = [p.removeprefix("libggml-cpu-").removesuffix(".so") for p in plugins
            if p.startswith("libggml-cpu-")]
    if arch == "aarch64":
        known = [t for t in APPLE_PLUGIN_NEEDS if t in tags]
        if not known:
            raise macho.MachOError(f"no Apple CPU plugin among {plugins}")
        return None, list(APPLE_PLUGIN_NEEDS[known[0]])
    lowest = next((t for t in x86_order if t in tags), None)
    if lowest is None or lowest not in x86_needs:
        raise macho.MachOError(f"no x86 CPU plugin of known needs among {plugins}")
    level, features = x86_needs[lowest]
    return level, list(features)


def variant_facts(staged: Path, meta: Mapping[str, Any], *, required_symbols: Sequence[str],
                  x86_needs: Mapping[str, tuple[int, tuple[str, ...]]],
                  x86_order: Sequence[str]) -> dict[str, Any]:
    """Everything ``write_variant_json`` needs for a staged macOS npm folder."""
    from llama_runtime.versions import version_tuple

    arch = NPM_ARCH[meta["arch"]]
    names = sorted(p.name for p in staged.iterdir() if p.is_file() and p.name != "variant.json")
    files = macho.folder_facts(staged, names, arch)
    root = _libllama(names)
    libraries = macho.load_order(files, root)
    plugins = sorted(n for n in names if n not in libraries)
    strays = [n for n in plugins if not (n.startswith("libggml-") and n.endswith(".so")
                                         and files[n].filetype == "bundle")]
    if strays:
        raise macho.MachOError(f"{strays} are neither needed by {root} nor ggml backend plugins")
    missing = macho.missing_exports([files[n] for n in libraries], required_symbols)
    if missing:
        raise macho.MachOError(f"{root} and its libraries do not export {missing}, which the "
                               "binding needs: another llama.cpp than the binding's?")
    level, features = cpu_requirement(plugins, arch, x86_needs, x86_order)
    floor = max((f.minos for f in files.values()), key=version_tuple)
    return {"arch": arch, "libraries": libraries, "plugins": plugins, "macos": floor,
            "x86_64_level": level, "cpu_features": features,
            "frameworks": macho.frameworks(files.values()),
            "system_libraries": macho.system_libraries(files.values()),
            "macho": {n: {"type": f.filetype, "arch": "+".join(f.archs), "minos": f.minos,
                          "sdk": f.sdk, "install_name": f.install_name}
                      for n, f in files.items()}}
