"""``llama-runtime fetch --dest DIR``: a mirror folder in hub layout for air-gapped machines.

The folder holds ``manifest.json`` and the verified archives at its root, which is what
``LLAMA_RUNTIME_MIRROR`` reads. Files appear under their final names only once verified.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..config import Settings


def write_mirror(dest: Path, settings: Settings, *, variant: str | None = None,
                 backend: str | None = None) -> list[Path]:
    """Fetch the chosen variant (default: the best for this machine) into ``dest``."""
    from .ensure import obtain_archive
    from .trust import trusted_lock
    from ..variants import select

    lock = trusted_lock(settings)
    name = variant or select(lock.manifest, backend=backend or settings.backend).require()
    v = lock.manifest.get(name)
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
    try:
        archive, _ = obtain_archive(v, lock, settings, work)
        os.replace(archive, dest / v.archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = {"schema": 1, "llama_cpp": lock.manifest.llama_cpp,
                "variants": {n: x.to_dict() for n, x in lock.manifest.variants.items()}}
    tmp = dest / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, dest / "manifest.json")
    return [dest / v.archive, dest / "manifest.json"]
