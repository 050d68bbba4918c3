"""The load order of a variant's libraries, whatever their format: each after the ones it needs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence


def dependency_order(roots: Sequence[str], needs: Callable[[str], Iterable[str]],
                     cycle: Callable[[list[str]], Exception]) -> list[str]:
    """``roots`` and what they reach through ``needs`` (a file's dependencies among the shipped
    ones), depth first, every file after its dependencies; a cycle raises ``cycle(path)``."""
    order: list[str] = []
    active: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in active:
            raise cycle([*active, name])
        active.append(name)
        for dep in needs(name):
            visit(dep)
        active.pop()
        order.append(name)

    for name in roots:
        visit(name)
    return order
