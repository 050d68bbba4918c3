"""The figures of the reliability suite: one row per fault, crash or tampering tried.

Tests call :func:`record`; the table is written at the end of the session by
:func:`pytest_terminal_summary`. The reliability modules register :class:`TablePlugin` from a
session fixture (so no conftest change is needed); a conftest may instead import the hook
function directly, in which case the plugin notices and stays silent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Row:
    fault: str
    outcome: str  # "survived" | "failed clearly" | "refused" | anything else is a problem
    seconds: float
    refetched: int | None  # bytes served beyond one copy of the file (None: not measured)
    lost: str  # "none", or what was lost / left behind


OK_OUTCOMES = ("survived", "failed clearly", "refused")
ROWS: list[Row] = []
_LOCK = threading.Lock()
_PRINTED: list[bool] = []


def record(fault: str, outcome: str, seconds: float, refetched: int | None = None,
           lost: str = "none") -> None:
    with _LOCK:
        ROWS.append(Row(fault, outcome, round(seconds, 2), refetched, lost))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.0f} KiB" if abs(n) >= 1024 else f"{n} B"


def table(rows: list[Row] | None = None) -> list[str]:
    rows = ROWS if rows is None else rows
    lines = ["| fault | outcome | seconds | bytes re-fetched | data lost |", "|---|---|---:|---:|---|"]
    lines += [f"| {r.fault} | {r.outcome} | {r.seconds:.2f} | {_size(r.refetched)} | {r.lost} |" for r in rows]
    survived = sum(r.outcome == "survived" for r in rows)
    clear = sum(r.outcome in ("failed clearly", "refused") for r in rows)
    lost = sum(r.lost != "none" for r in rows)
    bad = len(rows) - survived - clear
    lines.append(f"\n{len(rows)} faults tried: {survived} survived, {clear} failed clearly or refused,"
                 f" {bad} otherwise, data lost in {lost}.")
    return lines


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Write the table (only when some reliability test recorded a row)."""
    if not ROWS or _PRINTED:
        return
    _PRINTED.append(True)
    terminalreporter.write_sep("=", "reliability figures")
    for line in table():
        terminalreporter.write_line(line)


class TablePlugin:
    pytest_terminal_summary = staticmethod(pytest_terminal_summary)


_NAME = "llama-runtime-reliability-table"


@pytest.fixture(scope="session", autouse=True)
def reliability_table(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if manager.get_plugin(_NAME) is None:
        manager.register(TablePlugin(), _NAME)
