"""Linux aarch64 variants run for real, under qemu-aarch64: our gcc cross build
(``linux-aarch64-cpu-omp``, scripts/cross_builds.py), npm's (``linux-aarch64-cpu``) and our zig
glibc-2.28 build (``linux-aarch64-cpu-glibc228``).

greedy.c, cross-compiled with aarch64-linux-gnu-gcc, loads each folder the way the loader does
(libllama by path, ``ggml_backend_load_all_from_path``), under several ``-cpu`` models so that
ggml picks different ARM plugins; its greedy ids on a tiny f16 model and on that model quantized
(by the x86 libllama's own ``llama_model_quantize``) are compared with the x86 npm build's,
within the near-tie tolerance of tests/_cross.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from . import _cross
    from ._cross_quantize import quantize
except ImportError:
    import _cross  # type: ignore[no-redef]
    from _cross_quantize import quantize  # type: ignore[no-redef]

from scripts import build_variants as bv
from scripts import cross_builds
from scripts.tiny_model import write_tiny_llama

NPM_ARM = "@node-llama-cpp/linux-arm64@3.22.1"
PROMPT = "the llama runtime is a small model of the world"
N_GEN = 24
# qemu-aarch64 7.2 CPU models and the HWCAPs each reports (measured with hwcaps.c):
# cortex-a53 none (ggml picks armv8.0_1), neoverse-n1 dotprod+fp16 (armv8.2_2), max,sme=off
# everything up to SVE2 (armv8.6_2), max everything incl. SME (npm and zig builds: armv9.2_2;
# the gcc build has no SME plugin: armv8.6_2). a64fx (fp16+sve, no dotprod: armv8.0_1) and max,sve=off (armv8.2_2)
# were measured too and pick plugins already covered here.
CPUS = ("cortex-a53", "neoverse-n1", "max,sme=off", "max")
# Largest top-1/top-2 logit margin at which a divergence counts as a near-tie flip. Measured
# here over 32 tokens, both aarch64 variants, 6 -cpu models, against x86 npm (zen4 plugin) and
# v3 (AVX2): the top-1/top-2 margins of the two CPUs differ by at most 0.034 (f16), 0.33 (Q8_0)
# and 0.26 (Q4_0) at the steps where they agree (each CPU quantizes the activations to q8 with
# its own kernels); the only divergence is Q4_0 on the i8mm/SVE plugins (armv8.6_2, armv9.2_2)
# at step 17, where x86's margin was 0.043 (0.069 for v3) and ARM took x86's runner-up. The
# bounds are about 1.5-3x the measured noise and far below the margins where the model is sure.
MAX_MARGIN = {"f16": 0.1, "Q8_0": 0.5, "Q4_0": 0.5}

pytestmark = pytest.mark.skipif(bool(_cross.missing_tools()),
                                reason=f"apt-get install {' '.join(_cross.missing_tools())} "
                                       "(scripts/dev installs them)")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aarch64")


# variant -> how it is made (cached builds: seconds after the first run)
MAKERS = {
    "linux-aarch64-cpu-omp": lambda out: bv.source_variant("aarch64-omp", out),
    "linux-aarch64-cpu": lambda out: bv.npm_variant(NPM_ARM, out),
    "linux-aarch64-cpu-glibc228": lambda out: bv.source_variant("aarch64-glibc228", out),
}


class _Folders(dict):  # type: ignore[type-arg]
    """Each variant made on first use, so one failing build fails only its own tests."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def __missing__(self, name: str) -> Path:
        self[name] = MAKERS[name](self.out)
        return self[name]


@pytest.fixture(scope="module")
def arm_folders(work: Path) -> dict[str, Path]:
    return _Folders(work / "v")


@pytest.fixture(scope="module")
def x86_folder(work: Path) -> Path:
    return bv.npm_variant(bv.DEFAULT_NPM, work / "x86")


@pytest.fixture(scope="module")
def models(work: Path, x86_folder: Path) -> dict[str, Path]:
    """A tiny f16 llama (rows of 256 so every quant type fits) and it quantized by x86 llama.cpp."""
    f16 = write_tiny_llama(work / "f16.gguf", seed=3, f16=True, n_embd=256, n_ff=512)
    out = {"f16": f16}
    for kind in ("Q8_0", "Q4_0"):
        out[kind] = quantize(x86_folder, f16, work / f"{kind}.gguf", kind)
    return out


@pytest.fixture(scope="module")
def references(work: Path, x86_folder: Path, models: dict[str, Path]) -> dict[str, _cross.Trace]:
    exe = _cross.build_greedy(x86_folder, work / "greedy-x86")
    return {kind: _cross.run_greedy([], exe, path, PROMPT, N_GEN, x86_folder)
            for kind, path in models.items()}


def _arm_greedy(work: Path, name: str, folder: Path) -> Path:
    exe = work / f"greedy-{name}"
    if not exe.exists():
        _cross.build_greedy(folder, exe, cc="aarch64-linux-gnu-gcc")
    return exe


@pytest.fixture(scope="module")
def hwcaps_exe(work: Path) -> Iterator[Path]:
    yield _cross.cross_gcc(_cross.HWCAPS, work / "hwcaps")


def test_cross_build_is_aarch64_and_bundles_libgomp(arm_folders: dict[str, Path]) -> None:
    folder = arm_folders["linux-aarch64-cpu-omp"]
    meta = json.loads((folder / "variant.json").read_text())
    assert meta["arch"] == "aarch64" and meta["requires"]["x86_64_level"] is None
    assert meta["libraries"][0] == "libgomp.so.1"  # mapped before ggml opens its plugins
    tags = [p.removeprefix("libggml-cpu-").removesuffix(".so") for p in meta["plugins"]]
    assert tags == list(cross_builds.GCC12_ARM_CPU_VARIANTS)
    for name in [*meta["libraries"], *meta["plugins"]]:
        assert cross_builds.elf_machine(folder / name) == "aarch64", name
        assert bv.parse_dynamic(bv.readelf("-d", folder / name))["RUNPATH"] == ["$ORIGIN"]
    assert meta["requires"]["glibc"] == cross_builds.floor_report(folder)["glibc"]


def test_npm_arm64_folder(arm_folders: dict[str, Path]) -> None:
    meta = json.loads((arm_folders["linux-aarch64-cpu"] / "variant.json").read_text())
    assert meta["arch"] == "aarch64" and len(meta["plugins"]) == len(cross_builds.ALL_ARM_CPU_VARIANTS)


def test_zig_build_has_every_arm_plugin_and_an_old_glibc_floor(
        arm_folders: dict[str, Path]) -> None:
    """zig's clang knows SME (gcc 12 does not): all 8 plugins, nothing above GLIBC_2.28."""
    folder = arm_folders["linux-aarch64-cpu-glibc228"]
    meta = json.loads((folder / "variant.json").read_text())
    tags = [p.removeprefix("libggml-cpu-").removesuffix(".so") for p in meta["plugins"]]
    assert sorted(tags) == sorted(cross_builds.ALL_ARM_CPU_VARIANTS)
    report = cross_builds.floor_report(folder)
    assert tuple(map(int, report["glibc"].split("."))) <= (2, 28), report
    assert report["libstdcxx"] is None and not report["openmp"]
    for name in [*meta["libraries"], *meta["plugins"]]:
        assert cross_builds.elf_machine(folder / name) == "aarch64", name


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("variant", list(MAKERS))
def test_greedy_under_qemu_matches_x86(variant: str, cpu: str, arm_folders: dict[str, Path],
                                       work: Path, hwcaps_exe: Path, models: dict[str, Path],
                                       references: dict[str, _cross.Trace]) -> None:
    folder = arm_folders[variant]
    exe = _arm_greedy(work, variant, folder)
    built = {p.removeprefix("libggml-cpu-").removesuffix(".so")
             for p in json.loads((folder / "variant.json").read_text())["plugins"]}
    plugins = {t: m for t, m in cross_builds.ALL_ARM_CPU_VARIANTS.items() if t in built}
    want = _cross.expected_plugin(plugins, _cross.hwcaps(hwcaps_exe, cpu))
    for kind, model in models.items():
        got = _cross.run_greedy(_cross.qemu(cpu), exe, model, PROMPT, N_GEN, folder)
        assert got.plugin == want, (kind, got.plugin)
        ref = references[kind]
        assert len(ref.ids) >= 8 and len(set(ref.ids)) > 2  # a real comparison
        problem = _cross.tolerance_problem(ref, got, MAX_MARGIN[kind])
        assert problem is None, f"{variant} -cpu {cpu} ({want}) on {kind}: {problem}"
