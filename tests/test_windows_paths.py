"""Windows code paths that this Linux machine can only reach with the platform faked: the loader
must register a variant's folder with os.add_dll_directory (and never touch PATH)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from llama_runtime import loader


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
