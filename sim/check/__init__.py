"""Invariant checkers: read-only observers that turn a run into a verdict.

`CHECKERS` maps each invariant's name to its checker class (filled in as the
checkers land, issue 4); `make_checkers(names)` builds fresh instances for
one replay.
"""

from __future__ import annotations

from sim.check.base import Checker, Violation

CHECKERS: dict[str, type[Checker]] = {}


def make_checkers(names: list[str] | None = None) -> list[Checker]:
    """Fresh checkers for `names` (None = every checker), in registry order.

    Raises ValueError naming the unknown names and the known ones."""
    if names is None:
        return [cls() for cls in CHECKERS.values()]
    unknown = [n for n in names if n not in CHECKERS]
    if unknown:
        raise ValueError(f"unknown invariant(s) {unknown}; known: {', '.join(CHECKERS) or 'none'}")
    return [CHECKERS[n]() for n in names]


__all__ = ["CHECKERS", "Checker", "Violation", "make_checkers"]
