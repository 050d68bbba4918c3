"""In-tree PEP 517 backend: hatchling, plus ``config_settings`` handed to the build hook.

hatchling ignores ``config_settings``; this wrapper keeps them for the duration of the
build so ``pip install -C backend=cuda12`` (or uv's ``--config-settings``) reaches
:mod:`hatch_llama.hook`. ``prepare_metadata_for_build_wheel`` is deliberately not offered:
the wheel's dependencies depend on the variant the hook picks, so frontends must read the
metadata from the built wheel, never from a guess made before the build.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hatchling.build import build_sdist, get_requires_for_build_sdist  # noqa: F401
from hatchling.build import build_editable as _build_editable
from hatchling.build import build_wheel as _build_wheel
from hatchling.build import get_requires_for_build_editable, get_requires_for_build_wheel  # noqa: F401

_current: dict[str, Any] = {}


def config_settings() -> dict[str, Any]:
    """The ``config_settings`` of the build now running (empty outside one)."""
    return dict(_current)


@contextmanager
def _holding(settings: Mapping[str, Any] | None) -> Iterator[None]:
    _current.clear()
    _current.update(settings or {})
    try:
        yield
    finally:
        _current.clear()


def build_wheel(wheel_directory: str, config_settings: Mapping[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    with _holding(config_settings):
        return _build_wheel(wheel_directory, None, metadata_directory)


def build_editable(wheel_directory: str, config_settings: Mapping[str, Any] | None = None,
                   metadata_directory: str | None = None) -> str:
    with _holding(config_settings):
        return _build_editable(wheel_directory, None, metadata_directory)
