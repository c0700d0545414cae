"""Trace format version 1: reading and writing QMP trace files (JSON Lines).

A trace is one header line, then steps, then optionally a ``final-expect``
line (see docs/trace-format.md).  Parsing never raises on a bad *step*: a
malformed line becomes a `BadLine` step carrying a `TraceError`, so a replay
reports it with its line number and keeps going.  Only a missing or broken
header makes the whole file unusable (`TraceError` from `parse_trace`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import TraceError
from sim.model.state import DriveSpec

TRACE_VERSION = 1
POLICIES = ("qemu-7.2", "qemu-2.5", "bb-attached", "node-only")
FORMATS = ("qcow2", "raw")
STEP_KINDS = ("execute", "wait", "advance", "workload", "fault")
SIM_ONLY_KINDS = ("workload", "fault")
MAX_DRIVE_SIZE = 1 << 50  # 1 PiB: beyond anything a test needs; keeps arithmetic sane


@dataclass(frozen=True, slots=True)
class Header:
    """Line 1 of a trace: what the machine starts with."""

    name: str
    drives: tuple[DriveSpec, ...]
    policy: str
    seed: int
    description: str
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Step:
    """One step line.  `kind` is one of STEP_KINDS, or "bad" for an unusable line."""

    line: int
    kind: str
    body: dict[str, Any]
    expect: dict[str, Any] | None = None
    error: TraceError | None = None

    @property
    def command(self) -> dict[str, Any]:
        """The step as it would be echoed in output (no `expect`)."""
        return self.body


@dataclass(slots=True)
class Trace:
    """A parsed trace file."""

    header: Header
    steps: list[Step]
    final_expect: dict[str, Any] | None = None
    path: str = ""


def _check_name(value: object, what: str, line: int) -> str:
    if not isinstance(value, str) or not value:
        raise TraceError(f"header: {what} must be a non-empty string, got {value!r}", line)
    return value


def _parse_drive(raw: object, index: int, line: int) -> DriveSpec:
    if not isinstance(raw, dict):
        raise TraceError(f"header: drives[{index}] must be an object, got {raw!r}", line)
    known = {"id", "node-name", "file-node-name", "format", "size", "discard", "timing"}
    extra = sorted(set(raw) - known)
    if extra:
        raise TraceError(f"header: drives[{index}] has unknown key(s) {extra}", line)
    drive_id = _check_name(raw.get("id"), f"drives[{index}].id", line)
    node_name = _check_name(raw.get("node-name"), f"drives[{index}].node-name", line)
    file_node = raw.get("file-node-name")
    if file_node is not None:
        file_node = _check_name(file_node, f"drives[{index}].file-node-name", line)
    fmt = raw.get("format", "qcow2")
    if fmt not in FORMATS:
        raise TraceError(
            f"header: drives[{index}].format must be one of {FORMATS}, got {fmt!r}", line
        )
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_DRIVE_SIZE:
        raise TraceError(
            f"header: drives[{index}].size must be a positive byte count up to 2^50, got {size!r}",
            line,
        )
    if size % 512:
        raise TraceError(
            f"header: drives[{index}].size must be a multiple of 512, got {size}", line
        )
    discard = raw.get("discard", "ignore")
    if discard not in ("ignore", "unmap"):
        raise TraceError(f"header: drives[{index}].discard must be 'ignore' or 'unmap'", line)
    timing = raw.get("timing", {})
    if not isinstance(timing, dict):
        raise TraceError(f"header: drives[{index}].timing must be an object", line)
    return DriveSpec(drive_id, node_name, file_node, fmt, size, discard, dict(timing))


def parse_header(obj: object, line: int = 1) -> Header:
    """Validate a header object; raises TraceError naming the problem."""
    if not isinstance(obj, dict):
        raise TraceError('the first line must be the header object {"trace": 1, ...}', line)
    if obj.get("trace") != TRACE_VERSION:
        raise TraceError(f'header: "trace" must be {TRACE_VERSION}, got {obj.get("trace")!r}', line)
    drives_raw = obj.get("drives", [])
    if not isinstance(drives_raw, list):
        raise TraceError("header: drives must be a list", line)
    drives = tuple(_parse_drive(d, i, line) for i, d in enumerate(drives_raw))
    seen: set[str] = set()
    for d in drives:
        for name in (d.id, d.node_name, d.file_node_name):
            if name is None:
                continue
            if name in seen:
                raise TraceError(f"header: name {name!r} is used twice in drives", line)
            seen.add(name)
    policy = obj.get("policy", "qemu-7.2")
    if policy not in POLICIES:
        raise TraceError(f"header: policy must be one of {POLICIES}, got {policy!r}", line)
    seed = obj.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TraceError(f"header: seed must be an integer, got {seed!r}", line)
    name = obj.get("name", "")
    description = obj.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise TraceError("header: name and description must be strings", line)
    return Header(name, drives, policy, seed, description, dict(obj))


def parse_step(obj: object, line: int) -> Step:
    """Classify one step object; a bad one becomes a Step of kind "bad"."""
    try:
        return _parse_step(obj, line)
    except TraceError as exc:
        body = obj if isinstance(obj, dict) else {"line": obj}
        return Step(line, "bad", body, None, exc)


def _parse_step(obj: object, line: int) -> Step:
    if not isinstance(obj, dict):
        raise TraceError(f"a step must be a JSON object, got {type(obj).__name__}", line)
    kinds = [k for k in STEP_KINDS if k in obj]
    if len(kinds) != 1:
        what = "no step key" if not kinds else f"several step keys {kinds}"
        raise TraceError(f"{what}: a step has exactly one of {list(STEP_KINDS)}", line)
    kind = kinds[0]
    allowed = {kind, "expect", "id"}
    if kind == "execute":
        allowed.add("arguments")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise TraceError(f"unknown key(s) {extra} in a {kind!r} step", line)
    expect = obj.get("expect")
    if expect is not None and not isinstance(expect, dict):
        raise TraceError("expect must be an object", line)
    body = {k: v for k, v in obj.items() if k != "expect"}
    if kind == "wait":
        w = obj["wait"]
        if not isinstance(w, dict) or not isinstance(w.get("event"), str):
            raise TraceError('wait must be {"event": NAME, "data": {...}}', line)
        if not isinstance(w.get("data", {}), dict) or set(w) - {"event", "data", "timeout"}:
            raise TraceError('wait takes only "event", "data" (an object) and "timeout"', line)
    elif kind == "advance":
        a = obj["advance"]
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 1e9:
            raise TraceError(f"advance takes seconds, a number from 0 to 1e9, got {a!r}", line)
    elif kind in SIM_ONLY_KINDS and not isinstance(obj[kind], dict):
        raise TraceError(f"{kind} takes an object", line)
    return Step(line, kind, body, expect)


def parse_lines(lines: list[str], path: str = "") -> Trace:
    """Parse a trace from its lines; raises TraceError only for an unusable header."""
    header: Header | None = None
    steps: list[Step] = []
    final_expect: dict[str, Any] | None = None
    for number, text in enumerate(lines, start=1):
        stripped = text.strip()
        if not stripped or stripped.startswith("//"):
            continue
        try:
            obj = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError) as exc:
            if header is None:
                raise TraceError(f"header is not valid JSON: {exc}", number) from None
            msg = f"not valid JSON: {exc}"
            steps.append(
                Step(number, "bad", {"line": stripped[:200]}, None, TraceError(msg, number))
            )
            continue
        if header is None:
            header = parse_header(obj, number)
            continue
        if isinstance(obj, dict) and "final-expect" in obj:
            if set(obj) != {"final-expect"} or not isinstance(obj["final-expect"], dict):
                err = TraceError('final-expect line must be {"final-expect": {...}} alone', number)
                steps.append(Step(number, "bad", obj, None, err))
            else:
                final_expect = obj["final-expect"]
            continue
        if final_expect is not None:
            err = TraceError("no step may follow the final-expect line", number)
            steps.append(Step(number, "bad", obj if isinstance(obj, dict) else {}, None, err))
            continue
        steps.append(parse_step(obj, number))
    if header is None:
        raise TraceError("empty trace: no header line", 1)
    return Trace(header, steps, final_expect, path)


def load_trace(path: str | Path) -> Trace:
    """Read and parse a trace file; raises TraceError (line 0) if it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read {p}: {exc}") from None
    return parse_lines(text.splitlines(), str(p))


def dumps(obj: object) -> str:
    """The one JSON encoding used for every output line (stable, ASCII-safe)."""
    return json.dumps(obj, separators=(", ", ": "), ensure_ascii=False)


def write_trace(
    path: str | Path,
    header: dict[str, Any],
    steps: list[dict[str, Any]],
    final_expect: dict[str, Any] | None = None,
) -> None:
    """Write a trace file: header, steps (dicts as on the wire), optional final-expect."""
    lines = [dumps(header)] + [dumps(s) for s in steps]
    if final_expect is not None:
        lines.append(dumps({"final-expect": final_expect}))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
