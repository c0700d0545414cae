"""Coverage figures: what a campaign (or a set of replays) exercised.

Two heatmaps (commands x outcome, commands x the job status they were issued
in), the job verbs and command families x job status against the cells QEMU's
JobVerbTable allows (the denominator), the job status transition graph drawn over QEMU's own table (JobSTT in
sim/model/jobs.py: reached edges with their counts, allowed-but-unreached
edges dashed), and coverage growth over the campaign.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

from sim.model.jobs import JOB_STT as _JOB_STT
from sim.model.jobs import JOB_VERBS as _JOB_VERBS
from sim.model.jobs import STATUSES
from sim.report import style
from sim.report.figures import Built, Drawn, Skipped, Table
from sim.report.runfolder import NO_JOB, transitions_of

# JobSTT by QAPI name, as the coverage data (JSON) names statuses
JOB_STT: dict[str, frozenset[str]] = {
    a.value: frozenset(b.value for b in nexts) for a, nexts in _JOB_STT.items()
}

MAX_ROWS, MAX_COLS = 45, 28
LABEL_CHARS = 42  # a longer column label is cut and numbered; the page gives it whole
DARK_FILLS = {style.BLUE, style.GREY, style.VERMILLION, style.GREEN, style.PURPLE, style.BLACK}

# Where each job status sits in the transition graph: the main path left to
# right, the pause/standby detours above it, aborting below.
STATUS_XY = {
    "undefined": (0.0, 1.0),
    "created": (1.3, 1.0),
    "running": (2.6, 1.0),
    "paused": (1.9, 2.3),
    "ready": (3.9, 1.0),
    "standby": (4.7, 2.3),
    "waiting": (5.2, 1.0),
    "pending": (6.5, 1.0),
    "aborting": (5.2, -0.6),
    "concluded": (7.8, 1.0),
    "null": (9.1, 1.0),
}


def coverage_figures(coverage: dict[str, Any] | None, source: str) -> list[Built]:
    """The four coverage figures from a coverage.json document (or why each is missing)."""
    origin = {
        "campaign": "the fuzz campaign (coverage.json)",
        "timelines": "the replayed traces of this run folder (no coverage.json: derived "
        "from their timelines)",
    }.get(source, "")
    if coverage is None:
        why = "no coverage.json and no timeline in the run folder"
        return [
            Skipped("coverage-commands-outcomes", "Commands x outcomes", why, "coverage"),
            Skipped("coverage-commands-job-states", "Commands x job status", why, "coverage"),
            Skipped("coverage-job-transitions", "Job status transitions", why, "coverage"),
            Skipped("coverage-growth", "Coverage growth", why, "coverage"),
        ]
    return [
        draw_heatmap(
            "coverage-commands-outcomes",
            "Commands x outcomes",
            coverage.get("commands", {}),
            "outcome (return, or the error with names blanked)",
            f"How often each QMP command got each answer, from {origin}. Rows and columns "
            "are sorted by total; colour is the count on a log scale; a blank cell was "
            "never seen.",
            first_cols=["return"],
        ),
        draw_heatmap(
            "coverage-commands-job-states",
            "Commands x job status",
            coverage.get("job-states", {}),
            "job status met (of the job the command names, else of every job)",
            f"Which job status each command met, from {origin}: the status of the job it "
            "names, else of every job that existed (once per distinct status); "
            f"'{NO_JOB}' means no job existed.",
            first_cols=[NO_JOB, *STATUSES],
            sort_cols=False,
        ),
        draw_status_cells(coverage, origin),
        draw_transitions(coverage, origin),
        draw_growth(coverage.get("series", []), origin),
    ]


# the statuses a job rests in between two commands, the columns of the cells figure
RESTING = ("running", "paused", "ready", "standby", "pending", "concluded")


def status_cells(coverage: dict[str, Any]) -> dict[str, Any] | None:
    """coverage.json's `command-x-job-status` (job verb or command family x the status of
    the job it met) against its denominator, the cells QEMU 7.2 allows (a verb only in
    the statuses JobVerbTable accepts it in; a write, snapshot, bitmap command or
    transaction in every status), as `race-coverage` counts them: {"rows", "reached"
    {(row, status): n}, "missing" [(row, status)], "refused" {(row, status): n} (a verb
    issued where QEMU refuses it: exercised, outside the denominator), "exist"}."""
    race = coverage.get("race-coverage")
    table = coverage.get("command-x-job-status")
    summary = race.get("command-x-job-status") if isinstance(race, dict) else None
    if not isinstance(table, dict) or not isinstance(summary, dict):
        return None
    try:
        return _status_cells(table, summary)
    except (AttributeError, TypeError, ValueError):  # not what blocksim fuzz writes
        return None


def _status_cells(table: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    missing = []
    for cell in summary.get("missing", []):
        row, _, status = str(cell).partition(" in ")
        missing.append((row, status))
    reached: dict[tuple[str, str], int] = {}
    refused: dict[tuple[str, str], int] = {}
    for row, cells in table.items():
        verbs = _JOB_VERBS.get(row)
        for status, n in cells.items():
            allowed = verbs is None or status in {s.value for s in verbs}
            (reached if allowed else refused)[(row, status)] = int(n)
    rows = list(dict.fromkeys([*table, *(r for r, _ in missing)]))
    verbs_first = sorted(rows, key=lambda r: (r not in _JOB_VERBS, r))
    return {
        "rows": verbs_first,
        "reached": reached,
        "missing": missing,
        "refused": refused,
        "exist": int(summary.get("exist", len(reached) + len(missing))),
    }


@style.styled
def draw_status_cells(coverage: dict[str, Any], origin: str) -> Built:
    stem = "coverage-job-status-cells"
    cells = status_cells(coverage)
    if cells is None:
        return Skipped(
            stem,
            "Job verbs and commands x job status, against what QEMU allows",
            "the coverage data has no command-x-job-status cells (coverage.json of "
            "`blocksim fuzz`)",
            "coverage",
        )
    reached, missing, refused = cells["reached"], cells["missing"], cells["refused"]
    title = (
        f"Job verbs and commands x job status: {len(reached)} of {cells['exist']} cells "
        "QEMU 7.2 allows reached"
    )
    rows, cols = cells["rows"], list(RESTING)
    fig = style.figure(6.4, max(2.4, 1.1 + 0.3 * len(rows)))
    ax = fig.subplots()
    top = max([*reached.values(), 2])
    cmap = style.colormap(style.HEATMAP_CMAP)
    norm = LogNorm(vmin=1, vmax=top)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            key = (row, col)
            if key in reached:
                n = reached[key]
                ax.add_patch(Rectangle((j, i), 1, 1, color=cmap(norm(n)), ec="white", lw=0.6))
                dark = math.log(n) / math.log(top) < 0.55 if n > 1 else True
                ax.text(j + 0.5, i + 0.5, _compact(n), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
            elif key in missing:
                ax.add_patch(Rectangle((j + 0.04, i + 0.06), 0.92, 0.88, fill=False,
                                       ec=style.VERMILLION, lw=1.4, hatch="///"))  # fmt: skip
                ax.text(j + 0.5, i + 0.5, "never", ha="center", va="center", fontsize=6.5,
                        color=style.VERMILLION, backgroundcolor="white")  # fmt: skip
            elif key in refused:
                ax.add_patch(Rectangle((j, i), 1, 1, color=style.LIGHT_GREY, ec="white", lw=0.6))
                ax.text(j + 0.5, i + 0.5, f"{_compact(refused[key])}*", ha="center",
                        va="center", fontsize=6.5, color="#555555")  # fmt: skip
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(rows), 0)
    ax.set_xticks([j + 0.5 for j in range(len(cols))])
    ax.set_xticklabels(cols, fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(len(rows))])
    ax.set_yticklabels(rows, fontsize=8)
    ax.set_xlabel("status of the job the command met")
    ax.set_ylabel("job verb or command family")
    ax.tick_params(length=0)
    for side in ("left", "bottom", "top", "right"):
        ax.spines[side].set_visible(False)
    handles = [
        Patch(facecolor=cmap(norm(top)), label="reached (count)"),
        Patch(
            facecolor="white",
            edgecolor=style.VERMILLION,
            hatch="///",
            label="allowed, never reached",
        ),
        Patch(facecolor=style.LIGHT_GREY, label="refused by QEMU, exercised (count*)"),
        Patch(facecolor="white", edgecolor=style.LIGHT_GREY, label="refused by QEMU, not tried"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5)
    caption = (
        f"Each job verb (cancel, pause, ...) and command family (a guest write, a snapshot, "
        f"a bitmap command, a transaction) against the status of the job it met, from "
        f"{origin}. The denominator is what QEMU 7.2 allows: a verb in the statuses its "
        f"JobVerbTable accepts it in, a command family in every status a job rests in "
        f"between commands. {len(reached)} of {cells['exist']} such cells were reached; "
        f"hatched cells never were. Grey cells with a * are verbs sent where QEMU refuses "
        f"them (their error path was exercised; not counted)."
    )
    table = Table(
        ["never reached (allowed by QEMU 7.2)"],
        [[f"{r} in {c}"] for r, c in missing] or [["none: every allowed cell was reached"]],
    )
    return Drawn(stem, title, caption, fig, [table], "coverage")


def _ordered(
    table: dict[str, dict[str, int]], first_cols: list[str], sort_cols: bool
) -> tuple[list[str], list[str]]:
    row_total = {r: sum(c.values()) for r, c in table.items()}
    col_total: dict[str, int] = {}
    for cells in table.values():
        for c, n in cells.items():
            col_total[c] = col_total.get(c, 0) + n
    rows = sorted(row_total, key=lambda r: (-row_total[r], r))
    rest = sorted(col_total, key=(lambda c: (-col_total[c], c)) if sort_cols else str)
    cols = [c for c in first_cols if c in col_total] + [c for c in rest if c not in first_cols]
    return rows, cols


def _fold(labels: list[str], limit: int, what: str) -> tuple[list[str], dict[str, str]]:
    """Keep the first `limit - 1` labels; the rest fold into one "(N other ...)" label."""
    if len(labels) <= limit:
        return labels, {label: label for label in labels}
    kept, other = labels[: limit - 1], f"({len(labels) - limit + 1} other {what})"
    return kept + [other], {label: (label if label in kept else other) for label in labels}


@style.styled
def draw_heatmap(
    stem: str,
    title: str,
    table: dict[str, dict[str, int]],
    xlabel: str,
    caption: str,
    first_cols: list[str],
    sort_cols: bool = True,
) -> Built:
    if not table or not any(table.values()):
        return Skipped(stem, title, "the coverage data has no such table", "coverage")
    rows, cols = _ordered(table, first_cols, sort_cols)
    rows, row_of = _fold(rows, MAX_ROWS, "commands")
    cols, col_of = _fold(cols, MAX_COLS, "outcomes")
    grid = [[0] * len(cols) for _ in rows]
    ri, ci = {r: i for i, r in enumerate(rows)}, {c: j for j, c in enumerate(cols)}
    for r, cells in table.items():
        for c, n in cells.items():
            grid[ri[row_of[r]]][ci[col_of[c]]] += int(n)
    top = max(max(line) for line in grid)
    values = [[float(v) if v else math.nan for v in line] for line in grid]
    fig = style.figure(max(4.5, 1.6 + 0.3 * len(cols)), max(2.4, 0.9 + 0.24 * len(rows)))
    ax = fig.subplots()
    cmap = style.colormap(style.HEATMAP_CMAP)
    mesh = ax.pcolormesh(
        values, cmap=cmap, norm=LogNorm(vmin=1, vmax=max(top, 2)), edgecolors="white", linewidth=0.6
    )
    if len(rows) * len(cols) <= 1400:
        for i, line in enumerate(grid):
            for j, v in enumerate(line):
                if v:
                    dark = math.log(v) / math.log(max(top, 2)) < 0.55
                    ax.text(
                        j + 0.5,
                        i + 0.5,
                        _compact(v),
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if dark else "black",
                    )
    ax.set_xticks([j + 0.5 for j in range(len(cols))])
    ax.set_xticklabels(
        [
            c if len(c) <= LABEL_CHARS else f"{style.shorten(c, LABEL_CHARS - 5)} [{j + 1}]"
            for j, c in enumerate(cols)
        ],
        rotation=55,
        ha="right",
        rotation_mode="anchor",
        fontsize=7.5,
    )
    ax.set_yticks([i + 0.5 for i in range(len(rows))])
    ax.set_yticklabels([style.shorten(r, 36) for r in rows], fontsize=7.5)
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(rows), 0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("QMP command")
    ax.tick_params(length=0)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    bar = fig.colorbar(mesh, ax=ax, fraction=0.04 if len(cols) > 8 else 0.08, pad=0.02)
    bar.set_label("times seen (log scale)")
    long_cols = [c for c in cols if len(c) > LABEL_CHARS]
    tables = [Table(["[column]", "full label"], [[str(ci[c] + 1), c] for c in long_cols])]
    return Drawn(stem, title, caption, fig, tables if long_cols else [], "coverage")


def _compact(n: int) -> str:
    return str(n) if n < 10_000 else f"{n / 1000:.0f}k"


@style.styled
def draw_transitions(coverage: dict[str, Any], origin: str) -> Built:
    stem, title = "coverage-job-transitions", "Job status transitions"
    reached = transitions_of(coverage)
    if not reached:
        return Skipped(stem, title, "the coverage data has no job transition", "coverage")
    fig = style.figure(11, 4.6)
    ax = fig.subplots()
    ax.set_aspect("equal")
    top = max(reached.values())
    loops = []
    for a, nexts in JOB_STT.items():
        for b in sorted(nexts):
            if a == b:
                loops.append((a, reached.get((a, b), 0)))
            elif (a, b) not in reached:
                _edge(ax, a, b, None, top)
    extra = []
    for (a, b), n in sorted(reached.items()):
        if a not in STATUS_XY or b not in STATUS_XY:
            extra.append([f"{a} -> {b}", str(n)])
        elif a != b:
            _edge(ax, a, b, n, top, legal=b in JOB_STT.get(a, ()))
        elif (a, n) not in loops:
            loops.append((a, n))
    for status, (x, y) in STATUS_XY.items():
        fill = style.STATUS_COLORS[status] if status != "null" else style.LIGHT_GREY
        ax.text(
            x,
            y,
            status,
            ha="center",
            va="center",
            fontsize=8.5,
            zorder=3,
            color="white" if fill in DARK_FILLS else "black",
            bbox={"boxstyle": "round,pad=0.35", "fc": fill, "ec": style.BLACK, "lw": 0.6},
        )
    for status, n in loops:
        x, y = STATUS_XY[status]
        ax.annotate(
            f"↻ {n}" if n else "↻ (not reached)",
            (x, y),
            xytext=(0, -16),
            textcoords="offset points",
            ha="center",
            fontsize=7.5,
            color=style.BLUE if n else style.GREY,
        )
    ax.set_xlim(-0.6, 9.7)
    ax.set_ylim(-1.2, 2.9)
    ax.axis("off")
    ax.legend(
        handles=[
            Line2D([], [], color=style.BLUE, lw=2, label="reached (label: times)"),
            Line2D(
                [], [], color=style.GREY, lw=1, ls="--", label="allowed by JobSTT, never reached"
            ),
        ]
        + (
            [Line2D([], [], color=style.VERMILLION, lw=2, label="reached but not allowed")]
            if any(b not in JOB_STT.get(a, ()) for a, b in reached if a != b)
            else []
        ),
        loc="upper right",
        ncol=3,
        bbox_to_anchor=(1.0, 1.06),
    )
    n_allowed = sum(len(v) for v in JOB_STT.values())
    n_legal = sum(1 for a, b in reached if b in JOB_STT.get(a, ()))
    caption = (
        f"Job status transitions reached in {origin}, drawn over QEMU 7.2's JobSTT table "
        f"(job.c): {n_legal} of its {n_allowed} allowed transitions were reached. Arrow width "
        "grows with the count."
    )
    tables = [Table(["transition outside the drawing", "times"], extra)] if extra else []
    return Drawn(stem, title, caption, fig, tables, "coverage")


def _edge(ax: Axes, a: str, b: str, n: int | None, top: int, legal: bool = True) -> None:
    (x1, y1), (x2, y2) = STATUS_XY[a], STATUS_XY[b]
    skip = abs(x2 - x1) > 1.5 and abs(y2 - y1) < 0.01
    # an edge that skips nodes arcs over them, longer ones higher (arc height in data units)
    rad = -2 * (0.3 + 0.06 * abs(x2 - x1)) / abs(x2 - x1) if skip else 0.0
    if (b, a) in _PAIRS:
        rad = 0.22
    if n is None:
        color, width, style_ = style.GREY, 0.9, "--"
    else:
        color = style.BLUE if legal else style.VERMILLION
        width, style_ = 1.0 + 2.2 * math.log10(n) / max(math.log10(top), 1), "-"
    ax.add_patch(
        FancyArrowPatch(
            (x1, y1),
            (x2, y2),
            connectionstyle=f"arc3,rad={rad}",
            arrowstyle="-|>",
            mutation_scale=11,
            shrinkA=16,
            shrinkB=16,
            color=color,
            lw=width,
            ls=style_,
            zorder=1 if n is None else 2,
        )
    )
    if n is not None:
        dx, dy = x2 - x1, y2 - y1
        mx, my = (x1 + x2) / 2 + rad * dy / 2, (y1 + y2) / 2 - rad * dx / 2
        ax.text(
            mx,
            my,
            _compact(n),
            ha="center",
            va="center",
            fontsize=7.5,
            zorder=4,
            color=color,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"},
        )


_PAIRS = {(a, b) for a, nexts in JOB_STT.items() for b in nexts}

X_KEYS = (
    ("wall_s", "campaign time (s, wall clock)"),
    ("examples", "examples run"),
    ("traces", "traces replayed"),
)


def series_x(series: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The x key every series point has (time, then examples, then traces) and its label."""
    for key, label in X_KEYS:
        if series and all(key in p for p in series):
            return key, label
    return None


@style.styled
def draw_growth(series: list[dict[str, Any]], origin: str) -> Built:
    stem, title = "coverage-growth", "Coverage growth"
    x = series_x(series)
    if x is None or not all("points" in p for p in series):
        return Skipped(
            stem, title, "the coverage data has no coverage-over-time series", "coverage"
        )
    key, xlabel = x
    fig = style.figure(7.5, 3.4)
    ax = fig.subplots()
    xs, ys = [p[key] for p in series], [p["points"] for p in series]
    ax.step(xs, ys, where="post", color=style.BLUE, linewidth=1.6)
    ax.plot(xs[-1:], ys[-1:], "o", color=style.BLUE)
    ax.annotate(f"{ys[-1]}", (xs[-1], ys[-1]), xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("distinct coverage points")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(axis="y", color=style.LIGHT_GREY, linewidth=0.6)
    caption = (
        f"Distinct coverage points (command x outcome, command x job status, job "
        f"transition, ...) seen so far, over {xlabel.split(' (')[0]}, from {origin}. "
        "A curve still climbing at the end says a longer run would find more."
    )
    return Drawn(stem, title, caption, fig, [], "coverage")
