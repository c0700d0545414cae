"""The run recorder: what one replay did over simulated time, for `blocksim report`.

`TimelineRecorder` has the checker hook shape (`attach`, `after_step`,
`at_end`; sim/check/base.py) and, like a checker, observes and never mutates.
It samples the machine:

- after every QMP command (`Machine.command_observers`),
- after every simpy event, by wrapping `step` on this one machine's
  environment (the SimPy monitoring idiom, docs/topical_guides/monitoring.rst);
  `Environment.run` and `Machine.wait_for` both go through it,
- after every trace step.

At each sample it takes the events emitted since the last one (job states
come from `JOB_STATUS_CHANGE`, with their exact times), each live job's
progress, each named bitmap's dirty count and the graph's shape; a value is
stored only when it changed.  Bitmaps are counted after every command, event
and step that may have changed them; in between, after guest writes and job
progress, at most every nbits / COUNT_BITS_PER_S simulated seconds (nbits: the
bits of all bitmaps), so the bitmaps of a TiB disk stay cheap to follow.  The
graph is compared only after a command or an event.  Guest request latencies are copied from
`Machine.io_log` at the end.  Nothing is recorded, and nothing costs, unless
a recorder is attached (`blocksim replay --record-timeline DIR`).

timeline.json, version 1 (times are integer simulated nanoseconds; every list
is in time order; written with sorted keys, so a trace and seed give one
byte string):

    {"timeline": 1, "name": str, "source": str, "policy": str, "seed": int,
     "end_ns": int,
     "steps": [[time_ns, label], ...],                 # one per trace step
     "commands": [[time_ns, step, command, outcome, {job id: status}], ...],
     "jobs": [{"lane": "bk0" | "bk0 #2", "id": str, "type": str,
               "states": [[time_ns, status, step], ...],  # each entry starts a band
               "progress": [[time_ns, offset, len, step], ...]}, ...],
     "bitmaps": [{"label": "node/name", "node": str, "name": str, "granularity": int,
                  "counts": [[time_ns, dirty_bytes | null, step], ...]}, ...],
     "graph_changes": [[time_ns, label, step], ...],
     "io": [[time_ns, op, latency_ns, [job type, ...]], ...],
     "addresses": [{"address": "drive0/b0", "node": str, "name": str,
                    "counts": [[time_ns, dirty_bytes | null, step, holder | null], ...]}, ...],
     "marks": [[time_ns, kind, step, text], ...],
     "graphs": [[time_ns, step, label, {"nodes": [[name, driver, file, backing,
                 target, [bitmap, ...]], ...], "devices": [[id, root], ...]}], ...],
     "timing": {drive id | "scratch": {"latency_us": ..., "bandwidth_mbps": ...,
                "jitter": ..., "queue_depth": ...}}}

`step` is the trace step (1-based) a sample was taken in, so a trace in
which no time passes can be drawn over its steps.  `command` is the QMP
command, or `qemu-io VERB` for HMP qemu-io; `outcome` is "return" or the QMP
error's `desc`; then the status of each job that existed when the command was
issued.  `io` rows are `Machine.io_log` (issue time, "read" / "write" /
"...-failed", latency, types of the jobs that existed then).  A bitmap series
is keyed by where the bitmap is, "node/name" (or "device (backend)/name"
under bb-attached): a successor taking over at the end of a backup continues
it; a null count means no bitmap is at that address any more.  Progress and
count series are thinned to at most MAX_POINTS points each (the first, then
the last of each of MAX_POINTS equal time slices).

`addresses` follow each bitmap by the address a successful
`block-dirty-bitmap-add` named (`node`, a device or node name, and `name`), as
QMP looks it up under the replay's policy (block_dirty_bitmap_lookup): the
dirty count of the bitmap found there and the node (or backend) holding it,
null when the lookup fails (QEMU answers "Dirty bitmap 'N' not found").
`marks` are the events a block developer looks for on a timeline: kind
"error" (BLOCK_JOB_ERROR, BLOCK_IO_ERROR), "threshold"
(BLOCK_WRITE_THRESHOLD), "pause" (a job went to `paused` or `standby`: a
user's pause, a drain around a graph change, or a `stop` error policy),
"fault" (a trace `fault` step armed an injected I/O error), "drain" (a
drained section began: the nodes it quiesced and the jobs it paused).
`graphs` is the block graph at
the start and after every graph change (the same label as `graph_changes`):
each node with its file, backing and target children and its named bitmaps,
each device with its root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.model.bitmap_ops import lookup
from sim.model.graph import BlockNode

if TYPE_CHECKING:
    from sim.engine.machine import Machine
    from sim.trace import Trace

TIMELINE_VERSION = 1
MAX_POINTS = 4000
NS_PER_S = 1_000_000_000
# Counting dirty bits costs ~1 ms per 16M bits; between exact samples a guest write
# asks for a recount at most this many bits per simulated second (a 1 TiB disk with
# a 64 KiB-granularity bitmap: every 4 ms; with 4 KiB granularity: every 62 ms).
COUNT_BITS_PER_S = 1 << 32

# The QMP commands that start a job, and the job type (for a job created and
# gone within one command, e.g. in a failed transaction, never seen live).
JOB_COMMANDS = {
    "drive-backup": "backup",
    "blockdev-backup": "backup",
    "drive-mirror": "mirror",
    "blockdev-mirror": "mirror",
    "block-commit": "commit",
    "block-stream": "stream",
}


# Events marked on a timeline: event -> (kind, the data keys shown).
MARKED_EVENTS = {
    "BLOCK_JOB_ERROR": ("error", ("device", "operation", "action")),
    "BLOCK_IO_ERROR": ("error", ("device", "node-name", "operation", "action")),
    "BLOCK_WRITE_THRESHOLD": ("threshold", ("node-name",)),
}


@dataclass(slots=True)
class _Lane:
    """One job, from its `created` event on; a reused job id gets a new lane."""

    lane: str
    id: str
    type: str
    states: list[list[Any]] = field(default_factory=list)
    progress: list[list[int]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.states[-1][1]) if self.states else "undefined"


@dataclass(slots=True)
class _BitmapSeries:
    label: str
    node: str
    name: str
    granularity: int
    counts: list[list[Any]] = field(default_factory=list)


class TimelineRecorder:
    """Records one Machine's jobs, bitmaps, graph changes and guest I/O over time."""

    name = "timeline"

    def __init__(self, trace: Trace | None = None) -> None:
        self.trace = trace
        self.steps: list[list[Any]] = []
        self.commands: list[list[Any]] = []
        self.lanes: list[_Lane] = []
        self.bitmaps: dict[str, _BitmapSeries] = {}  # "owner/name" -> series
        self.graph_changes: list[list[Any]] = []
        self._live: dict[str, _Lane] = {}  # job id -> its newest lane
        self._seen_events = 0
        self._dirty = True  # bitmaps may have changed since the last count
        self._counted_ns = 0
        self._count_gap_ns = 0  # least time between two counts a guest write asks for
        self._graph: tuple[Any, ...] = ()
        self._step = 1  # the trace step being run (1-based), for step-axis timelines
        self._end_ns = 0
        self._io: list[list[Any]] = []
        self.addresses: dict[tuple[str, str], list[list[Any]]] = {}  # (node, name) -> counts
        self.marks: list[list[Any]] = []
        self.graphs: list[list[Any]] = []

    # -- the checker hooks ---------------------------------------------------------------
    def attach(self, machine: Machine) -> None:
        """Start observing `machine` (before its first step)."""
        self.machine = machine
        self._graph = _graph_shape(machine)
        self.graphs.append([machine.now_ns, 0, "start", _graph_doc(machine)])
        machine.command_observers.append(self._on_command)
        machine.state.write_observers.append(self._on_write)
        machine.state.drain_observers.append(self._on_drain)
        env = machine.env
        machine.leaps = False  # progress is sampled after every simpy step: chunk by chunk
        self._env_step: Callable[[], None] = env.step

        def step() -> None:
            self._env_step()
            self._sample(exact=False)

        setattr(env, "step", step)  # noqa: B010 - instance attribute: this env only
        self._sample()

    def after_step(self, index: int) -> list[Any]:
        self._step = index
        self._sample()
        if self.trace is not None and 0 < index <= len(self.trace.steps):
            step = self.trace.steps[index - 1]
            if step.kind == "fault":  # an injected I/O error, armed from now on
                f = step.body.get("fault") or {}
                text = f"{f.get('errno', '?')} on {f.get('op', '?')} of {f.get('node', '?')}"
                self.marks.append([self.machine.now_ns, "fault", index, text])
        self.steps.append([self.machine.now_ns, self._step_label(index)])
        self._step = index + 1
        return []

    def at_end(self) -> list[Any]:
        """Stop observing; the timeline is then complete (see `to_json`)."""
        m = self.machine
        self._sample()
        setattr(m.env, "step", self._env_step)  # noqa: B010 - detach
        self._end_ns = m.now_ns
        rows = [[r.time_ns, r.op, r.latency_ns, list(r.jobs)] for r in getattr(m, "io_log", [])]
        self._io = sorted(rows, key=lambda row: int(row[0]))  # io_log is in completion order
        return []

    # -- observers -------------------------------------------------------------------------
    def _on_write(self, *args: Any) -> None:
        self._dirty = True

    def _on_drain(self, nodes: list[str] | None, jobs: list[str]) -> None:
        where = "every node" if nodes is None else ", ".join(nodes[:4])
        paused = f", pauses {', '.join(jobs)}" if jobs else ""
        self.marks.append([self.machine.now_ns, "drain", self._step, f"drained {where}{paused}"])

    def _on_command(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        jobs = {job_id: lane.status for job_id, lane in self._live.items()}
        error = response.get("error")
        outcome = "return" if error is None else str(error.get("desc", error.get("class")))
        now = self.machine.now_ns
        label = command_label(request)
        self.commands.append([now, self._step, label, outcome, jobs])
        args = request.get("arguments")
        if error is None and isinstance(args, dict):
            address = (args.get("node"), args.get("name"))
            if label == "block-dirty-bitmap-add" and all(isinstance(a, str) for a in address):
                self.addresses.setdefault((str(address[0]), str(address[1])), [])
        self._dirty = True
        self._sample(_graph_label(request), str(request.get("execute", "")))

    # -- sampling --------------------------------------------------------------------------
    def _sample(self, command_label: str = "", command: str = "", exact: bool = True) -> None:
        """Take what changed.  `exact` (after a command, a step, an event): count the
        bitmaps if anything may have changed them; else (a simpy event: job progress,
        guest writes) no sooner than `_count_gap_ns` after the last count."""
        m = self.machine
        now = m.now_ns
        history = m.events.history
        new_events = history[self._seen_events :]
        if new_events:
            self._seen_events = len(history)
            self._take_events(new_events, command)
            self._dirty = exact = True
        for job in m.state.jobs:
            lane = self._live.get(job.id)
            if lane is None:
                continue
            point = [now, job.offset, job.len, self._step]
            if not lane.progress or lane.progress[-1][1:3] != point[1:3]:
                lane.progress.append(point)
                self._dirty = True
        if self._dirty and (exact or now - self._counted_ns >= self._count_gap_ns):
            self._count_bitmaps(now)
        if command_label or new_events:
            shape = _graph_shape(m)
            if shape != self._graph:
                self._graph = shape
                label = command_label or _event_label(new_events)
                self.graph_changes.append([now, label, self._step])
                self.graphs.append([now, self._step, label, _graph_doc(m)])

    def _take_events(self, events: list[Any], command: str) -> None:
        for ev in events:
            if ev.name in MARKED_EVENTS:
                kind, keys = MARKED_EVENTS[ev.name]
                detail = " ".join(str(ev.data[k]) for k in keys if k in ev.data)
                self.marks.append([ev.time_ns, kind, self._step, f"{ev.name} {detail}".strip()])
            if ev.name != "JOB_STATUS_CHANGE":
                continue
            job_id = str(ev.data.get("id"))
            if ev.data.get("status") in ("paused", "standby"):
                text = f"{job_id} {ev.data['status']}"
                self.marks.append([ev.time_ns, "pause", self._step, text])
            status = str(ev.data.get("status"))
            if status == "created":
                self._new_lane(job_id, command)
            lane = self._live.get(job_id)
            if lane is None:  # a status change of a job we never saw created
                lane = self._new_lane(job_id, command)
            lane.states.append([ev.time_ns, status, self._step])
            if status == "null":
                del self._live[job_id]

    def _new_lane(self, job_id: str, command: str) -> _Lane:
        job = self.machine.state.find_job(job_id)
        job_type = job.type if job is not None else JOB_COMMANDS.get(command, "job")
        n = 1 + sum(1 for lane in self.lanes if lane.id == job_id)
        lane = _Lane(job_id if n == 1 else f"{job_id} #{n}", job_id, job_type)
        self.lanes.append(lane)
        self._live[job_id] = lane
        return lane

    def _count_bitmaps(self, now: int) -> None:
        """Each named bitmap's count, by address: a bitmap replaced by its successor
        at the end of a backup goes on in the same series; a gone one gets a None."""
        graph = self.machine.state.graph
        owners: list[tuple[str, list[Any]]] = [(n.node_name, n.bitmaps) for n in graph.nodes]
        owners += [(f"{name} (backend)", bb.bitmaps) for name, bb in graph.backends.items()]
        present = set()
        nbits = 0
        for owner, bitmaps in owners:
            for bm in bitmaps:
                if bm.name is None or bm.freed:
                    continue
                nbits += bm.nbits
                label = f"{owner}/{bm.name}"
                present.add(label)
                series = self.bitmaps.get(label)
                if series is None:
                    series = _BitmapSeries(label, owner, bm.name, bm.granularity)
                    self.bitmaps[label] = series
                count = bm.count_bytes()
                if not series.counts or series.counts[-1][1] != count:
                    series.counts.append([now, count, self._step])
        for label, series in self.bitmaps.items():
            if label not in present and series.counts[-1][1] is not None:
                series.counts.append([now, None, self._step])
        for (address, name), counts in self.addresses.items():
            try:
                where, found = lookup(graph, self.machine.state.policy, address, name)
                holder = (
                    where.node_name if isinstance(where, BlockNode) else f"{where.name} (backend)"
                )
                point = [now, found.count_bytes(), self._step, holder]
            except QMPError:
                point = [now, None, self._step, None]
            if not counts or counts[-1][1::2] != point[1::2]:
                counts.append(point)
        self._dirty = False
        self._counted_ns = now
        self._count_gap_ns = nbits * NS_PER_S // COUNT_BITS_PER_S

    def _step_label(self, index: int) -> str:
        if self.trace is None or not 0 < index <= len(self.trace.steps):
            return ""
        step = self.trace.steps[index - 1]
        if step.kind == "execute":
            return str(step.body.get("execute"))
        return step.kind

    # -- output ----------------------------------------------------------------------------
    def to_json(self, policy: str = "", seed: int = 0, source: str = "") -> dict[str, Any]:
        """The timeline.json document (call after the replay finished)."""
        header = self.trace.header if self.trace is not None else None
        end = self._end_ns
        return {
            "timeline": TIMELINE_VERSION,
            "name": header.name if header is not None else "",
            "description": header.description if header is not None else "",
            "source": source,
            "policy": policy,
            "seed": seed,
            "end_ns": end,
            "steps": self.steps,
            "commands": self.commands,
            "jobs": [
                {
                    "lane": lane.lane,
                    "id": lane.id,
                    "type": lane.type,
                    "states": lane.states,
                    "progress": thin(lane.progress, end),
                }
                for lane in self.lanes
            ],
            "bitmaps": [
                {
                    "label": s.label,
                    "node": s.node,
                    "name": s.name,
                    "granularity": s.granularity,
                    "counts": thin(s.counts, end),
                }
                for s in self.bitmaps.values()
            ],
            "graph_changes": self.graph_changes,
            "io": self._io,
            "addresses": [
                {"address": f"{a}/{n}", "node": a, "name": n, "counts": thin(c, end)}
                for (a, n), c in self.addresses.items()
            ],
            "marks": self.marks,
            "graphs": self.graphs,
            "timing": self._timing(),
        }

    def _timing(self) -> dict[str, dict[str, float]]:
        """Each header drive's device timing (the model's defaults with the drive's
        `timing` overrides); images made later share the `scratch` device's defaults."""
        from sim.engine.timing import DEFAULTS, SCRATCH_DEVICE

        drives = self.trace.header.raw.get("drives", []) if self.trace is not None else []
        out = {
            str(d.get("id")): {**DEFAULTS, **(d.get("timing") or {})}
            for d in drives
            if isinstance(d, dict)
        }
        out[SCRATCH_DEVICE] = dict(DEFAULTS)
        return out


def thin(points: list[list[Any]], end_ns: int, limit: int = MAX_POINTS) -> list[list[Any]]:
    """At most about `limit` points: the first, then the last of each time slice."""
    if len(points) <= limit or end_ns <= 0:
        return points
    out = [points[0]]
    for i, p in enumerate(points[1:], start=1):
        last = i == len(points) - 1
        if last or p[0] * limit // end_ns != points[i + 1][0] * limit // end_ns:
            out.append(p)
    return out


def _graph_shape(m: Machine) -> tuple[Any, ...]:
    """Nodes with their children, and backends with their roots: what graph changes change."""

    def name(node: Any) -> str | None:
        return None if node is None else str(node.node_name)

    graph = m.state.graph
    nodes = tuple(
        (n.node_name, n.driver, name(n.file), name(n.backing), name(n.target)) for n in graph.nodes
    )
    backends = tuple((b, name(bb.root)) for b, bb in graph.backends.items())
    return nodes + backends


def _graph_doc(m: Machine) -> dict[str, Any]:
    """The block graph as `graphs` stores it: nodes with children and bitmaps, devices."""

    def name(node: Any) -> str | None:
        return None if node is None else str(node.node_name)

    graph = m.state.graph
    nodes = [
        [
            str(n.node_name), str(n.driver), name(n.file), name(n.backing), name(n.target),
            [str(b.name) for b in n.bitmaps if b.name is not None and not b.freed],
        ]
        for n in graph.nodes
    ]  # fmt: skip
    devices = [[d, name(bb.root)] for d, bb in graph.backends.items()]
    return {"nodes": nodes, "devices": devices}


def command_label(request: dict[str, Any]) -> str:
    """A command as coverage counts it: its name, or `qemu-io VERB` for HMP qemu-io."""
    command = str(request.get("execute", "?"))
    args = request.get("arguments")
    if command == "human-monitor-command" and isinstance(args, dict):
        inner = str(args.get("command-line", "")).split('"', 2)
        if len(inner) > 1 and inner[0].startswith("qemu-io"):
            return "qemu-io " + (inner[1].split(" ", 1)[0] or "?")
    return command


def _graph_label(request: dict[str, Any]) -> str:
    """The command and the thing it names, e.g. "blockdev-snapshot-sync drive0"."""
    command = str(request.get("execute", "?"))
    args = request.get("arguments")
    if isinstance(args, dict):
        for key in ("job-id", "device", "node", "node-name", "id"):
            value = args.get(key)
            if isinstance(value, str):
                return f"{command} {value}"
    return command


def _event_label(events: list[Any]) -> str:
    """A graph change inside a job (a pivot, a commit's end): the event that came with it."""
    for ev in reversed(events):
        if ev.name != "JOB_STATUS_CHANGE":
            return f"{ev.name} {ev.data.get('device', '')}".strip()
    ev = events[-1]
    return f"{ev.data.get('id', '')} {ev.data.get('status', ev.name)}".strip()


def dumps_timeline(timeline: dict[str, Any]) -> str:
    """The one encoding of timeline.json: sorted keys, compact, one line."""
    return json.dumps(timeline, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def write_json(path: str | Path, doc: Any) -> Path:
    """Write a run-folder JSON file atomically (a reader never sees half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_timeline(doc), encoding="utf-8")
    os.replace(tmp, path)
    return path
