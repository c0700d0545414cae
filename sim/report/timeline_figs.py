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
FEW_POINTS = 200  # at most this many guest writes are drawn as larger, opaque points
MIN_BAND = 0.003  # of the time axis: a status band is never drawn narrower
ZOOM_BELOW = 0.03  # a job living for less than this part of the run gets a zoomed timeline
ZOOM_WINDOW = 0.25  # ... when the window around those jobs is under this part of the run
MARK_STYLE = {  # timeline marks: kind -> (marker, colour, legend label)
    "error": ("X", "#D55E00", "BLOCK_JOB_ERROR / BLOCK_IO_ERROR"),
    "pause": ("v", "#E69F00", "job paused or standby (user, drain, stop policy)"),
    "threshold": ("^", "#CC79A7", "BLOCK_WRITE_THRESHOLD"),
    "fault": ("*", "#000000", "injected I/O error armed (fault step)"),
    "drain": ("|", "#56B4E9", "drained section begins (bdrv_drained_begin)"),
}
NO_JOB = "no job"
LABEL_CHARS = 34


def timeline_figures(stem: str, doc: dict[str, Any]) -> list[Built]:
    """The timeline and latency figures of one timeline.json (`stem` names the files):
    the whole run, a zoom on jobs too short to see in it, the latency CDFs and the
    node graph before and after every graph change."""
    built = [draw_timeline(stem, doc)]
    if isinstance(built[0], Drawn):
        built[0].tables.append(steps_table(doc))
    window = zoom_window(doc)
    if window is not None:
        built.append(draw_timeline(stem, doc, window))
    return [*built, draw_latency(stem, doc), draw_graphs(stem, doc)]


def steps_table(doc: dict[str, Any]) -> Table:
    """Every step of the replay in order: when it ran (simulated time), the command (a
    qemu-io line by its verb, a wait by its event), QEMU's answer as the simulator gave
    it (ok or the error) and the status of each job when it answered."""
    answers = {int(c[1]): c for c in doc.get("commands", [])}
    rows = []
    for number, (t, label) in enumerate(doc.get("steps", []), start=1):
        command = answers.get(number)
        answer, jobs = "", ""
        if command is not None:
            label = command[2]
            answer = "ok" if command[3] == "return" else str(command[3])
            jobs = ", ".join(f"{j} {st}" for j, st in sorted(dict(command[4]).items()))
        rows.append([str(number), f"{int(t) / 1e6:.3f}", str(label), answer, jobs])
    return Table(
        ["step", "time (ms)", "command", "answer", "jobs when it answered"],
        rows,
        fold=f"What happened, step by step ({len(rows)} steps)",
    )


def zoom_window(doc: dict[str, Any]) -> tuple[int, int] | None:
    """[start, end] in ns around the jobs that live for less than ZOOM_BELOW of the run,
    when that window is itself under ZOOM_WINDOW of it (else nothing to zoom on).  A job
    that begins and ends at one instant (nothing to copy) has nothing to zoom into: its
    lane marks it instead."""
    end = int(doc.get("end_ns", 0))
    if end <= 0:
        return None
    short = []
    for job in doc.get("jobs", []):
        states = job.get("states", [])
        if states:
            first, last = int(states[0][0]), int(states[-1][0])
            if 0 < last - first < end * ZOOM_BELOW:  # a job of no duration: marked, no zoom
                short.append((first, last))
    if not short:
        return None
    lo, hi = min(a for a, _ in short), max(b for _, b in short)
    margin = max((hi - lo) * 0.15, end * 0.002)
    lo, hi = max(0, int(lo - margin)), min(end, int(hi + margin))
    return (lo, hi) if hi - lo < end * ZOOM_WINDOW and hi > lo else None


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

    begin: float = 0.0  # left end, in axis units (a zoomed timeline starts later)

    @classmethod
    def of(cls, doc: dict[str, Any], window: tuple[int, int] | None = None) -> XAxis:
        end_ns = int(doc.get("end_ns", 0))
        if end_ns <= 0:
            return cls(True, 1.0, len(doc.get("steps", [])) + 0.5, "trace step")
        if window is not None:
            unit, scale = style.time_unit(window[1] - window[0])
            return cls(
                False, scale, window[1] / scale, f"simulated time ({unit})", window[0] / scale
            )
        unit, scale = style.time_unit(end_ns)
        return cls(False, scale, end_ns / scale, f"simulated time ({unit})")

    def x(self, point: list[Any], step_at: int) -> float:
        """Where a sample goes: its time, or the step it was taken in (`point[step_at]`)."""
        return float(point[step_at]) if self.by_step else point[0] / self.scale

    @property
    def start(self) -> float:
        return 0.5 if self.by_step else self.begin


@style.styled
def draw_timeline(stem: str, doc: dict[str, Any], window: tuple[int, int] | None = None) -> Built:
    name = doc.get("name") or stem
    title = f"Timeline: {name}"
    fig_stem = f"timeline-{stem}"
    if window is not None:
        title, fig_stem = f"Timeline (zoom on its short jobs): {name}", f"timeline-{stem}-zoom"
    jobs, bitmaps, io = doc.get("jobs", []), doc.get("bitmaps", []), writes(doc)
    addresses = [a for a in doc.get("addresses", []) if a.get("counts")]
    marks = doc.get("marks", [])
    if window is not None:
        jobs = [j for j in jobs if _overlaps(j.get("states", []), window)]
        marks = [m for m in marks if window[0] <= m[0] <= window[1]]
    panels = [
        p
        for p, data in (
            ("marks", marks), ("jobs", jobs), ("io", io), ("bitmaps", bitmaps or addresses),
        )
        if data
    ]  # fmt: skip
    if not panels or panels == ["marks"]:
        return Skipped(fig_stem, title, "no job, guest write or bitmap in this replay", "timeline")
    xaxis = XAxis.of(doc, window)
    kinds = sorted({m[1] for m in marks})
    heights = {
        "marks": 0.3 * len(kinds) + 0.3,
        "jobs": max(1.0, 0.42 * len(jobs) + 0.5),
        "io": 2.2,
        "bitmaps": 1.8 + 0.15 * len(addresses),
    }
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
        if panel == "marks":
            _marks(ax, marks, kinds, xaxis)
        elif panel == "jobs":
            _job_lanes(ax, jobs, xaxis)
        elif panel == "io":
            tables.append(_latency_points(ax, io, xaxis.scale))
        else:
            _bitmap_counts(ax, bitmaps, xaxis)
            _address_counts(ax, addresses, xaxis)
    pad = (xaxis.end - xaxis.start) * 0.005  # a mark at either end stays whole
    axes[-1].set_xlim(xaxis.start - (0 if xaxis.by_step else pad), xaxis.end + pad)
    if xaxis.by_step:
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel(xaxis.label)
    changes = _graph_marks(axes, doc.get("graph_changes", []), xaxis)
    fig.align_ylabels(axes)
    unit = xaxis.label.partition("(")[2].rstrip(")")
    if xaxis.by_step:
        span = "no simulated time passed, so the axis is the trace step"
    elif window is not None:
        span = (
            f"zoomed on {style.num(xaxis.start)} to {style.num(xaxis.end)} {unit}, where its "
            "short jobs ran"
        )
    else:
        span = f"{style.num(xaxis.end)} {unit} of simulated time"
    about = str(doc.get("description") or "").strip()
    lead = f"The scenario: {about.rstrip('.')}." if about and window is None else ""
    caption = (
        f"Replay of {name} (policy {doc.get('policy', '?')}, seed "
        f"{doc.get('seed', '?')}); {span}. "
        + "; ".join(_panel_caption(p) for p in panels)
        + ". Dotted vertical lines are graph changes, numbered as in the table below (the "
        "command or job event that made each; the node graph figure draws the graph after it)."
    )
    if changes:
        where = "step" if xaxis.by_step else xaxis.label.replace("simulated ", "")
        tables.insert(0, Table(["#", where, "graph change"], changes))
    if marks:
        where = "step" if xaxis.by_step else xaxis.label.replace("simulated ", "")
        rows = [[_fmt_x(xaxis.x(m, 2)), m[1], m[3]] for m in marks[:MAX_MARK_ROWS]]
        if len(marks) > MAX_MARK_ROWS:
            rows.append(["", "", f"... and {len(marks) - MAX_MARK_ROWS} more"])
        tables.append(Table([where, "mark", "event"], rows))
    return Drawn(fig_stem, title, caption, fig, tables, "timeline", lead)


MAX_MARK_ROWS = 40


def _fmt_x(x: float) -> str:
    return f"{x:.6g}"


def _overlaps(states: list[list[Any]], window: tuple[int, int]) -> bool:
    return bool(states) and int(states[0][0]) <= window[1] and int(states[-1][0]) >= window[0]


def _marks(ax: Axes, marks: list[list[Any]], kinds: list[str], xaxis: XAxis) -> None:
    """One row per kind of mark, a glyph at each event."""
    for row, kind in enumerate(kinds):
        marker, color, label = MARK_STYLE.get(kind, ("o", style.GREY, kind))
        xs = [xaxis.x(m, 2) for m in marks if m[1] == kind]
        ax.scatter(xs, [row] * len(xs), marker=marker, s=36, color=color, zorder=3,
                   label=f"{label} ({len(xs)})")  # fmt: skip
    ax.set_yticks(range(len(kinds)))
    ax.set_yticklabels(kinds)
    ax.set_ylim(-0.6, len(kinds) - 0.4)
    ax.set_ylabel("events")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="marks")


def _address_counts(ax: Axes, addresses: list[dict[str, Any]], xaxis: XAxis) -> None:
    """Each address a bitmap was added at, as QMP looks it up: a thick pale line while
    the lookup finds a bitmap there, a cross where it stops finding one."""
    if not addresses:
        return
    top = max(ax.get_ylim()[1], 1.0)
    scale = _bitmap_scale(ax)
    for i, a in enumerate(addresses):
        counts = a["counts"]
        color = style.CYCLE[(i + 3) % len(style.CYCLE)]
        xs = [xaxis.x(c, 2) for c in counts] + [xaxis.end]
        ys = [math.nan if c[1] is None else c[1] / scale for c in counts]
        device, _, name = str(a["address"]).partition("/")
        ax.step(xs, [*ys, ys[-1]], where="post", linewidth=5, alpha=0.35, color=color,
                label=f"({device}, {name}) by address", zorder=1)  # fmt: skip
        for prev, cur in zip(counts, counts[1:], strict=False):
            if prev[1] is not None and cur[1] is None:
                x = xaxis.x(cur, 2)
                ax.scatter([x], [prev[1] / scale], marker="X", s=70, color=style.VERMILLION,
                           zorder=4)  # fmt: skip
                ax.annotate(f"({device}, {name}) not found", (x, prev[1] / scale),
                            xytext=(6, -10), textcoords="offset points", fontsize=7.5,
                            color=style.VERMILLION)  # fmt: skip
    ax.set_ylim(0, top)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="bitmap (node/name)\nand address (QMP lookup)")  # fmt: skip


def _bitmap_scale(ax: Axes) -> float:
    return float(getattr(ax, "_blocksim_bitmap_scale", 1.0))


def _panel_caption(panel: str) -> str:
    return {
        "jobs": "one lane per block job with its status bands and its progress "
        "(current-progress / total-progress, black line, 0 to 100% of the lane)",
        "io": "each guest write as a point at its issue time with its latency "
        "(queueing and copy-before-write included), dashed lines at p50 and p99",
        "bitmaps": "each dirty bitmap's dirty count (count, in bytes) by the node holding "
        "it, a gap where that node holds no bitmap of the name; and, thick and pale, each "
        "address a bitmap was added at (device or node, name) as QMP looks it up under the "
        "policy, a cross where the lookup stops finding it",
        "marks": "marks: injected faults, block job and I/O errors, drained sections, jobs "
        "pausing (a user's pause, a drain, a stop error policy) and write thresholds, listed "
        "in the table below",
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
        if states and len({int(p[0]) for p in states}) == 1 and not xaxis.by_step:
            x = xaxis.x(states[0], 2)
            ax.plot([x], [y], marker="D", markersize=6, color=style.BLACK, linestyle="none")
            ax.annotate(
                f"{states[0][1]} to {[p[1] for p in states if p[1] != 'null'][-1]} at one "
                "instant",
                (x, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7,
            )  # fmt: skip
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
    few = len(io) <= FEW_POINTS  # a handful of writes: points big enough to see each
    for i, (label, rows) in enumerate(sorted(groups.items(), key=lambda kv: _group_key(kv[0]))):
        color = style.kind_color(label, i)
        shown = every_kth(rows, MAX_POINTS // max(len(groups), 1))
        ok = [r for r in shown if not str(r[1]).endswith("failed")]
        bad = [r for r in shown if str(r[1]).endswith("failed")]
        ax.scatter(
            [r[0] / scale for r in ok],
            [r[2] / lscale for r in ok],
            s=16 if few else 5,
            alpha=0.9 if few else 0.55,
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
    rows_out = [style.num(p50), style.num(p99)]
    # p50 labelled under its line, p99 over its own: they never overlap
    marks = [(f"p50 {style.num(p50)} {lunit}", p50, (4, 3), "top", -2)]
    marks.append((f"p99 {style.num(p99)} {lunit}", p99, (1, 2), "bottom", 2))
    if rows_out[0] == rows_out[1]:
        marks = [(f"p50 = p99 = {style.num(p50)} {lunit}", p50, (4, 3), "bottom", 2)]
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
        [[str(len(io)), rows_out[0], rows_out[1], style.num(lat_sorted[-1] / lscale)]],
    )


def _bitmap_counts(ax: Axes, bitmaps: list[dict[str, Any]], xaxis: XAxis) -> None:
    top = max((c[1] or 0 for b in bitmaps for c in b.get("counts", [])), default=0)
    unit, bscale = style.size_unit(top)
    ax._blocksim_bitmap_scale = bscale  # type: ignore[attr-defined]  # _address_counts
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
    if bitmaps:
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
    gap = (xaxis.end - xaxis.start) * 0.02
    last_in_row: list[float] = []  # x of the last number put in each row above the plot
    rows = []
    for n, (x, labels) in enumerate(merged, start=1):
        if not xaxis.start <= x <= xaxis.end:
            continue  # outside a zoomed window
        for ax in axes:
            ax.axvline(x, color=style.BLACK, linewidth=0.8, linestyle=":", alpha=0.8)
        row = next((i for i, last in enumerate(last_in_row) if x - last >= gap), None)
        if row is None:
            row = len(last_in_row)
            last_in_row.append(x)
        last_in_row[row] = x
        axes[0].annotate(
            str(n),
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2 + 9 * row),
            textcoords="offset points",
            fontsize=7,
            ha="center",
            va="bottom",
        )
        rows.append([str(n), _fmt_x(x), " + ".join(labels)])
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
        legend = f"{label}: n={n}, p50 {style.num(p50)}, p99 {style.num(p99)} {unit}"
        rows.append([label, str(n), style.num(p50), style.num(p99), style.num(lat[-1] / scale)])
        if n < FEW_SAMPLES:  # a handful of writes: each one a point, no curve implied
            ax.scatter([v / scale for v in lat], ys, color=color, s=22, zorder=3, label=legend)
            continue
        ax.step(
            [v / scale for v in lat],
            ys,
            where="post",
            color=color,
            linewidth=1.6,
            label=legend,
        )
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
        "between curves is what each job costs the guest. The latencies come from blocksim's "
        f"timing model (sim/engine/timing.py), not from a disk: {_timing_text(doc)}."
        + (
            f" Groups of fewer than {FEW_SAMPLES} writes are drawn as points."
            if any(len(lat) < FEW_SAMPLES for _, lat in groups)
            else ""
        )
    )
    table = Table(["writes issued", "n", f"p50 ({unit})", f"p99 ({unit})", f"max ({unit})"], rows)
    return Drawn(f"latency-{stem}", title, caption, fig, [table], "latency")


FEW_SAMPLES = 20  # latency groups smaller than this are drawn as points, not a step curve


def _timing_text(doc: dict[str, Any]) -> str:
    """The device timing a latency figure came from, as the timeline recorded it."""
    timing = doc.get("timing") or {}
    if not timing:
        return "its parameters were not recorded in this timeline"
    parts = []
    for device, t in timing.items():
        parts.append(
            f"{device}: {t.get('latency_us', '?'):g} µs per request + bytes at "
            f"{t.get('bandwidth_mbps', '?'):g} MiB/s, jitter {t.get('jitter', 0):g}, "
            f"queue depth {t.get('queue_depth', '?'):g}"
        )
    return "; ".join(parts)


MAX_GRAPHS = 9  # node-graph panels per figure (the first ones; the table lists all)
ROLE_STYLE = {"file": "-", "backing": "--", "target": ":"}
# drivers whose `file` child is not the next node of a backing chain
FORMATS_AND_PROTOCOLS = frozenset({"qcow2", "raw", "file", "null-co", "host_device", "nbd"})


@style.styled
def draw_graphs(stem: str, doc: dict[str, Any]) -> Built:
    """The node graph at the start and after every graph change, one panel each."""
    name = doc.get("name") or stem
    title = f"Node graph: {name}"
    graphs = doc.get("graphs", [])
    if len(graphs) < 2:
        why = "no graph change in this replay" if graphs else "the timeline has no node graphs"
        return Skipped(f"graph-{stem}", title, why, "timeline")
    shown = graphs[:MAX_GRAPHS]
    cols = min(3, len(shown))
    rows_n = math.ceil(len(shown) / cols)
    fig = style.figure(10, 2.7 * rows_n + 0.3)
    axes = fig.subplots(rows_n, cols, squeeze=False)
    unit, scale = style.time_unit(max(int(doc.get("end_ns", 0)), 1))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(shown):
            continue
        t, step, label, g = shown[i]
        when = "start" if i == 0 else f"{i}: after {style.shorten(label, 38)}"
        where = f"step {step}" if step else "before step 1"
        if doc.get("end_ns", 0):
            where += f", {style.num(t / scale)} {unit}"
        ax.set_title(f"{when}\n({where})", fontsize=8, loc="left")
        _draw_graph(ax, g)
    caption = (
        f"Block graph of {name} at the start and after each graph change (numbered as on "
        "the timeline): devices (BlockBackends, grey) on top, each node below its parent "
        "with its driver and its named dirty bitmaps; solid edges are `file` children, "
        "dashed `backing`, dotted a job filter's `target`. Nodes no device reaches sit "
        "apart on the right."
    )
    rows = [
        [str(i), f"step {g[1]}", g[2], _chain_text(g[3])] for i, g in enumerate(graphs)
    ]  # fmt: skip
    if len(graphs) > MAX_GRAPHS:
        caption += (
            f" The first {MAX_GRAPHS} of {len(graphs)} graphs are drawn; the table lists all."
        )
    return Drawn(
        f"graph-{stem}", title, caption, fig,
        [Table(["#", "when", "change", "devices: chain (bitmaps)"], rows)], "timeline",
    )  # fmt: skip


def graph_layout(g: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Positions: devices on row 0, each node one row below the first parent that
    reaches it (file, backing, target in that order), columns in discovery order;
    nodes no device reaches on the right, laid out the same way from those of them no
    other such node has as a child (a job's target above its file)."""
    nodes = {n[0]: n for n in g.get("nodes", [])}
    pos: dict[str, tuple[float, float]] = {}

    def layout(starts: list[tuple[str, int]], x0: float) -> None:
        cols: dict[int, int] = {}
        placed: list[str] = []

        def place(key: str, depth: int) -> None:
            col = cols.get(depth, 0)
            cols[depth] = col + 1
            pos[key] = (float(col), float(-depth))
            placed.append(key)

        queue: list[tuple[str, int]] = []
        for key, depth in starts:
            if key not in pos:
                place(key, depth)
                queue.append((key, depth))
        while queue:
            key, depth = queue.pop(0)
            node = nodes.get(key)
            if node is None:
                continue
            for child in (node[2], node[3], node[4]):
                if child is not None and child not in pos:
                    place(child, depth + 1)
                    queue.append((child, depth + 1))
        for key in placed:  # each row centred
            x, y = pos[key]
            pos[key] = (x0 + x - (cols[int(-y)] - 1) / 2, y)

    starts: list[tuple[str, int]] = []
    for device, root in g.get("devices", []):
        pos[f"dev:{device}"] = (0.0, 0.0)
        if root is not None:
            starts.append((root, 1))
    layout(starts, 0.0)
    devices = [k for k in pos if k.startswith("dev:")]
    for i, key in enumerate(devices):  # devices side by side on row 0
        pos[key] = (i - (len(devices) - 1) / 2, 0.0)
    loose = [n for n in nodes if n not in pos]
    if loose:
        children = {c for n in loose for c in nodes[n][2:5] if c is not None}
        roots = [n for n in loose if n not in children] or loose[:1]
        before = set(pos)
        layout([(n, 1) for n in roots], 0.0)
        for n in loose:  # a cycle among them: whatever the walk did not reach
            if n not in pos:
                layout([(n, 1)], 0.0)
        width = max((pos[k][0] for k in before), default=0.0) + 1.3
        shift = width - min(pos[k][0] for k in pos if k not in before)
        for k in pos:
            if k not in before:
                pos[k] = (pos[k][0] + shift, pos[k][1])
    return pos


def _draw_graph(ax: Axes, g: dict[str, Any]) -> None:
    pos = graph_layout(g)
    nodes = {n[0]: n for n in g.get("nodes", [])}
    boxes: dict[str, Any] = {}
    for key, (x, y) in pos.items():
        if key.startswith("dev:"):
            text, fill = key[4:], style.LIGHT_GREY
        else:
            node = nodes.get(key)
            driver = node[1] if node else "?"
            bitmaps = node[5] if node else []
            text = f"{key}\n{driver}" + (f"\n[{', '.join(bitmaps)}]" if bitmaps else "")
            fill = "#FFFFFF" if not bitmaps else "#FFF3CC"
        boxes[key] = ax.text(x, y, text, ha="center", va="center", fontsize=7, zorder=3,
                             bbox={"boxstyle": "round,pad=0.3", "fc": fill, "ec": style.BLACK,
                                   "lw": 0.6})  # fmt: skip
    for device, root in g.get("devices", []):
        if root in pos:
            _arrow(ax, boxes, pos, f"dev:{device}", root, "-")
    for key, node in nodes.items():
        for role, child in zip(("file", "backing", "target"), node[2:5], strict=True):
            if child in pos and key in pos:
                _arrow(ax, boxes, pos, key, child, ROLE_STYLE[role])
    xs = [x for x, _ in pos.values()] or [0.0]
    ys = [y for _, y in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.5)


def _arrow(
    ax: Axes, boxes: dict[str, Any], pos: dict[str, tuple[float, float]], a: str, b: str, ls: str
) -> None:
    """An edge from box `a` to box `b`, from the side of one that faces the other to that
    of the other, so the arrowhead shows whatever the angle (not hidden under a box)."""
    (xa, ya), (xb, yb) = pos[a], pos[b]
    if ya > yb:  # the usual case: the child below
        start, end = (0.5, 0.0), (0.5, 1.0)
    elif ya < yb:
        start, end = (0.5, 1.0), (0.5, 0.0)
    else:
        start, end = ((1.0, 0.5), (0.0, 0.5)) if xa < xb else ((0.0, 0.5), (1.0, 0.5))
    ax.annotate("", xy=end, xycoords=boxes[b], xytext=start, textcoords=boxes[a], zorder=1,
                arrowprops={"arrowstyle": "-|>", "lw": 0.8, "ls": ls, "color": style.BLACK,
                            "shrinkA": 3, "shrinkB": 3})  # fmt: skip


def _chain_text(g: dict[str, Any]) -> str:
    """`drive0: ov0 -> fmt0 (b0)`: each device's backing chain from its root, with the
    bitmaps each node holds (file children left out)."""
    nodes = {n[0]: n for n in g.get("nodes", [])}
    parts = []
    for device, root in g.get("devices", []):
        chain, key, seen = [], root, set()
        while key is not None and key not in seen:
            seen.add(key)
            node = nodes.get(key)
            bitmaps = f" ({', '.join(node[5])})" if node and node[5] else ""
            chain.append(f"{key}{bitmaps}")
            key = node[3] if node else None  # backing
            if node is not None and key is None and node[1] not in FORMATS_AND_PROTOCOLS:
                key = node[2]  # a filter's file child
        parts.append(f"{device}: {' -> '.join(chain)}")
    return "; ".join(parts)
