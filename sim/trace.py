"""Trace format version 1: reading and writing QMP trace files (JSON Lines).

A trace is one header line, then steps, then optionally a ``final-expect``
line (see docs/trace-format.md).  Parsing never raises on a bad *step*: a
malformed line becomes a `BadLine` step carrying a `TraceError`, so a replay
reports it with its line number and keeps going.  Only a missing or broken
header makes the whole file unusable (`TraceError` from `parse_trace`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim import jsonio
from sim import trace_schema as ts
from sim.errors import TraceError
from sim.model.state import DriveSpec

TRACE_VERSION = 1
POLICIES = ("qemu-7.2", "qemu-2.5", "bb-attached", "node-only")
FORMATS = ("qcow2", "raw")
STEP_KINDS = ("execute", "wait", "advance", "workload", "fault", "until", "tie-break")
SIM_ONLY_KINDS = ("workload", "fault", "until", "tie-break")
_STEP_KIND_SET = frozenset(STEP_KINDS)
# the keys a step of each kind may have
_STEP_KEYS = {
    kind: frozenset((kind, "expect", "id", *(("arguments",) if kind == "execute" else ())))
    for kind in STEP_KINDS
}
MAX_DRIVE_SIZE = ts.MAX_DRIVE_SIZE  # 1 PiB: beyond anything a test needs; keeps arithmetic sane


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
    """A parsed trace file: the machine it starts from (QEMU's command line), the
    steps (QMP commands, sim-only steps) and the final state it expects."""

    header: Header
    steps: list[Step]
    final_expect: dict[str, Any] | None = None
    path: str = ""


def _check_name(value: object, what: str, line: int) -> str:
    if not isinstance(value, str) or not value:
        raise TraceError(f"header: {what} must be a non-empty string, got {ts.show(value)}", line)
    return value


def _parse_drive(raw: object, index: int, line: int) -> DriveSpec:
    if not isinstance(raw, dict):
        raise TraceError(f"header: drives[{index}] must be an object, got {ts.show(raw)}", line)
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
            f"header: drives[{index}].format must be one of {FORMATS}, got {ts.show(fmt)}", line
        )
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_DRIVE_SIZE:
        raise TraceError(
            f"header: drives[{index}].size must be a positive byte count up to 2^50, "
            f"got {ts.show(size)}",
            line,
        )
    if size % 512:
        raise TraceError(
            f"header: drives[{index}].size must be a multiple of 512, got {size}", line
        )
    discard = raw.get("discard", "ignore")
    if discard not in ("ignore", "unmap"):
        raise TraceError(f"header: drives[{index}].discard must be 'ignore' or 'unmap'", line)
    timing = ts.check_timing(raw.get("timing", {}), f"header: drives[{index}].timing", line)
    return DriveSpec(drive_id, node_name, file_node, fmt, size, discard, timing)


def parse_header(obj: object, line: int = 1) -> Header:
    """Validate a header object; raises TraceError naming the problem."""
    if not isinstance(obj, dict):
        raise TraceError('the first line must be the header object {"trace": 1, ...}', line)
    if obj.get("trace") != TRACE_VERSION:
        got = ts.show(obj.get("trace"))
        raise TraceError(f'header: "trace" must be {TRACE_VERSION}, got {got}', line)
    bad = jsonio.lone_surrogate(obj)
    if bad is not None:
        raise TraceError(f"header: {_surrogate_text(bad)}", line)
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
        raise TraceError(f"header: policy must be one of {POLICIES}, got {ts.show(policy)}", line)
    seed = obj.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= ts.MAX_SEED:
        raise TraceError(
            f"header: seed must be an integer from 0 to 2^64-1, got {ts.show(seed)}", line
        )
    name = obj.get("name", "")
    description = obj.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise TraceError("header: name and description must be strings", line)
    return Header(name, drives, policy, seed, description, dict(obj))


def parse_step(obj: object, line: int, *, source: str | None = None) -> Step:
    """Classify one step object; a bad one becomes a Step of kind "bad".  `source`:
    the JSON text `obj` was decoded from, when the caller has it."""
    try:
        return _parse_step(obj, line, source)
    except TraceError as exc:
        body = obj if isinstance(obj, dict) else {"line": obj}
        return Step(line, "bad", body, None, exc)


def _parse_step(obj: object, line: int, source: str | None) -> Step:
    if not isinstance(obj, dict):
        raise TraceError(f"a step must be a JSON object, got {type(obj).__name__}", line)
    found = obj.keys() & _STEP_KIND_SET
    if len(found) != 1:
        kinds = [k for k in STEP_KINDS if k in obj]
        what = "no step key" if not kinds else f"several step keys {kinds}"
        raise TraceError(f"{what}: a step has exactly one of {list(STEP_KINDS)}", line)
    (kind,) = found
    extra = obj.keys() - _STEP_KEYS[kind]
    if extra:
        raise TraceError(f"unknown key(s) {sorted(extra)} in a {kind!r} step", line)
    expect = obj.get("expect")
    if expect is not None and not isinstance(expect, dict):
        raise TraceError("expect must be an object", line)
    body = dict(obj)
    body.pop("expect", None)
    if kind != "execute":
        # QEMU answers a request with a lone surrogate itself (sim.qmp.dispatch);
        # the trace's own steps refuse it here
        if source is None:
            bad = jsonio.lone_surrogate(obj)
        else:
            bad = jsonio.source_surrogate(source, obj)
        if bad is not None:
            raise TraceError(_surrogate_text(bad), line)
    if kind == "wait":
        ts.check_wait(obj["wait"], line)
    elif kind == "advance":
        ts.check_advance(obj["advance"], line)
    elif kind in SIM_ONLY_KINDS and not isinstance(obj[kind], dict):
        raise TraceError(f"{kind} takes an object", line)
    return Step(line, kind, body, expect)


def _surrogate_text(char: str) -> str:
    return (
        f"\\u{ord(char):04x} is a lone UTF-16 surrogate, not a Unicode character "
        "(QEMU 7.2 refuses it too)"
    )


def _decode(raw: str | bytes) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise jsonio.JSONInputError(
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
        ) from None


def _event_orders_ok(final_expect: dict[str, Any]) -> bool:
    """`other-event-orders`, when there, is a list of lists of events and goes with
    `events` (the orders a multi-run recording saw besides the first)."""
    orders = final_expect.get("other-event-orders")
    if orders is None:
        return True
    return (
        "events" in final_expect
        and isinstance(orders, list)
        and all(isinstance(o, list) and all(isinstance(e, dict) for e in o) for o in orders)
    )


def parse_lines(lines: Sequence[str | bytes], path: str = "") -> Trace:
    """Parse a trace from its lines (text, or raw bytes decoded line by line, so a
    bad byte spoils only its line); raises TraceError only for an unusable header."""
    header: Header | None = None
    steps: list[Step] = []
    final_expect: dict[str, Any] | None = None
    for number, raw in enumerate(lines, start=1):
        if len(steps) >= MAX_STEPS:
            raise TraceError(
                f"more than {MAX_STEPS} steps: the simulator's limit for one trace "
                "(memory grows with every step's output); split it into several traces",
                number,
            )
        try:
            if len(raw) > MAX_LINE_BYTES:
                raise jsonio.JSONInputError(
                    f"the line has {len(raw)} characters, more than the {MAX_LINE_BYTES} "
                    "(16 MiB) the simulator reads"
                )
            stripped = _decode(raw).strip(" \t\r\n")
            if not stripped or stripped.startswith("//"):
                continue
            obj = jsonio.loads(stripped)
        except jsonio.JSONInputError as exc:
            if header is None:
                raise TraceError(f"header is not valid JSON: {exc}", number) from None
            msg = f"not valid JSON: {exc}"
            shown = jsonio.escape_text(_decode_lossy(raw)[:200])
            steps.append(Step(number, "bad", {"line": shown}, None, TraceError(msg, number)))
            continue
        if header is None:
            header = parse_header(obj, number)
            continue
        if isinstance(obj, dict) and "final-expect" in obj:
            if set(obj) != {"final-expect"} or not isinstance(obj["final-expect"], dict):
                err = TraceError('final-expect line must be {"final-expect": {...}} alone', number)
                steps.append(Step(number, "bad", obj, None, err))
            elif not _event_orders_ok(obj["final-expect"]):
                err = TraceError(
                    "final-expect's other-event-orders must be a list of event lists, "
                    'beside "events"',
                    number,
                )
                steps.append(Step(number, "bad", obj, None, err))
            else:
                final_expect = obj["final-expect"]
            continue
        if final_expect is not None:
            err = TraceError("no step may follow the final-expect line", number)
            steps.append(Step(number, "bad", obj if isinstance(obj, dict) else {}, None, err))
            continue
        steps.append(parse_step(obj, number, source=stripped))
    if header is None:
        raise TraceError("empty trace: no header line", 1)
    return Trace(header, steps, final_expect, path)


def _decode_lossy(raw: str | bytes) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


# the simulator's limits on one trace (memory grows with steps: about 1.6 KiB each)
MAX_TRACE_BYTES = 64 << 20
MAX_LINE_BYTES = 16 << 20
MAX_STEPS = 100_000


def read_lines(path: str | os.PathLike[str]) -> list[str | bytes]:
    """A trace file's lines as bytes, split on newline only (U+2028 and friends are
    characters inside JSON strings, not line breaks); raises TraceError (line 0)
    if the file cannot be read."""
    p = Path(path)
    try:
        if p.is_dir():
            raise TraceError(f"cannot read {p}: it is a folder")
        size = p.stat().st_size
        if size > MAX_TRACE_BYTES:
            raise TraceError(
                f"cannot read {p}: {size} bytes, more than the {MAX_TRACE_BYTES} (64 MiB) "
                "the simulator reads as one trace; split it into several traces"
            )
        data = p.read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read {p}: {exc.strerror or exc}") from None
    lines: list[str | bytes] = list(data.split(b"\n"))
    if lines and not lines[-1]:
        lines.pop()  # the newline ending the last line
    return lines


def load_trace(path: str | Path) -> Trace:
    """Read and parse a trace file; raises TraceError (line 0) if it cannot be read."""
    return parse_lines(read_lines(path), str(path))


def dumps(obj: object) -> str:
    """The one JSON encoding used for every output line (see sim.jsonio.dumps)."""
    return jsonio.dumps(obj)


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
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or an interrupt) sees the old file or
    the whole new one, never half of it; no temporary file is left behind."""
    import tempfile  # here: most commands write no file, and tempfile loads shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
