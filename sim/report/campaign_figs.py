"""Campaign and policy figures: how a fuzz campaign went, which policy breaks what.

The campaign figures read coverage.json's `series` (examples, steps and
failures over wall-clock time) and the failures/ traces; the policy matrix
reads matrix.json, one cell per (policy, invariant), each linking the
shortest trace that breaks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from sim.report import style
from sim.report.figures import Built, Drawn, Skipped, Table
from sim.report.runfolder import Failure


@dataclass
class Cell:
    """One policy x invariant result: broken or not, and the trace that shows it."""

    policy: str
    invariant: str
    status: str  # "broken" | "holds" | "not run"
    trace: str | None = None
    steps: int | None = None
    message: str = ""
    traces_breaking: int | None = None  # how many traces of the corpus break it


@style.styled
def draw_throughput(series: list[dict[str, Any]]) -> Built:
    stem, title = "campaign-throughput", "Campaign throughput"
    points = [p for p in series if "wall_s" in p and "examples" in p]
    if len(points) < 2:
        return Skipped(
            stem,
            title,
            "no campaign series with wall_s and examples (coverage.json from `blocksim fuzz`)",
            "campaign",
        )
    xs = [float(p["wall_s"]) for p in points]
    fig = style.figure(7.5, 4.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.15})
    top.plot(xs, [p["examples"] for p in points], color=style.BLUE, linewidth=1.6,
             label="examples generated")  # fmt: skip
    if all("runs" in p for p in points) and any(p["runs"] != p["examples"] for p in points):
        top.plot(xs, [p["runs"] for p in points], color=style.GREY, linewidth=1.2,
                 linestyle="--", label="+ shrink and replay runs")  # fmt: skip
        top.legend(loc="upper left", fontsize=8)
    top.set_ylabel("examples")
    top.set_ylim(bottom=0)
    rates = _rates(points)
    if rates:
        edges = [float(points[0]["wall_s"])] + [x for x, _ in rates]
        bottom.stairs([r for _, r in rates], edges, color=style.ORANGE, linewidth=1.4)
    bottom.set_ylabel("QMP steps / s")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("campaign time (s, wall clock)")
    bottom.set_xlim(left=0)
    for ax in (top, bottom):
        ax.grid(axis="y", color=style.LIGHT_GREY, linewidth=0.6)
    caption = (
        "Examples generated so far (top; dashed, with the runs that replay or shrink "
        "failures, when there were any) and QMP steps executed per second of wall-clock time, "
        f"averaged over 1/{RATE_WINDOWS} of the campaign (bottom). A falling rate means "
        "examples got longer or slower, e.g. under more checkers or longer workloads."
    )
    return Drawn(stem, title, caption, fig, [], "campaign")


def _rates(points: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(time, steps/s) per interval of at least 1/RATE_WINDOWS of the campaign (samples
    every few examples are too noisy to read): the series' "steps_per_s" if it has one."""
    if all("steps_per_s" in p for p in points):
        return [(float(p["wall_s"]), float(p["steps_per_s"])) for p in points]
    span = float(points[-1]["wall_s"]) - float(points[0]["wall_s"])
    out, start = [], points[0]
    for p in points[1:]:
        dt = float(p["wall_s"]) - float(start["wall_s"])
        if dt > 0 and dt >= span / RATE_WINDOWS and "steps" in p and "steps" in start:
            out.append((float(p["wall_s"]), (p["steps"] - start["steps"]) / dt))
            start = p
    return out


RATE_WINDOWS = 40


@style.styled
def draw_failures(series: list[dict[str, Any]], failures: list[Failure]) -> Built:
    stem, title = "campaign-failures", "Failures found over time"
    curves = _failure_curves(series, failures)
    if not curves:
        why = (
            "no failure in this run folder"
            if not failures and not series
            else "no failure times: neither coverage.json's series 'failures' by invariant "
            "nor 'found_s' in the failure headers"
        )
        return Skipped(stem, title, why, "campaign")
    fig = style.figure(7.5, 3.4)
    ax = fig.subplots()
    end = max(x for pts in curves.values() for x, _ in pts)
    for i, (invariant, pts) in enumerate(sorted(curves.items())):
        xs = [0.0] + [x for x, _ in pts] + [end]
        ys = [0] + [n for _, n in pts] + [pts[-1][1]]
        ax.step(
            xs,
            ys,
            where="post",
            linewidth=1.6,
            color=style.CYCLE[i % len(style.CYCLE)],
            label=f"{invariant} ({pts[-1][1]})",
        )
    ax.set_xlabel("campaign time (s, wall clock)")
    ax.set_ylabel("distinct failures found")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="invariant")
    caption = (
        "Distinct failures (deduplicated by invariant and shrunk trace) found so far, per "
        "invariant, over the campaign; a failure counts from the moment the campaign first "
        "saw it (the table's 'found at'). Each one is a trace in failures/, listed below."
    )
    if ALL_INVARIANTS in curves:
        caption += (
            " The campaign recorded failure times only as a total, so one curve counts all "
            "invariants."
        )
    return Drawn(stem, title, caption, fig, [], "campaign")


def _failure_curves(
    series: list[dict[str, Any]], failures: list[Failure]
) -> dict[str, list[tuple[float, int]]]:
    """Cumulative failures over time per invariant: from the failures' own times (when
    the campaign first saw each, the table's "found at"), else the series' "failures"
    ({invariant: n}: counted when exported, which a campaign may do only at its end),
    else the series' total alone."""
    curves: dict[str, list[tuple[float, int]]] = {}
    if failures and all(f.found_s is not None for f in failures):
        for f in sorted(failures, key=lambda f: (f.found_s or 0.0, f.path.name)):
            pts = curves.setdefault(f.invariant, [])
            pts.append((float(f.found_s or 0.0), (pts[-1][1] if pts else 0) + 1))
        return curves
    timed = [p for p in series if "wall_s" in p and "failures" in p]
    by_invariant = [p for p in timed if isinstance(p["failures"], dict)]
    for p in by_invariant:
        for invariant, n in sorted(p["failures"].items()):
            _add(curves.setdefault(invariant, []), float(p["wall_s"]), int(n))
    if curves or not any(p["failures"] for p in timed):
        return curves
    pts = curves.setdefault(ALL_INVARIANTS, [])
    for p in timed:
        _add(pts, float(p["wall_s"]), int(p["failures"]))
    return curves


def _add(points: list[tuple[float, int]], t: float, n: int) -> None:
    if not points or points[-1][1] != n:
        points.append((t, n))


ALL_INVARIANTS = "all invariants"


# the campaign's triage classes (failures/index.json "class"), in the order shown
TRIAGE_ORDER = ("new", "artefact", "refused-by-qemu", "expected")


def triage_rank(name: str) -> int:
    return TRIAGE_ORDER.index(name) if name in TRIAGE_ORDER else 1


def failures_table(
    failures: list[Failure],
    href: Callable[[str], str | None],
    pages: dict[str, str] | None = None,
) -> Table:
    """One row per failure trace, grouped by triage class (new first): what broke, how
    short, when, whether it replays, why it is classed so, and its own page."""
    rows = []
    order = sorted(
        failures, key=lambda f: (triage_rank(f.triage), f.invariant, f.steps, f.path.name)
    )
    for f in order:
        link = href(str(f.path))
        found = "" if f.found_s is None else f"{f.found_s:.1f}"
        replays = {True: "yes", False: "NO", None: ""}[f.reproduced]
        trace = (f.path.name, link) if link else f.path.name
        message = f.message + (f" [why {f.triage}: {f.triage_reason}]" if f.triage_reason else "")
        page = (pages or {}).get(str(f.path))
        detail = ("details", page) if page else ""
        rows.append([f.triage, f.invariant, str(f.steps), found, replays, trace, detail, message])
    header = ["class", "invariant", "steps", "found at (s)", "replays", "trace", "page", "message"]
    return Table(header, rows)


def matrix_cells(doc: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], Cell]]:
    """matrix.json as (policies, invariants, cells); cells as a list of records or as
    {policy: {invariant: record}}; a record says "broken" (bool) or "status"."""
    raw = doc.get("cells", [])
    records: list[dict[str, Any]] = []
    if isinstance(raw, dict):
        for policy, row in raw.items():
            for invariant, rec in (row or {}).items():
                records.append({"policy": policy, "invariant": invariant, **(rec or {})})
    elif isinstance(raw, list):
        records = [r for r in raw if isinstance(r, dict)]
    cells: dict[tuple[str, str], Cell] = {}
    for r in records:
        status = r.get("status") or ("broken" if r.get("broken") else "holds")
        cells[(str(r.get("policy")), str(r.get("invariant")))] = Cell(
            str(r.get("policy")),
            str(r.get("invariant")),
            str(status),
            r.get("trace"),
            r.get("steps"),
            str(r.get("message", "")),
        )
    policies = [str(p) for p in doc.get("policies", [])] or sorted({p for p, _ in cells})
    invariants = [str(i) for i in doc.get("invariants", [])] or sorted({i for _, i in cells})
    return policies, invariants, cells


STATUS_FILL = {"broken": style.VERMILLION, "holds": "#CFE6F5", "not run": "#EEEEEE"}


@style.styled
def draw_matrix(doc: dict[str, Any] | None, href: Callable[[str], str | None]) -> Built:
    stem, title = "policy-matrix", "Policy x invariant matrix"
    if doc is None:
        return Skipped(stem, title, "no matrix.json in the run folder", "matrix")
    policies, invariants, cells = matrix_cells(doc)
    if not policies or not invariants:
        return Skipped(stem, title, "matrix.json names no policy or no invariant", "matrix")
    fig = style.figure(1.5 + 1.25 * len(invariants), 0.8 + 0.5 * len(policies))
    ax = fig.subplots()
    rows = []
    for i, policy in enumerate(policies):
        row: list[Any] = [policy]
        for j, invariant in enumerate(invariants):
            cell = cells.get((policy, invariant), Cell(policy, invariant, "not run"))
            link = href(cell.trace) if cell.trace else None
            rect = Rectangle(
                (j, i),
                1,
                1,
                facecolor=STATUS_FILL.get(cell.status, "#EEEEEE"),
                edgecolor="white",
                linewidth=2,
            )
            if link:
                rect.set_url("../" + link)  # the SVG sits in figures/, next to traces/
            ax.add_patch(rect)
            ax.text(
                j + 0.5,
                i + 0.5,
                _cell_text(cell),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cell.status == "broken" else "black",
            )
            text = _cell_text(cell)
            row.append((text, link) if link else text)
        rows.append(row)
    ax.set_xlim(0, len(invariants))
    ax.set_ylim(len(policies), 0)
    ax.set_xticks([j + 0.5 for j in range(len(invariants))])
    ax.set_xticklabels([_wrap(i) for i in invariants], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([i + 0.5 for i in range(len(policies))])
    ax.set_yticklabels(policies)
    ax.set_ylabel("bitmap-placement policy")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.legend(
        handles=[
            Patch(facecolor=STATUS_FILL[s], label=label)
            for s, label in (
                ("broken", "broken (✗, steps of the shortest trace)"),
                ("holds", "holds (✓)"),
                ("not run", "not run"),
            )
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=3,
    )
    caption = (
        "Which invariant each bitmap-placement policy breaks. A broken cell gives the "
        "length of the shortest trace that breaks it and how many traces of the corpus do; "
        "in the table below (and in the SVG) "
        "the cell links that trace, which `blocksim replay --policy P` reproduces."
    )
    table = Table(["policy", *invariants], rows)
    return Drawn(stem, title, caption, fig, [table], "matrix")


def _cell_text(cell: Cell) -> str:
    if cell.status == "broken":
        text = f"✗ {cell.steps} steps" if cell.steps is not None else "✗"
        n = cell.traces_breaking
        return text + (f"\n{n} trace{'s' if n != 1 else ''}" if n else "")
    return "✓" if cell.status == "holds" else "–"


def _wrap(name: str) -> str:
    """Invariant names break at their hyphens so columns stay narrow."""
    parts, line, out = name.split("-"), "", []
    for part in parts:
        if line and len(line) + len(part) > 12:
            out.append(line + "-")
            line = part
        else:
            line = f"{line}-{part}" if line else part
    return "\n".join([*out, line])
