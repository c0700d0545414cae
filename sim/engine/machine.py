"""Machine: one simulated QEMU process in simulated time.

The only owner of the clock.  Holds one `simpy.Environment` (time in integer
nanoseconds), the `BlockState`, one seeded `random.Random` from which every
random choice is drawn, the event log, and the job and workload processes.
QMP commands run instantly at `now_ns`; time moves only in `advance()` and
`wait_for()`.

Tie-break rule for events at the same instant: simpy's (time, priority,
insertion counter) heap; job processes are created in job-creation order, so
equal-time steps run oldest job first.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import simpy

from sim.engine import faults, workload
from sim.engine.order import TieBreakEnvironment
from sim.engine.timing import SCRATCH_DEVICE, Device, DeviceTiming
from sim.model.events import Event, EventLog
from sim.model.graph import BlockBackend, BlockNode
from sim.model.state import BlockState, DriveSpec

NS_PER_S = 1_000_000_000


class Machine:
    """A simulated QEMU: block state + simpy clock + seeded RNG + event log."""

    def __init__(
        self,
        drives: tuple[DriveSpec, ...] | list[DriveSpec] = (),
        policy: str = "qemu-7.2",
        seed: int = 0,
    ) -> None:
        self.env = TieBreakEnvironment(self.actor_of)
        self._status_changed: simpy.Event | None = None  # see job_status_changed
        self.rng = random.Random(seed)
        self.events = EventLog()
        self.state = BlockState(policy, emit=self.emit)
        self.drives = {d.id: d for d in drives}
        self.processes: dict[str, simpy.Process] = {}  # job id -> process
        # jobs started by the command being run whose run() has nothing to do: they
        # end when the command does (sim.engine.jobs.end_idle_jobs)
        self.idle_starts: list[Any] = []
        self.timing: dict[str, dict[str, Any]] = {d.id: dict(d.timing) for d in drives}
        self.hmp_output: str | None = None  # what qemu-io printed in the last command
        # observers (checkers, coverage): called after every QMP command with
        # (request, response); guest writes go to state.write_observers
        self.command_observers: list[Any] = []
        # called before every QMP command with the request (checkers that compare
        # the state before a command with the state after it)
        self.before_command_observers: list[Any] = []
        for d in drives:
            self.state.add_drive(d.id, d.node_name, d.file_node_name, d.format, d.size, d.discard)
        # the timing model (sim/engine/timing.py): one Device per header drive's
        # image, one shared scratch device for every image created later
        self.devices: dict[str, Device] = {}
        self._image_devices: dict[str, Device] = {}
        for d in drives:
            # a trace's header was checked when it was parsed (sim.trace_schema);
            # a DriveSpec built otherwise gets DeviceTiming's ValueError
            timing = DeviceTiming.from_header(d.timing)
            self.devices[d.id] = Device(self.env, d.id, timing)
            self._image_devices[f"{d.id}.{d.format}"] = self.devices[d.id]
        self.devices[SCRATCH_DEVICE] = Device(
            self.env, SCRATCH_DEVICE, DeviceTiming.from_header(None)
        )
        # analytic job time (engine/jobs.py `leap`): a job may do its chunks up to the
        # next scheduled event in one step; `leap_limit` bounds that further (a
        # `wait` deadline), `leaps` off keeps every chunk a simpy step of its own
        # (observers that sample between simpy steps)
        self._leaps = True
        self.leap_limit: float = float("inf")
        # an `until` step's job and what gives the progress its leaps must stay below
        # (they may not carry it past the point the step stops at), or None
        self.leap_guard: tuple[Any, Callable[[Any], float | None]] | None = None
        self.faults = faults.FaultTable()
        # a FIFO per throttle group and direction (sim/engine/throttle.py)
        self.throttle_queues: dict[tuple[Any, bool], simpy.Resource] = {}
        # block-copy requests in flight per copy-before-write state (sim/engine/reqlist.py)
        self.copy_reqs: dict[Any, list[Any]] = {}
        self.workloads: list[workload.Workload] = []
        self.io_log: list[workload.IoRecord] = []  # every workload request, in completion order

    def actor_of(self, process: Any) -> str:
        """Who a simpy process acts for: `job:<id>` for a job (and its block-copy
        tasks), else `guest`."""
        actor = getattr(process, "actor", None)
        if actor is not None:
            return str(actor)
        for job_id, proc in self.processes.items():
            if proc is process:
                return f"job:{job_id}"
        return "guest"

    @property
    def leaps(self) -> bool:
        """Analytic time: jobs leap over runs of chunks (engine/jobs.py `leap`) and a
        device without jitter serves each request in one simpy step
        (`Device.served`); off, every chunk and every queue and link turn is a simpy
        step of its own.  Set before the machine runs."""
        return self._leaps

    @leaps.setter
    def leaps(self, on: bool) -> None:
        self._leaps = on
        for device in self.devices.values():
            device.analytic = on and not device.timing.jitter

    @property
    def now_ns(self) -> int:
        return int(self.env.now)

    def emit(self, name: str, data: dict[str, Any]) -> None:
        self.events.append(Event(self.now_ns, name, data))
        if name == "JOB_STATUS_CHANGE" and self._status_changed is not None:
            changed, self._status_changed = self._status_changed, None
            changed.succeed()

    def job_status_changed(self) -> simpy.Event:
        """An event that fires at the next JOB_STATUS_CHANGE (guest requests held by a
        job's drained section wait for it, then look again)."""
        if self._status_changed is None:
            self._status_changed = self.env.event()
        return self._status_changed

    def advance(self, seconds: float) -> None:
        """Let simulated time pass; jobs and workloads progress meanwhile."""
        until = self.env.now + int(round(seconds * NS_PER_S))
        if until > self.env.now:  # 0 s (or less than 1 ns) lets nothing happen
            self.env.run(until=until)

    def device_of(self, node: BlockNode) -> Device:
        """The device holding the image under `node` (filters and protocol nodes
        resolve to the image of the format node they serve)."""
        graph = self.state.graph
        data = graph.data_node(node)
        if data.image is None:  # a protocol node: find the format node over it
            for parent, role in graph.parents(data):
                if role == "file" and parent.image is not None:
                    data = parent
                    break
        if data.image is not None:
            device = self._image_devices.get(data.image.filename)
            if device is not None:
                return device
        return self.devices[SCRATCH_DEVICE]

    def guest_io_error(
        self, bb: BlockBackend | None, root: BlockNode, op: str, offset: int, length: int
    ) -> str | None:
        """The error an injected fault gives a guest request, or None (see faults.py).

        qemu-io prints it as `<op> failed: <error>`."""
        if not self.faults:
            return None
        return faults.guest_error(self, bb, root, op, offset, length)

    def idle(self) -> bool:
        """True when nothing is scheduled: no job or workload can make progress."""
        return self.env.peek() == float("inf")

    def job_types(self) -> tuple[str, ...]:
        """Types of the jobs that exist and are not concluded, oldest first."""
        return tuple(j.type for j in self.state.jobs if j.status != "concluded")

    def wait_for(
        self, name: str, data: dict[str, Any], limit_ns: int | None = None
    ) -> Event | None:
        """Run until a matching unconsumed event exists; None when it never can.

        With `limit_ns`, events due at the deadline itself still run (a limit of
        0 runs what is due now); None when the deadline passes first."""
        deadline = None if limit_ns is None else self.env.now + limit_ns
        if deadline is not None:  # the wait may end at the deadline: no leap past it
            saved, self.leap_limit = self.leap_limit, min(self.leap_limit, deadline)
            try:
                return self._wait_for(name, data, deadline)
            finally:
                self.leap_limit = saved
        return self._wait_for(name, data, deadline)

    def _wait_for(self, name: str, data: dict[str, Any], deadline: float | None) -> Event | None:
        # only what was emitted since the last look can match: nothing else consumes
        # events while this wait runs the clock
        seen = -1
        looked = 0  # the events before this index did not match
        while True:
            if len(self.events) != seen:  # only look again when something was emitted
                seen = len(self.events)
                ev = self.events.take(name, data, looked)
                if ev is not None:
                    return ev
                looked = seen
            if self.env.peek() == float("inf"):
                return None
            if deadline is not None and self.env.peek() > deadline:
                if self.env.now < deadline:
                    self.env.run(until=deadline)
                return self.events.take(name, data, looked)
            self.env.step()
