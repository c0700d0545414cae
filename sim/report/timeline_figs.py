"""Figures of one replay's timeline.json: the timeline and the latency distribution.

The timeline stacks, on one simulated-time axis, one lane per job (status
bands, progress line), guest write latency (points, p50/p99 lines) and each
bitmap's dirty count, with every graph change as a labelled vertical line.
The latency figure is the CDF of guest write latency with no job running and
with each job kind running: the cost of copy-before-write (backup) and of a
write-blocking mirror.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from sim.report import style
from sim.report.figures import Built, Drawn, Skipped, Table, every_kth, percentile

MAX_POINTS = 20_000  # scatter points drawn per figure (percentiles use all)
MIN_BAND = 0.003  # of the time axis: a status band is never drawn narrower
NO_JOB = "no job"
LABEL_CHARS = 34


def timeline_figures(stem: str, doc: dict[str, Any]) -> list[Built]:
    """The timeline and latency figures of one timeline.json (`stem` names the files)."""
    return [draw_timeline(stem, doc), draw_latency(stem, doc)]


def writes(doc: dict[str, Any]) -> list[list[Any]]:
    """The guest write rows of a timeline (failed writes included)."""
    return [r for r in doc.get("io", []) if str(r[1]).startswith("write")]


@dataclass(frozen=True)
class XAxis:
    """Simulated time, or (for a replay in which no time passed) the trace step."""

    by_step: bool
    scale: float  # ns per unit on a time axis
    end: float  # right end, in axis units
    label: str

    @classmethod
    def of(cls, doc: dict[str, Any]) -> XAxis:
        end_ns = int(doc.get("end_ns", 0))
        if end_ns <= 0:
            return cls(True, 1.0, len(doc.get("steps", [])) + 0.5, "trace step")
        unit, scale = style.time_unit(end_ns)
        return cls(False, scale, end_ns / scale, f"simulated time ({unit})")

    def x(self, point: list[Any], step_at: int) -> float:
        """Where a sample goes: its time, or the step it was taken in (`point[step_at]`)."""
        return float(point[step_at]) if self.by_step else point[0] / self.scale

    @property
    def start(self) -> float:
        return 0.5 if self.by_step else 0.0


@style.styled
def draw_timeline(stem: str, doc: dict[str, Any]) -> Built:
    name = doc.get("name") or stem
    title = f"Timeline: {name}"
    jobs, bitmaps, io = doc.get("jobs", []), doc.get("bitmaps", []), writes(doc)
    panels = [p for p, data in (("jobs", jobs), ("io", io), ("bitmaps", bitmaps)) if data]
    if not panels:
        return Skipped(
            f"timeline-{stem}", title, "no job, guest write or bitmap in this replay", "timeline"
        )
    xaxis = XAxis.of(doc)
    heights = {"jobs": max(1.0, 0.42 * len(jobs) + 0.5), "io": 2.2, "bitmaps": 1.8}
    fig = style.figure(10, sum(heights[p] for p in panels) + 1.0)
    axes = fig.subplots(
        len(panels),
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [heights[p] for p in panels], "hspace": 0.12},
    )[:, 0]
    tables: list[Table] = []
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "jobs":
            _job_lanes(ax, jobs, xaxis)
        elif panel == "io":
            tables.append(_latency_points(ax, io, xaxis.scale))
        else:
            _bitmap_counts(ax, bitmaps, xaxis)
    axes[-1].set_xlim(xaxis.start, xaxis.end + (xaxis.end - xaxis.start) * 0.005)
    if xaxis.by_step:
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel(xaxis.label)
    changes = _graph_marks(axes, doc.get("graph_changes", []), xaxis)
    fig.align_ylabels(axes)
    span = (
        "no simulated time passed, so the axis is the trace step"
        if xaxis.by_step
        else f"{xaxis.end:.3g} {xaxis.label.split('(')[1].rstrip(')')} of simulated time"
    )
    caption = (
        f"Replay of {name} (policy {doc.get('policy', '?')}, seed {doc.get('seed', '?')}); "
        f"{span}. "
        + "; ".join(_panel_caption(p) for p in panels)
        + ". Dotted vertical lines are graph changes, labelled with the command "
        "(or the job event) that made them."
    )
    if changes:
        where = "step" if xaxis.by_step else xaxis.label.replace("simulated ", "")
        tables.insert(0, Table(["#", where, "graph change"], changes))
    return Drawn(f"timeline-{stem}", title, caption, fig, tables, "timeline")


def _panel_caption(panel: str) -> str:
    return {
        "jobs": "one lane per block job with its status bands and its progress "
        "(current-progress / total-progress, black line, 0 to 100% of the lane)",
        "io": "each guest write as a point at its issue time with its latency "
        "(queueing and copy-before-write included), dashed lines at p50 and p99",
        "bitmaps": "each dirty bitmap's dirty count (count, in bytes), a gap where "
        "its address holds no bitmap",
    }[panel]


def _job_lanes(ax: Axes, jobs: list[dict[str, Any]], xaxis: XAxis) -> None:
    shown: set[str] = set()
    min_width = (xaxis.end - xaxis.start) * MIN_BAND
    for row, job in enumerate(jobs):
        y = len(jobs) - 1 - row
        states = job.get("states", [])
        for i, point in enumerate(states):
            status = point[1]
            x = xaxis.x(point, 2)
            until = xaxis.x(states[i + 1], 2) if i + 1 < len(states) else xaxis.end
            if status == "null" or (until <= x and i + 2 < len(states)):
                continue  # an instant state; a job's last one still shows (min width)
            shown.add(status)
            ax.broken_barh(
                [(x, max(until - x, min_width))],
                (y - 0.38, 0.76),
                facecolors=style.STATUS_COLORS.get(status, style.GREY),
                edgecolor="none",
            )
        progress = job.get("progress", [])
        if progress:  # held at its last value until the job goes away
            gone = states[-1][1] == "null"
            xs = [xaxis.x(p, 3) for p in progress]
            xs.append(xaxis.x(states[-1], 2) if gone else xaxis.end)
            ys = [y - 0.38 + 0.76 * (p[1] / p[2] if p[2] else 0.0) for p in progress]
            ax.plot(xs, [*ys, ys[-1]], color=style.BLACK, linewidth=1.1)
    ax.set_yticks(range(len(jobs)))
    ax.set_yticklabels([f"{j['lane']} ({j.get('type', '?')})" for j in reversed(jobs)])
    ax.set_ylim(-0.6, len(jobs) - 0.4)
    ax.set_ylabel("block jobs")
    handles: list[Any] = [
        Patch(facecolor=c, label=s) for s, c in style.STATUS_COLORS.items() if s in shown
    ]
    handles.append(Line2D([], [], color=style.BLACK, linewidth=1.1, label="progress"))
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="job status",
        ncol=1 if len(jobs) > 2 else 2,
    )


def _latency_points(ax: Axes, io: list[list[Any]], scale: float) -> Table:
    lat_sorted = sorted(r[2] for r in io)
    lunit, lscale = _latency_unit(lat_sorted)
    groups: dict[str, list[list[Any]]] = {}
    for r in io:
        groups.setdefault(_job_set(r), []).append(r)
    for i, (label, rows) in enumerate(sorted(groups.items(), key=lambda kv: _group_key(kv[0]))):
        color = style.kind_color(label, i)
        shown = every_kth(rows, MAX_POINTS // max(len(groups), 1))
        ok = [r for r in shown if not str(r[1]).endswith("failed")]
        bad = [r for r in shown if str(r[1]).endswith("failed")]
        ax.scatter(
            [r[0] / scale for r in ok],
            [r[2] / lscale for r in ok],
            s=5,
            alpha=0.55,
            color=color,
            linewidths=0,
            label=f"{label} ({len(rows)})",
            rasterized=True,
            zorder=2,
        )
        if bad:
            ax.scatter(
                [r[0] / scale for r in bad],
                [r[2] / lscale for r in bad],
                s=14,
                marker="x",
                color=style.VERMILLION,
                label="failed write",
            )
    p50, p99 = (percentile(lat_sorted, p) / lscale for p in (50, 99))
    rows_out = [f"{p50:.3g}", f"{p99:.3g}"]
    # p50 labelled under its line, p99 over its own: they never overlap
    marks = [(f"p50 {p50:.3g} {lunit}", p50, (4, 3), "top", -2)]
    marks.append((f"p99 {p99:.3g} {lunit}", p99, (1, 2), "bottom", 2))
    if rows_out[0] == rows_out[1]:
        marks = [(f"p50 = p99 = {p50:.3g} {lunit}", p50, (4, 3), "bottom", 2)]
    for text, v, dash, va, dy in marks:
        ax.axhline(v, color=style.BLACK, linewidth=0.9, dashes=dash, zorder=1)
        ax.annotate(
            text,
            (0.995, v),
            xycoords=("axes fraction", "data"),
            xytext=(0, dy),
            textcoords="offset points",
            ha="right",
            va=va,
            fontsize=7.5,
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
            zorder=3,
        )
    ax.set_ylim(0, lat_sorted[-1] / lscale * 1.08)
    ax.set_ylabel(f"write latency ({lunit})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="jobs running", markerscale=2)
    return Table(
        ["guest writes", f"p50 ({lunit})", f"p99 ({lunit})", f"max ({lunit})"],
        [[str(len(io)), rows_out[0], rows_out[1], f"{lat_sorted[-1] / lscale:.3g}"]],
    )


def _bitmap_counts(ax: Axes, bitmaps: list[dict[str, Any]], xaxis: XAxis) -> None:
    top = max((c[1] or 0 for b in bitmaps for c in b.get("counts", [])), default=0)
    unit, bscale = style.size_unit(top)
    for i, bm in enumerate(bitmaps):
        counts = bm.get("counts", [])
        if not counts:
            continue
        xs = [xaxis.x(c, 2) for c in counts] + [xaxis.end]
        ys = [math.nan if c[1] is None else c[1] / bscale for c in counts]
        ax.step(
            xs,
            [*ys, ys[-1]],
            where="post",
            linewidth=1.5,
            color=style.CYCLE[i % len(style.CYCLE)],
            dashes=DASHES[i // 2 % len(DASHES)],
            label=style.shorten(bm["label"], 28),
        )
    ax.set_ylim(bottom=0, top=max(top / bscale * 1.1, 1))
    ax.set_ylabel(f"dirty ({unit})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="bitmap (node/name)")


# Line dashes for bitmap series, so two series with equal counts both show.
DASHES: tuple[tuple[float, ...], ...] = ((), (5, 2), (1.5, 1.5), (6, 2, 1.5, 2))


def _graph_marks(axes: Any, changes: list[list[Any]], xaxis: XAxis) -> list[list[str]]:
    """Vertical lines on every panel; merged labels above the top panel, nudged apart."""
    merged: list[tuple[float, list[str]]] = []
    for change in changes:
        x = xaxis.x(change, 2)
        if merged and merged[-1][0] == x:
            merged[-1][1].append(change[1])
        else:
            merged.append((x, [change[1]]))
    gap = (xaxis.end - xaxis.start) * 0.016
    last_x = float("-inf")
    rows = []
    for n, (x, labels) in enumerate(merged, start=1):
        for ax in axes:
            ax.axvline(x, color=style.BLACK, linewidth=0.8, linestyle=":", alpha=0.8)
        text_x = max(x, last_x + gap)
        last_x = text_x
        text = style.shorten(" + ".join(labels), LABEL_CHARS)
        axes[0].annotate(
            f"{n}: {text}",
            (text_x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3),
            textcoords="offset points",
            rotation=90,
            fontsize=7,
            ha="center",
            va="bottom",
        )
        rows.append([str(n), f"{x:.6g}", " + ".join(labels)])
    return rows


def _job_set(row: list[Any]) -> str:
    kinds = sorted(set(row[3])) if len(row) > 3 else []
    return " + ".join(kinds) if kinds else NO_JOB


def _group_key(label: str) -> tuple[int, str]:
    return (0 if label == NO_JOB else 1, label)


def _latency_unit(sorted_ns: list[int]) -> tuple[str, float]:
    return ("ms", 1e6) if sorted_ns and sorted_ns[-1] >= 1e6 else ("µs", 1e3)


@style.styled
def draw_latency(stem: str, doc: dict[str, Any]) -> Built:
    name = doc.get("name") or stem
    title = f"Guest write latency: {name}"
    io = [r for r in writes(doc) if r[1] == "write"]
    if not io:
        return Skipped(
            f"latency-{stem}", title, "no guest workload wrote in this replay", "latency"
        )
    groups: list[tuple[str, list[int]]] = [(NO_JOB, sorted(r[2] for r in io if not r[3]))]
    kinds = sorted({k for r in io for k in r[3]})
    groups += [(f"{k} running", sorted(r[2] for r in io if k in r[3])) for k in kinds]
    groups = [(label, lat) for label, lat in groups if lat]
    all_lat = sorted(r[2] for r in io)
    unit, scale = _latency_unit(all_lat)
    fig = style.figure(7.5, 4.2)
    ax = fig.subplots()
    rows = []
    for i, (label, lat) in enumerate(groups):
        color = style.kind_color(label, i)
        n = len(lat)
        ys = [k / n for k in range(1, n + 1)]
        p50, p99 = percentile(lat, 50) / scale, percentile(lat, 99) / scale
        ax.step(
            [v / scale for v in lat],
            ys,
            where="post",
            color=color,
            linewidth=1.6,
            label=f"{label}: n={n}, p50 {p50:.3g}, p99 {p99:.3g} {unit}",
        )
        rows.append([label, str(n), f"{p50:.3g}", f"{p99:.3g}", f"{lat[-1] / scale:.3g}"])
    for q, mark in ((0.5, "p50"), (0.99, "p99")):
        ax.axhline(q, color=style.GREY, linewidth=0.7, linestyle=":")
        ax.annotate(
            mark,
            (1.0, q),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7.5,
            color=style.GREY,
        )
    if all_lat[0] > 0 and all_lat[-1] / all_lat[0] > 30:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"guest write latency ({unit})")
    ax.set_ylabel("fraction of writes ≤ latency")
    ax.legend(loc="lower right")
    caption = (
        f"Cumulative distribution of guest write latency in {name}: writes issued while no "
        "job existed, and while a job of each kind existed (a write can count for several "
        "kinds). The horizontal dotted lines are the median and the 99th percentile; the gap "
        "between curves is what each job costs the guest."
    )
    table = Table(["writes issued", "n", f"p50 ({unit})", f"p99 ({unit})", f"max ({unit})"], rows)
    return Drawn(f"latency-{stem}", title, caption, fig, [table], "latency")
