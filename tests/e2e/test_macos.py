"""The macOS variants: built from the real npm prebuilts, proven by structure, selected on real Macs.

Nothing here can run macOS code. What is proven is what the files say: every file is a Mach-O of
the variant's CPU with a macOS floor, every dependency resolves inside the unpacked archive or is
an OS library, every install name is what its dependents load, the functions the binding binds
are exported, and ggml's plugins export the entry points ggml looks up. Selection runs the real
``variant.json`` of both builds against profiles built from real ``sysctl`` captures
(``tests/data/sysctl``).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
from scripts.binfacts import macho  # noqa: E402
from golden_machines import load as load_machine  # noqa: E402

from llama_runtime.fetch.archive import safe_extract  # noqa: E402
from llama_runtime.release.pack import pack_variant  # noqa: E402
from llama_runtime.runtime.binformat import identify, wrong_format  # noqa: E402
from llama_runtime.errors import PublishError  # noqa: E402
from llama_runtime.install import platform_tag  # noqa: E402
from llama_runtime.native.functions import FUNCTIONS  # noqa: E402
from llama_runtime.release.publish import load_variant  # noqa: E402
from llama_runtime.variants import Manifest, select  # noqa: E402

MAC_NPM = {"arm64": "@node-llama-cpp/mac-arm64-metal@3.21.1", "x64": "@node-llama-cpp/mac-x64@3.21.1"}
MACHINES = REPO / "tests" / "data" / "machines"


@pytest.fixture(scope="module")
def mac(bv: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mac")
    try:
        return {k: bv.npm_variant(spec, out) for k, spec in MAC_NPM.items()}
    except bv.BuildVariantError as exc:  # not cached and no registry
        pytest.skip(f"cannot pack the macOS npm packages: {exc}")


def _meta(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "variant.json").read_text())
    return data


# --------------------------------------------------------------------------- Mach-O facts
def test_arm64_metal_variant_json_comes_from_the_files(mac: dict[str, Path]) -> None:
    meta = _meta(mac["arm64"])
    assert mac["arm64"].name == "macos-arm64-metal"
    assert (meta["os"], meta["arch"], meta["backend"], meta["llama_cpp"]) == \
        ("macos", "aarch64", "metal", "0.4.0")
    assert meta["libraries"] == ["libggml-base.dylib", "libggml.metal.v0.4.0.dylib",
                                 "libllama.metal.v0.4.0.dylib"]
    assert meta["plugins"] == ["libggml-blas.so", "libggml-cpu-apple_m1.so",
                               "libggml-cpu-apple_m2_m3.so", "libggml-cpu-apple_m4.so",
                               "libggml-metal.so"]
    assert meta["requires"]["macos"] == "14.0" and meta["requires"]["cpu_features"] == ["asimddp"]
    assert {"Metal", "Accelerate", "Foundation"} <= set(meta["frameworks"])
    assert all(lib.startswith("/usr/lib/") for lib in meta["system_libraries"])
    shipped = {p.name for p in mac["arm64"].iterdir()} - {"variant.json"}
    assert shipped == set(meta["libraries"]) | set(meta["plugins"])  # no libllama-common, addon


def test_x86_64_variant_json_comes_from_the_files(mac: dict[str, Path]) -> None:
    meta = _meta(mac["x64"])
    assert mac["x64"].name == "macos-x86_64-cpu"
    assert (meta["arch"], meta["backend"], meta["backend_dl"]) == ("x86_64", "cpu", True)
    assert meta["libraries"][-1] == "libllama.v0.4.0.dylib"
    # the x64 plugin is the least demanding of the 14: it runs on any x86-64
    assert meta["requires"]["x86_64_level"] == 1 and meta["requires"]["cpu_features"] == []
    assert "libggml-cpu-x64.so" in meta["plugins"] and meta["frameworks"] == ["Accelerate"]


@pytest.mark.parametrize("which", ["arm64", "x64"])
def test_every_file_is_a_mach_o_of_the_variants_cpu(mac: dict[str, Path], which: str) -> None:
    meta = _meta(mac[which])
    for name, facts in meta["macho"].items():
        found = identify(mac[which] / name)
        assert (found.format, found.archs) == ("Mach-O", (meta["arch"],)), name
        assert facts["minos"] == meta["requires"]["macos"], name
        kind = "dylib" if name.endswith(".dylib") else "bundle"
        assert facts["type"] == found.kind == kind, name
        assert facts["install_name"] == (f"@rpath/{name}" if kind == "dylib" else None)


@pytest.mark.parametrize("which", ["arm64", "x64"])
def test_the_unpacked_archive_resolves_every_dependency(mac: dict[str, Path], which: str,
                                                        tmp_path: Path) -> None:
    meta = _meta(mac[which])
    sha, size = pack_variant(mac[which], tmp_path / "v.tar.gz")
    assert size > 1_000_000 and len(sha) == 64
    safe_extract(tmp_path / "v.tar.gz", tmp_path / "unpacked")
    names = [*meta["libraries"], *meta["plugins"]]
    files = macho.folder_facts(tmp_path / "unpacked", names, meta["arch"])
    assert macho.load_order(files, meta["libraries"][-1]) == meta["libraries"]
    for name, facts in files.items():  # each plugin finds libggml-base through @loader_path
        inside = [d for d in facts.dependencies if not macho.is_system(d)]
        assert all(macho.resolve(d, facts, files) in meta["libraries"] for d in inside), name


@pytest.mark.parametrize("which", ["arm64", "x64"])
def test_the_binding_and_ggml_find_their_symbols(mac: dict[str, Path], which: str) -> None:
    meta = _meta(mac[which])
    folder = mac[which]
    libs = [macho.read_macho(folder / n) for n in meta["libraries"]]
    needed = [f.name for f in FUNCTIONS if not f.optional]
    assert len(needed) > 50 and macho.missing_exports(libs, needed) == []
    optional = [f.name for f in FUNCTIONS if f.optional]
    assert macho.missing_exports(libs, optional) == []  # the thread pool path too
    for plugin in meta["plugins"]:  # what ggml's loader dlsym()s: every plugin's init, and the
        exports = macho.read_macho(folder / plugin).exports  # score of libggml-<name>-<tag>.so
        assert "ggml_backend_init" in exports, plugin
        assert ("ggml_backend_score" in exports) == plugin.startswith("libggml-cpu-"), plugin


def test_a_universal_file_is_read_per_slice(mac: dict[str, Path], tmp_path: Path) -> None:
    # What `lipo -create` writes: a big-endian fat header, then each slice 2^14-aligned.
    slices = [(mac[k] / "libggml-base.dylib").read_bytes() for k in ("arm64", "x64")]
    cpus = [(0x0100000C, 0), (0x01000007, 3)]
    header = struct.pack(">II", 0xCAFEBABE, 2)
    offset, body = 1 << 14, b""
    for (cpu, sub), data in zip(cpus, slices):
        header += struct.pack(">iiIII", cpu, sub, offset + len(body), len(data), 14)
        body += data + b"\0" * (-len(data) % (1 << 14))
    fat = tmp_path / "libggml-base.dylib"
    fat.write_bytes(header + b"\0" * (offset - len(header)) + body)
    assert identify(fat).describe() == "a universal Mach-O aarch64+x86_64 universal binary"
    for arch in ("aarch64", "x86_64"):
        facts = macho.read_macho(fat, arch)
        assert facts.archs == ("aarch64", "x86_64") and facts.minos == "14.0"
        assert facts.install_name == "@rpath/libggml-base.dylib"
    with pytest.raises(macho.MachOError, match="universal"):
        macho.read_macho(fat)


# --------------------------------------------------------------------------- refusals
def test_a_dependency_outside_the_folder_is_refused(mac: dict[str, Path], tmp_path: Path) -> None:
    import lief

    folder = tmp_path / "v"
    shutil.copytree(mac["arm64"], folder)
    binary = lief.MachO.parse(str(folder / "libggml-cpu-apple_m1.so")).at(0)
    binary.add_library("/opt/homebrew/opt/libomp/lib/libomp.dylib")
    binary.write(str(folder / "libggml-cpu-apple_m1.so"))
    names = [p.name for p in folder.iterdir() if p.name != "variant.json"]
    with pytest.raises(macho.MachOError) as info:
        macho.folder_facts(folder, names, "aarch64")
    message = str(info.value)
    assert "libggml-cpu-apple_m1.so needs /opt/homebrew/opt/libomp/lib/libomp.dylib" in message
    assert "nor a macOS system library" in message


def test_a_missing_sibling_is_refused(mac: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "v"
    shutil.copytree(mac["x64"], folder)
    (folder / "libggml-base.dylib").unlink()
    names = [p.name for p in folder.iterdir() if p.name != "variant.json"]
    with pytest.raises(macho.MachOError, match="needs @rpath/libggml-base.dylib"):
        macho.folder_facts(folder, names, "x86_64")


def test_an_elf_file_in_a_macos_variant_is_refused(bv: ModuleType, mac: dict[str, Path],
                                                  tmp_path: Path) -> None:
    bins, staged = tmp_path / "bins", tmp_path / "stage"
    shutil.copytree(mac["arm64"], bins)
    staged.mkdir()
    elf = next(Path("/usr/lib/x86_64-linux-gnu").glob("libstdc++.so.6*"), None) or \
        Path(sys.executable).resolve()
    shutil.copyfile(elf, bins / "libggml-cpu-x64.so")
    meta = {"platform": "mac", "arch": "arm64", "gpu": "metal",
            "llamaCpp": {"repo": "ggml-org/llama.cpp", "release": "v0.4.0"},
            "platformInfo": {"name": "macOS", "version": "25.6.0"}}
    with pytest.raises(bv.BuildVariantError) as info:
        bv.npm_macos_variant("test", bins, staged, meta, tmp_path / "out")
    assert "libggml-cpu-x64.so is an ELF x86_64" in str(info.value)
    assert "a macos variant holds Mach-O files only" in str(info.value)


def test_a_mach_o_file_in_a_linux_variant_is_refused(bv: ModuleType, mac: dict[str, Path],
                                                    tmp_path: Path) -> None:
    folder = tmp_path / "linux-x86_64-cpu"
    folder.mkdir()
    shutil.copy2(mac["x64"] / "libllama.v0.4.0.dylib", folder / "libllama.so")
    with pytest.raises(bv.BuildVariantError) as info:  # the variant builder
        bv.library_facts(folder)
    assert "libllama.so is a Mach-O x86_64 dylib, but a linux variant holds ELF files only" \
        in str(info.value)
    (folder / "variant.json").write_text(json.dumps(
        {"os": "linux", "arch": "x86_64", "backend": "cpu", "requires": {},
         "libraries": ["libllama.so"]}))
    with pytest.raises(PublishError) as published:  # and publish, for a hand-made folder
        load_variant(folder)
    assert "says os=linux" in str(published.value) and "a Mach-O x86_64 dylib" in str(published.value)
    assert wrong_format(folder / "libllama.so", "macos") is None


# --------------------------------------------------------------------------- selection
@pytest.fixture(scope="module")
def manifest(mac: dict[str, Path]) -> Manifest:
    """The two real macOS variant.json files, as publish would list them."""
    variants = {f.name: {**load_variant(f), "archive": f"{f.name}.tar.gz", "sha256": "ab" * 32,
                         "size": 1000} for f in mac.values()}
    return Manifest.parse({"schema": 1, "llama_cpp": "0.4.0", "variants": variants})


def _profile(name: str, **override: str) -> Any:
    data, _ = load_machine(MACHINES / f"{name}.json")
    from llama_runtime.probe.capture import profile_from_captures

    sysctl = data["sysctl"] + "".join(f"{k}: {v}\n" for k, v in override.items() if "." in k)
    return profile_from_captures({**data, "sysctl": sysctl,
                                  **{k: v for k, v in override.items() if "." not in k}})


# Each captured Mac as captured: (fixture, selected, {variant: phrase of its reasons})
AS_CAPTURED = [
    ("macos-m3max-sequoia", "macos-arm64-metal", {"macos-x86_64-cpu": "built for x86_64"}),
    ("macos-m4max-sequoia", "macos-arm64-metal", {"macos-arm64-metal": "macOS 15"}),
    ("macos-m1-monterey", None, {"macos-arm64-metal": "needs macOS 14.0 or newer, this Mac runs macOS 12"}),
    ("macos-m1-bigsur", None, {"macos-arm64-metal": "needs macOS 14.0 or newer, this Mac runs macOS 11"}),
    ("macos-intel-haswell-mojave", None,
     {"macos-x86_64-cpu": "needs macOS 14.0 or newer, this Mac runs macOS 10.14",
      "macos-arm64-metal": "built for aarch64, this CPU is x86_64"}),
    ("macos-rosetta-m1-monterey", None,
     {"macos-x86_64-cpu": "needs macOS 14.0", "macos-arm64-metal": "under Rosetta 2 on Apple M1"}),
]


@pytest.mark.parametrize(("name", "selected", "reasons"), AS_CAPTURED, ids=[c[0] for c in AS_CAPTURED])
def test_real_macs_as_captured(manifest: Manifest, name: str, selected: str | None,
                               reasons: dict[str, str]) -> None:
    s = select(manifest, _profile(name))
    assert s.selected == selected, s.why()
    for variant, phrase in reasons.items():
        assert phrase in "; ".join(s.candidate(variant).reasons), s.candidate(variant).reasons


def test_the_cpu_comes_from_sysctl_on_a_mac() -> None:
    m4, m1 = _profile("macos-m4max-sequoia"), _profile("macos-m1-monterey")
    assert m4.cpu["features"] == ["asimd", "asimddp", "i8mm", "sme"]
    assert m1.cpu["features"] == ["asimd", "asimddp"]  # FEAT_I8MM: 0 on an M1
    haswell, ivy = _profile("macos-intel-haswell-mojave"), _profile("macos-intel-ivybridge-mojave")
    assert haswell.cpu["x86_64_level"] == 3 and "avx2" in haswell.cpu["features"]
    assert ivy.cpu["x86_64_level"] == 2 and "avx" in ivy.cpu["features"]
    rosetta = _profile("macos-rosetta-m1-monterey")  # no POPCNT, no LAHF: Rosetta shows v1
    assert rosetta.cpu["x86_64_level"] == 1 and rosetta.cpu["features"] == ["sse4_2"]
    assert rosetta.apple["rosetta"] and not rosetta.apple["metal"]


# The same captures on the macOS the builds need (14.0): the rules, not more machines.
ON_MACOS_14 = [
    ("macos-m1-monterey", {}, "macos-arm64-metal"),
    ("macos-intel-haswell-mojave", {}, "macos-x86_64-cpu"),
    ("macos-intel-ivybridge-mojave", {}, "macos-x86_64-cpu"),
    ("macos-rosetta-m1-monterey", {"sysctl.proc_translated": "1"}, "macos-x86_64-cpu"),
]


@pytest.mark.parametrize(("name", "extra", "selected"), ON_MACOS_14, ids=[c[0] for c in ON_MACOS_14])
def test_the_same_cpus_on_macos_14(manifest: Manifest, name: str, extra: dict[str, str],
                                   selected: str) -> None:
    s = select(manifest, _profile(name, sw_vers="14.5", **extra))
    assert s.selected == selected, s.why()


def test_rosetta_gets_the_x86_64_build_and_is_told_to_install_an_arm64_python(
        manifest: Manifest) -> None:
    profile = _profile("macos-rosetta-m1-monterey", sw_vers="15.1", **{"sysctl.proc_translated": "1"})
    s = select(manifest, profile)
    assert s.selected == "macos-x86_64-cpu"
    assert "loads x86_64 libraries only" in "; ".join(s.candidate("macos-arm64-metal").reasons)
    [warning] = s.warnings
    assert "runs under Rosetta 2 on Apple M1: using macos-x86_64-cpu" in warning
    assert "Install an arm64 Python" in warning and "to get macos-arm64-metal" in warning
    native = _profile("macos-m1-monterey", sw_vers="15.1", **{"sysctl.proc_translated": "0"})
    assert select(manifest, native).warnings == []


def test_proc_translated_overrides_the_guess() -> None:
    from llama_runtime.probe.apple import parse_apple

    assert parse_apple("Apple M1", "1", "15.1", "x86_64", None)["rosetta"] is True
    assert parse_apple("Apple M1", "1", "15.1", "x86_64", "1")["rosetta"] is True
    assert parse_apple("Apple M1", "1", "15.1", "arm64", "0")["metal"] is True
    intel = parse_apple("Intel(R) Core(TM) i7-4980HQ CPU @ 2.80GHz", "0", "10.14", "x86_64", None)
    assert intel["rosetta"] is False and intel["metal"] is False


# --------------------------------------------------------------------------- the wheel tag
@pytest.mark.parametrize(("arch", "floor", "tag"), [
    ("aarch64", "14.0", "macosx_14_0_arm64"), ("x86_64", "14.0", "macosx_14_0_x86_64"),
    ("x86_64", "10.15", "macosx_10_15_x86_64"), ("aarch64", "11.3", "macosx_11_0_arm64"),
    ("aarch64", None, "macosx_11_0_arm64"),
])
def test_the_wheel_tag_follows_requires_macos(arch: str, floor: str | None, tag: str) -> None:
    assert platform_tag("macos", arch, {"macos": floor}) == tag


def test_pip_accepts_the_wheel_exactly_where_the_floor_holds(mac: dict[str, Path]) -> None:
    from packaging.tags import mac_platforms

    meta = _meta(mac["arm64"])
    tag = platform_tag("macos", meta["arch"], meta["requires"])
    assert tag in list(mac_platforms((14, 0), "arm64")) and tag in list(mac_platforms((15, 1), "arm64"))
    assert tag not in list(mac_platforms((13, 6), "arm64"))
