"""The source-built flavors as data: CMake flags, CPU plugins and what each needs from the CPU
(native x86 builds: source_builds.py; aarch64 and glibc-2.28 builds: cross_builds.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
    # only as the sole plugin of the unpatched AMX reference build (tests/e2e/test_amx.py)
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
    # kept (cached like the others) so tests/e2e/test_amx.py proves its check catches the defect.
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


# --------------------------------------------------------------------------- cross builds
# (scripts/cross_builds.py builds them: gcc for aarch64, zig for glibc 2.28)
GLIBC_TARGET = "2.28"  # RHEL/Alma/Rocky 8, Debian 10: the oldest glibc still widely supported

# The ARM plugins GGML_CPU_ALL_VARIANTS defines for Linux in this llama.cpp
# (ggml/src/CMakeLists.txt), least demanding first, with the -march each one gets
# (ggml/src/ggml-cpu/CMakeLists.txt).
ALL_ARM_CPU_VARIANTS: Mapping[str, str] = {
    "armv8.0_1": "armv8-a",
    "armv8.2_1": "armv8.2-a+dotprod",
    "armv8.2_2": "armv8.2-a+dotprod+fp16",
    "armv8.2_3": "armv8.2-a+dotprod+fp16+sve",
    "armv8.6_1": "armv8.6-a+dotprod+fp16+sve+i8mm",
    "armv8.6_2": "armv8.6-a+dotprod+fp16+sve+i8mm+sve2",
    "armv9.2_1": "armv9.2-a+dotprod+fp16+sve+i8mm+sme",
    "armv9.2_2": "armv9.2-a+dotprod+fp16+sve+i8mm+sve2+sme",
}
# gcc 12 (Debian 12's cross compiler) rejects -march=armv9.2-a+...+sme ("unknown value"):
# SME arrived in GCC 14. The two SME plugins are left out of the gcc build.
GCC12_ARM_CPU_VARIANTS = tuple(t for t in ALL_ARM_CPU_VARIANTS if not t.startswith("armv9"))
DL_BASE = ("-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_NATIVE=OFF")
# zig links its libc++/libunwind with their debug info into every library (libllama: 39 MB
# instead of 4); -s strips at link time.
ZIG_DL = (*DL_BASE, "-DGGML_OPENMP=OFF", "-DCMAKE_SHARED_LINKER_FLAGS=-s",
          "-DCMAKE_MODULE_LINKER_FLAGS=-s")


@dataclass(frozen=True)
class CrossFlavor(Flavor):
    """A :class:`Flavor` built by another toolchain (scripts/cross_builds.py), for ``arch``.

    The x86 ones get build_variants' source patches (scripts/patches/: the AMX tile config of
    issue 14) and its AMX check; the aarch64 ones are built from the pristine source
    (``patched=False``): the only patch changes ggml-cpu/amx/mmq.cpp inside ``__AMX_INT8__``
    code that no ARM plugin compiles, so the ARM binaries are the same either way.
    """

    arch: str = "x86_64"
    toolchain: str = "gnu-aarch64"  # or "zig"
    glibc_target: str | None = None  # zig only: the glibc its stubs stand for


LITE = LITE_X86_CPU_VARIANTS
CROSS_FLAVORS: Mapping[str, CrossFlavor] = {
    # gcc 12 cross build: 6 of the 8 ARM plugins, OpenMP (libgomp bundled), like x86's omp.
    "aarch64-omp": CrossFlavor(
        name="linux-aarch64-cpu-omp", cmake=(*DL_BASE, "-DGGML_OPENMP=ON"), x86_64_level=0,
        cpu_features=(), openmp=True, backend_dl=True, cpu_variants=GCC12_ARM_CPU_VARIANTS,
        priority=30, arch="aarch64", toolchain="gnu-aarch64", patched=False,
        summary="GGML_BACKEND_DL with the ARM CPU plugins armv8.0 to armv8.6 (NEON, dotprod, "
                "fp16, SVE, i8mm, SVE2; ggml picks one at run time), OpenMP"),
    # The old-glibc fallbacks: ranked below every other CPU build (priority), so selection
    # takes one only where the newer builds cannot run (glibc < 2.34/2.35).
    "glibc228": CrossFlavor(
        name="linux-x86_64-cpu-glibc228", cmake=ZIG_DL, x86_64_level=1,
        cpu_features=(), openmp=False, backend_dl=True, priority=-50, toolchain="zig",
        glibc_target=GLIBC_TARGET,
        summary="GGML_BACKEND_DL with all 14 x86 CPU plugins, built by zig for glibc 2.28, "
                "ggml thread pool (no OpenMP), libc++ linked in"),
    "glibc228-lite": CrossFlavor(
        name="linux-x86_64-cpu-glibc228", cmake=ZIG_DL, x86_64_level=3,
        cpu_features=V3_FEATURES, openmp=False, backend_dl=True, cpu_variants=LITE,
        priority=-50, toolchain="zig", glibc_target=GLIBC_TARGET,
        summary="GGML_BACKEND_DL with the haswell/skylakex/sapphirerapids CPU plugins, built "
                "by zig for glibc 2.28, ggml thread pool (no OpenMP), libc++ linked in"),
    "aarch64-glibc228": CrossFlavor(
        name="linux-aarch64-cpu-glibc228", cmake=ZIG_DL,
        x86_64_level=0, cpu_features=(), openmp=False, backend_dl=True, priority=-50,
        cpu_variants=tuple(ALL_ARM_CPU_VARIANTS), arch="aarch64", toolchain="zig", patched=False,
        glibc_target=GLIBC_TARGET,
        summary="GGML_BACKEND_DL with all 8 ARM CPU plugins (up to SVE2/SME), built by zig "
                "for glibc 2.28, ggml thread pool (no OpenMP), libc++ linked in"),
}
