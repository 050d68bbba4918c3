"""Windows code paths that this Linux machine can only reach with the platform faked: the loader
must register a variant's folder with os.add_dll_directory (and never touch PATH)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from llama_runtime.runtime import loader


def test_variant_folder_is_registered_as_a_dll_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "add_dll_directory", lambda path: calls.append(path) or object(), raising=False)
    path_before = os.environ.get("PATH")
    loader.allow_dll_folder(tmp_path)
    assert calls == [str(tmp_path)]
    assert os.environ.get("PATH") == path_before


def test_no_dll_directory_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "add_dll_directory", lambda path: calls.append(path), raising=False)
    loader.allow_dll_folder(tmp_path)
    assert calls == []


# --- the Windows variants' manifest entries through the real selection, cache and loader -------
# variant.json of real MinGW builds (scripts/windows_build.py, windows-cpu-lite and
# windows-vulkan-lite), captured; test_windows_build.py checks them against a fresh build.
import json  # noqa: E402
import struct  # noqa: E402
from typing import Any  # noqa: E402

from llama_runtime.release.pack import pack_variant  # noqa: E402
from llama_runtime.fetch.cache import install, lookup  # noqa: E402
from llama_runtime.config import resolve  # noqa: E402
from llama_runtime.errors import LibraryLoadError, LibraryNotFoundError  # noqa: E402
from llama_runtime.install import platform_tag  # noqa: E402
from llama_runtime.probe import MachineProfile  # noqa: E402
from llama_runtime.probe.capture import profile_from_captures  # noqa: E402
from llama_runtime.variants import Lock, Manifest, Variant, select  # noqa: E402

DATA = Path(__file__).parents[1] / "data"
CAPTURED = {name: json.loads((DATA / "windows" / f"{name}.variant.json").read_text())
            for name in ("windows-x86_64-cpu", "windows-x86_64-vulkan")}
WINDOWS_DESKTOP = profile_from_captures(
    json.loads((DATA / "machines" / "windows-avx2-desktop.json").read_text()))


def _entry(name: str, **extra: Any) -> dict[str, Any]:
    return {**CAPTURED[name], "archive": f"{name}.tar.gz", "sha256": "ab" * 32, "size": 1, **extra}


def _manifest(**entries: dict[str, Any]) -> Manifest:
    return Manifest.parse({"schema": 1, "llama_cpp": "0.5.0", "variants": entries})


def _lock(manifest: Manifest) -> Lock:
    return Lock("llama-runtime/binaries", "v1", "0" * 40, manifest)


def test_captured_entries_are_windows_dll_variants() -> None:
    for name, entry in CAPTURED.items():
        v = Variant.parse(name, _entry(name))
        assert (v.os, v.arch, v.requires["glibc"], v.backend_dl) == ("windows", "x86_64", None, True)
        assert v.libraries[-1] == "llama.dll" and all(f.endswith(".dll") for f in v.files)
        assert any(p.startswith("ggml-cpu-") for p in entry["plugins"])
    assert "ggml-vulkan.dll" in CAPTURED["windows-x86_64-vulkan"]["plugins"]
    assert CAPTURED["windows-x86_64-vulkan"]["external_libraries"] == ["vulkan-1.dll"]


def test_a_windows_variant_is_refused_on_linux_with_the_reason() -> None:
    linux = MachineProfile.from_dict({**WINDOWS_DESKTOP.to_dict(), "os": "linux"})
    s = select(_manifest(**{"windows-x86_64-cpu": _entry("windows-x86_64-cpu")}), linux)
    c = s.candidate("windows-x86_64-cpu")
    assert not c.compatible and "built for windows, this machine runs linux" in c.reasons
    assert s.selected is None


def test_a_windows_machine_selects_the_windows_variants() -> None:
    m = _manifest(**{n: _entry(n) for n in CAPTURED})
    assert select(m, WINDOWS_DESKTOP).selected == "windows-x86_64-cpu"
    assert select(m, WINDOWS_DESKTOP, backend="vulkan").selected == "windows-x86_64-vulkan"
    assert platform_tag("windows", "x86_64", CAPTURED["windows-x86_64-cpu"]["requires"]) == "win_amd64"


def test_the_chain_on_linux_says_why_a_windows_only_release_gives_nothing(tmp_path: Path) -> None:
    from llama_runtime.runtime.loader import resolve as resolve_chain

    linux = MachineProfile.from_dict({**WINDOWS_DESKTOP.to_dict(), "os": "linux"})
    lock = _lock(_manifest(**{"windows-x86_64-cpu": _entry("windows-x86_64-cpu")}))
    settings = resolve(environ={"LLAMA_RUNTIME_CACHE": str(tmp_path), "LLAMA_RUNTIME_OFFLINE": "1"})
    with pytest.raises(LibraryNotFoundError) as err:
        resolve_chain(settings, profile=linux, lock=lock)
    assert "windows-x86_64-cpu: built for windows, this machine runs linux" in str(err.value)


# the headers binformat.identify reads: DOS stub -> "PE\0\0" + IMAGE_FILE_MACHINE_AMD64
PE_HEAD = b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"PE\0\0" + struct.pack("<H", 0x8664)
# ELF64, little-endian, ET_DYN, EM_X86_64
ELF_HEAD = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 3, 0x3E) + bytes(44)


def _fake_dlls(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for n in names:  # PE headers, so the files are what their names say
        (folder / n).write_bytes(PE_HEAD + n.encode() * 50)
    return folder


def test_a_windows_archive_goes_through_pack_and_the_cache(tmp_path: Path) -> None:
    """What `llama-runtime fetch --variant windows-x86_64-cpu --dest` does for a Windows machine
    from a Linux one: the archive is packed, unpacked and recorded like any other."""
    entry = CAPTURED["windows-x86_64-cpu"]
    folder = _fake_dlls(tmp_path / "windows-x86_64-cpu", [*entry["libraries"], *entry["plugins"]])
    sha, size = pack_variant(folder, tmp_path / "windows-x86_64-cpu.tar.gz")
    v = Variant.parse("windows-x86_64-cpu", _entry("windows-x86_64-cpu", sha256=sha, size=size))
    cached = install(tmp_path / "cache", v, tmp_path / "windows-x86_64-cpu.tar.gz", {"path": "x"})
    assert lookup(tmp_path / "cache", v) == cached
    assert sorted(p.name for p in cached.iterdir() if p.suffix == ".dll") == sorted(v.files)


def test_a_windows_dll_named_as_the_library_on_linux_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from llama_runtime.runtime.loader import Step, open_step

    monkeypatch.setattr(sys, "platform", "linux")
    dll = _fake_dlls(tmp_path / "w", ["llama.dll"]) / "llama.dll"
    settings = resolve(environ={"LLAMA_RUNTIME_LIB": str(dll)})
    with pytest.raises(LibraryLoadError) as err:
        open_step(Step("explicit", None, dll), settings)
    assert "a PE x86_64 DLL or executable, built for windows; this machine runs linux" in str(err.value)


def test_a_linux_library_on_windows_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llama_runtime.runtime.loader import Step, open_step

    lib = tmp_path / "libllama.so"
    lib.write_bytes(ELF_HEAD)
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(LibraryLoadError, match="an ELF x86_64 shared library, built for linux; "
                                               "this machine runs windows"):
        open_step(Step("explicit", None, lib), resolve(environ={}))


def test_an_explicit_dll_folder_loads_ggml_plugins_from_it(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """LLAMA_RUNTIME_LIB=...\\llama.dll on Windows: the folder becomes a DLL directory and ggml
    loads ggml-cpu-*.dll from it."""
    from llama_runtime.runtime import loader
    from llama_runtime.native import binding

    folder = _fake_dlls(tmp_path / "w", ["ggml-base.dll", "ggml.dll", "llama.dll",
                                         "ggml-cpu-haswell.dll"])
    dirs: list[str] = []
    opened: dict[str, Any] = {}
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "add_dll_directory", lambda p: dirs.append(p) or object(), raising=False)
    monkeypatch.setattr(binding.Native, "open", classmethod(
        lambda cls, paths, backend_dir=None: opened.update(paths=paths, dir=backend_dir) or "native"))
    lib = loader.open_step(loader.Step("explicit", None, folder / "llama.dll"), resolve(environ={}))
    assert dirs == [str(folder)] and opened == {"paths": [folder / "llama.dll"], "dir": folder}
    assert lib.source == "explicit"


def test_the_vulkan_plugin_dll_is_preflighted(tmp_path: Path) -> None:
    """ggml skips a backend DLL that fails to load without a word; the loader loads
    ggml-vulkan.dll on its own first (here, on Linux, it cannot: the error names it and
    vulkan-1.dll, the Vulkan loader the driver installs)."""
    from llama_runtime.runtime.loader import preflight

    entry = CAPTURED["windows-x86_64-vulkan"]
    folder = _fake_dlls(tmp_path / "v", [*entry["libraries"], *entry["plugins"]])
    v = Variant.parse("windows-x86_64-vulkan", _entry("windows-x86_64-vulkan"))
    with pytest.raises(LibraryLoadError) as err:
        preflight(v, folder)
    assert "ggml-vulkan.dll" in str(err.value)
    assert "vulkan-1.dll (the Vulkan loader (Windows: installed with the GPU driver))" in str(err.value)


def test_windows_cpu_features_from_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """read_windows_flags asks IsProcessorFeaturePresent for each known PF code."""
    import ctypes

    from llama_runtime.probe import windows

    present = {13, 36, 37, 38, 39, 40}  # SSE3 .. AVX2, no AVX-512

    class Kernel32:
        @staticmethod
        def IsProcessorFeaturePresent(code: int) -> int:
            return int(code in present)

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "windll", type("W", (), {"kernel32": Kernel32})(), raising=False)
    out = windows.read_windows_flags()
    assert out["error"] is None and {"avx2", "fma", "sse4_2"} <= set(out["flags"])
    assert "avx512f" not in out["flags"]

    class Broken:
        @staticmethod
        def IsProcessorFeaturePresent(code: int) -> int:
            raise OSError("no such function")

    monkeypatch.setattr(ctypes, "windll", type("W", (), {"kernel32": Broken})(), raising=False)
    out = windows.read_windows_flags()
    assert out["flags"] == [] and "IsProcessorFeaturePresent failed" in out["error"]


def test_the_plugin_proof_knows_the_windows_plugin_names() -> None:
    """llama_runtime.plugins ranks and test-runs CPU plugins by file name: on a Windows
    variant those are ggml-cpu-<tag>.dll, and ggml-vulkan.dll is the Vulkan backend."""
    from llama_runtime.plugins.rank import base_plugin, cpu_plugins, plugin_variant

    entry = CAPTURED["windows-x86_64-vulkan"]
    files = [*entry["libraries"], *entry["plugins"]]
    assert cpu_plugins(files, "windows") == [p for p in entry["plugins"] if p.startswith("ggml-cpu-")]
    assert [plugin_variant(p, "windows") for p in cpu_plugins(files, "windows")] == \
        [p.removeprefix("ggml-cpu-").removesuffix(".dll") for p in cpu_plugins(files, "windows")]
    assert base_plugin("windows", "vulkan") == "ggml-vulkan.dll" and "ggml-vulkan.dll" in files
    assert cpu_plugins(files, "linux") == []  # the Linux names do not match DLLs
