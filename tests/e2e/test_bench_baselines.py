"""The benchmark machinery of issue 14.8 that a wrong result would hide in: the llama-cpp-python
baseline "without AMX" really has no AMX code, and a library that dies in B4/B7 becomes a result
row naming the signal, the function and the library instead of a failed benchmark."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
from benchmarks import b7_native  # noqa: E402
from benchmarks.common import crash  # noqa: E402

from _ggml_source import pinned_ggml  # noqa: E402

AMX_OPS = re.compile(r"\b(ldtilecfg|tilezero|tileloadd|tileloaddt1|tilestored|tdpbssd|tdpbsud|tdpbusd|tdpbuud|tdpbf16ps)\b")
# what gcc's driver makes of -march=native on an AMX Xeon: explicit -m flags at its place, after
# CMAKE_CXX_FLAGS (`gcc -march=native -###` shows the same expansion on any CPU)
NATIVE_ON_AMX = ["-march=sapphirerapids", "-mamx-tile", "-mamx-int8", "-mamx-bf16"]


def _amx_instructions(flags: list[str], tmp: Path) -> int:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++ here (apt-get install g++): the AMX source cannot be compiled")
    ggml = pinned_ggml()
    obj = tmp / "mmq.o"
    subprocess.run([cxx, "-std=c++17", "-O1", "-c", *flags, *NATIVE_ON_AMX, "-I", str(ggml / "include"),
                    "-I", str(ggml / "src"), "-I", str(ggml / "src" / "ggml-cpu"),
                    str(ggml / "src" / "ggml-cpu" / "amx" / "mmq.cpp"), "-o", str(obj)], check=True)
    dis = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
    return len(AMX_OPS.findall(dis))


def _recipe_flags(flavor: str) -> list[str]:
    """The compiler flags a flavor hands CMake through CMAKE_CXX_FLAGS."""
    got = [a.split("=", 1)[1] for a in b7_native.NATIVE_FLAVORS[flavor] if a.startswith("-DCMAKE_CXX_FLAGS=")]
    return got[0].split() if got else []


@pytest.mark.slow  # the pinned source, compiled (~20 s)
def test_the_noamx_baseline_compiles_ggml_amx_kernels_out(tmp_path: Path) -> None:
    with_amx = _amx_instructions(_recipe_flags("native"), tmp_path)
    without = _amx_instructions(_recipe_flags("native-noamx"), tmp_path)
    assert with_amx > 50, f"the control build of amx/mmq.cpp has only {with_amx} AMX instructions"
    assert without == 0, f"the no-AMX recipe still leaves {without} AMX instructions in amx/mmq.cpp"


@pytest.mark.slow  # the pinned source, compiled (~15 s)
def test_mno_amx_before_native_would_not_have_worked(tmp_path: Path) -> None:
    """Why the recipe undefines macros: -mno-amx-* placed where CMAKE_CXX_FLAGS go is overridden."""
    assert _amx_instructions(["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"], tmp_path) > 50


def test_each_native_build_is_keyed_by_what_native_means_here(monkeypatch: pytest.MonkeyPatch) -> None:
    target = b7_native.native_target()
    assert any(f.startswith("-march=") for f in target), target
    assert {"-mavx2", "-mno-avx2"} & set(target), f"no ISA flags in {target}"
    here = {f: b7_native.venv_path(f) for f in b7_native.NATIVE_FLAVORS}
    assert len(set(here.values())) == len(here), here
    # another CPU (or compiler) means another -march=native: another folder, never a stale build
    monkeypatch.setattr(b7_native, "native_target", lambda: [*target, "-mamx-int8"])
    assert all(b7_native.venv_path(f) != path for f, path in here.items())


@pytest.fixture(scope="module")
def v3_driver(tmp_path_factory: pytest.TempPathFactory) -> tuple[b7_native.Lib, Path, Path]:
    """bench_llama.c built against the v3 source build, and a tiny model."""
    from scripts import devrelease
    from scripts.tiny_model import write_tiny_llama

    folder = devrelease.dev_cache() / "variants" / "linux-x86_64-cpu-v3"
    if not (folder / "variant.json").is_file():
        devrelease.build_variant_dirs(devrelease.dev_cache() / "variants")
    work = tmp_path_factory.mktemp("bench")
    lib = b7_native.Lib.variant(folder)
    return lib, b7_native.build_c(lib, work), write_tiny_llama(work / "tiny.gguf")


def _qemu_without_avx2() -> list[str]:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("no qemu-x86_64 (apt-get install qemu-user): no CPU here lacks what the v3 build needs")
    return [qemu, "-cpu", "Westmere"]  # SSE4.2, no AVX: the AVX2 build must die of SIGILL


def test_a_normal_run_is_no_crash_and_reports_cpu_time(v3_driver: tuple[b7_native.Lib, Path, Path]) -> None:
    _, exe, model = v3_driver
    p = subprocess.run([str(exe), str(model), "hello world", "0", "4", "1", "1"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert crash(p) is None
    assert '"gen_cpu_s": ' in p.stdout and '"prompt_cpu_s": ' in p.stdout


def test_a_sigill_names_the_function_and_the_library(v3_driver: tuple[b7_native.Lib, Path, Path]) -> None:
    _, exe, model = v3_driver
    p = subprocess.run([*_qemu_without_avx2(), str(exe), str(model), "hello world", "0", "4", "1", "1"],
                       capture_output=True, text=True)
    where = crash(p)
    assert p.returncode == -4 and where is not None, (p.returncode, p.stderr[-500:])
    m = re.fullmatch(r"SIGILL in (\S.*) \((lib\S+\.so)\+0x[0-9a-f]+\)", where)
    assert m, where
    assert m.group(1) not in ("?", "??") and m.group(2).startswith("libggml"), where


def test_a_library_that_dies_is_a_result_not_a_failure(v3_driver: tuple[b7_native.Lib, Path, Path],
                                                       tmp_path: Path) -> None:
    lib, _, model = v3_driver
    dying = b7_native.Lib("v3-on-westmere", lib.libllama, lib.backend_dir, wrapper=tuple(_qemu_without_avx2()))
    data = b7_native.measure([lib, dying], tmp_path, model, rounds=2, reps=1, threads=1)
    assert data[lib.name]["crash"] is None and len(data[lib.name]["samples"]) == 2
    assert data[dying.name]["crash"].startswith("SIGILL in ") and not data[dying.name]["samples"]
    row = b7_native._row("prompt", "prompt", data[lib.name], data[dying.name], "baseline", "tok/s", True)
    assert row.ratio is None and row.met is None and "SIGILL in " in row.baseline_what
    row = b7_native._row("prompt", "prompt", data[dying.name], data[lib.name], "baseline", "tok/s", True)
    assert row.value is None and row.met is False and "SIGILL in " in row.note
