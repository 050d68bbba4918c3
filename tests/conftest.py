"""Shared fixtures: the loopback hub, and a guard that keeps the suite off the network."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# huggingface_hub reads these once, at import: set them before anything imports it
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from scripts.hubserver import HubServer  # noqa: E402

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


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    """A started loopback hub with an empty store in a temporary folder."""
    with HubServer(tmp_path / "hub-data") as server:
        yield server


# a real release on loopback (variants -> hub -> lock -> sdist), shared by the end-to-end tests
from release_fixtures import gpu_release, hub_faults, release, tiny_model, variants_dir  # noqa: E402,F401
# the real quantized model (SmolLM2 Q4_1 from PyPI), shared by binding and end-to-end tests
from _native_fixture import smollm2_gguf  # noqa: E402,F401
