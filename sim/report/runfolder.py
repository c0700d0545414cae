"""Reading a run folder: every input of a report, each one optional.

A run folder (layout in reports/README.md and sim/report/__init__.py) holds
what replays and campaigns wrote.  `load_run` reads what is there and keeps
one note per input it could not use, so the report degrades figure by figure
instead of failing.  When no campaign wrote a coverage.json, the coverage
figures are derived from the recorded timelines (`coverage_from_timelines`):
what the replayed traces covered, in coverage.json's shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NO_JOB = "no-job"  # as sim/fuzz/coverage.py says it
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+")
_LAST_NAME = re.compile(r": [^\s']+$")  # "Bitmap already exists: b0"


@dataclass
class Failure:
    """One exported failing trace of a campaign (failures/*.jsonl)."""

    path: Path
    invariant: str  # the violated invariant, or "internal-error"
    steps: int
    found_s: float | None  # seconds into the campaign, when recorded
    message: str
    reproduced: bool | None = None
    triage: str = "new"  # the campaign's triage class (failures/index.json "class")
    triage_reason: str = ""


@dataclass
class RunFolder:
    """Everything a report can draw from one run folder."""

    path: Path
    timelines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    coverage: dict[str, Any] | None = None
    coverage_source: str = ""  # "campaign" | "timelines" | ""
    campaign: dict[str, Any] | None = None
    failures: list[Failure] = field(default_factory=list)
    matrix: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def load_run(path: str | Path) -> RunFolder:
    """Read the run folder at `path`; raises FileNotFoundError if it is not a folder."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist or is not a folder")
    run = RunFolder(root)
    files = [root / "timeline.json"] if (root / "timeline.json").is_file() else []
    files += sorted((root / "timelines").glob("*.json"))
    for f in files:
        doc = _read_json(run, f)
        if doc is not None and doc.get("timeline") == 1:
            run.timelines.append((_stem(f, root), doc))
        elif doc is not None:
            run.notes.append(f"{f.relative_to(root)}: not a version 1 timeline, skipped")
    run.timelines.sort(key=_richest_first)
    run.coverage = _read_json(run, root / "coverage.json")
    run.coverage_source = "campaign" if run.coverage is not None else ""
    if run.coverage is None and run.timelines:
        run.coverage = coverage_from_timelines([doc for _, doc in run.timelines])
        run.coverage_source = "timelines"
    run.matrix = _read_json(run, root / "matrix.json")
    run.campaign = _read_json(run, root / "campaign.json")
    run.failures = _read_failures(run, root / "failures")
    return run


def _richest_first(item: tuple[str, dict[str, Any]]) -> tuple[bool, bool, str]:
    """Timelines with guest I/O first, then those with jobs, then by name."""
    stem, doc = item
    return (not doc.get("io"), not doc.get("jobs"), stem)


def _stem(path: Path, root: Path) -> str:
    return "replay" if path.parent == root else re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem)


def _read_json(run: RunFolder, path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        run.notes.append(f"{path.relative_to(run.path)}: unreadable ({exc}), skipped")
        return None
    if not isinstance(doc, dict):
        run.notes.append(f"{path.relative_to(run.path)}: not a JSON object, skipped")
        return None
    return doc


def _read_failures(run: RunFolder, folder: Path) -> list[Failure]:
    """failures/index.json's records (what `blocksim fuzz` writes), else each trace's header."""
    index = folder / "index.json"
    if index.is_file():
        try:
            records = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            run.notes.append(f"failures/index.json: unreadable ({exc}), reading the traces")
        else:
            if isinstance(records, list):
                return [_record_failure(folder, r) for r in records if isinstance(r, dict)]
    out = []
    for path in sorted(folder.glob("*.jsonl")):
        failure = _header_failure(run, path)
        if failure is not None:
            out.append(failure)
    return out


def _record_failure(folder: Path, r: dict[str, Any]) -> Failure:
    path = folder / Path(str(r.get("path", ""))).name
    found = r.get("wall_s", r.get("found_s"))
    return Failure(
        path,
        str(r.get("kind", "?")),
        int(r.get("steps", 0)),
        float(found) if isinstance(found, int | float) else None,
        str(r.get("message", "")),
        r.get("reproduced"),
        str(r.get("class", "new")),
        str(r.get("class_reason", "")),
    )


def _header_failure(run: RunFolder, path: Path) -> Failure | None:
    """A failure trace without an index: its header's "invariants" names what broke."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        header = json.loads(lines[0]) if lines else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        run.notes.append(f"failures/{path.name}: unreadable ({exc}), skipped")
        return None
    if not isinstance(header, dict):
        run.notes.append(f"failures/{path.name}: no trace header, skipped")
        return None
    names = header.get("invariants")
    kind = names[0] if isinstance(names, list) and names else "internal-error"
    steps = sum(1 for ln in lines[1:] if not ln.lstrip().startswith('{"final-expect"'))
    return Failure(path, str(kind), steps, None, str(header.get("description", "")))


def outcome_shape(outcome: str) -> str:
    """An error desc with names and numbers blanked ("Bitmap '*' not found"), so
    one refusal is one column whatever it named; "return" stays."""
    return _NUMBER.sub("N", _LAST_NAME.sub(": *", _QUOTED.sub("'*'", outcome)))[:120]


def coverage_from_timelines(timelines: list[dict[str, Any]]) -> dict[str, Any]:
    """What replayed traces covered, in coverage.json's shape (sim/fuzz/coverage.py):
    commands x outcome, commands x job status met, transitions by job type, and a
    series with one point per trace."""
    commands: dict[str, dict[str, int]] = {}
    job_states: dict[str, dict[str, int]] = {}
    transitions: dict[str, dict[str, int]] = {}
    seen: set[tuple[str, ...]] = set()
    series = []
    for i, doc in enumerate(timelines, start=1):
        for _t, _step, command, outcome, jobs in doc.get("commands", []):
            shape = outcome_shape(str(outcome))
            _bump(commands, command, shape)
            seen.add(("command", command, shape))
            for state in sorted(set(jobs.values())) or [NO_JOB]:
                _bump(job_states, command, state)
                seen.add(("job-state", command, state))
        for job in doc.get("jobs", []):
            statuses = ["undefined"] + [state[1] for state in job.get("states", [])]
            for a, b in zip(statuses, statuses[1:], strict=False):
                _bump(transitions, job.get("type", "?"), f"{a}->{b}")
                seen.add(("transition", job.get("type", "?"), f"{a}->{b}"))
        series.append({"traces": i, "points": len(seen)})
    return {
        "commands": commands,
        "job-states": job_states,
        "transitions": transitions,
        "series": series,
    }


def _bump(table: dict[str, dict[str, int]], row: str, col: str) -> None:
    cells = table.setdefault(row, {})
    cells[col] = cells.get(col, 0) + 1


def transitions_of(coverage: dict[str, Any]) -> dict[tuple[str, str], int]:
    """coverage.json's `transitions` ({job type: {"a->b": n}}), summed over job types."""
    out: dict[tuple[str, str], int] = {}
    for per_type in coverage.get("transitions", {}).values():
        for key, n in per_type.items():
            a, _, b = str(key).partition("->")
            out[(a, b)] = out.get((a, b), 0) + int(n)
    return out
