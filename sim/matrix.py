"""The policy x invariant matrix: which placement policy breaks which invariant, and where.

`policy_matrix(paths)` replays every trace under every policy with every
checker and keeps, per (policy, invariant), the traces that violate it and the
shortest of them as the minimal counterexample.  `markdown(matrix)` renders
the table for the README (`blocksim matrix`), `to_json(matrix)` the
`matrix.json` a report draws (`sim.report`).

`distributed_matrix(paths, runner)` cuts the corpus into chunks of traces (sent
as text, so workers need no shared filesystem), computes each chunk's matrix
on a `sim.cluster.Runner` and merges them in corpus order: the result is the
one `policy_matrix` gives, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.check import CHECKERS, make_checkers
from sim.replay import replay
from sim.trace import POLICIES, Trace, load_trace, parse_lines

CHUNK = 16  # traces per task of a distributed matrix


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
    traces = ((str(path), load_trace(path), path) for path in paths)
    return _matrix(traces, tuple(policies), invariants, progress)


def _matrix(
    traces: Iterable[tuple[str, Trace, Any]],
    pols: tuple[str, ...],
    invariants: Iterable[str] | None,
    progress: Callable[[Any], None] | None = None,
) -> Matrix:
    names = tuple(invariants) if invariants is not None else tuple(CHECKERS)
    cells = {p: {n: Cell() for n in names} for p in pols}
    count = 0
    for label, trace, item in traces:
        count += 1
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
            progress(item)
    return Matrix(pols, names, cells, count)


def chunk_matrix(
    task: tuple[list[tuple[str, str]], tuple[str, ...], tuple[str, ...] | None],
) -> Matrix:
    """One task of a distributed matrix: (label, trace text) pairs, policies, invariants."""
    items, pols, invariants = task
    traces = ((label, parse_lines(text.splitlines(), label), label) for label, text in items)
    return _matrix(traces, pols, invariants)


def merge(parts: list[Matrix]) -> Matrix:
    """The matrix of the concatenated corpora of `parts`, taken in order."""
    first = parts[0]
    cells = {p: {n: Cell() for n in first.invariants} for p in first.policies}
    for part in parts:
        for policy, row in part.cells.items():
            for name, cell in row.items():
                into = cells[policy][name]
                into.scenarios.extend(s for s in cell.scenarios if s not in into.scenarios)
                if cell.shortest is not None and (
                    into.shortest is None or cell.shortest < into.shortest
                ):
                    into.shortest, into.example = cell.shortest, cell.example
    return Matrix(first.policies, first.invariants, cells, sum(p.traces for p in parts))


def distributed_matrix(
    paths: list[Path],
    runner: Any,
    policies: Iterable[str] = POLICIES,
    invariants: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Matrix:
    """`policy_matrix` computed in chunks of CHUNK traces on a `sim.cluster.Runner`;
    `progress(n)` is told how many traces each finished chunk held."""
    pols = tuple(policies)
    names = tuple(invariants) if invariants is not None else None
    items = [(str(p), Path(p).read_text(encoding="utf-8")) for p in paths]
    tasks = [(items[i : i + CHUNK], pols, names) for i in range(0, len(items), CHUNK)]
    parts: dict[int, Matrix] = {}
    for index, part in runner.run(
        chunk_matrix, tasks, names=[f"matrix-{i}" for i in range(len(tasks))]
    ):
        if not isinstance(part, Matrix):
            raise RuntimeError(f"matrix chunk {index} lost: {getattr(part, 'reason', part)}")
        parts[index] = part
        if progress is not None:
            progress(part.traces)
    return merge([parts[i] for i in sorted(parts)])


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
