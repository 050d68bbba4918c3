"""sha256 of files, read in chunks so a large archive never sits in memory."""

from __future__ import annotations

from pathlib import Path

CHUNK = 1024 * 1024


def sha256_file(path: Path | str) -> str:
    """The lowercase hex sha256 of the file at ``path``."""
    import hashlib  # lazily: loading a cached library never hashes (~2.5 ms of import)

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
