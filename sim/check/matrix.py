"""The policy x invariant matrix: which placement policy breaks which invariant, and where.

`policy_matrix(traces)` replays every trace under every policy with every
checker and keeps, per (policy, invariant), the scenarios that violate it
(the first violation of each as the example).  `markdown(matrix)` renders
the table issue 4 asks for in the README; a `blocksim matrix` command only
has to load the traces and print it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sim.check import CHECKERS, make_checkers
from sim.replay import replay
from sim.trace import POLICIES, Trace


@dataclass
class Cell:
    """What one policy does to one invariant over the corpus."""

    scenarios: list[str] = field(default_factory=list)  # the traces that break it
    example: str = ""  # the first violation's message

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
    traces: Iterable[Trace],
    policies: Iterable[str] = POLICIES,
    invariants: Iterable[str] | None = None,
) -> Matrix:
    """Replay each trace under each policy with the checkers; collect who breaks what."""
    pols = tuple(policies)
    names = tuple(invariants) if invariants is not None else tuple(CHECKERS)
    cells = {p: {n: Cell() for n in names} for p in pols}
    count = 0
    for trace in traces:
        count += 1
        label = trace.header.name or trace.path
        for policy in pols:
            result = replay(trace, policy=policy, checkers=make_checkers(list(names)))
            for v in result.final["violations"]:
                cell = cells[policy][v["invariant"]]
                if label not in cell.scenarios:
                    cell.scenarios.append(label)
                if not cell.example:
                    cell.example = f"{label} step {v['step']}: {v['message']}"
    return Matrix(pols, names, cells, count)


def markdown(matrix: Matrix) -> str:
    """The matrix as a Markdown table: per cell, how many scenarios break it and one name."""
    head = "| invariant | " + " | ".join(f"`{p}`" for p in matrix.policies) + " |"
    rule = "|---|" + "---|" * len(matrix.policies)
    rows = [head, rule]
    for name in matrix.invariants:
        cells = []
        for policy in matrix.policies:
            cell = matrix.cells[policy][name]
            if cell.broken:
                more = f" (+{len(cell.scenarios) - 1})" if len(cell.scenarios) > 1 else ""
                cells.append(f"broken: `{cell.scenarios[0]}`{more}")
            else:
                cells.append("holds")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    rows.append("")
    rows.append(f"{matrix.traces} traces, each replayed under every policy with every checker.")
    return "\n".join(rows)
