"""One reading of a version string as a comparable tuple (glibc, CUDA, drivers, macOS, libstdc++).

The rule: split at dots, keep each part's leading digits, and stop after the first part that
is not all digits. ``"2.36a"`` is ``(2, 36)`` (a vendor suffix never drops a number that is
there); ``"2.36a.1"`` is ``(2, 36)`` too (what follows a suffix is not the upstream's numbering);
``"550.54.15"`` is ``(550, 54, 15)``; ``"12"`` is ``(12,)``; ``""``, ``"v1"`` and ``None`` are
``()``, which sorts below every version. Whitespace around the text is ignored and an ``int``
is read as its decimal text. Tuples compare as Python does, so ``(2, 36) < (2, 36, 1)``: pad
with zeros where a short version must equal its ``.0`` spelling (:func:`padded`).
"""

from __future__ import annotations

_DIGITS = "0123456789"  # ASCII only: str.isdigit() would take "²" or Arabic-Indic digits too


def version_tuple(text: object) -> tuple[int, ...]:
    """``"2.36a"`` -> ``(2, 36)``; the rule is in the module docstring."""
    if text is None:
        return ()
    out: list[int] = []
    for part in str(text).strip().split("."):
        digits = part[: len(part) - len(part.lstrip(_DIGITS))]
        if digits:
            out.append(int(digits))
        if not digits or digits != part:
            break
    return tuple(out)


def padded(text: object, length: int = 3) -> tuple[int, ...]:
    """:func:`version_tuple` padded with zeros (and cut) to ``length``: ``"12.4"`` -> ``(12, 4, 0)``."""
    return (version_tuple(text) + (0,) * length)[:length]
