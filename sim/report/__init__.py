"""Reports: a run folder in, PNG and SVG figures and one index.html out.

    build_report(run_dir, out_dir) -> Report

A *run folder* is what replays and campaigns leave behind; every file in it is
optional and each figure says why it is missing when its input is:

    RUN/
      timeline.json          blocksim replay --record-timeline RUN TRACE (one trace)
      timelines/NAME.json    ... with several traces, one per trace (sim/timeline.py)
      coverage.json          blocksim fuzz --out RUN: coverage and the campaign series
      failures/*.jsonl       blocksim fuzz --out RUN: one shrunk failing trace each
      matrix.json            policy x invariant results (blocksim demo writes one)
      traces/*.jsonl         traces the other files point to (blocksim demo)

reports/README.md gives every key each file is read for.  Without a
coverage.json the coverage figures are derived from the timelines.  The report
(`out_dir/index.html`, `figures/*.png|svg`, `traces/` holding every trace a
page links) depends only on the run folder: fixed fonts and file metadata,
nothing read from the clock (the page carries a date only when SOURCE_DATE_EPOCH gives
one, as reproducible builds do).  matplotlib is imported here and nowhere else.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sim.report import style
from sim.report.campaign_figs import (
    draw_failures,
    draw_matrix,
    draw_throughput,
    failures_table,
)
from sim.report.coverage_figs import coverage_figures
from sim.report.figures import Built, Drawn, Skipped, Table
from sim.report.html import write_failure_page, write_index
from sim.report.runfolder import RunFolder, load_run
from sim.report.timeline_figs import timeline_figures


@dataclass
class Report:
    """What `build_report` wrote."""

    out_dir: Path
    index: Path
    figures: list[Path] = field(default_factory=list)  # PNG then SVG, figure by figure
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pngs(self) -> list[Path]:
        return [p for p in self.figures if p.suffix == ".png"]


def build_report(
    run_dir: str | Path, out_dir: str | Path, title: str = "", command: str = ""
) -> Report:
    """Draw every figure a run folder allows into out_dir and tie them in index.html.
    `command` is the command line that made the report (shown on the page).

    Raises FileNotFoundError when run_dir is not a folder, or holds nothing a report
    draws (a typo, or the parent of the run folder)."""
    run = load_run(run_dir)
    if not (run.timelines or run.coverage or run.campaign or run.failures or run.matrix):
        if not run.notes:  # unreadable inputs are shown on the page, with why
            raise FileNotFoundError(
                f"{run_dir} holds no run folder input (timeline.json, timelines/, "
                "coverage.json, campaign.json, failures/, matrix.json): give a folder written "
                "by `blocksim replay --record-timeline DIR`, `blocksim fuzz --out DIR` or "
                "`blocksim demo` (its run/ folder)"
            )
    out = Path(out_dir)
    for sub in ("figures", "traces", "failures"):  # ours: emptied so nothing stale survives
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    links = _TraceLinks(run, out)
    built: list[Built] = []
    for stem, doc in run.timelines:
        built += timeline_figures(stem, doc)
    if not run.timelines:
        why = "no timeline.json or timelines/ in the run folder"
        built.append(Skipped("timeline", "Timeline", why, "timeline"))
        built.append(Skipped("latency", "Guest write latency", why, "latency"))
    built += coverage_figures(run.coverage, run.coverage_source)
    series = (run.coverage or {}).get("series", []) if run.coverage_source == "campaign" else []
    built += [draw_throughput(series), draw_failures(series, run.failures)]
    built.append(draw_matrix(run.matrix, links.href))
    built = _merge_skipped(built)
    report = Report(out, out / "index.html", notes=run.notes)
    for b in built:
        if isinstance(b, Drawn):
            report.figures += style.save(b.fig, out / "figures", b.stem)
        else:
            report.skipped.append(b)
    report.index = write_index(
        out,
        title or f"blocksim report: {run.path.resolve().name}",
        _summary(run, command),
        built,
        _extra_tables(run, links),
        run.notes,
    )
    return report


def _merge_skipped(built: list[Built]) -> list[Built]:
    """One note for figures skipped for one reason (e.g. latency of replays without I/O)."""
    out: list[Built] = []
    by_reason: dict[tuple[str, str], Skipped] = {}
    for b in built:
        if isinstance(b, Skipped):
            key = (b.section, b.reason)
            if key in by_reason:
                by_reason[key].title += ", " + b.title.split(": ", 1)[-1]
                continue
            b = by_reason[key] = Skipped(b.stem, b.title, b.reason, b.section)
        out.append(b)
    return out


class _TraceLinks:
    """Copies each trace a page links into out/traces/ once; hands back its href."""

    def __init__(self, run: RunFolder, out: Path) -> None:
        self.run, self.out = run, out
        self.copied: dict[Path, str] = {}

    def href(self, trace: str) -> str | None:
        path = next((p for p in (self.run.path / trace, Path(trace)) if p.is_file()), None)
        if path is None:
            return None
        key = path.resolve()
        if key not in self.copied:
            name = path.name
            taken = set(self.copied.values())
            n = 1
            while f"traces/{name}" in taken:
                n += 1
                name = f"{path.stem}-{n}{path.suffix}"
            (self.out / "traces").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.out / "traces" / name)
            self.copied[key] = f"traces/{name}"
        return self.copied[key]


def blocksim_version() -> str:
    """The installed blocksim's version (the package metadata), or why there is none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("blocksim")
    except PackageNotFoundError:
        return "unknown (not installed)"


def command_line(words: list[str]) -> str:
    """A command line as the page shows it: shell-quoted, so it can be pasted back, and
    each absolute path under the working folder made relative to it (no home or
    checkout path on the page)."""
    here = Path.cwd()
    shown = []
    for word in words:
        path = Path(word)
        if path.is_absolute() and path.is_relative_to(here):
            word = str(path.relative_to(here)) or "."
        shown.append(word)
    return shlex.join(shown)


def report_date() -> str:
    """The page's date, stamped as reproducible builds stamp one: SOURCE_DATE_EPOCH's
    instant in UTC when it is set, else none, so the same inputs give the same bytes."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if not raw:
        return "not recorded (set SOURCE_DATE_EPOCH to stamp one)"
    try:
        if not re.fullmatch(r"[0-9]+", raw):
            raise ValueError
        when = datetime.fromtimestamp(int(raw), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return f"not recorded (SOURCE_DATE_EPOCH={raw!r} is not a count of seconds since 1970)"
    return f"{when:%Y-%m-%d %H:%M:%S} UTC (SOURCE_DATE_EPOCH={raw})"


def _summary(run: RunFolder, command: str) -> list[tuple[str, str]]:
    cov = {
        "campaign": "coverage.json (fuzz campaign)",
        "timelines": "derived from the timelines",
    }.get(run.coverage_source, "none")
    seeds = [f"{doc.get('name') or stem}: {doc.get('seed', '?')}" for stem, doc in run.timelines]
    if run.campaign:
        cfg = run.campaign.get("config", {})
        seeds.append(f"fuzz campaign: {cfg.get('seed', '?')}")
    return [
        ("made by", f"blocksim {blocksim_version()}" + (f": {command}" if command else "")),
        ("date", report_date()),
        ("seeds", "; ".join(seeds) or "none"),
        ("run folder", run.path.resolve().name),
        ("timelines", ", ".join(doc.get("name") or stem for stem, doc in run.timelines) or "none"),
        ("coverage", cov),
        ("failures", str(len(run.failures))),
        ("policy matrix", "matrix.json" if run.matrix is not None else "none"),
    ]


def _extra_tables(run: RunFolder, links: _TraceLinks) -> dict[str, list[tuple[str, Table]]]:
    extra: dict[str, list[tuple[str, Table]]] = {}
    cov = run.coverage or {}
    shapes = cov.get("graph-shapes", {})
    if shapes:
        rows = [
            [dim, value, str(n)]
            for dim, values in sorted(shapes.items())
            for value, n in sorted(values.items(), key=lambda kv: _natural(kv[0]))
        ]
        extra["coverage"] = [
            ("Graph shapes reached (after a step)", Table(["dimension", "value", "steps"], rows))
        ]
    if cov.get("commands"):
        extra.setdefault("coverage", []).append(commands_exercised(cov["commands"]))
    invariants = cov.get("invariants", {})
    if invariants:
        kinds = ("evaluated", "violated", "muted")
        rows = [
            [name, *(str(counts.get(k, 0)) for k in kinds)]
            for name, counts in sorted(invariants.items())
        ]
        extra.setdefault("coverage", []).append(
            ("Invariants evaluated", Table(["invariant", *kinds], rows))
        )
    if run.campaign:
        cfg = run.campaign.get("config", {})
        asked = (
            ("policy", "policy"), ("policies", "policies"), ("seed", "seed"),
            ("examples", "examples asked"), ("steps", "steps per example (at most)"),
            ("shards", "shards per policy"),
        )  # fmt: skip
        done = (
            ("examples", "examples generated"), ("replays", "runs replaying or shrinking"),
            ("rejected", "examples rejected as invalid"), ("steps", "steps run"),
            ("wall_s", "wall time (s)"), ("steps_per_s", "steps/s"),
            ("coverage_points", "coverage points"), ("stopped", "stopped"),
            ("ran_on", "ran on"),
        )  # fmt: skip
        rows = [[label, _text(cfg[k])] for k, label in asked if k in cfg]
        budget = cfg.get("time_budget_s")
        if isinstance(budget, int | float) and budget > 0:
            rows.append(["time budget (s)", f"{budget:g}: a campaign stops at the first of both"])
        rows += [[label, _text(run.campaign[k])] for k, label in done if k in run.campaign]
        extra["campaign"] = [("Campaign (campaign.json)", Table(["", ""], rows))]
    if run.failures:
        pages = failure_pages(run, links)
        extra.setdefault("campaign", []).append(
            ("Failures", failures_table(run.failures, links.href, pages))
        )
    return extra


def commands_exercised(commands: dict[str, Any]) -> tuple[str, Table]:
    """The QMP commands the simulator answers (its dispatch table) against those the
    coverage saw: the denominator, and every supported command never exercised."""
    import sim.replay  # noqa: F401 - loading the machine registers every command handler
    from sim.qmp.dispatch import COMMANDS

    seen = set(commands)
    if any(c.startswith("qemu-io") for c in seen):
        seen.add("human-monitor-command")  # qemu-io is counted by its verb
    supported = sorted(COMMANDS)
    hit = [c for c in supported if c in seen]
    never = [c for c in supported if c not in seen]
    rows = [
        ["supported by the simulator (sim/qmp dispatch table)", str(len(supported))],
        ["exercised at least once", f"{len(hit)} of {len(supported)}"],
        ["never exercised", ", ".join(never) or "none"],
    ]
    heading = f"QMP commands exercised: {len(hit)} of {len(supported)} supported"
    return heading, Table(["", ""], rows)


def failure_pages(run: RunFolder, links: _TraceLinks) -> dict[str, str]:
    """A page per failure (failures/NAME.html); failure path -> the page's href."""
    import json

    pages: dict[str, str] = {}
    for failure in run.failures:
        path = next((p for p in (run.path / failure.path, failure.path) if p.is_file()), None)
        if path is None:
            continue
        try:
            lines = [
                json.loads(x)
                for x in path.read_text(encoding="utf-8").splitlines()
                if x.strip() and not x.lstrip().startswith("//")
            ]
        except (OSError, ValueError):
            continue
        href = links.href(str(failure.path))
        both = _side_by_side(run, path)
        pages[str(failure.path)] = write_failure_page(
            links.out, path.stem, failure, lines, href, both
        )
    return pages


def _side_by_side(run: RunFolder, trace: Path) -> dict[str, Any] | None:
    """failures/NAME.qemu.json (written by `blocksim triage`): both runs step by step."""
    import json

    path = trace.with_name(trace.stem + ".qemu.json")  # sim.fuzz.triage.SIDE_BY_SIDE_SUFFIX
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        run.notes.append(f"failures/{path.name}: unreadable ({exc}), not shown")
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        run.notes.append(f"failures/{path.name}: not a side-by-side record, not shown")
        return None
    return doc


def _natural(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order ("2" before "10", "4-7" before "8+"), then words."""
    head = value.split("-")[0].rstrip("+")
    try:
        return (0, float(head), value)
    except ValueError:
        return (1, 0.0, value)


def _text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


__all__ = ["Report", "build_report", "command_line", "load_run", "report_date"]
