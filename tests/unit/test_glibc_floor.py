"""The glibc floor: which variant an old Linux gets, and the glibc-2.28 build really is one.

Selection runs on captured machine profiles (``os.confstr('CS_GNU_LIBC_VERSION')`` of RHEL 8,
Debian 10/11, Ubuntu 20.04/22.04, RHEL 9, Amazon Linux 2, CentOS 7, Graviton on Debian 11 and
Amazon Linux 2023, with a captured /proc/cpuinfo) against the facts of the real variant folders
(``tests/data/glibc/release-variants.json``: ``python -m scripts.cross_builds snapshot DIR...``
over the npm folders and our builds; the x86 ``-omp`` entry is the omp-lite stand-in, whose
floor is the full build's). The build test makes the zig glibc-2.28 variant (cached),
checks with readelf that nothing in it needs more than GLIBC_2.28 nor libstdc++, loads it, and
compares its greedy ids with the gcc/OpenMP build's on an f16 and a quantized model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llama_runtime.probe.capture import profile_from_captures
from llama_runtime.variants import Manifest, select

DATA = Path(__file__).parents[1] / "data"
SNAPSHOT = json.loads((DATA / "glibc" / "release-variants.json").read_text())
OLD_X86, OLD_ARM = "linux-x86_64-cpu-glibc228", "linux-aarch64-cpu-glibc228"


def _manifest() -> Manifest:
    variants = {}
    for name, facts in SNAPSHOT.items():
        entry: dict[str, Any] = {"archive": f"{name}.tar.gz", "sha256": "ab" * 32, "size": 1000,
                                 **facts}
        variants[name] = entry
    return Manifest.parse({"schema": 1, "llama_cpp": "0.5.0", "variants": variants})


MANIFEST = _manifest()
HASWELL = "haswell-xeon-e5-2680-v3.txt"
# (id, arch, libc as confstr reports it, cpuinfo capture, expected variant or None)
MACHINES = [
    ("rhel8-haswell", "x86_64", "glibc 2.28", HASWELL, OLD_X86),
    ("debian10-nehalem", "x86_64", "glibc 2.28", "nehalem-i7-920.txt", OLD_X86),
    ("debian11-haswell", "x86_64", "glibc 2.31", HASWELL, OLD_X86),
    ("ubuntu2004-core2", "x86_64", "glibc 2.31", "core2-penryn.txt", OLD_X86),
    ("amazonlinux2-haswell", "x86_64", "glibc 2.26", HASWELL, None),
    ("centos7-haswell", "x86_64", "glibc 2.17", HASWELL, None),
    ("rhel9-haswell", "x86_64", "glibc 2.34", HASWELL, "linux-x86_64-cpu-omp"),
    ("ubuntu2204-haswell", "x86_64", "glibc 2.35", HASWELL, "linux-x86_64-cpu-omp"),
    ("graviton2-debian11", "aarch64", "glibc 2.31", "graviton2-neoverse-n1.txt", OLD_ARM),
    ("graviton3-al2023", "aarch64", "glibc 2.34", "graviton3-neoverse-v1.txt",
     "linux-aarch64-cpu-omp"),
]


def _profile(arch: str, libc: str, cpuinfo: str) -> Any:
    return profile_from_captures({"os": "linux", "arch": arch, "libc": libc,
                                  "cpuinfo": (DATA / "cpuinfo" / cpuinfo).read_text()})


def test_snapshot_is_the_release_matrix() -> None:
    floors = {name: facts["requires"]["glibc"] for name, facts in SNAPSHOT.items()}
    old = {n for n, f in floors.items() if tuple(map(int, f.split("."))) <= (2, 28)}
    assert old == {OLD_X86, OLD_ARM}, floors  # everything else needs 2.34
    for name in old:  # and the old ones are fallbacks: ranked below every other CPU build
        assert SNAPSHOT[name]["priority"] < min(
            SNAPSHOT[n].get("priority", 0) for n in SNAPSHOT if n not in old)
        assert SNAPSHOT[name]["libstdcxx"] is None  # zig links libc++ in: no libstdc++ floor


@pytest.mark.parametrize("arch,libc,cpuinfo,expected", [m[1:] for m in MACHINES],
                         ids=[m[0] for m in MACHINES])
def test_old_glibc_machines_get_the_228_build(arch: str, libc: str, cpuinfo: str,
                                              expected: str | None) -> None:
    s = select(MANIFEST, _profile(arch, libc, cpuinfo), backend="cpu")
    assert s.selected == expected, s.why()
    have = libc.split()[1]
    for c in s.candidates:
        floor = SNAPSHOT[c.name]["requires"]["glibc"]
        if SNAPSHOT[c.name]["arch"] == arch and tuple(map(int, floor.split("."))) > tuple(
                map(int, have.split("."))):
            assert f"needs glibc >= {floor}, this machine has {have}" in c.reasons, c


def test_newer_glibc_keeps_the_228_build_as_the_last_fallback() -> None:
    s = select(MANIFEST, _profile("x86_64", "glibc 2.35", HASWELL), backend="cpu")
    assert s.ranked[0] == "linux-x86_64-cpu-omp"
    assert s.ranked[-1] == OLD_X86  # the loader falls back to it only after every other


def test_no_variant_error_names_the_glibc() -> None:
    s = select(MANIFEST, _profile("x86_64", "glibc 2.26", HASWELL), backend="cpu")
    with pytest.raises(LookupError) as err:
        s.require()
    floor = SNAPSHOT[OLD_X86]["requires"]["glibc"]  # what readelf found: 2.27 (zig aimed at 2.28)
    assert f"{OLD_X86}: needs glibc >= {floor}, this machine has 2.26" in str(err.value)


# --------------------------------------------------------------------------- the real build
needs_tools = pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("cmake") is None,
                                 reason="readelf and cmake are needed (scripts/dev installs them)")


@pytest.fixture(scope="module")
def old_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scripts import build_variants

    return build_variants.source_variant("glibc228-lite", tmp_path_factory.mktemp("glibc228"))


@needs_tools
def test_228_build_needs_nothing_newer(old_build: Path) -> None:
    from scripts import build_variants as bv
    from scripts import cross_builds

    meta = json.loads((old_build / "variant.json").read_text())
    files = [old_build / n for n in [*meta["libraries"], *meta["plugins"]]]
    assert len(files) == 3 + len(cross_builds.CROSS_FLAVORS["glibc228-lite"].cpu_variants or ())
    versions = [v for f in files for v in bv.parse_glibc_versions(bv.readelf("-V", f))]
    assert versions and max(versions) <= (2, 28), max(versions)
    assert meta["requires"]["glibc"] == ".".join(map(str, max(versions)))
    for f in files:
        needed = bv.elf_needed(f)
        assert not [n for n in needed if "stdc++" in n or "gomp" in n or "gcc_s" in n], (f, needed)
    assert bv.libstdcxx_floor(files) is None
    assert "Version needs" in bv.readelf("-V", files[0])  # the parser saw a real section
    # an unversioned reference (a function the 2.28 stubs lack) would escape readelf -V
    names = [f.name for f in files]
    assert cross_builds.unresolved_symbols(old_build, names) == {}


@needs_tools
def test_unresolved_symbols_are_found(old_build: Path, tmp_path: Path) -> None:
    from scripts import cross_builds

    shutil.copy2(old_build / "libllama.so", tmp_path / "libllama.so")  # without its ggml
    missing = cross_builds.unresolved_symbols(tmp_path, ["libllama.so"])["libllama.so"]
    assert "ggml_init" in missing and not [m for m in missing if "@" in m]


@pytest.fixture(scope="module")
def omp_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scripts import build_variants

    return build_variants.source_variant("omp-lite", tmp_path_factory.mktemp("omp"))


@needs_tools
@pytest.mark.parametrize("kind", ["f16", "Q4_0"])
def test_228_build_generates_the_gcc_builds_ids(old_build: Path, omp_build: Path, kind: str,
                                                tmp_path: Path) -> None:
    """Same plugins, same machine, two compilers: ggml picks the same plugin in both and their
    greedy ids agree (within the near-tie tolerance of tests/_cross.py)."""
    try:
        from . import _cross
        from ._cross_quantize import quantize
    except ImportError:
        import _cross  # type: ignore[no-redef]
        from _cross_quantize import quantize  # type: ignore[no-redef]
    from scripts.tiny_model import write_tiny_llama

    model = write_tiny_llama(tmp_path / "f16.gguf", seed=3, f16=True, n_embd=256, n_ff=512)
    if kind != "f16":
        model = quantize(omp_build, model, tmp_path / f"{kind}.gguf", kind)
    runs = {}
    for folder in (old_build, omp_build):
        exe = _cross.build_greedy(folder, tmp_path / f"greedy-{folder.parent.name}")
        runs[folder] = _cross.run_greedy([], exe, model, "the llama runtime is", 32, folder)
    new, old = runs[omp_build], runs[old_build]
    assert old.plugin == new.plugin and old.plugin is not None
    assert len(new.ids) >= 8
    assert _cross.tolerance_problem(new, old, 0.1 if kind == "f16" else 0.5) is None, (new, old)


_BINDING = r"""
import json, sys
from pathlib import Path
from llama_runtime.llama import Llama
from llama_runtime.native import Native
folder, model = Path(sys.argv[1]), sys.argv[2]
meta = json.loads((folder / "variant.json").read_text())
native = Native.open([folder / n for n in meta["libraries"]], backend_dir=folder)
with Llama(model, n_ctx=256, n_threads=2, native=native) as llm:
    ids = llm.generate_tokens("the llama runtime is", 32, temperature=0)
    print(json.dumps({"ids": ids, "threadpool": bool(llm._context.threadpool)}))
"""


@needs_tools
def test_binding_runs_the_228_build_with_its_thread_pool(old_build: Path, omp_build: Path,
                                                         tmp_path: Path) -> None:
    """llama_runtime itself loads the zig build (no OpenMP: it attaches ggml's persistent thread
    pool) and generates the gcc/OpenMP build's ids on a quantized model."""
    try:
        from . import _cross
        from ._cross_quantize import quantize
    except ImportError:
        import _cross  # type: ignore[no-redef]
        from _cross_quantize import quantize  # type: ignore[no-redef]
    from scripts.tiny_model import write_tiny_llama

    f16 = write_tiny_llama(tmp_path / "f16.gguf", seed=3, f16=True, n_embd=256, n_ff=512)
    model = quantize(omp_build, f16, tmp_path / "Q8_0.gguf", "Q8_0")
    exe = _cross.build_greedy(omp_build, tmp_path / "greedy")
    want = _cross.run_greedy([], exe, model, "the llama runtime is", 32, omp_build)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", _BINDING, str(old_build), str(model)],
                         capture_output=True, text=True, timeout=300, env=env, check=True)
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["threadpool"] is True
    assert got["ids"] == want.ids
