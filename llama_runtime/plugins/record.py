"""The proof record: which CPU plugin of a variant ran a quantized model on this CPU, in the cache.

``<cache>/<version>/.proofs/<variant>-<library sha256 [:16]>-<cpu key>.json``, beside (never inside)
the variant folders, whose contents the cache verifies against their own record. A record
holds the full library sha256s and the CPU identity it was made for; one that does not match
both exactly, or does not parse, is ignored (and the proof runs again), so a cache shared
between machines (an NFS home) or copied from another one is safe. Written atomically.

A cache that is complete must work read-only (a shared or image-baked cache: nothing is
written into it once every variant folder is there); its records then go to a folder of this
user's own in the temporary directory (``llama-runtime-<uid>/``, mode 0700, checked to be
ours), so such a cache does not pay a test run in every process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._version import __version__

SCHEMA = 1
MODES = ("default", "explicit", "builtin", "refused")


def cpu_identity(cpu: Mapping[str, Any], os_name: str) -> dict[str, Any]:
    """What decides ggml's pick and whether a plugin runs: CPUID's features and signature, the OS state.

    Leaf 1's EBX is left out on purpose: it holds the APIC id of the core the probe ran on.
    The AMX permission's current value is left out too (ggml's own request changes it).
    """
    cpuid = cpu.get("cpuid") or {}
    state = cpu.get("os") or {}
    leaf1 = (cpuid.get("leaves") or {}).get("1.0") or [None]
    return {"os": os_name, "arch": cpu.get("arch"), "vendor": cpu.get("vendor"),
            "model_name": cpu.get("model_name"), "signature": leaf1[0],
            "cpuid_features": sorted(cpuid.get("features") or ()), "features": sorted(cpu.get("features") or ()),
            "xcr0": state.get("xcr0"), "xcomp_supp": state.get("xcomp_supp"),
            "states": {k: v.get("enabled") for k, v in sorted((state.get("groups") or {}).items())}}


def cpu_key(identity: Mapping[str, Any]) -> str:
    """A short name for the identity (the record holds it in full and is checked against it, so a
    collision only costs a test run); crc32, not sha256: hashlib's import is ~2 ms of every load."""
    import zlib

    return f"{zlib.crc32(json.dumps(identity, sort_keys=True).encode()):08x}"


def record_path(cache_dir: Path, variant: str, library_sha256: str, key: str) -> Path:
    return cache_dir / __version__ / ".proofs" / f"{variant}-{library_sha256[:16]}-{key}.json"


def private_dir(create: bool = False) -> Path | None:
    """This user's folder for records a read-only cache cannot hold; None if it is not safely ours
    (or, unless ``create``, does not exist: a writable cache never makes it)."""
    import tempfile

    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"llama-runtime-{uid if uid is not None else 'user'}"
    try:
        if create:
            folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.stat()
    except OSError:
        return None
    # another user could have made it first, to plant records: only our own, private folder counts
    if uid is not None and (st.st_uid != uid or st.st_mode & 0o077):
        return None
    return folder


def fallback_path(path: Path, create: bool = False) -> Path | None:
    """Where :func:`record_path`'s record goes when the cache is read-only."""
    folder = private_dir(create)
    return None if folder is None else folder / path.parent.parent.name / path.name


def _valid(record: Any, expect: Mapping[str, Any]) -> bool:
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        return False
    if any(record.get(k) != v for k, v in expect.items()):
        return False
    chosen, mode = record.get("chosen"), record.get("mode")
    return (mode in MODES and (chosen is None or isinstance(chosen, str))
            and isinstance(record.get("scores"), dict) and isinstance(record.get("failed"), dict)
            and (mode not in ("default", "explicit") or isinstance(chosen, str)))


def read_proof(path: Path, expect: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The record at ``path`` if it matches ``expect`` (variant, sha256s, CPU), else (None, why)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"the proof record {path} is unreadable ({exc}); proving again"
    if not _valid(record, expect):
        return None, (f"the proof record {path} was made for another library or CPU, or is damaged;"
                      " proving again")
    return record, None


def write_proof(path: Path, record: Mapping[str, Any]) -> str | None:
    """Write atomically; None, or why it could not be written (a read-only cache proves every time)."""
    import tempfile

    body = {**record, "schema": SCHEMA, "llama_runtime": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        return f"the proof record could not be written to {path.parent} ({exc.strerror or exc})"
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return None
