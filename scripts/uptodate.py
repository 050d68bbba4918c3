"""Skip a variant job whose output is already current (what makes a second ``--all-default`` fast).

The npm variants are rebuilt from their tarballs on every run (unpack, read the facts, compare
with the folder there), and the CUDA ones are 175-380 MB each with up to seven one-target copies
cut from them: tens of seconds of work to find nothing changed. A job's record in
``OUT/.made/<job>.json`` names its inputs (the npm tarballs: path, size, mtime), the builder's
code (every file under scripts/ and llama_runtime/, by content) and the folders it made with
their files' sizes and mtimes; when all of that still holds, the folders are current. A folder
changed by hand, a new tarball or a code change makes the job run again. ``variant.json`` is left
out of the listing: the qualification (run after) writes its record into it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("scripts", "llama_runtime")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the builder's code (and the package's validators it calls), by content."""
    digest = hashlib.sha256()
    for base in CODE_DIRS:
        for path in sorted((ROOT / base).rglob("*")):
            skip = {"__pycache__", "_libs"} & set(path.parts) or path.suffix == ".pyc"
            if path.is_file() and not skip and path.name != "binaries.lock.json":
                digest.update(f"{path.relative_to(ROOT)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def job_key(kind: str, what: str, inputs: Sequence[Path]) -> str:
    """What a job's output depends on: the job, the code, and each input file's identity."""
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in inputs]
    blob = json.dumps([kind, what, code_digest(), stats])
    return hashlib.sha256(blob.encode()).hexdigest()


def _listing(folder: Path) -> dict[str, list[int]]:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "variant.json"}


def _record_path(out: Path, kind: str, what: str) -> Path:
    name = hashlib.sha256(f"{kind}\0{what}".encode()).hexdigest()[:16]
    return out / ".made" / f"{name}.json"


def current(out: Path, kind: str, what: str, key: str) -> list[Path] | None:
    """The folders this job made last time, when they and their inputs are unchanged."""
    try:
        record = json.loads(_record_path(out, kind, what).read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    folders = [out / name for name in record["folders"]]
    for folder in folders:
        if not (folder / "variant.json").is_file() or _listing(folder) != record["folders"][folder.name]:
            return None
    return folders


def remember(out: Path, kind: str, what: str, key: str, folders: Sequence[Path]) -> None:
    """Record what this job made (atomically: parallel runs may read it)."""
    path = _record_path(out, kind, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "job": [kind, what],
                               "folders": {f.name: _listing(f) for f in folders}}, indent=1))
    os.replace(tmp, path)
