"""A variant's manifest entry, checked in one place.

The same entry lives in three forms: ``variant.json`` in a variant folder (what
``scripts/build_variants.py`` writes and ``llama-runtime publish`` packs), the entry of
``manifest.json`` on the hub, and the lock's copy of it (what the runtime reads). The schema
checks of all three are :func:`check_entry`; the checks of a folder against its ``variant.json``
are :func:`check_folder`, used by publish and by the variant builder alike.

A variant folder holds ``variant.json`` and exactly the files its ``libraries`` and ``plugins``
name. A file it does not name is **refused, by name**, never listed for it: only the entry says
how a file is used (``libraries`` are loaded in that order, ``plugins`` are ggml backends it loads
from the folder), and what the wheel and the cache keep is exactly what the entry names. A folder
whose ``variant.json`` listed only the libraries was packed with its CPU plugins, the wheel then
dropped them, and the installed library found no usable backend (issue 15); guessing which files
are plugins would also ship whatever else was left in the folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ManifestError, PublishError

VARIANT_FILE = "variant.json"
SHIPPED_KEYS = ("archive", "sha256", "size")  # computed by publish, in every published entry
FOLDER_KEYS = ("os", "arch", "backend", "requires", "libraries")  # every variant.json
PUBLISHED_KEYS = (*SHIPPED_KEYS, "os", "arch", "backend", "libraries")
# requirement keys every schema-1 entry carries (null when unused), then optional ones
REQUIRE_KEYS = ("glibc", "x86_64_level", "cpu_features", "cuda_driver", "compute_capability", "macos")
OPTIONAL_REQUIRE_KEYS = ("gfx", "musl", "libstdcxx")
# the library the binding opens ends the load order: libllama.so, libllama.v0.5.0.so,
# libllama.metal.v0.4.0.dylib, llama.v0.4.0.dll
LIBLLAMA = re.compile(r"^(lib)?llama(\.[\w.]+)?\.(so|dylib|dll)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def plain_name(value: Any, what: str) -> str:
    """A file name with no folder part: archive and library names must stay inside their folder."""
    # fullmatch: a "$" anchor would let a trailing newline through
    plain = isinstance(value, str) and _NAME.fullmatch(value) and PurePosixPath(value).name == value
    if not plain:
        raise ManifestError(f"{what} {value!r} is not a plain file name.")
    return str(value)


def check_entry(data: Any, where: str, *, published: bool) -> None:
    """Raise :class:`ManifestError` unless ``data`` is a valid entry.

    ``published``: a manifest entry (``archive``, ``sha256`` and ``size`` present); else a
    ``variant.json``, which must not set them (publish computes them) and must say ``requires``.
    """
    if not isinstance(data, dict):
        raise ManifestError(f"{where} is not an object.")
    missing = [k for k in (PUBLISHED_KEYS if published else FOLDER_KEYS) if k not in data]
    if missing:
        raise ManifestError(f"{where} lacks {', '.join(missing)}.")
    if published:
        _check_shipped(data, where)
    else:
        computed = [k for k in SHIPPED_KEYS if k in data]
        if computed:
            raise ManifestError(f"{where} sets {', '.join(computed)}; publish computes those, remove them.")
    libraries = data["libraries"]
    if not isinstance(libraries, list) or not libraries:
        raise ManifestError(f"{where}: libraries must be a non-empty list (the load order).")
    if not isinstance(data.get("requires") or {}, dict):
        raise ManifestError(f"{where}: requires must be an object.")
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list):
        raise ManifestError(f"{where}: plugins must be a list of file names.")
    for name in libraries:
        plain_name(name, f"{where}: library")
    for name in plugins:
        plain_name(name, f"{where}: plugin")


def _check_shipped(data: dict[str, Any], where: str) -> None:
    if not isinstance(data["sha256"], str) or not _SHA256.fullmatch(data["sha256"]):
        raise ManifestError(f"{where}: sha256 {data['sha256']!r} is not 64 lowercase hex digits.")
    if type(data["size"]) is not int or data["size"] <= 0:  # JSON true is not a size
        raise ManifestError(f"{where}: size {data['size']!r} is not a positive integer.")
    plain_name(data["archive"], f"{where}: archive")


def read_variant_json(folder: Path) -> dict[str, Any]:
    path = folder / VARIANT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(
            f"{folder} has no {VARIANT_FILE}; every folder of SRC is a variant and"
            " needs one (see DESIGN.md, manifest schema 1)."
        ) from None
    except ValueError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    return data


def check_folder(folder: Path, entry: dict[str, Any] | None = None, *, strict: bool = False) -> dict[str, Any]:
    """Check a variant folder against its entry (default: its ``variant.json``); return the entry
    with defaults filled in. ``strict`` (the builder, which checks a hidden staging folder before
    it gets its name): listed files must not even be links, and the folder's name is not checked."""
    from ..archive import archive_members

    data = read_variant_json(folder) if entry is None else entry
    path = folder / VARIANT_FILE
    if not strict:
        plain_name(folder.name, "variant folder name")
    check_entry(data, str(path), published=False)
    libraries, plugins = list(data["libraries"]), list(data.get("plugins") or [])
    if not LIBLLAMA.fullmatch(libraries[-1]):
        raise ManifestError(f"{path}: the last library must be libllama (the load order ends with the"
                            f" library the binding opens), not {libraries[-1]}: {libraries}")
    names = {name for name, _ in archive_members(folder)}  # also rejects links out and folders
    listed = [*libraries, *plugins]
    absent = [x for x in listed if x not in names]
    if absent:
        raise PublishError(f"{path} lists {', '.join(absent)}, not found in {folder}; build or"
                           " copy them there, or fix the list.")
    links = [x for x in listed if (folder / x).is_symlink()] if strict else []
    if links:
        raise PublishError(f"{folder / links[0]} must be a regular file (no symlinks in a variant)")
    _check_unlisted(folder, path, names - {*listed, VARIANT_FILE})
    _check_formats(folder, str(data["os"]), listed)
    out = {"backend_dl": False, "python_requires": [], **data}
    out["requires"] = {**{k: None for k in REQUIRE_KEYS}, **(data["requires"] or {})}
    return out


def _check_unlisted(folder: Path, path: Path, unlisted: set[str]) -> None:
    if not unlisted:
        return
    names = ", ".join(sorted(unlisted))
    raise PublishError(
        f"{folder} holds {names}, which {path} does not list. The archive would carry them, but"
        " the wheel and the cache keep only what `libraries` and `plugins` name (a ggml backend"
        " left out is missing at run time: \"no usable backend\"). Add each to `plugins` (a ggml"
        " backend loaded from the folder; set \"backend_dl\": true) or to `libraries` (the load"
        " order, libllama last), or remove it from the folder. scripts/build_variants.py writes"
        " complete lists."
    )


def _check_formats(folder: Path, os_name: str, names: list[str]) -> None:
    """Every library of a variant is a binary of its OS (no Mach-O in a Linux variant)."""
    from ..binformat import wrong_format

    problems = [p for p in (wrong_format(folder / n, os_name) for n in names) if p]
    if problems:
        raise PublishError(
            f"{folder / VARIANT_FILE} says os={os_name}, but " + "; ".join(problems)
            + ". Put each OS's libraries in a variant folder of that OS."
        )
