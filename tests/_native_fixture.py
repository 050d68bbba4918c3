"""Real llama.cpp libraries and a real tiny GGUF for the binding tests.

Imported by ``test_native.py`` and ``test_llama.py`` (``tests/conftest.py`` is someone else's).
The libraries come from ``LLAMA_RUNTIME_TEST_LIBDIR`` if set, else the unpacked npm package
``@node-llama-cpp/linux-x64`` at ``/tmp/npmx/package/bins/linux-x64``; without either the tests
skip and say so.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

from tiny_model import write_tiny_llama

from llama_runtime.native import Native

DEFAULT_LIBDIR = Path("/tmp/npmx/package/bins/linux-x64")


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


def find_native_libs() -> NativeLibs:
    """The libraries to test against, or skip with the reason."""
    env = os.environ.get("LLAMA_RUNTIME_TEST_LIBDIR")
    folder = Path(env) if env else DEFAULT_LIBDIR
    if not folder.is_dir():
        pytest.skip(
            f"no llama.cpp libraries: set LLAMA_RUNTIME_TEST_LIBDIR to a folder holding "
            f"libggml-base, libggml and libllama (e.g. `npm pack @node-llama-cpp/linux-x64@3.22.1`"
            f" unpacked: package/bins/linux-x64); {folder} does not exist"
        )
    libraries = (
        _one(folder, "libggml-base.so", "libggml-base.*.so"),
        _one(folder, "libggml.so", "libggml.v*.so"),
        _one(folder, "libllama.so", "libllama.v*.so"),
    )
    # Builds with GGML_BACKEND_DL ship their CPU backend as separate libggml-cpu*.so files.
    backend_dl = any(folder.glob("libggml-cpu*.so"))
    return NativeLibs(folder, libraries, backend_dl)


@pytest.fixture(scope="session")
def native_libs() -> NativeLibs:
    return find_native_libs()


@pytest.fixture(scope="session")
def native_lib(native_libs: NativeLibs) -> Native:
    """The opened llama.cpp of this process (``Native.open`` is once per process anyway)."""
    return native_libs.open()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama model (2 layers, n_embd 64, 300-token SPM vocabulary), seed 0."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=0)
