"""The libstdc++ floor: the probe reads which GLIBCXX versions the libstdc++ a library would load
defines (from the ELF's version definitions, in small reads), and selection refuses a variant
built with a newer GCC than that ("version `GLIBCXX_3.4.30' not found" on RHEL 9)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llama_runtime.probe.libc import parse_glibcxx, read_libstdcxx, version_definitions

SYSTEM = read_libstdcxx()
ARM = Path("/usr/aarch64-linux-gnu/lib/libstdc++.so.6")


def _probe_in_child(env: dict[str, str]) -> dict[str, str]:
    # a fresh interpreter: the test process may already map a libstdc++ (numpy), which comes first
    code = "import json; from llama_runtime.probe.libc import read_libstdcxx; print(json.dumps(read_libstdcxx()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parents[2])
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _fake_libstdcxx(folder: Path, newest: str) -> Path:
    """A real shared library that defines GLIBCXX versions up to ``newest`` (a version script),
    as libstdc++ does, named libstdc++.so.6."""
    cc = shutil.which("gcc") or pytest.fail("gcc is needed to build the library under test")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "v.c").write_text("int glibcxx_probe_marker(void) { return 1; }\n")
    (folder / "v.map").write_text(f"GLIBCXX_3.4 {{ global: glibcxx_probe_marker; }};\nGLIBCXX_{newest} {{}} GLIBCXX_3.4;\n"
                                  "CXXABI_1.3.99 {};\n")
    out = folder / "libstdc++.so.6"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(folder / "v.c"),
                    f"-Wl,--version-script={folder / 'v.map'}"], check=True)
    return out


def test_parse_takes_the_newest_glibcxx_and_ignores_other_names() -> None:
    assert parse_glibcxx(b"GLIBCXX_3.4\x00GLIBCXX_3.4.9\x00GLIBCXX_3.4.30\x00CXXABI_1.3.13\x00") == "3.4.30"
    assert parse_glibcxx(b"GLIBCXX_DEBUG_MESSAGE_LENGTH\x00CXXABI_1.3\x00") is None


def test_the_small_reads_agree_with_a_scan_of_the_whole_library() -> None:
    assert SYSTEM["path"], SYSTEM
    with open(SYSTEM["path"], "rb") as f:
        whole = f.read()
        f.seek(0)
        names = version_definitions(f)
    assert SYSTEM["version"] == parse_glibcxx(names) == parse_glibcxx(whole)
    assert names.count(b"\x00") >= 20  # GLIBCXX_3.4 ... and CXXABI_1.3 ...: every definition read


def test_ld_library_path_comes_before_the_system_one(tmp_path: Path) -> None:
    lib = _fake_libstdcxx(tmp_path / "new", "3.4.99")
    found = _probe_in_child({"LD_LIBRARY_PATH": f"{tmp_path / 'missing'}:{lib.parent}"})
    assert found == {"version": "3.4.99", "path": str(lib), "error": None}


@pytest.mark.skipif(not ARM.is_file(), reason="needs the aarch64 cross libstdc++ (g++-aarch64-linux-gnu)")
def test_a_libstdcxx_of_another_architecture_is_passed_over(tmp_path: Path) -> None:
    found = _probe_in_child({"LD_LIBRARY_PATH": str(ARM.parent)})
    assert found["path"] != str(ARM) and found["version"] == SYSTEM["version"], found


def test_selection_on_the_live_probe_refuses_a_newer_floor(tmp_path: Path) -> None:
    from llama_runtime.probe import probe
    from llama_runtime.variants import Manifest, select

    profile = probe(detail=False)
    assert profile.libc["libstdcxx"]["version"] == SYSTEM["version"]
    have = tuple(int(x) for x in SYSTEM["version"].split("."))
    newer = ".".join(map(str, (*have[:2], have[2] + 1)))

    def variant(floor: str) -> dict[str, object]:
        return {"archive": f"{floor}.tar.gz", "sha256": "ab" * 32, "size": 1, "os": "linux",
                "arch": profile.arch, "backend": "cpu", "libraries": ["libllama.so"],
                "requires": {"glibc": "2.17", "libstdcxx": floor}}

    manifest = Manifest.parse({"schema": 1, "llama_cpp": "b1", "variants": {
        "same": variant(SYSTEM["version"]), "newer": variant(newer)}})
    s = select(manifest, profile)
    assert s.selected == "same"
    assert s.candidate("newer").reasons == [f"needs libstdc++ GLIBCXX_{newer}, this machine has {SYSTEM['version']}"]
