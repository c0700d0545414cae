"""The policy x invariant matrix: which placement policy breaks which invariant, and where.

`policy_matrix(paths)` replays every trace under every policy with every
checker and keeps, per (policy, invariant), the traces that violate it and the
shortest of them as the minimal counterexample.  `markdown(matrix)` renders
the table for the README (`blocksim matrix`), `to_json(matrix)` the
`matrix.json` a report draws (`sim.report`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.check import CHECKERS, make_checkers
from sim.replay import replay
from sim.trace import POLICIES, load_trace


@dataclass
class Cell:
    """What one policy does to one invariant over the corpus."""

    scenarios: list[str] = field(default_factory=list)  # the traces that break it
    shortest: tuple[int, str] | None = None  # (steps, path) of the smallest breaking trace
    example: str = ""  # the shortest trace's first violation

    @property
    def broken(self) -> bool:
        return bool(self.scenarios)


@dataclass
class Matrix:
    """policy -> invariant -> Cell, with the corpus size."""

    policies: tuple[str, ...]
    invariants: tuple[str, ...]
    cells: dict[str, dict[str, Cell]]
    traces: int


def policy_matrix(
    paths: Iterable[Path],
    policies: Iterable[str] = POLICIES,
    invariants: Iterable[str] | None = None,
    progress: Callable[[Path], None] | None = None,
) -> Matrix:
    """Replay each trace under each policy with the checkers; collect who breaks what."""
    pols = tuple(policies)
    names = tuple(invariants) if invariants is not None else tuple(CHECKERS)
    cells = {p: {n: Cell() for n in names} for p in pols}
    count = 0
    for path in paths:
        trace = load_trace(path)
        count += 1
        label = str(path)
        for policy in pols:
            result = replay(trace, policy=policy, checkers=make_checkers(list(names)))
            for v in result.final["violations"]:
                cell = cells[policy][v["invariant"]]
                if label not in cell.scenarios:
                    cell.scenarios.append(label)
                rank = (len(trace.steps), label)
                if cell.shortest is None or rank < cell.shortest:
                    cell.shortest = rank
                    cell.example = f"step {v['step']}: {v['message']}"
        if progress is not None:
            progress(path)
    return Matrix(pols, names, cells, count)


def markdown(matrix: Matrix) -> str:
    """The matrix as a Markdown table: per cell, the minimal breaking trace and a count."""
    head = "| invariant | " + " | ".join(f"`{p}`" for p in matrix.policies) + " |"
    rule = "|---|" + "---|" * len(matrix.policies)
    rows = [head, rule]
    for name in matrix.invariants:
        cells = []
        for policy in matrix.policies:
            cell = matrix.cells[policy][name]
            if cell.shortest is not None:
                steps, path = cell.shortest
                more = f", {len(cell.scenarios)} traces" if len(cell.scenarios) > 1 else ""
                cells.append(f"**broken** by `{path}` ({steps} steps{more})")
            else:
                cells.append("holds")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    rows.append("")
    rows.append(f"{matrix.traces} traces, each replayed under every policy with every checker.")
    return "\n".join(rows)


def to_json(matrix: Matrix) -> dict[str, Any]:
    """The matrix.json shape the report reads (see reports/README.md)."""
    cells: list[dict[str, Any]] = []
    for policy in matrix.policies:
        for invariant in matrix.invariants:
            cell = matrix.cells[policy][invariant]
            entry: dict[str, Any] = {
                "policy": policy,
                "invariant": invariant,
                "broken": cell.broken,
            }
            if cell.shortest is not None:
                entry.update(
                    trace=cell.shortest[1],
                    steps=cell.shortest[0],
                    message=cell.example,
                    traces_breaking=len(cell.scenarios),
                )
            cells.append(entry)
    return {
        "policies": list(matrix.policies),
        "invariants": list(matrix.invariants),
        "cells": cells,
        "traces": matrix.traces,
    }
