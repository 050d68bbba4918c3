"""The manifest (``manifest.json`` on the hub) and the lock (``binaries.lock.json`` in the sdist).

Schema 1 is a contract with every released wheel: a later release may add keys (an older
runtime ignores them, and keeps them in ``extra``), never rename or drop one. Parsing validates
everything the selection, the fetch and the loader rely on, so they can trust the values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from .entry import OPTIONAL_REQUIRE_KEYS, REQUIRE_KEYS, check_entry, plain_name

__all__ = ["MANIFEST_FILE", "OPTIONAL_REQUIRE_KEYS", "REQUIRE_KEYS", "SCHEMA", "Lock", "Manifest", "Variant",
           "read_lock"]

SCHEMA = 1
MANIFEST_FILE = "manifest.json"  # at the root of a release revision on the hub
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Variant:
    name: str
    archive: str
    sha256: str
    size: int
    os: str
    arch: str
    backend: str
    requires: Mapping[str, Any]
    libraries: tuple[str, ...]
    backend_dl: bool = False
    python_requires: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, data: Any) -> Variant:
        where = f"variant {name!r}"
        plain_name(name, "variant name")
        check_entry(data, where, published=True)
        requires = data.get("requires") or {}
        known = {"archive", "sha256", "size", "os", "arch", "backend", "requires", "libraries",
                 "backend_dl", "python_requires"}
        return cls(
            name=name, archive=data["archive"],
            sha256=data["sha256"], size=data["size"], os=str(data["os"]), arch=str(data["arch"]),
            backend=str(data["backend"]), requires={k: requires.get(k) for k in {*REQUIRE_KEYS, *requires}},
            libraries=tuple(data["libraries"]),
            backend_dl=bool(data.get("backend_dl", False)),
            python_requires=tuple(str(x) for x in data.get("python_requires") or ()),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @property
    def plugins(self) -> tuple[str, ...]:
        """The ggml backend plugins (``GGML_BACKEND_DL``) the variant ships."""
        return tuple(str(p) for p in self.extra.get("plugins") or ())

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the variant ships: its libraries plus plugins (ggml backends)."""
        return tuple(dict.fromkeys([*self.libraries, *self.plugins]))

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.archive, "sha256": self.sha256, "size": self.size, "os": self.os,
                "arch": self.arch, "backend": self.backend, "requires": dict(self.requires),
                "libraries": list(self.libraries), "backend_dl": self.backend_dl,
                "python_requires": list(self.python_requires), **self.extra}


@dataclass(frozen=True)
class Manifest:
    llama_cpp: str | None
    variants: Mapping[str, Variant]

    @classmethod
    def parse(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("the manifest is not a JSON object.")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ManifestError(
                f"manifest schema {schema!r} is not supported (this llama-runtime reads schema {SCHEMA});"
                " upgrade llama-runtime or use a binary release made for it."
            )
        variants = data.get("variants")
        if not isinstance(variants, dict) or not variants:
            raise ManifestError("the manifest has no variants.")
        return cls(llama_cpp=data.get("llama_cpp"),
                   variants={n: Variant.parse(n, v) for n, v in variants.items()})

    def get(self, name: str) -> Variant:
        try:
            return self.variants[name]
        except KeyError:
            raise ManifestError(
                f"variant {name!r} is not in the manifest; known: {', '.join(sorted(self.variants))}."
            ) from None


@dataclass(frozen=True)
class Lock:
    repo: str
    revision: str
    commit: str
    manifest: Manifest
    path: Path | None = None
    # "lock": the sdist's lock vouches for every sha256; "hub": no lock, the manifest was read
    # from LLAMA_RUNTIME_REPO at LLAMA_RUNTIME_REVISION and is trusted as the hub served it
    trust: str = "lock"

    @classmethod
    def parse(cls, data: Any, path: Path | None = None, trust: str = "lock") -> Lock:
        where = f"the lock {path}" if path else "the lock"
        if not isinstance(data, dict):
            raise ManifestError(f"{where} is not a JSON object.")
        missing = [k for k in ("repo", "revision", "commit", "manifest") if k not in data]
        if missing:
            raise ManifestError(f"{where} lacks {', '.join(missing)}.")
        if not isinstance(data["commit"], str) or not _COMMIT.fullmatch(data["commit"]):
            raise ManifestError(f"{where}: commit {data['commit']!r} is not a 40-hex commit sha.")
        return cls(repo=str(data["repo"]), revision=str(data["revision"]), commit=data["commit"],
                   manifest=Manifest.parse(data["manifest"]), path=path, trust=trust)


def package_lock_path() -> Path:
    return Path(__file__).resolve().parent.parent / "binaries.lock.json"


def read_lock(path: Path | None = None) -> Lock:
    """Read and validate the lock (default: the one shipped in this package)."""
    path = path or package_lock_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"no binary lock at {path}; this source tree was not prepared for a release"
            " (run `llama-runtime publish ... --lock` to write one)."
        ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"the lock {path} is not valid JSON: {exc}") from exc
    return Lock.parse(data, path)
