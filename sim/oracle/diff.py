"""Diff one trace between real QEMU 7.2 and the simulator.

Theory of operation: `diff_trace` runs the same trace twice, on a real QEMU
(`QemuRunner`) and on the simulator (`sim.replay.replay`), and lists every way
the simulator departs from QEMU, earliest first.  QEMU is the reference: in
every message "expected" is what QEMU did and "got" what the simulator did.
Four layers are compared, in this order:

1. **responses**, step by step: each `execute` reply and each event that
   satisfied a `wait` (a wait that QEMU timed out on must be one the simulator
   reports as never satisfied);
2. **events**, as the whole ordered list of the run (name and data).  Which
   step an event belongs to is racy on QEMU (a job's events may arrive after
   the next command's reply), so events are not compared per step; a
   difference is placed at the step during which the simulator emitted the
   first differing event;
3. **the final state**: graph (nodes, their `backing`/`file` children), every
   bitmap's flags, count and sha256, the BlockBackends and ``query-jobs``;
4. **image contents**: for every image either side holds (the header drives
   and everything the trace created: overlays, backup and mirror targets),
   the backing file its header names and its guest-visible data sector by
   sector: QEMU's bytes (``qemu-img convert`` after QEMU stopped) against the
   simulator's write stamps mapped to pattern bytes, read through the backing
   images that the simulator's `Image.backing_file` names (`sim_guest_view`).

Each `Difference` carries a `signature` (layer, command, field, kind of
change) that the differential fuzzer uses to tell mismatch classes apart.
A trace with sim-only steps (`workload`, `fault`), broken lines or a known
QEMU crasher is refused with `TraceError` before anything runs.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sim.compare import differences, normalize
from sim.errors import TraceError
from sim.jsonio import json_filename_options
from sim.model.content import SECTOR, UNALLOCATED, StampTable, read_through
from sim.model.graph import Image
from sim.oracle.guards import refusal
from sim.oracle.normalize import names_equal, normalize_final, scrub
from sim.oracle.qemu_runner import DEFAULT_WAIT_TIMEOUT_S, QemuRunner, RunResult, StepResult
from sim.replay import ReplayResult, StepOutcome, replay
from sim.trace import Step, Trace

MAX_PER_SECTION = 6  # differences listed per layer (the first one is what matters)
MAX_IMAGE_BYTES = 1 << 30  # larger images are not read back (qemu-img convert to raw)
EVENTS_NOTE = (
    "events are compared as the whole ordered list of the run, not per step: on real "
    "QEMU a job's events may arrive after the reply to a later command"
)
_SECTIONS = ("response", "events", "final", "image")


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the simulator departs from real QEMU.

    `section` is the layer (response, events, final, image); `step` the 1-based
    step it shows at (None: after the last step); `command` the step's command
    (or the image / final-state part); `field` where in the value (a path, list
    indices kept); `detail` the readable text; `kind` a short, run-independent
    description of the change, part of the `signature`.
    """

    section: str
    step: int | None
    line: int | None
    command: str
    field: str
    detail: str
    kind: str = ""

    @property
    def signature(self) -> str:
        """Run-independent class of this difference: layer, command, field, kind.

        List indices and digits in file names are dropped, so the same
        mismatch in two traces gets the same signature.
        """
        path = re.sub(r"\[\d+\]", "[]", self.field)
        command = re.sub(r"\d+", "N", self.command) if self.section == "image" else self.command
        return f"{self.section}:{command}:{path}:{self.kind}"

    @property
    def where(self) -> str:
        """``step 7 (line 9) block-dirty-bitmap-add``, ``final state`` or ``image ov0.qcow2``."""
        if self.step is not None:
            return f"step {self.step} (line {self.line}) {self.command}"
        if self.section == "image":
            return f"image {self.command}"
        return "final state" if self.section == "final" else "after the last step"

    def sort_key(self) -> tuple[float, int]:
        step = float("inf") if self.step is None else float(self.step)
        return step, _SECTIONS.index(self.section)


@dataclass
class DiffReport:
    """The outcome of `diff_trace`: every difference, earliest first, and the raw runs."""

    trace: Trace
    policy: str
    differences: list[Difference]
    notes: list[str]
    qemu: RunResult
    sim: ReplayResult
    qemu_s: float
    sim_s: float
    images: list[str] = field(default_factory=list)  # image names compared

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def first(self) -> Difference | None:
        """The earliest difference (by step; final state and images come last)."""
        return self.differences[0] if self.differences else None

    def render(self, limit: int = 30) -> str:
        """A readable, multi-line diff; the first line is the verdict."""
        name = self.trace.header.name or os.path.basename(self.trace.path)
        head = f"{name}: real QEMU 7.2 vs simulator (policy {self.policy})"
        timing = f"QEMU {self.qemu_s:.2f} s, simulator {self.sim_s:.3f} s"
        lines = []
        if self.identical:
            events = len(self.qemu.final.get("events", []))
            images = (
                f"{len(self.images)} image(s) {', '.join(self.images)}"
                if self.images
                else "images not compared"
            )
            lines.append(
                f"IDENTICAL {head}: {len(self.trace.steps)} steps, {events} events, final "
                f"state, {images} ({timing})"
            )
        else:
            first = self.differences[0]
            lines.append(
                f"DIFFERENT {head}: {len(self.differences)} difference(s); first diverging: "
                f"{first.where} ({timing})"
            )
            lines.append("  (expected = real QEMU, got = simulator)")
            for diff in self.differences[:limit]:
                lines.append(f"  {diff.where}: " + diff.detail.replace("\n", "\n    "))
            if len(self.differences) > limit:
                lines.append(f"  ... and {len(self.differences) - limit} more")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def check_runnable(trace: Trace) -> None:
    """Raise `TraceError` if a step cannot run on real QEMU (nothing is started).

    Sim-only steps (`workload`, `fault`), unusable lines, ``quit`` and inputs
    that crash QEMU 7.2 make a trace impossible to diff; the message lists
    every such line.
    """
    reasons = [r for s in trace.steps if (r := refusal(s)) is not None]
    if reasons:
        raise TraceError(
            f"this trace cannot run on real QEMU ({len(reasons)} step(s)): " + "; ".join(reasons)
        )


def diff_trace(
    trace: Trace,
    *,
    policy: str | None = None,
    qemu: str | os.PathLike[str] | None = None,
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    images: bool = True,
) -> DiffReport:
    """Run `trace` on real QEMU and on the simulator; returns the `DiffReport`.

    `policy` is the simulator's (default: the header's).  `images=False` skips
    the image-content layer.  Raises `TraceError` for a trace that cannot run
    on QEMU (see `check_runnable`) and `OracleError` (e.g. `QemuNotFound`,
    `QemuDied`) when QEMU is missing or fails.
    """
    check_runnable(trace)
    with QemuRunner(trace, qemu=qemu, wait_timeout_s=wait_timeout_s) as runner:
        started = time.perf_counter()
        sim = replay(trace, policy=policy)
        sim_s = time.perf_counter() - started
        started = time.perf_counter()
        real = runner.run()
        qemu_s = time.perf_counter() - started
        image_diffs, names, notes = compare_images(runner, sim) if images else ([], [], [])
    found = compare_steps(trace.steps, real.steps, sim.steps)
    found += compare_events(real, sim)
    found += compare_final(real.final, sim.final)
    found += image_diffs
    found.sort(key=Difference.sort_key)
    notes = [EVENTS_NOTE, *notes]
    if sim.policy != "qemu-7.2":
        notes.append(f"the simulator ran policy {sim.policy}; real QEMU is qemu-7.2")
    return DiffReport(trace, sim.policy, found, notes, real, sim, qemu_s, sim_s, names)


# --- QEMU's own answer at a difference (to compare two runs of one trace) ------------------


def qemu_answer(report: DiffReport, place: Difference) -> Any:
    """What QEMU answered in `report`'s run where `place` (a difference found in this or
    another run of the same trace) shows, as a JSON value: two runs of a trace whose
    answers here differ show that QEMU's answer at that place depends on timing.

    A response: the step's reply (or why QEMU gave none).  Events: QEMU's ordered
    event list up to the differing event.  The final state: the value at the
    difference's field (``{"absent": FIELD}`` when this run has none there).  An
    image: this run's differences in that image (the simulator's side of an image
    does not change from run to run, so they change only with QEMU's bytes).
    """
    if place.section == "response" and place.step is not None:
        result = report.qemu.steps[place.step - 1]
        if "error" in result:
            return {"no-answer": result["error"]}
        return normalize(_no_id(result["response"] or {}))
    if place.section == "events":
        events = [normalize(e) for e in report.qemu.final.get("events", [])]
        found = re.match(r"events\[(\d+)\]", place.field)
        return events[: int(found.group(1)) + 1] if found else events
    if place.section == "final":
        return _at_field(normalize_final(report.qemu.final), place.field)
    return [
        d.detail
        for d in report.differences
        if d.section == place.section and d.command == place.command
    ]


def _at_field(value: Any, field: str) -> Any:
    """The part of `value` at a difference's field (``.nodes[2].dirty-bitmaps[0].count``)."""
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", field):
        if key and isinstance(value, Mapping) and key in value:
            value = value[key]
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return {"absent": field}
    return value


# --- 1. responses ----------------------------------------------------------------------


def step_label(step: Step) -> str:
    """The command of a step as diffs name it: ``block-dirty-bitmap-add``, ``wait BLOCK_JOB_READY``."""
    if step.kind == "execute":
        return str(step.body.get("execute"))
    if step.kind == "wait":
        return f"wait {step.body['wait'].get('event')}"
    return step.kind


def compare_steps(
    steps: Sequence[Step], real: Sequence[StepResult], sim: Sequence[StepOutcome]
) -> list[Difference]:
    """Response differences, step by step (`advance` steps are skipped)."""
    found: list[Difference] = []
    for number, (step, q, s) in enumerate(zip(steps, real, sim, strict=True), start=1):
        if step.kind == "advance":
            continue
        diff = _step_difference(number, step, q, s)
        if diff is not None:
            found.append(diff)
    return found


def _step_difference(number: int, step: Step, q: StepResult, s: StepOutcome) -> Difference | None:
    label = step_label(step)
    q_error, s_error = q.get("error"), s.error
    if q_error is not None or s_error is not None:
        if q_error is not None and s_error is not None:
            return None  # neither side could satisfy it (e.g. a wait for nothing)
        qemu_side = f"QEMU: {q_error}" if q_error else f"QEMU answered {_dump(q['response'])}"
        sim_side = f"simulator: {s_error}" if s_error else f"simulator answered {_dump(s.response)}"
        kind = "qemu-failed" if q_error else "sim-failed"
        return Difference(
            "response", number, step.line, label, "(step)", f"{qemu_side}\n{sim_side}", kind
        )
    expected = _no_id(q["response"] or {})
    actual = _no_id(s.response)
    if ("error" in expected) != ("error" in actual):
        q_kind = "an error" if "error" in expected else "a return"
        s_kind = "an error" if "error" in actual else "a return"
        diffs = [f"(top): QEMU answered with {q_kind}, the simulator with {s_kind}"]
    else:
        diffs = list(islice(differences(expected, actual), MAX_PER_SECTION))
    if not diffs:
        return None
    path = _path_of(diffs[0])
    detail = "; ".join(diffs) + f"\nQEMU:      {_dump(expected)}\nsimulator: {_dump(actual)}"
    return Difference(
        "response", number, step.line, label, path, detail, _response_kind(expected, actual)
    )


def _response_kind(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    """error/return shape of both replies, plus QEMU's error text with names blanked."""
    sim_desc = str(actual.get("error", {}).get("desc", ""))
    if sim_desc.startswith("blocksim internal error"):
        return "simulator-crash"
    q_kind = "error" if "error" in expected else "return"
    s_kind = "error" if "error" in actual else "return"
    kind = f"qemu-{q_kind}/sim-{s_kind}"
    if q_kind == "error":
        kind += ":" + template(str(expected["error"].get("desc", "")))
    return kind


def template(text: str) -> str:
    """`text` with quoted names and numbers blanked: one class for many messages."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'_'", text))


# --- 2. events -------------------------------------------------------------------------


def compare_events(real: RunResult, sim: ReplayResult) -> list[Difference]:
    """Differences of the whole ordered event list (name and data), one per differing run."""
    q_events = [normalize(e) for e in real.final.get("events", [])]
    s_events = [normalize(e) for e in sim.final.get("events", [])]
    keys_q = [json.dumps(e, sort_keys=True) for e in q_events]
    keys_s = [json.dumps(e, sort_keys=True) for e in s_events]
    matcher = difflib.SequenceMatcher(None, keys_q, keys_s, autojunk=False)
    owner_s = _owners([len(o.events) for o in sim.steps], len(s_events))
    owner_q = _owners([len(r["events"]) for r in real.steps], len(q_events))
    found: list[Difference] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        step = owner_s[j1] if j1 < len(s_events) else owner_q[i1] if i1 < len(q_events) else None
        found.append(_event_difference(sim, step, tag, q_events[i1:i2], s_events[j1:j2], i1, j1))
        if len(found) >= MAX_PER_SECTION:
            break
    return found


def _owners(per_step: list[int], total: int) -> list[int | None]:
    """For each event index, the 1-based step whose answer it came with (None: afterwards)."""
    owners: list[int | None] = []
    for number, count in enumerate(per_step, start=1):
        owners.extend([number] * count)
    return (owners + [None] * total)[:total]


def _event_difference(
    sim: ReplayResult,
    step: int | None,
    tag: str,
    q: list[dict[str, Any]],
    s: list[dict[str, Any]],
    i1: int,
    j1: int,
) -> Difference:
    label, line = "events", None
    if step is not None:
        label, line = step_label(sim.trace.steps[step - 1]), sim.trace.steps[step - 1].line
    path = f"events[{i1}]"
    if tag == "replace" and q[0]["event"] == s[0]["event"]:
        inner = next(differences(q[0], s[0]), "")
        path += _path_of(inner)
        kind = f"{q[0]['event']} data differs"
    elif tag == "delete" or (tag == "replace" and len(q) > len(s)):
        kind = f"missing in sim: {q[0]['event']}"
    elif tag == "insert":
        kind = f"extra in sim: {s[0]['event']}"
    else:
        kind = f"QEMU {q[0]['event']} / sim {s[0]['event']}"
    detail = (
        f"events (whole list) differ from QEMU's event #{i1} / the simulator's #{j1}: {kind}\n"
        f"QEMU:      {_dump_events(q)}\nsimulator: {_dump_events(s)}"
    )
    return Difference("events", step, line, label, path, detail, kind)


def _dump_events(events: list[dict[str, Any]], limit: int = 4) -> str:
    if not events:
        return "(none)"
    shown = ", ".join(_dump(e) for e in events[:limit])
    return shown + (f" ... ({len(events)} in all)" if len(events) > limit else "")


# --- 3. the final state ----------------------------------------------------------------


def compare_final(real_final: Mapping[str, Any], sim_final: Mapping[str, Any]) -> list[Difference]:
    """Differences of graph, bitmaps, backends and jobs (events are compared on their own)."""
    q, s = normalize_final(real_final), normalize_final(sim_final)
    found = _node_differences(q.get("nodes", []), s.get("nodes", []))
    for key in ("backends", "jobs"):
        for text in islice(differences(q.get(key), s.get(key), f".{key}"), MAX_PER_SECTION):
            found.append(Difference("final", None, None, key, _path_of(text), text, _change(text)))
    return found


def _node_differences(q_nodes: list[Any], s_nodes: list[Any]) -> list[Difference]:
    q_names = [n.get("node-name") for n in q_nodes]
    s_names = [n.get("node-name") for n in s_nodes]
    same = len(q_names) == len(s_names) and all(map(names_equal, q_names, s_names))
    if not same:
        detail = f"node list differs:\nQEMU:      {q_names}\nsimulator: {s_names}"
        return [Difference("final", None, None, "nodes", ".nodes", detail, "node list")]
    found: list[Difference] = []
    for index, (qn, sn) in enumerate(zip(q_nodes, s_nodes, strict=True)):
        for text in differences(qn, sn, f".nodes[{index}]"):
            detail = f"node {qn.get('node-name')}: {text}"
            found.append(
                Difference("final", None, None, "nodes", _path_of(text), detail, _change(text))
            )
            if len(found) >= MAX_PER_SECTION:
                return found
    return found


def _change(text: str) -> str:
    """The kind of a final-state difference: the value kinds, not the values."""
    what = text.split(": ", 1)[-1]
    if what.startswith("expected ") and ", got " in what:
        exp, got = what[len("expected ") :].split(", got ", 1)
        return f"{_value_kind(exp)}->{_value_kind(got)}"
    return re.sub(r"\d+", "N", what.split(" (", 1)[0])


def _value_kind(text: str) -> str:
    if text in ("True", "False", "None"):
        return text
    return "number" if re.fullmatch(r"-?\d+", text) else "value"


# --- 4. images -------------------------------------------------------------------------


def sim_guest_view(images: Mapping[str, Image], name: str, stamps: StampTable) -> bytes:
    """Pattern byte per 512-byte sector that a reader of image `name` sees in the simulator.

    Reads through the backing images the way each image's `backing_file` says
    (as ``qemu-img convert`` does on the real file), top first; unallocated
    sectors read as zeroes, as do sectors past a shorter backing image.  A
    ``json:{...}`` backing name is opened from its options (`_json_backing`).
    A backing file the simulator does not know ends the chain (a loop too).
    Raises `KeyError` for an unknown image.
    """
    chain = []
    seen: set[str] = set()
    image = images.get(name)
    override: Any = _HEADER
    while image is not None and image.filename not in seen:
        seen.add(image.filename)
        content = image.content
        if image.unlinked:  # mapped only in a cache that never reached the file
            content = content.clone()
            for first, end in image.unlinked:
                content.write_sectors(first, end, UNALLOCATED)
        chain.append(content)
        backing = image.backing_file if override is _HEADER else override
        override = _HEADER
        if isinstance(backing, str) and backing.startswith("json:"):
            image, override = _json_backing(images, backing)
        elif isinstance(backing, str) and backing:
            image = images.get(backing)
        else:
            image = None
    if not chain:
        raise KeyError(name)
    stamps_seen = read_through(chain, 0, chain[0].nsectors)
    return bytes(stamps.patterns_of(stamps_seen).astype("uint8").tobytes())


# The backing named in an image's own header (no json:{...} option overrides it).
_HEADER = object()


def _json_backing(images: Mapping[str, Image], name: str) -> tuple[Image | None, Any]:
    """The image a ``json:{...}`` backing name opens and the backing its options give it.

    QEMU writes such a name when the backing node's options cannot be said as
    a filename (a qcow2 node whose own backing was set by ``blockdev-add``, or
    whose file is a blkdebug node); qemu-img opens it from the options: the
    format node's ``file`` (or that blkdebug node's ``image``) names the
    image file, and a ``backing`` option replaces the one in that file's header
    (``null`` or a null-co node: nothing below; absent: the header's).
    Returns (None, _HEADER) for options naming no image the simulator holds.
    """
    options = json_filename_options(name)
    if options is None or options.get("driver") not in ("qcow2", "raw"):
        return None, _HEADER
    file = options.get("file")
    if isinstance(file, dict) and file.get("driver") == "blkdebug":
        file = file.get("image")  # qemu-img reads the image through blkdebug's rules
    if not isinstance(file, dict) or file.get("driver") != "file":
        return None, _HEADER
    image = images.get(str(file.get("filename")))
    if image is None or image.format != options["driver"]:
        return None, _HEADER
    if "backing" not in options:
        return image, _HEADER
    below = options["backing"]
    if isinstance(below, dict) and below.get("driver") in ("qcow2", "raw"):
        return image, "json:" + json.dumps(below)
    return image, None


def compare_images(
    runner: QemuRunner, sim: ReplayResult
) -> tuple[list[Difference], list[str], list[str]]:
    """Image differences, the names compared, and notes (images too large to read)."""
    sim_images = sim.machine.state.graph.images
    real_images = runner.images()
    found: list[Difference] = []
    notes: list[str] = []
    partly: list[str] = []
    names = sorted(set(sim_images) | set(real_images))
    for name in names:
        if name not in real_images or name not in sim_images:
            side = "the simulator" if name in sim_images else "QEMU"
            detail = f"only {side} has image {name}"
            found.append(Difference("image", None, None, name, "(file)", detail, f"only in {side}"))
            continue
        image = sim_images[name]
        if image.size_bytes > MAX_IMAGE_BYTES:
            notes.append(f"image {name} ({image.size_bytes} bytes) is too large to compare")
            continue
        if image.holds_host_bytes:
            notes.append(
                f"image {name} is not compared: a qcow2 node above wrote its image's host "
                "bytes into it (header, tables, clusters), blocksim keeps guest contents"
            )
            continue
        host_bytes = reads_host_bytes(sim_images, image)
        if host_bytes is not None:
            notes.append(
                f"image {name} is not compared: below it QEMU reads the host bytes of "
                f"{host_bytes} (header, tables, clusters), blocksim keeps guest contents"
            )
            continue
        backing = runner.image_backing(name)
        if backing != image.backing_file:
            detail = f"backing file: expected {backing!r}, got {image.backing_file!r}"
            found.append(
                Difference("image", None, None, name, "backing_file", detail, "backing file")
            )
        view = sim_guest_view(sim_images, name, sim.machine.state.stamps)
        size, runs = runner.read_image_runs(name)
        diff, lenient = compare_image_runs(name, size, runs, view)
        if diff is not None:
            found.append(diff)
        if lenient:
            partly.append(f"{name}: {lenient}")
    if partly:
        notes.append(
            "partly written sectors (the simulator stores whole sectors) matched when the "
            f"simulator's pattern is among QEMU's bytes: {', '.join(partly)}"
        )
    return found, names, notes


def reads_host_bytes(images: Mapping[str, Image], image: Image) -> str | None:
    """The non-raw image whose file a reader of `image` reads as plain bytes (an
    overlay put on a qcow2 image's protocol node has backing format `file`), or None."""
    seen: set[str] = set()
    while image.backing_file and image.filename not in seen:
        seen.add(image.filename)
        below = images.get(image.backing_file)
        if below is None:
            return None
        if image.backing_format in ("file", "raw") and below.format != "raw":
            return below.filename
        image = below
    return None


def compare_image_bytes(name: str, real: bytes, patterns: bytes) -> tuple[Difference | None, int]:
    """`compare_image_runs` for QEMU's guest bytes in one piece."""
    return compare_image_runs(name, len(real), [(0, real)], patterns)


def compare_image_runs(
    name: str, size: int, runs: Sequence[tuple[int, bytes]], patterns: bytes
) -> tuple[Difference | None, int]:
    """Compare QEMU's guest bytes of an image with the simulator's pattern per sector.

    `size` and `runs` are QEMU's side as `QemuRunner.read_image_runs` gives
    it (data runs; zeroes elsewhere), `patterns` the simulator's pattern byte
    per sector (`sim_guest_view`).  Returns the `Difference` (None when every
    sector matches; else the first differing byte ranges, QEMU's pattern or
    "mixed bytes" against the simulator's) and the number of *partly written*
    sectors let through: the simulator stamps a whole sector for a sub-sector
    write (a documented approximation, sim/model/content.py), so a QEMU
    sector of mixed bytes matches when the simulator's pattern is one of them.
    """
    if size != len(patterns) * SECTOR:
        detail = f"size: expected {size} bytes, got {len(patterns) * SECTOR}"
        return Difference("image", None, None, name, "size", detail, "size"), 0
    ranges: list[list[Any]] = []  # [first sector, end sector, QEMU pattern, sim pattern]
    lenient = 0
    for sector, q, sim_pattern in _mismatches(runs, patterns):
        if q is None:
            lenient += 1
        elif ranges and ranges[-1][1] == sector and ranges[-1][2:] == [q, sim_pattern]:
            ranges[-1][1] = sector + 1
        else:
            ranges.append([sector, sector + 1, q, sim_pattern])
    if not ranges:
        return None, lenient
    shown = [
        f"[{_size(a * SECTOR)}, {_size(b * SECTOR)}): expected {q}, got {sp}"
        for a, b, q, sp in ranges[:MAX_PER_SECTION]
    ]
    more = f" ... ({len(ranges)} ranges in all)" if len(ranges) > MAX_PER_SECTION else ""
    detail = f"content differs at {'; '.join(shown)}{more}"
    return Difference("image", None, None, name, "content", detail, "content"), lenient


_RUN_OF_SAME = re.compile(rb"(.)\1*", re.DOTALL)
_NOT_ZERO = re.compile(rb"[^\x00]+")
_BLOCK = 128 * SECTOR  # data runs are compared 64 KiB at a time, sector by sector where they differ


def _expand(patterns: bytes) -> bytes:
    """The image bytes a string of sector patterns stands for."""
    return b"".join(m[0][:1] * (len(m[0]) * SECTOR) for m in _RUN_OF_SAME.finditer(patterns))


def _mismatches(
    runs: Sequence[tuple[int, bytes]], patterns: bytes
) -> Iterator[tuple[int, str | None, str]]:
    """(sector, QEMU's pattern or None when leniently equal, sim pattern) per differing sector."""
    done = 0  # sectors checked so far
    for offset, data in sorted(runs):
        first, end = offset // SECTOR, -(-(offset + len(data)) // SECTOR)
        yield from _hole_mismatches(patterns, done, first)
        padded = bytes(offset - first * SECTOR) + data
        padded += bytes(end * SECTOR - first * SECTOR - len(padded))
        yield from _data_mismatches(first, padded, patterns[first:end])
        done = end
    yield from _hole_mismatches(patterns, done, len(patterns))


def _hole_mismatches(patterns: bytes, first: int, end: int) -> Iterator[tuple[int, str, str]]:
    """QEMU reads zeroes in sectors [first, end): every non-zero sim pattern differs."""
    for match in _NOT_ZERO.finditer(patterns, first, max(first, end)):
        for sector in range(match.start(), match.end()):
            yield sector, "0x00", f"0x{patterns[sector]:02x}"


def _data_mismatches(
    first: int, real: bytes, patterns: bytes
) -> Iterator[tuple[int, str | None, str]]:
    expected = _expand(patterns)
    if real == expected:
        return
    for block in range(0, len(real), _BLOCK):
        if real[block : block + _BLOCK] == expected[block : block + _BLOCK]:
            continue
        for at in range(block, min(block + _BLOCK, len(real)), SECTOR):
            chunk = real[at : at + SECTOR]
            pattern = expected[at]
            if chunk == expected[at : at + SECTOR]:
                continue
            sector, sim_pattern = first + at // SECTOR, f"0x{pattern:02x}"
            if chunk == chunk[:1] * SECTOR:
                yield sector, f"0x{chunk[0]:02x}", sim_pattern
            else:
                yield sector, (None if bytes([pattern]) in chunk else "mixed bytes"), sim_pattern


def _size(n: int) -> str:
    for unit, shift in (("M", 20), ("k", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


# --- helpers ---------------------------------------------------------------------------


def _no_id(response: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "id"}


def _path_of(text: str) -> str:
    return text.split(": ", 1)[0] if text else ""


def _dump(value: Any, limit: int = 300) -> str:
    text = json.dumps(scrub(value), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
