"""scripts/build_variants.py: ELF facts on real files, npm and source variants that really load."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

NPM_SPEC = "@node-llama-cpp/linux-x64@3.22.1"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("readelf") is None,
    reason="variant folders are built on Linux with binutils' readelf",
)

# Captured from `readelf -d -W libllama.v0.5.0.so` (npm @node-llama-cpp/linux-x64@3.22.1).
READELF_DYNAMIC = """
Dynamic section at offset 0x468d08 contains 33 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libggml.v0.5.0.so]
 0x0000000000000001 (NEEDED)             Shared library: [libggml-base.so]
 0x0000000000000001 (NEEDED)             Shared library: [libstdc++.so.6]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000e (SONAME)             Library soname: [libllama.v0.5.0.so]
 0x000000000000001d (RUNPATH)            Library runpath: [$ORIGIN:]
"""
# Captured from `readelf -V -W libgcc_s.so.1` (Debian 12), trimmed.
READELF_VERSIONS = """
Version definition section '.gnu.version_d' contains 2 entries:
  0x001c: Rev: 1  Flags: none  Index: 2  Cnt: 1  Name: GCC_3.0
Version needs section '.gnu.version_r' contains 1 entry:
  000000: Version: 1  File: libc.so.6  Cnt: 4
  0x0010:   Name: GLIBC_2.35  Flags: none  Version: 18
  0x0020:   Name: GLIBC_2.14  Flags: none  Version: 17
  0x0040:   Name: GLIBC_2.2.5  Flags: none  Version: 15
  0x0050:   Name: GLIBC_PRIVATE  Flags: none  Version: 14
"""


def _system_lib(soname: str) -> Path:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.strip().startswith(soname + " ") and "=>" in line:
            return Path(line.split("=>")[1].strip())
    pytest.skip(f"{soname} not in the loader cache")


@pytest.fixture
def system_folder(tmp_path: Path) -> Path:
    """Real system libraries copied into one folder: libstdc++ NEEDs libgcc_s."""
    for soname in ("libstdc++.so.6", "libgcc_s.so.1"):
        shutil.copyfile(_system_lib(soname), tmp_path / soname)
    return tmp_path


@pytest.fixture(scope="module")
def npm_folder(bv: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("npm")
    try:
        yield bv.npm_variant(NPM_SPEC, out)
    except bv.BuildVariantError as exc:  # not cached and no registry: nothing to test
        pytest.skip(f"cannot pack {NPM_SPEC}: {exc}")


def test_parse_dynamic_reads_captured_readelf(bv: ModuleType) -> None:
    found = bv.parse_dynamic(READELF_DYNAMIC)
    assert found["NEEDED"] == ["libggml.v0.5.0.so", "libggml-base.so", "libstdc++.so.6",
                               "libc.so.6"]
    assert found["SONAME"] == ["libllama.v0.5.0.so"]
    assert found["RUNPATH"] == ["$ORIGIN:"]


def test_parse_glibc_versions_ignores_definitions_and_private(bv: ModuleType) -> None:
    assert sorted(bv.parse_glibc_versions(READELF_VERSIONS)) == [(2, 2, 5), (2, 14), (2, 35)]
    assert bv.parse_glibc_versions("no version sections") == []


def test_elf_needed_on_real_system_library(bv: ModuleType, system_folder: Path) -> None:
    needed = bv.elf_needed(system_folder / "libstdc++.so.6")
    assert "libgcc_s.so.1" in needed and "libc.so.6" in needed


def test_glibc_floor_is_the_highest_needed_version(bv: ModuleType, system_folder: Path) -> None:
    libs = sorted(system_folder.iterdir())
    floor = bv.glibc_floor(libs)
    each = [bv.glibc_floor([lib]) for lib in libs]
    as_tuple = [tuple(int(p) for p in v.split(".")) for v in each]
    assert floor == each[as_tuple.index(max(as_tuple))]
    assert tuple(int(p) for p in floor.split(".")) >= (2, 2, 5)


def test_load_order_puts_dependencies_first(bv: ModuleType, system_folder: Path) -> None:
    order = bv.load_order(system_folder, ["libstdc++.so.6", "libgcc_s.so.1"])
    assert order == ["libgcc_s.so.1", "libstdc++.so.6"]
    assert bv.dependency_closure(system_folder, "libstdc++.so.6") == [
        "libstdc++.so.6", "libgcc_s.so.1"]


def test_cuda_architectures_reads_a_fatbin(bv: ModuleType, tmp_path: Path) -> None:
    def entry(kind: int, arch: int, payload: bytes) -> bytes:
        head = struct.pack("<HHIQ", kind, 0x0101, 64, len(payload)) + bytes(8)
        head += struct.pack("<HHI", 0, 0, arch)
        return head + bytes(64 - len(head)) + payload

    body = entry(1, 75, b"ptx" * 5) + entry(2, 86, b"cubin" * 3) + entry(2, 120, b"x")
    blob = b"junk" + struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body + b"tail"
    (tmp_path / "lib.so").write_bytes(blob)
    assert bv.cuda_architectures(tmp_path / "lib.so") == [("ptx", 75), ("sm", 86), ("sm", 120)]


def test_cache_root_follows_xdg(bv: ModuleType) -> None:
    assert bv.cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/llama-runtime-dev")
    assert bv.cache_root({"HOME": "/h"}) == Path("/h/.cache/llama-runtime-dev")


def test_write_variant_json_refuses_symlinks(bv: ModuleType, system_folder: Path) -> None:
    (system_folder / "libllama.so").symlink_to("libstdc++.so.6")
    facts = {"os": "linux", "arch": "x86_64", "backend": "cpu", "requires": {}, "plugins": [],
             "libraries": ["libgcc_s.so.1", "libllama.so"], "backend_dl": False,
             "python_requires": [], "external_libraries": [], "llama_cpp": "0.5.0",
             "source": "t", "description": "t"}
    with pytest.raises(bv.BuildVariantError, match="regular file"):
        bv.write_variant_json(system_folder, **facts)
    with pytest.raises(bv.BuildVariantError, match="last library must be libllama"):
        bv.write_variant_json(system_folder, **(facts | {"libraries": ["libgcc_s.so.1"]}))


def test_write_variant_json_refuses_files_it_does_not_list(bv: ModuleType, system_folder: Path) -> None:
    # the builder checks with publish's own validator (llama_runtime.variants.entry)
    shutil.copy2(system_folder / "libgcc_s.so.1", system_folder / "libllama.so")
    facts = {"os": "linux", "arch": "x86_64", "backend": "cpu", "requires": {}, "plugins": [],
             "libraries": ["libgcc_s.so.1", "libllama.so"], "backend_dl": False,
             "python_requires": [], "external_libraries": [], "llama_cpp": "0.5.0",
             "source": "t", "description": "t"}
    with pytest.raises(bv.BuildVariantError, match=r"holds libstdc\+\+\.so\.6, which .* does not list"):
        bv.write_variant_json(system_folder, **facts)
    assert not (system_folder / "variant.json").exists()
    (system_folder / "libstdc++.so.6").unlink()
    entry = bv.write_variant_json(system_folder, **facts)
    assert json.loads((system_folder / "variant.json").read_text()) == entry


def test_npm_variant_folder(bv: ModuleType, npm_folder: Path) -> None:
    meta = json.loads((npm_folder / "variant.json").read_text())
    assert npm_folder.name == "linux-x86_64-cpu"
    assert meta["libraries"] == ["libggml-base.so", "libggml.v0.5.0.so", "libllama.v0.5.0.so"]
    assert "libggml-cpu-x64.so" in meta["plugins"] and "libggml-cpu-sse42.so" in meta["plugins"]
    assert meta["requires"]["glibc"] == "2.34" and meta["requires"]["x86_64_level"] == 1
    assert meta["backend_dl"] is True and meta["llama_cpp"] == "0.5.0"
    shipped = {p.name for p in npm_folder.iterdir()}
    assert shipped == {*meta["libraries"], *meta["plugins"], "variant.json"}
    assert not any(p.is_symlink() for p in npm_folder.iterdir())


def test_npm_variant_loads_with_ctypes(bv: ModuleType, npm_folder: Path) -> None:
    out = bv.smoke_load(npm_folder)
    assert "devices: 0" not in out and "CPU :" in out


def test_cli_reports_each_variant(bv: ModuleType, npm_folder: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert bv.main([str(tmp_path), "--npm", NPM_SPEC]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("linux-x86_64-cpu ") and "MiB" in line
    assert (tmp_path / "linux-x86_64-cpu" / "variant.json").is_file()


def test_cli_error_is_one_message(bv: ModuleType, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert bv.main([str(tmp_path), "--npm", "@node-llama-cpp/linux-x64"]) == 1
    assert "give a pinned spec" in capsys.readouterr().err


@pytest.mark.slow
def test_source_variant_v3_builds_and_loads(bv: ModuleType, tmp_path: Path) -> None:
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("a source build needs cmake and a C++ compiler")
    folder = bv.source_variant("v3", tmp_path)
    meta = json.loads((folder / "variant.json").read_text())
    assert folder.name == "linux-x86_64-cpu-v3" and meta["backend_dl"] is False
    assert meta["libraries"][-1] == "libllama.so"
    assert meta["libraries"].index("libggml-base.so") < meta["libraries"].index("libggml.so")
    assert meta["requires"]["x86_64_level"] == 3
    assert meta["requires"]["cpu_features"] == ["avx", "avx2", "fma", "f16c", "bmi2"]
    for name in meta["libraries"]:
        assert bv.parse_dynamic(bv.readelf("-d", folder / name))["RUNPATH"] == ["$ORIGIN"]
        assert bv.elf_soname(folder / name) in (name, None)
    assert "AVX2 = 1" in bv.smoke_load(folder)
    again = bv.source_variant("v3", tmp_path / "again")  # from the build cache this time
    assert json.loads((again / "variant.json").read_text()) == meta


def test_flavors_are_consistent(bv: ModuleType) -> None:
    omp, lite = bv.FLAVORS["omp"], bv.FLAVORS["omp-lite"]
    # the lite build is the same variant (name, flags), only fewer plugins
    assert omp.name == lite.name == "linux-x86_64-cpu-omp" and omp.cmake == lite.cmake
    assert {"-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON",
            "-DGGML_OPENMP=ON"} <= set(omp.cmake)
    assert omp.build_steps() == ((),) and omp.backend_dl and omp.x86_64_level == 1
    assert lite.build_steps()[0] == ("ggml-base", *(f"ggml-cpu-{t}" for t in lite.cpu_variants))
    assert lite.build_steps()[-1] == ("llama/fast",)
    assert set(lite.cpu_variants) <= set(bv.ALL_X86_CPU_VARIANTS)
    # a backend_dl variant needs what its least demanding plugin needs
    bv.check_plugin_needs(omp, [f"libggml-cpu-{t}.so" for t in bv.ALL_X86_CPU_VARIANTS])
    bv.check_plugin_needs(lite, [f"libggml-cpu-{t}.so" for t in lite.cpu_variants])
    with pytest.raises(bv.BuildVariantError, match="least demanding plugin x64"):
        bv.check_plugin_needs(lite, ["libggml-cpu-x64.so", "libggml-cpu-haswell.so"])
    portable = bv.FLAVORS["portable"]
    assert portable.x86_64_level == 1 and portable.cpu_features == ()
    assert not any(f.endswith("=ON") and "OPENMP" not in f for f in portable.cmake)
    noomp = bv.FLAVORS["v3-noomp"]
    assert noomp.openmp is False and "-DGGML_OPENMP=OFF" in noomp.cmake
    for name in bv.DEFAULT_FLAVORS:
        assert name in bv.FLAVORS
    # a different plugin set is a different build
    flags = (*bv.BASE_CMAKE, *omp.cmake)
    lite_flags = (*flags, *lite.build_steps()[0])
    assert bv.build_key("0" * 64, flags) != bv.build_key("0" * 64, lite_flags)


@pytest.mark.slow
def test_source_variant_omp_lite_bundles_libgomp_for_its_plugins(bv: ModuleType,
                                                                  tmp_path: Path) -> None:
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("a source build needs cmake and a C++ compiler")
    folder = bv.source_variant("omp-lite", tmp_path)
    meta = json.loads((folder / "variant.json").read_text())
    assert folder.name == "linux-x86_64-cpu-omp" and meta["backend_dl"] is True
    assert meta["plugins"] == sorted(f"libggml-cpu-{t}.so" for t in bv.LITE_X86_CPU_VARIANTS)
    # only the plugins NEED libgomp: it is shipped and loaded first
    assert meta["libraries"][0] == "libgomp.so.1" and meta["libraries"][-1] == "libllama.so"
    assert meta["requires"]["x86_64_level"] == 3  # what its least demanding plugin (haswell) needs
    assert meta["requires"]["cpu_features"] == ["avx", "avx2", "fma", "f16c", "bmi2"]
    assert meta["external_libraries"] == [] and meta["priority"] == bv.FLAVORS["omp-lite"].priority
    shipped = {p.name for p in folder.iterdir()}
    assert shipped == {*meta["libraries"], *meta["plugins"], "variant.json"}
    for name in [*meta["libraries"], *meta["plugins"]]:
        assert bv.parse_dynamic(bv.readelf("-d", folder / name))["RUNPATH"] == ["$ORIGIN"]
    for plugin in meta["plugins"]:
        assert "libgomp.so.1" in bv.elf_needed(folder / plugin)
    info = bv.smoke_load(folder)
    assert "OPENMP = 1" in info and "AVX2 = 1" in info and "devices: 0" not in info


def test_the_one_load_order_puts_dependencies_first_and_names_a_cycle() -> None:
    from scripts.binfacts.order import dependency_order

    needs = {"libllama": ["libggml", "libggml-base"], "libggml": ["libggml-base"], "libggml-base": []}
    assert dependency_order(["libllama"], needs.__getitem__, ValueError) == ["libggml-base", "libggml", "libllama"]
    needs["libggml-base"] = ["libllama"]
    with pytest.raises(ValueError) as err:
        dependency_order(["libllama"], needs.__getitem__, lambda path: ValueError(" -> ".join(path)))
    assert str(err.value) == "libllama -> libggml -> libggml-base -> libllama"
