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
from typing import Any

import simpy

from sim.engine.timing import DeviceTiming
from sim.model.state import BlockState
from sim.qmp.events import Event, EventLog
from sim.trace import DriveSpec

NS_PER_S = 1_000_000_000


class Machine:
    """A simulated QEMU: block state + simpy clock + seeded RNG + event log."""

    def __init__(
        self,
        drives: tuple[DriveSpec, ...] | list[DriveSpec] = (),
        policy: str = "qemu-7.2",
        seed: int = 0,
    ) -> None:
        self.env = simpy.Environment()
        self.rng = random.Random(seed)
        self.events = EventLog()
        self.state = BlockState(policy, emit=self.emit)
        self.drives = {d.id: d for d in drives}
        self.processes: dict[str, simpy.Process] = {}  # job id -> process
        self.timing: dict[str, dict[str, Any]] = {d.id: dict(d.timing) for d in drives}
        self.hmp_output: str | None = None  # what qemu-io printed in the last command
        # observers (checkers, coverage): called after every QMP command with
        # (request, response); guest writes go to state.write_observers
        self.command_observers: list[Any] = []
        for d in drives:
            self.state.add_drive(d.id, d.node_name, d.file_node_name, d.format, d.size, d.discard)

    @property
    def now_ns(self) -> int:
        return int(self.env.now)

    def emit(self, name: str, data: dict[str, Any]) -> None:
        self.events.append(Event(self.now_ns, name, data))

    def advance(self, seconds: float) -> None:
        """Let simulated time pass; jobs and workloads progress meanwhile."""
        until = self.env.now + int(round(seconds * NS_PER_S))
        self.env.run(until=until)

    def timing_for(self, job: Any) -> DeviceTiming:
        """The timing of the drive a job works on (the first drive by default)."""
        drive = self.drives.get(job.id) or next(iter(self.drives.values()), None)
        return DeviceTiming.from_header(drive.timing if drive is not None else None)

    def sim_only_step(self, step: Any) -> tuple[dict[str, Any], str | None]:
        """`workload` and `fault` steps (sim-only; see docs/trace-format.md)."""
        from sim.errors import TraceError

        raise TraceError(f"the {step.kind!r} step is not supported yet", step.line)

    def wait_for(
        self, name: str, data: dict[str, Any], limit_ns: int | None = None
    ) -> Event | None:
        """Run until a matching unconsumed event exists; None when it never can."""
        deadline = None if limit_ns is None else self.env.now + limit_ns
        while True:
            ev = self.events.take(name, data)
            if ev is not None:
                return ev
            if self.env.peek() == float("inf"):
                return None
            if deadline is not None and self.env.peek() > deadline:
                self.env.run(until=deadline)
                return self.events.take(name, data)
            self.env.step()
