"""Issue 14: the AMX "Illegal instruction" of our source builds, and its patch.

GCC 12 dropped the rows/colsb stores of ggml's AMX tile configuration (the config was built on
the stack and ``_tile_loadconfig``'s asm claims an 8-byte read), so on an AMX CPU the first tile
instruction raised SIGILL. ``scripts/patches/0001-amx-tile-config-rodata.patch`` moves the config
to .rodata. Two kinds of proof:

* structural, on every x86_64 machine with binutils: every ``ldtilecfg`` of the built
  sapphirerapids plugins must load exactly the 64 bytes mmq.cpp intends
  (``scripts/amx_tilecfg.py``); the unpatched reference build must be reported;
* native, only where the CPU and the OS can run AMX: SmolLM2 Q4_1 in a child process dies with
  SIGILL on the unpatched plugin and answers "Paris" on the patched one.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scripts.binfacts import amx_tilecfg
from scripts import build_variants as bv
from scripts import source_patches

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("objdump") is None,
    reason="the checks read Linux ELF plugins with binutils' objdump",
)

MMQ = "ggml/src/ggml-cpu/amx/mmq.cpp"
# What ggml's 2-2-4 tile layout needs (mmq.cpp's notes): B in TMM0-1, A in TMM2-3, C in TMM4-7.
ROWS, COLSB = [8, 8, 16, 16, 16, 16, 16, 16], [64, 64, 32, 32, 64, 64, 64, 64]

# Captured: `objdump -d -w --no-show-raw-insn libggml-cpu-sapphirerapids.so` of our omp-lite build
# before the patch (GCC 12.2, Debian 12): only the zeroing and the palette byte are left.
UNPATCHED_DIS = """
0000000000085c00 <_Z24ggml_backend_amx_mul_matPK19ggml_compute_paramsP11ggml_tensor>:
   85ee0:\tcall   15730 <__tls_get_addr@plt>
   85ee5:\tcmpb   $0x0,0x10600(%rax)
   85eec:\tjne    85f13 <_Z24ggml_backend_amx_mul_matPK19ggml_compute_paramsP11ggml_tensor+0x313>
   85eee:\tvpxor  %xmm0,%xmm0,%xmm0
   85ef2:\tvmovdqa64 %zmm0,0xc0(%rsp)
   85efa:\tmovb   $0x1,0xc0(%rsp)
   85f02:\tldtilecfg 0xc0(%rsp)
"""
# Captured the same way from npm's @node-llama-cpp/linux-x64@3.22.1 plugin (symbols trimmed):
# its compiler kept the stores; colsb and rows come from two constants in .rodata.
NPM_DIS = """
0000000000095c10 <_Z24ggml_backend_amx_mul_matPK19ggml_compute_paramsP11ggml_tensor>:
   95f37:\tjne    95f91 <_Z24ggml_backend_amx_mul_matPK19ggml_compute_paramsP11ggml_tensor+0x381>
   95f39:\tvpxor  %xmm0,%xmm0,%xmm0
   95f3d:\tmov    0xcbfcc(%rip),%rdx        # 161f10 <_ZTS...+0x730>
   95f44:\tvmovdqa %xmm0,0x140(%rsp)
   95f4d:\tvmovdqa %xmm0,0x170(%rsp)
   95f56:\tvmovdqa %xmm0,0x160(%rsp)
   95f5f:\tvmovdqa 0xcbf99(%rip),%xmm0        # 161f00 <_ZTS...+0x720>
   95f67:\tmovb   $0x1,0x140(%rsp)
   95f6f:\tmov    %rdx,0x170(%rsp)
   95f77:\tvmovdqa %xmm0,0x150(%rsp)
   95f80:\tldtilecfg 0x140(%rsp)
"""
RODATA_DIS = """
0000000000030000 <ggml_backend_amx_mul_mat>:
   30579:\tldtilecfg 0x131a87(%rip)        # 162000 <_ZL16ggml_tile_config>
"""


def intended() -> bytes:
    cfg = bytearray(64)
    cfg[0] = 1
    struct.pack_into("<8H", cfg, 16, *COLSB)
    cfg[48:56] = bytes(ROWS)
    return bytes(cfg)


def tiny_elf(address: int, payload: bytes, *, writable: bool = False) -> bytes:
    """A minimal ELF64 file whose one data section holds ``payload`` at ``address``."""
    names = b"\0.rodata\0.shstrtab\0"
    data_off = 64
    names_off = data_off + len(payload)
    shoff = (names_off + len(names) + 7) & ~7
    header = (b"\x7fELF\x02\x01\x01" + bytes(9)
              + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2))
    null = bytes(64)
    data = struct.pack("<IIQQQQIIQQ", 1, 1, 2 | (1 if writable else 0), address, data_off,
                       len(payload), 0, 0, 16, 0)
    strtab = struct.pack("<IIQQQQIIQQ", 9, 3, 0, 0, names_off, len(names), 0, 0, 1, 0)
    body = header + payload + names
    return body + bytes(shoff - len(body)) + null + data + strtab


def npm_rodata(colsb: list[int] = COLSB, rows: list[int] = ROWS) -> bytes:
    return struct.pack("<8H", *colsb) + bytes(rows)  # 0x161f00: colsb[0..7], 0x161f10: rows[0..7]


# --------------------------------------------------------------------------- the checker itself
@pytest.fixture(scope="module")
def pristine() -> Path:
    """The vendored llama.cpp as the sdist has it (the dev cache's extraction)."""
    cache = bv.cache_root(os.environ)
    try:
        sdist = bv.ensure_sdist(cache)
    except bv.BuildVariantError as exc:
        pytest.skip(f"the llama-cpp-python sdist is not cached and cannot be fetched: {exc}")
    return bv.extract_vendor(sdist, cache / "src" / bv.sha256(sdist)[:16])


def test_intended_config_is_read_from_mmq_cpp(pristine: Path) -> None:
    assert amx_tilecfg.intended_config((pristine / MMQ).read_text()) == intended()
    with pytest.raises(ValueError, match="tile configuration code changed"):
        amx_tilecfg.intended_config("void f() {}")


def test_unpatched_disassembly_is_reported_with_the_bytes_it_loads() -> None:
    sites = amx_tilecfg.find_sites(UNPATCHED_DIS, tiny_elf(0x1000, bytes(16)), intended())
    assert len(sites) == 1 and not sites[0].ok
    assert sites[0].loaded == (1,) + (0,) * 63  # palette 1; rows/colsb never written
    [message] = amx_tilecfg.defects(sites, intended(), "plugin.so")
    assert "DEFECT" in message and "rows [0, 0, 0, 0, 0, 0, 0, 0]" in message
    assert "0x85f02" in message and "ggml_backend_amx_mul_mat" in message


def test_a_correct_stack_config_is_followed_through_rodata_loads() -> None:
    sites = amx_tilecfg.find_sites(NPM_DIS, tiny_elf(0x161F00, npm_rodata()), intended())
    assert [s.ok for s in sites] == [True] and bytes(b or 0 for b in sites[0].loaded) == intended()
    wrong = amx_tilecfg.find_sites(NPM_DIS, tiny_elf(0x161F00, npm_rodata(rows=[16] * 8)),
                                   intended())
    assert not wrong[0].ok and "rows [16, 16, 16, 16, 16, 16, 16, 16]" in \
        wrong[0].describe(intended())


@pytest.mark.parametrize("edit", [
    pytest.param(lambda t: t.replace("95f77:", "95f91:"), id="a-branch-target-inside-the-block"),
    pytest.param(lambda t: t.replace("mov    %rdx,0x170(%rsp)", "mov    %rdx,0x170(%rbx)"),
                 id="a-store-through-another-pointer"),
    pytest.param(lambda t: t.replace("95f6f:\tmov", "95f6f:\tadd    $0x1,%rdx\n   95f70:\tmov"),
                 id="a-register-it-cannot-follow"),
])
def test_what_cannot_be_followed_is_not_proven(edit: Callable[[str], str]) -> None:
    sites = amx_tilecfg.find_sites(edit(NPM_DIS), tiny_elf(0x161F00, npm_rodata()), intended())
    assert len(sites) == 1 and not sites[0].ok


def test_a_rip_relative_config_is_read_from_the_elf_file() -> None:
    good = amx_tilecfg.find_sites(RODATA_DIS, tiny_elf(0x162000, intended()), intended())
    assert [s.ok for s in good] == [True] and ".rodata" in good[0].source
    bad = amx_tilecfg.find_sites(RODATA_DIS, tiny_elf(0x162000, bytes([1]) + bytes(63)),
                                 intended())
    assert not bad[0].ok
    writable = amx_tilecfg.find_sites(RODATA_DIS, tiny_elf(0x162000, intended(), writable=True),
                                      intended())
    assert not writable[0].ok and "writable" in writable[0].source  # could change at run time
    assert amx_tilecfg.defects([], intended(), "x.so") == [
        "x.so: no ldtilecfg instruction found: not an AMX build of ggml's CPU backend"]


# --------------------------------------------------------------------------- patches and keys
def _amx_only(pristine: Path, calls: list[Path]) -> Callable[[Path], Path]:
    """An ``extract`` for patched_tree that copies only the AMX sources (all the patch touches)."""
    def extract(into: Path) -> Path:
        calls.append(into)
        root = into / "vendor" / "llama.cpp"
        shutil.copytree(pristine / "ggml/src/ggml-cpu/amx", root / "ggml/src/ggml-cpu/amx")
        return root
    return extract


def test_patches_apply_once_to_a_copy(pristine: Path, tmp_path: Path) -> None:
    before = hashlib.sha256((pristine / MMQ).read_bytes()).hexdigest()
    patches, calls = source_patches.patch_set(), []  # type: tuple[Path, ...], list[Path]
    assert [p.name for p in patches] == ["0001-amx-tile-config-rodata.patch"]
    tree = source_patches.patched_tree(_amx_only(pristine, calls), tmp_path, "s",
                                       "vendor/llama.cpp", patches)
    again = source_patches.patched_tree(_amx_only(pristine, calls), tmp_path, "s",
                                        "vendor/llama.cpp", patches)
    assert tree == again and len(calls) == 1  # made once, then reused
    digest = source_patches.patches_digest(patches)
    assert tree == tmp_path / f"s-p{digest[:12]}" / "vendor/llama.cpp"
    text = (tree / MMQ).read_text()
    assert "static constexpr tile_config_t ggml_tile_config" in text
    assert "static thread_local bool done = false;" not in text
    assert amx_tilecfg.intended_config(text) == intended()  # the same configuration, moved
    assert hashlib.sha256((pristine / MMQ).read_bytes()).hexdigest() == before
    assert [p.name for p in tmp_path.iterdir()] == [f"s-p{digest[:12]}"]  # no staging left


def test_a_patch_that_does_not_apply_is_one_clear_error(pristine: Path, tmp_path: Path) -> None:
    broken = tmp_path / "patches" / "0001-x.patch"
    broken.parent.mkdir()
    broken.write_text(source_patches.patch_set()[0].read_text().replace(
        "-    static thread_local bool done = false;", "-    static thread_local int done = 0;"))
    with pytest.raises(RuntimeError, match="0001-x.patch does not apply"):
        source_patches.patched_tree(_amx_only(pristine, []), tmp_path / "src", "s",
                                    "vendor/llama.cpp", [broken])
    assert list((tmp_path / "src").iterdir()) == []  # nothing half-patched left behind


def test_the_build_key_covers_the_patches(tmp_path: Path) -> None:
    patch = source_patches.patch_set()[0]
    digest = source_patches.patches_digest([patch])
    changed = tmp_path / patch.name
    changed.write_bytes(patch.read_bytes() + b"\n")
    assert source_patches.patches_digest([changed]) != digest
    assert source_patches.patches_digest([]) == ""
    flags = (*bv.BASE_CMAKE, *bv.DL_CMAKE)
    keys = {bv.build_key("0" * 64, flags, d) for d in ("", digest, digest[::-1])}
    assert len(keys) == 3


def test_every_flavor_but_the_reference_is_patched() -> None:
    ref = bv.FLAVORS["amx-unpatched"]
    assert not ref.patched and ref.cpu_variants == ("sapphirerapids",)
    assert ref.name not in {f.name for k, f in bv.FLAVORS.items() if k != "amx-unpatched"}
    bv.check_plugin_needs(ref, ["libggml-cpu-sapphirerapids.so"])
    assert all(f.patched for k, f in bv.FLAVORS.items() if k != "amx-unpatched")
    assert bv.patches_of(ref) == () and bv.patches_of(bv.FLAVORS["v3"]) == source_patches.patch_set()


# --------------------------------------------------------------------------- real builds
def _built(flavor: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source flavor from the build cache (built once, minutes, when it is not there)."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("a source build needs cmake and a C++ compiler")
    return bv.source_variant(flavor, tmp_path_factory.mktemp(flavor))


@pytest.fixture(scope="module")
def patched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _built("omp-lite", tmp_path_factory)  # the dev stand-in of the release build


@pytest.fixture(scope="module")
def unpatched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _built("amx-unpatched", tmp_path_factory)


def _sites(folder: Path, pristine: Path) -> list[amx_tilecfg.Site]:
    return amx_tilecfg.check_plugin(folder / "libggml-cpu-sapphirerapids.so", pristine / MMQ)


@pytest.mark.slow
def test_patched_plugin_loads_the_intended_tile_config(patched: Path, pristine: Path) -> None:
    sites = _sites(patched, pristine)
    assert sites and all(s.ok and "read-only data (.rodata)" in s.source for s in sites), \
        "\n".join(s.describe(intended()) for s in sites)
    assert bv.check_amx_plugins(patched, pristine) == []
    assert json.loads((patched / "variant.json").read_text())["source_patches"] == [
        p.name for p in source_patches.patch_set()]


@pytest.mark.slow
def test_unpatched_plugin_is_reported(unpatched: Path, pristine: Path) -> None:
    sites = _sites(unpatched, pristine)
    assert sites and not any(s.ok for s in sites)
    # what GCC 12 left: palette 1 and zeros, so every tile has 0 rows
    assert all(s.loaded[48:56] == (0,) * 8 and s.loaded[0] == 1 for s in sites)
    found = bv.check_amx_plugins(unpatched, pristine)
    assert len(found) == len(sites) and all("DEFECT" in m for m in found)


def test_every_cached_patched_build_loads_the_intended_tile_config(pristine: Path) -> None:
    """The release build (``omp``, 14 plugins, ~600 CPU-s) is checked too when it is cached."""
    builds = sorted(p.parent for p in (bv.cache_root(os.environ) / "builds").glob("*/variant.json")
                    if json.loads(p.read_text()).get("source_patches")
                    and (p.parent / "libggml-cpu-sapphirerapids.so").is_file())
    if not builds:
        pytest.skip("no patched build with a sapphirerapids plugin in the build cache yet")
    for folder in builds:
        assert bv.check_amx_plugins(folder, pristine) == [], folder


def test_npm_plugin_passes_the_same_check(pristine: Path,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """npm's build kept the stores: the check accepts a correct config built on the stack."""
    try:
        folder = bv.npm_variant("@node-llama-cpp/linux-x64@3.22.1", tmp_path_factory.mktemp("npm"))
    except bv.BuildVariantError as exc:
        pytest.skip(f"npm package not cached and not reachable: {exc}")
    sites = _sites(folder, pristine)
    assert sites and all(s.ok and "replayed" in s.source for s in sites)


# --------------------------------------------------------------------------- native AMX
def amx_usable() -> tuple[bool, str]:
    """Whether this CPU reports AMX and this kernel supports its tile state (what ggml needs)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError as exc:
        return False, f"/proc/cpuinfo unreadable ({exc})"
    missing = [f for f in ("amx_tile", "amx_int8") if f not in flags]
    if missing:
        return False, f"the CPU does not report {', '.join(missing)}"
    libc, mask = ctypes.CDLL(None, use_errno=True), ctypes.c_uint64()
    # arch_prctl(ARCH_GET_XCOMP_SUPP): the XSTATE features this kernel can enable (18: tile data)
    if libc.syscall(158, 0x1021, ctypes.byref(mask)) != 0 or not mask.value >> 18 & 1:
        return False, "the kernel does not offer AMX tile data (ARCH_GET_XCOMP_SUPP)"
    return True, "AMX usable"


RUN_MODEL = """
import json, sys
from pathlib import Path
from llama_runtime import Llama
from llama_runtime.native import Native
folder = Path(sys.argv[1])
meta = json.loads((folder / "variant.json").read_text())
native = Native.open([folder / n for n in meta["libraries"]], backend_dir=folder)
print(" ".join(native.system_info().split()), flush=True)
with Llama(sys.argv[2], n_ctx=256, n_threads=2, native=native) as llm:
    print(llm.generate("The capital of France is", max_tokens=16, temperature=0), flush=True)
"""


def _run_smollm2(folder: Path) -> subprocess.CompletedProcess[str]:
    from scripts import devrelease

    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-c", RUN_MODEL, str(folder), str(devrelease.smollm2())],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture
def amx() -> None:
    usable, why = amx_usable()
    if not usable:
        pytest.skip(f"AMX cannot run here ({why}); the structural checks "
                    "test_patched_plugin_loads_the_intended_tile_config and "
                    "test_unpatched_plugin_is_reported ran instead")


@pytest.mark.slow
@pytest.mark.usefixtures("amx")
def test_unpatched_plugin_dies_with_sigill_on_amx(unpatched: Path) -> None:
    proc = _run_smollm2(unpatched)
    assert proc.returncode == -signal.SIGILL, (proc.returncode, proc.stdout, proc.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.usefixtures("amx")
def test_patched_plugin_answers_paris_on_amx(patched: Path) -> None:
    proc = _run_smollm2(patched)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    info, _, text = proc.stdout.partition("\n")
    assert "AMX_INT8 = 1" in info  # ggml took the sapphirerapids plugin
    assert "Paris" in text
