"""The patches our source builds apply to the vendored llama.cpp (``scripts/patches/*.patch``).

Each patch is a unified diff relative to the llama.cpp root (``patch -p1``), with the why in its
header. They are applied, in file-name order, to a fresh extraction in a folder named by the
digest of the patch set (``<cache>/src/<sdist sha16>-p<digest12>/``): the pristine extraction
stays as the sdist made it (other tools read it), a patch set is never applied twice to a tree,
and a changed patch is a new folder and, through ``build_key``, a new build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

PATCH_DIR = Path(__file__).resolve().parent / "patches"
MARKER = ".llama-runtime-patches"  # in the patched tree: the digest and the patch names


def patch_set(folder: Path = PATCH_DIR) -> tuple[Path, ...]:
    """The patches to apply, in order."""
    return tuple(sorted(folder.glob("*.patch")))


def patches_digest(patches: Sequence[Path]) -> str:
    """sha256 over the names and bytes of ``patches`` ("" for none: the pristine source)."""
    if not patches:
        return ""
    digest = hashlib.sha256()
    for path in patches:
        digest.update(f"{path.name}\0{len(path.read_bytes())}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def apply_patch(tree: Path, patch: Path) -> None:
    """Apply one patch exactly (no fuzz, no reversed hunks); the error names the patch."""
    tool = shutil.which("patch")
    if tool is None:
        raise RuntimeError("GNU patch not found on PATH: apt-get install patch")
    proc = subprocess.run([tool, "-p1", "--forward", "--batch", "--fuzz=0",
                           "--no-backup-if-mismatch", "-d", str(tree), "-i", str(patch)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{patch.name} does not apply to {tree} (exit {proc.returncode}): "
                           f"{(proc.stdout + proc.stderr).strip()[-1500:]}\nthe vendored llama.cpp "
                           "changed: refresh the patch against it")


def patched_tree(extract: Callable[[Path], Path], parent: Path, stem: str, relative: str,
                 patches: Sequence[Path]) -> Path:
    """The tree with ``patches`` applied, made once: ``<parent>/<stem>-p<digest12>/<relative>``.

    ``extract(into)`` puts a pristine tree at ``into/<relative>``. The patched tree is made in a
    temporary folder beside the final one and renamed into place, so no reader ever sees a
    half-patched tree; its marker file (digest and patch names) says it is complete.
    """
    digest = patches_digest(patches)
    final = parent / f"{stem}-p{digest[:12]}"
    marker = digest + "\n" + "".join(f"{p.name}\n" for p in patches)
    if (final / relative / MARKER).is_file() and (final / relative / MARKER).read_text() == marker:
        return final / relative
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}-"))
    try:
        root = extract(staging)
        if root != staging / relative:
            raise RuntimeError(f"extracted {root}, expected {staging / relative}")
        for patch in patches:
            apply_patch(root, patch)
        (root / MARKER).write_text(marker)
        if final.exists():  # no marker: left by an interrupted attempt
            shutil.rmtree(final)
        try:
            os.replace(staging, final)
        except OSError:  # another process renamed its identical tree into place first
            if not (final / relative / MARKER).is_file():
                raise
        return final / relative
    finally:
        shutil.rmtree(staging, ignore_errors=True)
