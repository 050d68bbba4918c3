"""Windows x86_64 variants cross-built from the pinned llama.cpp with Debian's MinGW-w64.

The source is the one ``build_variants.py`` builds for Linux (``vendor/llama.cpp`` of the
``llama-cpp-python==0.3.36`` sdist), with its sdist download, CMake + ccache build and build
cache: ``<dev cache>/builds/<key>/``, the key over the recipe, the sdist, every CMake flag, the
cross compiler's version and the content of the toolchain files (and, for Vulkan, glslc's
version and the Vulkan headers). What differs from Linux:

* ``scripts/toolchains/mingw-w64-x86_64.cmake``: ``x86_64-w64-mingw32-g++-posix`` (the posix
  thread model; ggml uses std::thread), the GCC runtime (libgcc, libstdc++, winpthread) linked
  statically so the DLLs need only Windows' own DLLs, DLL names as ggml's loader expects them
  (``ggml-cpu-haswell.dll``, not ``libggml-cpu-haswell.dll``).
* No OpenMP: ggml's own thread pool, as in node-llama-cpp's Windows builds (measured in
  benchmarks/NOTES.md; libgomp would have to be linked into every plugin or shipped).
* Vulkan: ``glslc`` and the ``vulkan-shaders-gen`` that ggml's CMake builds for the host (it
  runs at build time), Vulkan headers with VK_EXT_layer_settings (Debian 13's ``libvulkan-dev``
  where the system's are older: scripts/vulkan_headers.py) and an import library for
  ``vulkan-1.dll`` made with ``dlltool`` from the core functions the headers declare (the
  Vulkan loader exports those; the driver installs it).
* ``variant.json`` from the PE files (``scripts/pe_facts.py``): machine, imports, load order,
  plugins, outside DLLs; a DLL that needs anything but Windows' own DLLs or ``vulkan-1.dll``
  is refused.

Flavors (``--windows FLAVOR`` of build_variants.py): ``windows-cpu`` (the release build, all 14
x86 CPU plugins, x86-64 baseline), ``windows-vulkan`` (the same plus ``ggml-vulkan.dll``), and
their ``-lite`` stand-ins for development (the plugins of Linux's ``omp-lite``,
``build_variants.LITE_X86_CPU_VARIANTS``, so x86-64-v3), built under the same variant names.
The source gets the Linux builds' patches (``scripts/patches``, issue 14's AMX tile
configuration); ``amx_tilecfg``'s proof from the binary reads ELF files only, so it does not
run on the Windows plugins.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts import flavors, tools
from scripts import source_builds as sb
from scripts import variant_json as vj
from scripts.binfacts import pe_facts

# Bump when the way a Windows folder is assembled changes (with build_variants.RECIPE).
WINDOWS_RECIPE = 1
TOOLCHAIN_DIR = Path(__file__).resolve().parent / "toolchains"
TOOLCHAIN_FILES = ("mingw-w64-x86_64.cmake", "mingw-w64-compat.h", "mingw-w64-names.cmake")
CROSS_CXX = "x86_64-w64-mingw32-g++-posix"
DLLTOOL = "x86_64-w64-mingw32-dlltool"
APT_HINT = "apt-get install g++-mingw-w64-x86-64"
VULKAN_APT_HINT = "apt-get install glslc"
# RPATH and soname flags mean nothing for PE files
_ELF_ONLY = ("-DCMAKE_INSTALL_RPATH", "-DCMAKE_BUILD_WITH_INSTALL_RPATH",
             "-DCMAKE_PLATFORM_NO_VERSIONED_SONAME")
WINDOWS_CMAKE = (*(f for f in flavors.BASE_CMAKE if not f.startswith(_ELF_ONLY)),
                 "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_NATIVE=OFF",
                 "-DGGML_OPENMP=OFF")


@dataclass(frozen=True)
class WindowsFlavor:
    """One Windows variant: its backend, the CPU plugins built, and what those need."""

    name: str
    backend: str  # cpu | vulkan
    x86_64_level: int
    cpu_features: tuple[str, ...]
    cpu_variants: tuple[str, ...] | None = None  # None: all of GGML_CPU_ALL_VARIANTS
    summary: str = ""
    openmp: bool = False  # True only to measure it: libgomp linked statically into each plugin

    def build_steps(self) -> tuple[tuple[str, ...], ...]:
        """As ``build_variants.Flavor.build_steps``, with ``ggml-vulkan`` beside the plugins."""
        if self.cpu_variants is None:
            return ((),)
        gpu = ("ggml-vulkan",) if self.backend == "vulkan" else ()
        return (("ggml-base", *(f"ggml-cpu-{tag}" for tag in self.cpu_variants), *gpu),
                ("ggml/fast",), ("llama/fast",))


_ALL = "all 14 x86 CPU plugins (ggml picks one at run time)"
_LITE = (f"the {'/'.join(flavors.LITE_X86_CPU_VARIANTS)} CPU plugins only (ggml picks one at run "
         "time)")
WINDOWS_FLAVORS: Mapping[str, WindowsFlavor] = {
    "windows-cpu": WindowsFlavor("windows-x86_64-cpu", "cpu", 1, (), summary=_ALL),
    "windows-cpu-lite": WindowsFlavor("windows-x86_64-cpu", "cpu", 3, flavors.V3_FEATURES,
                                      flavors.LITE_X86_CPU_VARIANTS, summary=_LITE),
    "windows-vulkan": WindowsFlavor("windows-x86_64-vulkan", "vulkan", 1, (), summary=_ALL),
    "windows-vulkan-lite": WindowsFlavor("windows-x86_64-vulkan", "vulkan", 3, flavors.V3_FEATURES,
                                         flavors.LITE_X86_CPU_VARIANTS, summary=_LITE),
    # benchmarks/NOTES.md: OpenMP against ggml's thread pool under Wine (not released)
    "windows-cpu-omp-lite": WindowsFlavor("windows-x86_64-cpu-omp", "cpu", 3, flavors.V3_FEATURES,
                                          flavors.LITE_X86_CPU_VARIANTS, summary=_LITE, openmp=True),
}


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _publish_dir(staging: Path, final: Path) -> Path:
    """Rename a finished folder into place; a concurrent builder that won keeps its copy."""
    try:
        os.replace(staging, final)
    except OSError:  # final exists (same content: the name is a content hash)
        shutil.rmtree(staging, ignore_errors=True)
    return final


def stage_toolchain(cache: Path) -> Path:
    """The toolchain files, copied to ``cache/toolchains/<content hash>/``.

    A path under the cache (not the checkout) keeps compile lines the same for every checkout,
    so ccache hits across worktrees (CCACHE_BASEDIR is the cache root).
    """
    blobs = [(TOOLCHAIN_DIR / n).read_bytes() for n in TOOLCHAIN_FILES]
    final = cache / "toolchains" / _digest(blobs)
    if (final / TOOLCHAIN_FILES[0]).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tc-"))
    for name in TOOLCHAIN_FILES:
        shutil.copyfile(TOOLCHAIN_DIR / name, staging / name)
    staging.chmod(0o755)
    return _publish_dir(staging, final)


def vulkan_def(vulkan_core_h: str) -> str:
    """A module-definition file for ``vulkan-1.dll``: the core functions (1.0 to 1.x) the
    header declares, which the Vulkan loader exports; extensions come through
    ``vkGet*ProcAddr``."""
    core = vulkan_core_h.split("#define VK_KHR_surface 1", 1)[0]
    names = sorted(set(re.findall(r"VKAPI_ATTR\s+\w+\s+VKAPI_CALL\s+(vk\w+)\s*\(", core)))
    if "vkGetInstanceProcAddr" not in names:
        raise tools.BuildVariantError("no Vulkan core functions found in vulkan_core.h")
    return "LIBRARY vulkan-1.dll\nEXPORTS\n" + "".join(f"    {n}\n" for n in names)


def stage_vulkan_sdk(cache: Path) -> Path:
    """Vulkan and SPIR-V headers, SPIRV-Headers' CMake config, and ``lib/libvulkan-1.dll.a``
    for the cross build, in one prefix under the cache.

    Only those headers are copied: pointing the MinGW build at ``/usr/include`` would put
    glibc's headers before MinGW's.
    """
    from scripts import vulkan_headers

    source = vulkan_headers.prefix(cache)
    text = (source / "include" / "vulkan" / "vulkan_core.h").read_text()
    spirv = (source / "include" / "spirv" / "unified1" / "spirv.hpp").read_bytes()
    final = cache / "vulkan-sdk" / _digest([text.encode(), spirv, str(WINDOWS_RECIPE).encode()])
    if (final / "lib" / "libvulkan-1.dll.a").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".vk-"))
    for part in vulkan_headers.PARTS:
        shutil.copytree(source / part, staging / part)
    (staging / "lib").mkdir()
    (staging / "vulkan-1.def").write_text(vulkan_def(text))
    tools.run([tools.tool(DLLTOOL, APT_HINT), "-d", str(staging / "vulkan-1.def"),
             "-l", str(staging / "lib" / "libvulkan-1.dll.a")], "dlltool")
    staging.chmod(0o755)
    return _publish_dir(staging, final)


def _version_line(tool: str, hint: str) -> str:
    return tools.run([tools.tool(tool, hint), "--version"], f"{tool} --version").splitlines()[0]


def cmake_flags(flavor: WindowsFlavor, cache: Path) -> tuple[str, ...]:
    flags = (*WINDOWS_CMAKE,
             f"-DCMAKE_TOOLCHAIN_FILE={stage_toolchain(cache) / TOOLCHAIN_FILES[0]}")
    if flavor.openmp:  # FindOpenMP picks libgomp.dll.a (libgomp-1.dll); -static cannot undo it
        gomp = tools.run([tools.tool(CROSS_CXX, APT_HINT), "-print-file-name=libgomp.a"],
                       "locating libgomp.a").strip()
        flags = (*(f.replace("-DGGML_OPENMP=OFF", "-DGGML_OPENMP=ON") for f in flags),
                 f"-DOpenMP_gomp_LIBRARY={gomp}")
    if flavor.backend == "vulkan":
        sdk = stage_vulkan_sdk(cache)
        flags += ("-DGGML_VULKAN=ON", f"-DVulkan_INCLUDE_DIR={sdk / 'include'}",
                  f"-DVulkan_LIBRARY={sdk / 'lib' / 'libvulkan-1.dll.a'}",
                  f"-DVulkan_GLSLC_EXECUTABLE={tools.tool('glslc', VULKAN_APT_HINT)}",
                  f"-DSPIRV-Headers_DIR={sdk / 'share' / 'cmake' / 'SPIRV-Headers'}")
    return flags


def portable(flags: Sequence[str], cache: Path) -> list[str]:
    """``flags`` with the cache root written ``$CACHE``: the key and ``variant.json`` then do
    not depend on where a user's cache is (the staged paths hold content hashes)."""
    return [f.replace(str(cache), "$CACHE") for f in flags]


def build_key(flavor: WindowsFlavor, sdist_sha256: str, flags: Sequence[str]) -> str:
    """Cache key: recipes, source and its patches, portable flags (toolchain and Vulkan import
    library paths hold their content hashes), the cross compiler, for Vulkan glslc."""
    from scripts import source_patches

    tools = [_version_line(CROSS_CXX, APT_HINT)]
    if flavor.backend == "vulkan":
        tools.append(_version_line("glslc", VULKAN_APT_HINT))
    steps = [t for step in flavor.build_steps() for t in step]
    patches = source_patches.patches_digest(source_patches.patch_set())
    blob = json.dumps([flavors.RECIPE, WINDOWS_RECIPE, sdist_sha256, list(flags), steps, tools,
                       patches])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def check_structure(flavor: WindowsFlavor, facts: Mapping[str, Any]) -> None:
    """Every plugin is a ggml backend; the CPU requirement is that of the least demanding one;
    a Vulkan variant has its Vulkan plugin."""
    exports = facts["exports"]
    for plugin, names in exports.items():
        wanted = {"ggml_backend_init"} | ({"ggml_backend_score"} if "-cpu-" in plugin else set())
        if not wanted <= set(names):
            raise tools.BuildVariantError(f"{plugin} does not export {sorted(wanted - set(names))}:"
                                       " ggml's loader would skip it")
    if flavor.backend == "vulkan" and "ggml-vulkan.dll" not in facts["plugins"]:
        raise tools.BuildVariantError(f"{flavor.name}: the build made no ggml-vulkan.dll")
    sb.check_plugin_needs(flavor, facts["plugins"])  # type: ignore[arg-type]


def _stage_dlls(bin_dir: Path, staged: Path) -> None:
    dlls = sorted(bin_dir.glob("*.dll"))
    if not dlls:
        raise tools.BuildVariantError(f"the build left no DLLs in {bin_dir}")
    for dll in dlls:
        shutil.copy2(dll, staged / dll.name)


def _write_variant(flavor: WindowsFlavor, staged: Path, source: Path, sdist_sha: str,
                   flags: Sequence[str], key: str, patches: Sequence[str]) -> None:
    facts = pe_facts.folder_facts(staged)
    runtime = pe_facts.runtime_loads(staged, facts["plugins"])
    check_structure(flavor, facts)
    external = sorted({*facts["external_libraries"], *(d for v in runtime.values() for d in v)})
    plugins = ", ".join(flavor.cpu_variants) if flavor.cpu_variants else "all"
    vj.write_variant_json(
        staged, os="windows", arch="x86_64", backend=flavor.backend,
        requires={"glibc": None, "x86_64_level": flavor.x86_64_level,
                  "cpu_features": list(flavor.cpu_features), "cuda_driver": None,
                  "compute_capability": None, "macos": None},
        libraries=facts["libraries"], plugins=facts["plugins"], backend_dl=True,
        python_requires=[], external_libraries=external,
        llama_cpp=sb.llama_version(source),
        source=f"MinGW-w64 cross build of {flavors.VENDOR_DIR} from the {flavors.SDIST_REQUIREMENT} sdist "
               f"(sha256 {sdist_sha}); cmake {' '.join(flags)}; CPU plugins {plugins}; "
               f"patches {' '.join(patches) or 'none'}",
        description=f"llama.cpp {flavor.backend} for x86-64-v{flavor.x86_64_level} Windows: "
                    f"GGML_BACKEND_DL with {flavor.summary}, "
                    + ("OpenMP (libgomp linked in), " if flavor.openmp else
                       "ggml thread pool (no OpenMP), ") + "GCC runtime linked statically",
        machine=facts["machine"], imports=facts["imports"],
        system_libraries=facts["system_libraries"], runtime_loads=runtime,
        toolchain=_version_line(CROSS_CXX, APT_HINT), cache_key=key,
        source_patches=list(patches))


def _build_into_cache(flavor: WindowsFlavor, sdist: Path, flags: Sequence[str], key: str,
                      cache: Path, jobs: int) -> Path:
    from scripts import source_patches

    sha = sb.sha256(sdist)
    patches = source_patches.patch_set()  # the Linux builds' (issue 14's AMX tile config)
    source = sb.source_tree(sdist, sha, cache, patches)
    bin_dir, staged = sb.build_and_stage(source, cache, key, flags, jobs, flavor.build_steps())
    _stage_dlls(bin_dir, staged)
    try:
        _write_variant(flavor, staged, source, sha, portable(flags, cache), key,
                       [p.name for p in patches])
    except pe_facts.PeFactsError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise tools.BuildVariantError(str(exc)) from exc
    return vj.replace_dir(staged, cache / "builds" / key)


def windows_variant(flavor: str, out_dir: Path, *, cache: Path | None = None,
                    jobs: int = 2) -> Path:
    """Build (or copy from the build cache) one Windows flavor into ``out_dir/<variant-name>/``."""
    if flavor not in WINDOWS_FLAVORS:
        raise tools.BuildVariantError(f"unknown Windows flavor {flavor!r}; known: "
                                   f"{sorted(WINDOWS_FLAVORS)}")
    spec, cache = WINDOWS_FLAVORS[flavor], cache or tools.cache_root(os.environ)
    sdist = sb.ensure_sdist(cache)
    flags = cmake_flags(spec, cache)
    key = build_key(spec, sb.sha256(sdist), portable(flags, cache))
    built = cache / "builds" / key
    if not (built / "variant.json").is_file():
        built = _build_into_cache(spec, sdist, flags, key, cache, jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{spec.name}-"))
    shutil.copytree(built, staged, dirs_exist_ok=True)
    return vj.replace_dir(staged, out_dir / spec.name)
