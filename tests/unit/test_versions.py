"""The one version-tuple parser (llama_runtime.versions): its rule at the edges."""

from __future__ import annotations

import pytest

from llama_runtime.versions import padded, version_tuple

CASES = [
    ("2.36", (2, 36)),
    ("2.36a", (2, 36)),  # a vendor suffix keeps the number before it (one old copy gave (2,))
    ("2.36a.1", (2, 36)),  # what follows a suffix is not upstream's numbering
    ("550.54.15", (550, 54, 15)),
    ("12.4", (12, 4)),
    ("12", (12,)),
    (" 11.0\n", (11, 0)),
    ("3.4.30", (3, 4, 30)),
    ("1.x.5", (1,)),  # another old copy skipped the "x" and gave (1, 5)
    ("10.", (10,)),
    ("v1.2", ()),
    ("", ()),
    ("abc", ()),
    (None, ()),
    (12, (12,)),
    ("2.٣", (2,)),  # a non-ASCII digit is not a digit here
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[repr(t) for t, _ in CASES])
def test_version_tuple(text: object, expected: tuple[int, ...]) -> None:
    assert version_tuple(text) == expected


def test_comparisons_the_callers_rely_on() -> None:
    assert version_tuple("2.36a") > version_tuple("2.35")  # a glibc floor check
    assert version_tuple("535.104.05") >= version_tuple("525.60.13")  # driver vs CUDA table
    assert version_tuple("") < version_tuple("0")  # unknown sorts below every version
    assert max(["12.4", "12.10", "11.8"], key=version_tuple) == "12.10"


@pytest.mark.parametrize(("text", "length", "expected"),
                         [("11", 3, (11, 0, 0)), ("14.2.1", 3, (14, 2, 1)), ("10.15.7", 2, (10, 15)),
                          ("", 2, (0, 0))],
                         ids=["short", "exact", "cut", "empty"])
def test_padded(text: str, length: int, expected: tuple[int, ...]) -> None:
    assert padded(text, length) == expected
    assert padded("11") == padded("11.0.0")  # macOS "11" is 11.0
