"""What a figure builder hands back: a drawn figure with its caption, or why not.

Every builder in sim/report returns a list of `Drawn` and `Skipped`; the page
(`sim/report/html.py`) shows the first with their caption and tables, and the
second as a note, so a run folder missing an input still gives a report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure


@dataclass
class Table:
    """A small HTML table under a figure: header cells, then rows of cells.

    A cell is text, or (text, href) for a link.  With `fold` set the page shows the
    table folded under that line (long listings a reader opens when needed)."""

    header: list[str]
    rows: list[list[Any]]
    fold: str = ""


@dataclass
class Drawn:
    """A figure to save as `stem`.png/.svg, with its title, caption and tables."""

    stem: str
    title: str
    caption: str
    fig: Figure
    tables: list[Table] = field(default_factory=list)
    section: str = ""
    lead: str = ""  # a sentence shown above the figure (what the replayed scenario does)


@dataclass
class Skipped:
    """A figure that could not be drawn from this run folder, and why."""

    stem: str
    title: str
    reason: str
    section: str = ""


Built = Drawn | Skipped


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of an already sorted, non-empty list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def every_kth(values: list[Any], limit: int) -> list[Any]:
    """At most about `limit` items, evenly picked (deterministic thinning for plots)."""
    if len(values) <= limit:
        return values
    k = math.ceil(len(values) / limit)
    return values[::k]
