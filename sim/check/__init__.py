"""Invariant checkers: read-only observers that turn a run into a verdict.

`CHECKERS` maps each invariant's name to its checker class; `make_checkers`
builds fresh instances for one run.
"""

from __future__ import annotations

from sim.check.base import Checker, Violation

CHECKERS: dict[str, type[Checker]] = {}


def make_checkers(names: list[str] | None = None) -> list[Checker]:
    """Fresh checkers for one run: the named ones, or all when `names` is None."""
    if names is None:
        names = list(CHECKERS)
    unknown = [n for n in names if n not in CHECKERS]
    if unknown:
        raise ValueError(f"unknown invariant(s) {unknown}; known: {', '.join(CHECKERS)}")
    return [CHECKERS[n]() for n in names]


__all__ = ["CHECKERS", "Checker", "Violation", "make_checkers"]
