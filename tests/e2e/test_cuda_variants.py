"""The CUDA variants of the release, on the real npm builds: facts read from the fatbin, the
one-target copies (scripts/cuda_fatbin.py) checked by NVIDIA's own ``cuobjdump``, and every
variant loaded with NVIDIA's real runtime wheels and a stub driver.

Nothing here runs CUDA code (no GPU): what a GPU adds is scripts/gpu_check.py's job. What is
checked is everything short of it: the dynamic loader binds every symbol of the full and cut
``libggml-cuda.so`` against the real ``libcudart``/``libcublas``, ggml's CUDA backend registers
(its static constructors, which register the fatbins with the runtime, have run), and the CUDA
runtime answers it through the stub driver; cuobjdump parses the cut fatbins and extracts
byte-identical images for the kept target.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
DATA = Path(__file__).parents[1] / "data"
CUDA_NPM = "@node-llama-cpp/linux-x64-cuda@3.22.1"
EXT_NPM = "@node-llama-cpp/linux-x64-cuda-ext@3.22.1"
from scripts.binfacts import cuda_fatbin  # noqa: E402


def _entry(kind: int, arch: int, payload: bytes, isa: tuple[int, int] = (8, 4), flags: int = 0x11) -> bytes:
    head = struct.pack("<HHIQ", kind, 0x0101, 64, len(payload)) + bytes(8)
    head += struct.pack("<HHI", isa[1], isa[0], arch) + bytes(8) + struct.pack("<QQQ", flags, 0, 0)
    return head + payload


def _container(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", cuda_fatbin.MAGIC, 1, 16, len(body)) + body


@pytest.fixture
def fake_lib(tmp_path: Path) -> Path:
    one = _container(_entry(1, 75, b"P" * 24), _entry(2, 86, b"S" * 40), _entry(2, 120, b"A" * 8,
                                                                              flags=0x01108011))
    two = _container(_entry(1, 75, b"p" * 16), _entry(2, 86, b"s" * 8))
    path = tmp_path / "lib.so"
    path.write_bytes(b"ELF-ish head" + bytes(4) + one + two + b"tail")
    return path


def test_images_names_and_ptx_toolkit(fake_lib: Path) -> None:
    found = cuda_fatbin.images(fake_lib)
    assert [i.target for i in found] == ["compute_75", "sm_86", "sm_120a", "compute_75", "sm_86"]
    assert cuda_fatbin.targets(found) == ["sm_86", "sm_120a", "compute_75"]
    assert cuda_fatbin.ptx_driver_cuda(found) == "12.4"
    assert cuda_fatbin.target_bytes(found)["sm_86"] == 64 + 40 + 64 + 8


def test_keep_only_moves_nothing_but_the_entries(fake_lib: Path, tmp_path: Path) -> None:
    before = cuda_fatbin.images(fake_lib)
    cut = tmp_path / "cut.so"
    kept = cuda_fatbin.keep_only(fake_lib, cut, lambda i: i.target == "sm_86")
    raw, old = cut.read_bytes(), fake_lib.read_bytes()
    assert len(raw) == len(old) and raw.endswith(b"tail") and raw[:16] == old[:16]
    again = cuda_fatbin.images(cut)
    assert [i.target for i in again] == ["sm_86", "sm_86"] and again == kept
    containers = sorted({i.container for i in before})
    assert sorted({i.container for i in again}) == containers  # the host code's pointers hold
    for image, original in zip(again, [b for b in before if b.target == "sm_86"]):
        assert image.offset == image.container + 16  # right after its container's header
        assert raw[image.offset:image.offset + image.stored] == old[original.offset:original.offset + original.stored]
    first_end = again[0].offset + again[0].stored
    assert raw[first_end:containers[1]] == bytes(containers[1] - first_end)  # the dropped bytes


def test_keep_only_refuses_a_container_left_without_code(fake_lib: Path, tmp_path: Path) -> None:
    with pytest.raises(cuda_fatbin.FatbinError, match="would keep no image"):
        cuda_fatbin.keep_only(fake_lib, tmp_path / "cut.so", lambda i: i.target == "sm_120a")


def test_unknown_ptx_isa_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lib.so"
    path.write_bytes(_container(_entry(1, 90, b"x" * 8, isa=(9, 9))))
    with pytest.raises(cuda_fatbin.FatbinError, match="PTX ISA"):
        cuda_fatbin.ptx_driver_cuda(cuda_fatbin.images(path))


# --------------------------------------------------------------------------- the real builds
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def cuda_dirs(bv: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("cuda")
    from scripts import npm_cuda

    try:
        for spec in (CUDA_NPM, EXT_NPM):
            bv.npm_variant(spec, out)
    except bv.BuildVariantError as exc:
        pytest.skip(f"cannot pack the npm CUDA builds: {exc}")
    for name, target in (("linux-x86_64-cuda12", "sm_86"), ("linux-x86_64-cuda13", "sm_89")):
        npm_cuda.target_variants(out / name, out, [target])
    yield out


FACTS = ("requires", "libraries", "python_requires", "min_driver_version", "cuda_architectures",
         "cuda_ptx_driver", "cuda_target", "cuda_full")


@slow
@pytest.mark.parametrize("name", ["linux-x86_64-cuda12", "linux-x86_64-cuda13",
                                  "linux-x86_64-cuda12-sm86", "linux-x86_64-cuda13-sm89"])
def test_facts_match_the_selection_data(cuda_dirs: Path, name: str) -> None:
    meta = json.loads((cuda_dirs / name / "variant.json").read_text())
    recorded = json.loads((DATA / "cuda_variants.json").read_text())["variants"][name]
    assert {k: meta.get(k) for k in FACTS} == {k: recorded.get(k) for k in FACTS}


@slow
def test_cuda12_shares_every_other_file_with_cuda13(cuda_dirs: Path) -> None:
    a, b = cuda_dirs / "linux-x86_64-cuda12", cuda_dirs / "linux-x86_64-cuda13"
    names = sorted(p.name for p in a.iterdir() if p.name not in ("variant.json", "libggml-cuda.so"))
    assert names == sorted(p.name for p in b.iterdir() if p.name not in ("variant.json", "libggml-cuda.so"))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert "libcudart.so.12" in json.loads((a / "variant.json").read_text())["external_libraries"]


def _cuobjdump(tmp: Path) -> str:
    tools = tmp.parent / "cuobjdump-tool"
    found = list(tools.glob("nvidia/*/bin/cuobjdump"))
    if not found:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(tools),
                               "nvidia-cuda-cuobjdump"], capture_output=True, text=True)
        found = list(tools.glob("nvidia/*/bin/cuobjdump"))
        if not found:
            pytest.skip(f"cannot install NVIDIA's cuobjdump from PyPI: {proc.stderr[-500:]}")
    return str(found[0])


def _extract(tool: str, lib: Path, into: Path) -> dict[str, str]:
    into.mkdir()
    for flag in ("-xelf", "-xptx"):
        subprocess.run([tool, flag, "all", str(lib)], cwd=into, check=True, capture_output=True)
    # names carry the image's index in the file, which moves when others go: compare contents
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p.name.rsplit(".", 2)[-2] for p in into.iterdir()}


@slow
@pytest.mark.parametrize(("name", "listed"), [("linux-x86_64-cuda13-sm89", "sm_89"),
                                              ("linux-x86_64-cuda12-sm86", "sm_86")])
def test_cuobjdump_reads_the_cut_fatbins(cuda_dirs: Path, tmp_path: Path, name: str, listed: str) -> None:
    tool = _cuobjdump(tmp_path)
    cut, full = cuda_dirs / name / "libggml-cuda.so", cuda_dirs / name.rsplit("-", 1)[0] / "libggml-cuda.so"
    listing = subprocess.run([tool, "-lelf", "-lptx", str(cut)], capture_output=True, text=True, check=True)
    lines = listing.stdout.splitlines()
    assert len(lines) == 143 and all(line.endswith(f".{listed}.cubin") for line in lines)
    kept = _extract(tool, cut, tmp_path / "cut")
    original = {h: n for h, n in _extract(tool, full, tmp_path / "full").items() if n == listed}
    assert kept == original  # the same 143 cubins, byte for byte


def _stub_libcuda(plugins: list[Path], dest: Path) -> Path:
    """A libcuda.so.1 exporting what the plugins import from the driver, each answering
    CUDA_ERROR_NO_DEVICE: no GPU, but every symbol binds (ggml dlopens with RTLD_NOW)."""
    names = {"cuInit", "cuDriverGetVersion", "cuGetProcAddress", "cuGetProcAddress_v2"}
    for plugin in plugins:
        out = subprocess.run(["nm", "-D", "--undefined-only", str(plugin)], capture_output=True,
                             text=True, check=True).stdout
        names |= {line.split()[-1].split("@")[0] for line in out.splitlines()
                  if line.split()[-1].startswith("cu") and line.split()[-1][2:3].isupper()}
    source = dest / "stubcuda.c"
    source.write_text("".join(f"int {n}(void) {{ return 100; }}\n" for n in sorted(names)))
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler for the stub driver")
    subprocess.run([gcc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                    str(dest / "libcuda.so.1"), str(source)], check=True)
    return dest / "libcuda.so.1"


def _wheels(major: int, requires: list[str]) -> Path:
    """NVIDIA's runtime wheels of one major, pip-installed once into the dev cache."""
    from scripts import devrelease

    key = hashlib.sha256(json.dumps(requires).encode()).hexdigest()[:12]
    target = devrelease.dev_cache() / "nvidia-wheels" / f"cu{major}-{key}"
    if not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target),
                               *requires], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot pip install {requires}: {proc.stderr[-500:]}")
        (target / ".complete").write_text("ok\n")
    return target


LOAD = r"""
import ctypes, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from llama_runtime.runtime.nativedeps import resolve_all
folder = Path(sys.argv[1])
ctypes.CDLL(sys.argv[2], mode=ctypes.RTLD_GLOBAL)  # the stub driver, as libcuda.so.1
meta = json.loads((folder / "variant.json").read_text())
deps = resolve_all([n for n in meta["external_libraries"] if n != "libcuda.so.1"])
ctypes.CDLL(str(folder / "libggml-cuda.so"))  # RTLD_NOW: every symbol must bind
libs = [ctypes.CDLL(str(folder / n)) for n in meta["libraries"]]
g = libs[-1]
g.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
g.ggml_backend_load_all_from_path(str(folder).encode())
g.ggml_backend_reg_by_name.restype = ctypes.c_void_p
g.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
g.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
g.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
reg = g.ggml_backend_reg_by_name(b"CUDA")
print(json.dumps({"deps": {d["name"]: d["where"] for d in deps}, "cuda_registered": bool(reg),
                  "cuda_devices": g.ggml_backend_reg_dev_count(reg) if reg else None}))
"""


@slow
@pytest.mark.parametrize("name", ["linux-x86_64-cuda12", "linux-x86_64-cuda12-sm86",
                                  "linux-x86_64-cuda13", "linux-x86_64-cuda13-sm89"])
def test_loads_with_nvidia_wheels_and_a_stub_driver(cuda_dirs: Path, tmp_path: Path, name: str) -> None:
    folder = cuda_dirs / name
    meta = json.loads((folder / "variant.json").read_text())
    major = int(meta["cuda_runtime"])
    site = _wheels(major, meta["python_requires"])
    stub = _stub_libcuda([folder / "libggml-cuda.so"], tmp_path)
    proc = subprocess.run([sys.executable, "-c", LOAD, str(folder), str(stub), str(site)],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SCRIPTS.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(str(site) in where for where in out["deps"].values()), out["deps"]
    assert set(out["deps"]) == {f"libcudart.so.{major}", f"libcublas.so.{major}"}
    assert out["cuda_registered"] and out["cuda_devices"] == 0
    # ggml asked the real CUDA runtime, which asked the stub driver
    assert "ggml_cuda_init: failed to initialize CUDA" in proc.stderr
