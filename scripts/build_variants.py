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
    the sapphirerapids plugin alone from the unpatched source (tests/e2e/test_amx.py's reference).

Every flavor but ``amx-unpatched`` is built from the vendored source with ``scripts/patches/``
applied (``source_patches.py``: a patched copy per patch set; the patches are part of the build
key). A patched build whose sapphirerapids plugin does not provably load ggml's AMX tile
configuration (``amx_tilecfg.py``, issue 14) is refused.

Usage: ``python -m scripts.build_variants OUT [--npm PKG@VER ...] [--source-build FLAVOR ...]``
(no source flags: ``linux-x86_64-cpu`` (npm) plus the flavors of ``LLAMA_RUNTIME_DEV_FLAVORS``,
default ``v3,omp-lite``; ``--all-default``: every cell of the release matrix,
scripts/matrix.py). Timings and the speed comparison: benchmarks/NOTES.md.

The pieces, one job each: ``binfacts/`` (ELF, PE, Mach-O, fatbin, AMX readers),
``variant_json.py`` (writing and validating a folder), ``npm_source.py`` (+ ``npm_cuda.py``,
``npm_macos.py``), ``flavors.py`` (the flavors as data) and ``source_builds.py``
(+ ``cross_builds.py``, ``windows_build.py``). This module is the command line and the one import
the tests and benchmarks need.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from scripts import cross_builds
from scripts.binfacts.elf import (
    cuda_architectures,
    dependency_closure,
    elf_needed,
    elf_soname,
    glibc_floor,
    libstdcxx_floor,
    load_order,
    parse_dynamic,
    parse_glibc_versions,
    readelf,
)
from scripts.flavors import (
    ALL_X86_CPU_VARIANTS,
    BASE_CMAKE,
    DEFAULT_FLAVORS,
    DL_CMAKE,
    FLAVORS,
    LITE_X86_CPU_VARIANTS,
    RECIPE,
    SDIST_REQUIREMENT,
    V3_FEATURES,
    VENDOR_DIR,
    X86_PLUGIN_NEEDS,
    Flavor,
)
from scripts.npm_source import (
    DEFAULT_NPM,
    MACOS_NPM,
    npm_macos_variant,
    npm_pack,
    npm_variant,
    unpack_npm_bins,
)
from scripts.source_builds import (
    build_key,
    check_amx_plugins,
    check_plugin_needs,
    cmake_build,
    ensure_sdist,
    extract_vendor,
    llama_version,
    native_variant,
    patchelf,
    patches_of,
    sha256,
    source_tree,
)
from scripts.tools import (
    BuildVariantError,
    cache_root,
    run,
    tool,
)
from scripts.variant_json import (
    BACKEND_EXTERNAL,
    CUDA_MIN_DRIVER,
    SYSTEM_LIBS,
    folder_size,
    library_facts,
    replace_dir,
    write_variant_json,
)

# the builder's surface, for the tests, benchmarks and the sibling builders
__all__ = [
    "all_flavors", "ALL_X86_CPU_VARIANTS", "BACKEND_EXTERNAL", "BASE_CMAKE", "build_key",
    "BuildVariantError", "cache_root", "check_amx_plugins", "check_plugin_needs", "cmake_build",
    "cuda_architectures", "CUDA_MIN_DRIVER", "default_flavors", "DEFAULT_FLAVORS", "DEFAULT_NPM",
    "dependency_closure", "DL_CMAKE", "elf_needed", "elf_soname", "ensure_sdist",
    "extract_vendor", "Flavor", "FLAVORS", "folder_size", "glibc_floor", "libstdcxx_floor", "library_facts",
    "LITE_X86_CPU_VARIANTS", "llama_version", "load_order", "MACOS_NPM", "main", "native_variant",
    "npm_macos_variant", "npm_pack", "npm_variant", "parse_dynamic", "parse_glibc_versions",
    "patchelf", "patches_of", "readelf", "RECIPE", "replace_dir", "run", "SDIST_REQUIREMENT",
    "sha256", "smoke_load", "source_tree", "source_variant", "SYSTEM_LIBS", "tool",
    "unpack_npm_bins", "V3_FEATURES", "VENDOR_DIR", "write_variant_json", "X86_PLUGIN_NEEDS",
]


def all_flavors() -> list[str]:
    """Every ``--source-build`` name: FLAVORS here plus cross_builds.CROSS_FLAVORS."""
    return sorted([*FLAVORS, *cross_builds.CROSS_FLAVORS])


def source_variant(flavor: str, out_dir: Path, *, cache: Path | None = None,
                   jobs: int = 2) -> Path:
    """Build (or copy from the build cache) one source flavor, native or cross, into
    ``out_dir/<variant-name>/``."""
    if flavor not in FLAVORS and flavor in cross_builds.CROSS_FLAVORS:
        return cross_builds.cross_variant(flavor, out_dir, cache=cache, jobs=jobs)
    if flavor not in FLAVORS:
        raise BuildVariantError(f"unknown flavor {flavor!r}; known: {all_flavors()}")
    return native_variant(flavor, out_dir, cache=cache, jobs=jobs)


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
    return run([sys.executable, "-c", SMOKE, str(folder)], f"loading {folder}", env=clean)


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
        from scripts.windows_build import windows_variant

        return windows_variant(what, out, jobs=jobs)
    return source_variant(what, out, jobs=jobs)


def _qualify(folders: Sequence[Path]) -> None:
    """Every CPU plugin of every folder on every quant type, in children (scripts/qualify_variants.py)."""
    from scripts import qualify_variants

    start = time.monotonic()
    records, failures = qualify_variants.qualify_and_record(folders)
    for name, record in records.items():
        print(qualify_variants.line(name, record))
    print(f"  qualification took {time.monotonic() - start:.1f} s (cached by file hashes)")
    if failures:
        raise BuildVariantError("qualification refused:\n  " + "\n  ".join(failures))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
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
    return parser


def _jobs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(kind, what) to produce, in order, without repeats."""
    from scripts import matrix

    default = not (args.all_default or args.npm or args.source_build or args.macos
                   or args.windows)
    jobs = matrix.jobs(args.full) if args.all_default else []
    jobs += [("npm", spec) for spec in [*([DEFAULT_NPM] if default else []), *args.npm,
                                        *(MACOS_NPM if args.macos else ())]]
    flavors = default_flavors(os.environ) if default else ()
    jobs += [("source", f) for f in [*flavors, *args.source_build]]
    jobs += [("windows", f) for f in args.windows]
    return list(dict.fromkeys(jobs))


def _npm_inputs(spec: str) -> list[Path]:
    """The tarballs an npm job reads (a CUDA 12 ``-cuda-ext`` one reads the CUDA package too)."""
    cache = cache_root(os.environ)
    specs = [spec, spec.replace("-cuda-ext@", "-cuda@")] if "-cuda-ext@" in spec else [spec]
    return [npm_pack(s, cache) for s in specs]


def _one(kind: str, what: str, args: argparse.Namespace, cut: frozenset[str]) -> list[Path]:
    """One job, or its folders as made last time when nothing changed (scripts/uptodate.py)."""
    from scripts import uptodate

    if kind != "npm":  # source builds: a copy from the build cache, a fraction of a second
        return _make(kind, what, args, cut)
    start = time.monotonic()
    cuts = bool(args.cuda_targets or cut)  # the one-target copies are part of what it makes
    key = uptodate.job_key(f"{kind} cuts={cuts}", what, _npm_inputs(what))
    made = uptodate.current(args.out, kind, what, key)
    if made is not None:
        print(f"{made[0].name:24} {kind} {what:40} current ({len(made)} folder(s), "
              f"{time.monotonic() - start:.1f} s)", flush=True)
        return made
    made = _make(kind, what, args, cut)
    uptodate.remember(args.out, kind, what, key, made)
    return made


def _make(kind: str, what: str, args: argparse.Namespace, cut: frozenset[str]) -> list[Path]:
    """Produce one variant (and its one-target copies when asked); print a line for each."""
    start = time.monotonic()
    folder = _produce(kind, what, args.out, args.jobs)
    meta = json.loads((folder / "variant.json").read_text())
    here = {"linux": "linux", "darwin": "macos"}.get(sys.platform)
    if not args.no_check and (meta["os"], meta["arch"]) == (here, os.uname().machine):
        smoke_load(folder)
    print(f"{folder.name:24} {kind} {what:40} {folder_size(folder) / 2**20:7.1f} MiB "
          f"{time.monotonic() - start:6.1f} s  {folder}", flush=True)
    made = [folder]
    if (args.cuda_targets or folder.name in cut) and (folder / "libggml-cuda.so").is_file():
        from scripts import npm_cuda

        start = time.monotonic()
        for one in npm_cuda.target_variants(folder, args.out):
            print(f"{one.name:24} cut  {folder.name:40} {folder_size(one) / 2**20:7.1f} MiB")
            made.append(one)
        print(f"  one-target copies of {folder.name}: {time.monotonic() - start:.1f} s", flush=True)
    return made


def main(argv: Sequence[str] | None = None) -> int:
    from scripts import matrix

    args = _parser().parse_args(argv)
    started = time.monotonic()
    try:
        cut = matrix.cuda_target_variants() if args.all_default else frozenset()
        folders = [f for kind, what in _jobs(args) for f in _one(kind, what, args, cut)]
        if not args.no_qualify:
            _qualify(folders)
    except BuildVariantError as exc:
        print(f"build_variants: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(folders)} variant folders in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
