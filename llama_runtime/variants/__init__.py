"""Variants: the manifest and lock schema, and the selection of the one that fits."""

from __future__ import annotations

from .manifest import Lock, Manifest, Variant, read_lock
from .select import Candidate, Selection, select

__all__ = ["Candidate", "Lock", "Manifest", "Selection", "Variant", "read_lock", "select"]
