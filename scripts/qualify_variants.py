#!/usr/bin/env python3
"""Qualify variant folders and write each one's record into its ``variant.json`` (``qualification``).

What ``scripts/build_variants.py`` runs after producing its folders (and ``llama-runtime publish``
again before uploading, from the same cache): every CPU plugin, on its own, on the
qualification model in every quantization type, natively and under qemu (``qemu-x86_64 -cpu
MODEL``; a Linux aarch64 variant under ``qemu-aarch64 -cpu MODEL`` through the cross-compiled C
driver, llama_runtime/qualify/cross.py), against the ``x64`` reference (llama_runtime/qualify/). The results are cached by file hashes under
``<LLAMA_RUNTIME_CACHE>/<version>/.qualify/``, so a second run takes about a second.

    python -m scripts.qualify_variants OUT [--no-qemu]     # every OUT/<variant>/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def qualify_and_record(folders: Sequence[Path], env: Mapping[str, str] | None = None,
                       qemu: bool = True) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Qualify ``folders``, write each record into its variant.json; return the records and the
    refusal lines (empty when every variant that runs here passed)."""
    from llama_runtime.config import resolve
    from llama_runtime.qualify.check import qualify_folders
    from llama_runtime.qualify.run import Store

    store = Store.in_cache(resolve(environ=dict(env if env is not None else os.environ)).cache_dir)
    records = qualify_folders(list(folders), store, qemu=qemu)
    for folder in folders:
        write_record(folder / "variant.json", records[folder.name])
    return records, [line for r in records.values() for line in r["failures"]]


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Put ``record`` into the variant.json at ``path``: atomically (tests of other processes
    read these folders), and not at all when it is already there (the record is deterministic)."""
    data = json.loads(path.read_text())
    if data.get("qualification") == record:
        return
    data["qualification"] = record
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def line(name: str, record: Mapping[str, Any]) -> str:
    """One line per variant for a build log."""
    plugins = record.get("plugins") or {}
    done = sum(e["status"] == "qualified" for e in plugins.values())
    where = {w for e in plugins.values() for w in e.get("runs", {})}
    qemu = {w for w in where if w.startswith("qemu")}
    places = " + ".join([*(["native"] if "native" in where else []),
                         *([f"{len(qemu)} qemu model(s)"] if qemu else []), *(["Wine"] if "wine" in where else [])])
    tail = record.get("why") or f"{done}/{len(plugins)} CPU code(s) qualified ({places or 'nothing ran'})"
    return f"  qualification {name:24} {record['status']:18} {tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder of variant folders")
    parser.add_argument("--no-qemu", action="store_true", help="native runs only")
    args = parser.parse_args(argv)
    folders = sorted(p for p in args.out.iterdir() if (p / "variant.json").is_file())
    start = time.monotonic()
    records, failures = qualify_and_record(folders, qemu=not args.no_qemu)
    for name, record in records.items():
        print(line(name, record))
    print(f"  qualification took {time.monotonic() - start:.1f} s")
    for failure in failures:
        print(f"qualify_variants: refused: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
