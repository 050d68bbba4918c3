"""Shared fixtures: the loopback hub, and a guard that keeps the suite off the network."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# huggingface_hub reads these once, at import: set them before anything imports it
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from scripts.hubserver import HubServer  # noqa: E402

# The fixtures every layer shares, registered once here (pytest reads pytest_plugins only from
# this top-level conftest) instead of imported into each test module:
pytest_plugins = [
    "release_fixtures",  # a real release on loopback: variants -> hub -> lock -> sdist
    "_native_fixture",  # real libllama, the tiny GGUFs, SmolLM2 Q4_1, the C oracle
    "_quant_fixture",  # the quantizable tiny llama
    "_fakecuda",  # a fake libcuda.so.1 for the real ctypes probe
    "reliability_table",  # the reliability figures, printed at the end of the session
]

_BLOCKED: list[str] = []


class NetworkEscapeError(ConnectionRefusedError):
    """A test tried to reach a non-loopback address; the suite must never leave 127.0.0.1."""


def _is_loopback(family: int, address: Any) -> bool:
    if family == getattr(socket, "AF_UNIX", None):
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # an unresolved name: refuse rather than guess


def _guard(original: Any) -> Any:
    def guarded(self: socket.socket, address: Any) -> Any:
        if not _is_loopback(self.family, address):
            _BLOCKED.append(repr(address))
            raise NetworkEscapeError(f"test tried to connect to {address!r}; only loopback allowed")
        return original(self, address)

    return guarded


def pytest_sessionstart(session: pytest.Session) -> None:
    socket.socket.connect = _guard(socket.socket.connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = _guard(socket.socket.connect_ex)  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _no_network_escape() -> Iterator[None]:
    # clients often swallow connection errors (and fall back to a cache): fail the test anyway
    seen = len(_BLOCKED)
    yield
    if len(_BLOCKED) > seen:
        pytest.fail(f"non-loopback connections attempted: {', '.join(_BLOCKED[seen:])}")


# Fixtures that need a llama.cpp build (npm packs, source builds, cross builds), a release, the
# pinned llama.cpp source or a download: (module that defines it, name). A test that uses one,
# directly or through another fixture, is marked slow here, so `-m "not slow"` never starts a
# build. A test that builds or downloads without such a fixture carries @pytest.mark.slow itself.
NEEDS_BUILD = {
    ("release_fixtures", "variants_dir"),  # npm prebuilt + source builds, then every release
    ("release_fixtures", "gpu_release"),
    ("_native_fixture", "native_libs"),  # a real libllama: the dev variants, built on first use
    ("_native_fixture", "smollm2_gguf"),  # 98 MB from PyPI, and a real model run
    ("test_aarch64", "arm_folders"), ("test_aarch64", "x86_folder"),  # builds; qemu-aarch64
    ("test_amx", "pristine"),  # the llama-cpp-python sdist (PyPI), extracted
    ("test_bench_baselines", "v3_driver"),
    ("test_build_variants", "npm_folder"),
    ("test_cuda_variants", "cuda_dirs"),
    ("test_generations", "v040"),
    ("test_glibc_floor", "old_build"), ("test_glibc_floor", "omp_build"),
    ("test_macos", "mac"),
    ("test_plugin_data", "ggml_src"),
    ("test_prove", "release"),
    ("test_quantize_oracle", "variant_run"),
    ("test_vulkan", "vk_release"),
    ("test_windows_build", "work"),  # MinGW builds, run under Wine
}


def _needs_build(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in info.names_closure:
        defs = info.name2fixturedefs.get(name) or ()
        if defs and (getattr(defs[-1].func, "__module__", ""), name) in NEEDS_BUILD:
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for module_name, name in sorted(NEEDS_BUILD):  # a renamed fixture must not lose its mark
        module = sys.modules.get(module_name)
        if module is not None and not hasattr(module, name):
            raise pytest.UsageError(f"tests/conftest.py NEEDS_BUILD names {module_name}.{name}, "
                                    "which that module no longer defines: update NEEDS_BUILD")
    for item in items:
        if _needs_build(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    """A started loopback hub with an empty store in a temporary folder."""
    with HubServer(tmp_path / "hub-data") as server:
        yield server

