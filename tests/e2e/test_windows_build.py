"""Windows x86_64 variants cross-built with MinGW-w64 (scripts/windows_build.py), run under Wine.

A C driver cross-compiled with MinGW (tests/data/oracle/greedy_win.c) loads the DLLs from the
variant's archive as llama-runtime packs and unpacks it, the way the loader does on Windows
(AddDllDirectory, LoadLibraryEx by full path in the manifest's load order, then
``ggml_backend_load_all_from_path``), and must give the greedy ids of the Linux build
(tests/data/oracle/greedy.c on linux-x86_64-cpu-omp, same source and same CPU plugins) on an
f16 tiny llama and on Q4_0, Q8_0 and Q4_K_M copies quantized by libllama itself. ggml picks its
CPU plugin by CPUID under Wine as it does natively; each plugin this CPU can run is also run on
its own. Exact equality is the bar: the same code compiled by the same GCC 12 for two OSes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from scripts import build_variants as bv
from scripts.binfacts import pe_facts
from scripts import winerun

try:
    from . import _windows_fixture as wf
except ImportError:
    import _windows_fixture as wf

pytestmark = pytest.mark.slow
GCC_RUNTIME = {"libstdc++-6.dll", "libgcc_s_seh-1.dll", "libwinpthread-1.dll", "libgomp-1.dll"}
# ggml-cpu-<tag> -> /proc/cpuinfo flags it needs (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS)
_AVX512 = {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
PLUGIN_FLAGS = {"haswell": {"avx2", "fma", "f16c", "bmi2"}, "skylakex": _AVX512,
                "zen4": _AVX512 | {"avx512vbmi", "avx512_vnni", "avx512_bf16"}}


def _cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    return set(next(ln for ln in text.splitlines() if ln.startswith("flags")).split(":")[1].split())


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("windows")


@pytest.fixture(scope="module")
def win_cpu(work: Path) -> wf.Installed:
    return wf.install_like_a_download(wf.windows_folder(wf.CPU_FLAVOR, work / "variants"),
                                      work / "cpu-release")


@pytest.fixture(scope="module")
def linux(work: Path) -> wf.Linux:
    return wf.linux_build(work / "linux")


@pytest.fixture(scope="module")
def models(work: Path, linux: wf.Linux) -> dict[str, Path]:
    return wf.models(work / "models", linux)


@pytest.fixture(scope="module")
def driver(work: Path) -> Path:
    wf.need_tools()
    return winerun.compile_driver(work)


def test_variant_json_is_what_the_pe_files_say(win_cpu: wf.Installed) -> None:
    entry = json.loads((win_cpu.folder / "variant.json").read_text())
    v = win_cpu.variant
    assert (v.os, v.arch, v.backend, entry["machine"]) == ("windows", "x86_64", "cpu", "AMD64")
    assert v.requires["glibc"] is None and v.backend_dl
    files = {n: pe_facts.read_pe(win_cpu.folder / n) for n in v.files}
    assert {n: list(f.needs) for n, f in files.items()} == entry["imports"]
    assert all(f.machine == "AMD64" and f.is_dll for f in files.values())
    for i, name in enumerate(v.libraries):  # the load order: what a DLL imports comes first
        shipped = [d for d in files[name].needs if d in v.files]
        assert all(v.libraries.index(d) < i for d in shipped), (name, shipped)
    assert v.libraries[-1] == "llama.dll"
    plugins = entry["plugins"]
    assert plugins and all(p.startswith("ggml-cpu-") and p.endswith(".dll") for p in plugins)
    assert all("ggml-base.dll" in files[p].needs for p in plugins)
    assert all({"ggml_backend_init", "ggml_backend_score"} <= set(files[p].exports) for p in plugins)


STRUCTURE = ("os", "arch", "backend", "requires", "libraries", "plugins", "backend_dl",
             "external_libraries", "machine", "imports", "system_libraries", "runtime_loads")


@pytest.mark.parametrize("which", ["cpu", "vulkan"])
def test_the_captured_entries_match_a_fresh_build(request: pytest.FixtureRequest,
                                                  which: str) -> None:
    """tests/data/windows/*.variant.json feed test_windows_paths.py: they must say what a build
    of the development flavors says today."""
    flavor = wf.CPU_FLAVOR if which == "cpu" else wf.VULKAN_FLAVOR
    if not flavor.endswith("-lite"):
        pytest.skip(f"the captured entries are of the -lite flavors; this run built {flavor}")
    built: wf.Installed = request.getfixturevalue(f"win_{which}")
    fresh = json.loads((built.folder / "variant.json").read_text())
    captured = json.loads((Path(__file__).parents[1] / "data" / "windows" /
                           f"{built.variant.name}.variant.json").read_text())
    assert {k: captured[k] for k in STRUCTURE} == {k: fresh[k] for k in STRUCTURE}


def test_only_windows_own_dlls_are_needed(win_cpu: wf.Installed) -> None:
    entry = json.loads((win_cpu.folder / "variant.json").read_text())
    needed = {d.lower() for deps in entry["imports"].values() for d in deps}
    assert not needed & GCC_RUNTIME, "the GCC runtime must be linked in statically"
    outside = needed - {n.lower() for n in win_cpu.variant.files}
    assert outside and all(pe_facts.is_system_dll(d) for d in outside)
    assert sorted(outside) == sorted(d.lower() for d in entry["system_libraries"])
    assert entry["external_libraries"] == []


def _main_type(path: Path) -> str:
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    return types["blk.0.attn_q.weight"]


MODELS = ["f16", *wf.QUANTS]
EXPECTED_TYPE = {"f16": "F16", "Q4_0": "Q4_0", "Q8_0": "Q8_0", "Q4_K_M": "Q4_K"}


@pytest.mark.parametrize("model", MODELS)
def test_wine_gives_the_linux_greedy_ids(win_cpu: wf.Installed, linux: wf.Linux,
                                         models: dict[str, Path], driver: Path,
                                         model: str) -> None:
    """From the unpacked archive, ggml choosing the plugin by CPUID on both sides."""
    path = models[model]
    assert _main_type(path) == EXPECTED_TYPE[model]  # what really ran
    win = wf.run_windows(driver, win_cpu.folder, win_cpu.variant.libraries, path)
    assert win.returncode == 0, win.stderr[-3000:]
    assert win.lines("backend") == ["CPU"]
    assert f"ggml-cpu-{win.plugin}.dll" in win_cpu.variant.extra["plugins"]
    expected = linux.ids(path)
    assert len(expected) > 8
    assert win.ids == expected


@pytest.mark.parametrize("tag", sorted(PLUGIN_FLAGS))
@pytest.mark.parametrize("model", ["f16", "Q4_0"])
def test_each_plugin_alone_gives_the_linux_ids(win_cpu: wf.Installed, linux: wf.Linux,
                                               models: dict[str, Path], driver: Path,
                                               tmp_path: Path, tag: str, model: str) -> None:
    missing = PLUGIN_FLAGS[tag] - _cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)}: ggml-cpu-{tag} cannot run here")
    if f"ggml-cpu-{tag}.dll" not in win_cpu.variant.extra["plugins"]:
        pytest.fail(f"{wf.CPU_FLAVOR} has no ggml-cpu-{tag}.dll")
    win_dir = wf.only_plugin(win_cpu.folder, tag, tmp_path / "win")
    linux_dir = wf.only_plugin(linux.folder, tag, tmp_path / "linux")
    win = wf.run_windows(driver, win_dir, win_cpu.variant.libraries, models[model])
    assert win.returncode == 0, win.stderr[-3000:]
    assert win.plugin == tag
    assert win.ids == linux.ids(models[model], linux_dir) and len(win.ids) > 8


def test_a_dll_needing_the_msvc_runtime_is_refused(tmp_path: Path) -> None:
    """node-llama-cpp's real Windows DLLs (MSVC) import MSVCP140.dll and VCRUNTIME140.dll,
    which only the Visual C++ redistributable installs."""
    tgz = bv.npm_pack("@node-llama-cpp/win-x64@3.21.1", devrelease_cache())
    bins = bv.unpack_npm_bins(tgz, tmp_path)
    folder = tmp_path / "staged"
    folder.mkdir()
    for name in ("ggml-base.dll", "ggml.v0.4.0.dll", "llama.v0.4.0.dll", "ggml-cpu-x64.dll"):
        shutil.copy2(bins / name, folder / name)
    with pytest.raises(pe_facts.PeFactsError) as err:
        pe_facts.folder_facts(folder)
    message = str(err.value)
    assert "MSVCP140.dll" in message and "VCRUNTIME140.dll" in message
    assert "needed by ggml-base.dll" in message and "link it statically or bundle it" in message


def test_a_linux_library_in_a_windows_variant_is_refused(win_cpu: wf.Installed,
                                                         linux: wf.Linux, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(win_cpu.folder, folder)
    shutil.copy2(linux.folder / "libggml-base.so", folder / "ggml-cpu-haswell.dll")
    with pytest.raises(pe_facts.PeFactsError, match="ggml-cpu-haswell.dll is not a Windows PE"):
        pe_facts.folder_facts(folder)


@pytest.fixture(scope="module")
def win_release(win_cpu: wf.Installed, work: Path) -> Iterator[tuple[Path, str]]:
    """The Windows CPU variant published to a loopback hub; a source tree locked to it."""
    from scripts import devrelease
    from scripts.hubserver import HubServer

    src = work / "publish-src"
    shutil.copytree(wf.windows_folder(wf.CPU_FLAVOR, work / "variants"), src / "windows-x86_64-cpu")
    with HubServer(work / "hub") as hub:
        tree = devrelease.stage_source(work / "tree")
        devrelease.publish_release(tree, src, hub.url)
        yield tree, hub.url


def _windows_profile(path: Path) -> Path:
    from llama_runtime.probe.capture import profile_from_captures

    data = json.loads((Path(__file__).parents[1] / "data" / "machines" /
                       "windows-avx2-desktop.json").read_text())
    path.write_text(json.dumps({"profile": profile_from_captures(data).to_dict()}))
    return path


def test_a_wheel_for_windows_is_made_on_linux(win_release: tuple[Path, str], tmp_path: Path) -> None:
    """LLAMA_RUNTIME_TARGET=<a Windows machine's profile>: selection, download, sha256 check and
    cache run on the real Windows archive; the wheel is tagged win_amd64 and ships its DLLs."""
    from llama_runtime.install import prepare_wheel

    tree, endpoint = win_release
    env = {"LLAMA_RUNTIME_ENDPOINT": endpoint, "LLAMA_RUNTIME_CACHE": str(tmp_path / "cache"),
           "LLAMA_RUNTIME_TARGET": str(_windows_profile(tmp_path / "win.json"))}
    plan = prepare_wheel(root=tree, config_settings=None, staging=tmp_path / "stage", environ=env,
                         echo=lambda _: None)
    assert plan.tag == "py3-none-win_amd64"
    shipped = sorted(Path(dest).name for dest in plan.force_include.values())
    entry = json.loads((tree / "llama_runtime" / "binaries.lock.json").read_text())
    v = entry["manifest"]["variants"]["windows-x86_64-cpu"]
    assert shipped == sorted([*v["libraries"], *v["plugins"], "selection.json"])


def test_the_windows_release_on_this_linux_machine_says_why(win_release: tuple[Path, str],
                                                           tmp_path: Path) -> None:
    from llama_runtime.errors import NoCompatibleVariantError
    from llama_runtime.install import prepare_wheel

    tree, endpoint = win_release
    env = {"LLAMA_RUNTIME_ENDPOINT": endpoint, "LLAMA_RUNTIME_CACHE": str(tmp_path / "cache")}
    with pytest.raises(NoCompatibleVariantError,
                       match="windows-x86_64-cpu: built for windows, this machine runs linux"):
        prepare_wheel(root=tree, config_settings=None, staging=tmp_path / "s", environ=env,
                      echo=lambda _: None)


def devrelease_cache() -> Path:
    from scripts import devrelease

    return devrelease.dev_cache()


# --- Vulkan ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def win_vulkan(work: Path) -> wf.Installed:
    return wf.install_like_a_download(wf.windows_folder(wf.VULKAN_FLAVOR, work / "variants"),
                                      work / "vulkan-release")


def test_the_vulkan_dll_is_a_ggml_backend_needing_only_the_vulkan_loader(
        win_vulkan: wf.Installed) -> None:
    entry = json.loads((win_vulkan.folder / "variant.json").read_text())
    assert "ggml-vulkan.dll" in entry["plugins"] and entry["backend"] == "vulkan"
    vk = pe_facts.read_pe(win_vulkan.folder / "ggml-vulkan.dll")
    assert vk.machine == "AMD64" and "ggml_backend_init" in vk.exports
    outside = [d for d in vk.needs if d not in win_vulkan.variant.files]
    assert all(pe_facts.is_system_dll(d) or d.lower() == "vulkan-1.dll" for d in outside), outside
    # vulkan.hpp's dynamic dispatcher opens vulkan-1.dll at run time (LoadLibrary), so the
    # variant records it as an outside library even when the import table does not name it
    assert entry["external_libraries"] == ["vulkan-1.dll"]
    if "vulkan-1.dll" not in (d.lower() for d in vk.needs):
        assert entry["runtime_loads"] == {"ggml-vulkan.dll": ["vulkan-1.dll"]}


@pytest.fixture(scope="module")
def linux_vulkan(work: Path) -> wf.Linux:
    return wf.linux_vulkan(work / "linux-vulkan")


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    with winerun.virtual_display() as name:
        yield name


@pytest.mark.parametrize("model", ["f16", "Q4_0", "Q8_0"])
def test_vulkan_under_wine_gives_the_linux_vulkan_ids(win_vulkan: wf.Installed,
                                                      linux_vulkan: wf.Linux, display: str,
                                                      models: dict[str, Path], driver: Path,
                                                      model: str) -> None:
    """Wine's winevulkan over the host's Vulkan (Mesa's lavapipe, a software device that
    GGML_VK_VISIBLE_DEVICES=0 lets ggml use): every layer offloaded, the greedy ids of
    node-llama-cpp's Linux Vulkan build of the same llama.cpp on the same device."""
    env = {"GGML_VK_VISIBLE_DEVICES": "0", "GREEDY_GPU_LAYERS": "99", "DISPLAY": display}
    win = wf.run_windows(driver, win_vulkan.folder, win_vulkan.variant.libraries, models[model],
                         env=env)
    assert win.returncode == 0, win.stderr[-3000:]
    assert win.lines("backend") == ["Vulkan", "CPU"]
    assert any(d.startswith("Vulkan0 | llvmpipe") for d in win.lines("device")), win.stdout
    assert any("offloaded 3/3 layers to GPU" in ln for ln in win.lines("log")), win.stdout
    expected = linux_vulkan.ids(models[model], gpu_layers=99)
    assert len(expected) > 8 and win.ids == expected
