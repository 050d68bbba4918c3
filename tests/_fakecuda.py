"""The fake NVIDIA driver the probe and selection unit tests share (registered by conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FAKECUDA_C = Path(__file__).parent / "data" / "fakecuda" / "fakecuda.c"


@pytest.fixture(scope="session")
def fakecuda(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny fake ``libcuda.so.1`` (``tests/data/fakecuda/fakecuda.c``) for the real ctypes probe."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the fake libcuda")
    out = tmp_path_factory.mktemp("fakecuda") / "libcuda.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(out), str(FAKECUDA_C)], check=True)
    return str(out)
