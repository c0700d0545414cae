"""The simulated QEMU process behind `blocksim serve`: one Machine, many monitors.

Theory of operation
-------------------
`SimHost` owns the Machine (model + simulated clock), the one
`sim.qmp.dispatch.Monitor` that runs commands on it, the open QMP sessions,
the pacing of simulated time and the optional trace recorder.  Everything
runs on one thread: requests from all clients are executed one at a time in
arrival order, so a session is a linear history that `--record-trace` can
write down and `blocksim replay` can repeat.

Time (`Pacing`):

- ``step``: simulated time moves only through the sim-only commands
  ``x-blocksim-advance {"seconds": S}`` (jobs and workloads progress for S
  simulated seconds) and ``x-blocksim-wait {"event": NAME, "data": {...},
  "timeout": S}`` (run until such an event is pending, consume it and
  return it), the `advance` and `wait` steps of a trace;
- ``realtime[:FACTOR]``: simulated time follows a wall clock, FACTOR
  simulated seconds per wall second; the server calls `sync` before every
  command and from a ticker, so a client that only polls `query-jobs` sees
  jobs progress.

Events are delivered to every negotiated monitor with a timestamp taken from
simulated time (seconds and microseconds since the simulation started).
`quit` answers, emits SHUTDOWN and asks the server to stop, as QEMU does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.engine.machine import NS_PER_S, Machine
from sim.errors import QMPError
from sim.qmp import commands  # noqa: F401 - registers every command
from sim.qmp.cmd_query import QEMU_VERSION
from sim.qmp.dispatch import COMMANDS, Monitor
from sim.serve.session import QmpSession
from sim.serve.wire import encode_message
from sim.trace import Header

if TYPE_CHECKING:
    from sim.qmp.events import Event
    from sim.serve.record import Recorder

SIM_COMMANDS = ("x-blocksim-advance", "x-blocksim-wait", "quit")
MAX_ADVANCE_S = 1e9


@dataclass(frozen=True, slots=True)
class Pacing:
    """How simulated time moves: `step` (by command only) or `realtime` at `factor`."""

    mode: str = "step"
    factor: float = 1.0

    @staticmethod
    def parse(text: str) -> Pacing:
        """`step`, `realtime` or `realtime:FACTOR` (FACTOR > 0); raises ValueError."""
        if text == "step":
            return Pacing("step")
        if text == "realtime":
            return Pacing("realtime", 1.0)
        if text.startswith("realtime:"):
            try:
                factor = float(text.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"bad realtime factor in {text!r}") from None
            if not 0 < factor <= 1e6:
                raise ValueError(f"realtime factor must be in (0, 1e6], got {factor}")
            return Pacing("realtime", factor)
        raise ValueError(f"pace must be step, realtime or realtime:FACTOR, got {text!r}")


class SimHost:
    """A simulated QEMU 7.2 process serving QMP: machine, monitors, pacing, recorder."""

    def __init__(
        self,
        header: Header,
        policy: str | None = None,
        seed: int | None = None,
        pacing: Pacing | None = None,
        recorder: Recorder | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.header = header
        self.policy = policy or header.policy
        self.seed = header.seed if seed is None else seed
        self.machine = Machine(header.drives, self.policy, self.seed)
        self.monitor = Monitor(self.machine)
        self.pacing = pacing or Pacing()
        self.recorder = recorder
        self.sessions: list[QmpSession] = []
        self.quit_requested = False
        self.internal_errors: list[str] = []  # simulator bugs met while serving
        self._clock = clock
        self._base_wall = clock() if clock is not None else 0.0
        self._base_sim_ns = 0
        self._pumped = 0
        if recorder is not None:
            recorder.start(header, self.policy, self.seed)

    def serve_nbd(self) -> None:
        """Let nbd-server-start open real sockets (called by the server, in its loop)."""
        from sim.serve.nbd import NbdListener

        self.machine.state.exports.listener = NbdListener(self)

    # -- sessions -------------------------------------------------------------------------
    def open_session(self) -> QmpSession:
        session = QmpSession(self)
        self.sessions.append(session)
        return session

    def close_session(self, session: QmpSession) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def version(self) -> dict[str, Any]:
        return QEMU_VERSION

    def knows(self, name: str) -> bool:
        return name in COMMANDS or name in SIM_COMMANDS

    def event_count(self) -> int:
        return len(self.machine.events)

    # -- time ----------------------------------------------------------------------------
    def set_clock(self, clock: Callable[[], float]) -> None:
        """The wall clock realtime pacing follows (seconds, monotonic)."""
        self._clock = clock
        self._rebase()

    def sync(self) -> None:
        """Realtime pacing: bring simulated time up to the wall clock; deliver events."""
        if self.pacing.mode != "realtime" or self._clock is None:
            return
        elapsed = self._clock() - self._base_wall
        target = self._base_sim_ns + int(elapsed * self.pacing.factor * NS_PER_S)
        now = self.machine.now_ns
        if target > now:
            self.machine.env.run(until=target)
        self.pump()

    def _rebase(self) -> None:
        """After a sim-only jump in time, the wall clock counts from here."""
        if self._clock is not None:
            self._base_wall = self._clock()
            self._base_sim_ns = self.machine.now_ns

    def next_due_s(self) -> float | None:
        """Wall seconds until the next simulated event is due (realtime), else None."""
        if self.pacing.mode != "realtime":
            return None
        peek = self.machine.env.peek()
        if peek == float("inf"):
            return None
        return max(0.0, (peek - self.machine.now_ns) / NS_PER_S / self.pacing.factor)

    # -- events --------------------------------------------------------------------------
    def pump(self) -> None:
        """Send every event not yet sent to each negotiated monitor."""
        history = self.machine.events.history
        if self._pumped == len(history):
            return
        start = self._pumped
        wires = [encode_message(_event_message(ev)) for ev in history[start:]]
        self._pumped = len(history)
        for session in self.sessions:
            if not session.negotiated:
                continue
            begin = max(session.event_cursor, start)
            for i in range(begin, len(history)):
                session.deliver(wires[i - start])
            session.event_cursor = len(history)
            session.flush()

    # -- commands ------------------------------------------------------------------------
    def execute(
        self, session: QmpSession, name: str, args: dict[str, Any], request: dict[str, Any]
    ) -> dict[str, Any]:
        """Run one checked request for `session`; returns the response (no id)."""
        self.sync()
        if self.recorder is not None and name != "quit":
            self.recorder.mark(self.machine.now_ns)
        if name in SIM_COMMANDS:
            response = self._sim_command(name, args, request)
        else:
            self.machine.hmp_output = None
            clean: dict[str, Any] = {"execute": name}
            if "arguments" in request:
                clean["arguments"] = args
            response = self.monitor.execute(clean)
            if self.recorder is not None:
                self.recorder.execute(request, response)
        self.pump()
        return response

    def _sim_command(
        self, name: str, args: dict[str, Any], request: dict[str, Any]
    ) -> dict[str, Any]:
        if name == "quit":
            _no_args(args)
            self.quit_requested = True
            self.close()  # the recorded trace ends before QEMU's shutdown
            self.machine.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
            return {"return": {}}
        if name == "x-blocksim-advance":
            seconds = _number(args, "seconds", required=True)
            _only(args, ("seconds",))
            if seconds is None or not 0 <= seconds <= MAX_ADVANCE_S:
                raise QMPError(f"Parameter 'seconds' must be from 0 to {MAX_ADVANCE_S:g}")
            self.machine.advance(float(seconds))
            self._rebase()
            if self.recorder is not None:
                self.recorder.advance(self.machine.now_ns, seconds)
            return {"return": {}}
        # x-blocksim-wait
        event = args.get("event")
        if "event" not in args:
            raise QMPError("Parameter 'event' is missing")
        if not isinstance(event, str):
            raise QMPError("Invalid parameter type for 'event', expected: string")
        data = args.get("data", {})
        if not isinstance(data, dict):
            raise QMPError("Invalid parameter type for 'data', expected: object")
        timeout = _number(args, "timeout", required=False)
        _only(args, ("event", "data", "timeout"))
        if timeout is not None and not 0 <= timeout <= MAX_ADVANCE_S:
            raise QMPError(f"Parameter 'timeout' must be from 0 to {MAX_ADVANCE_S:g}")
        limit = 3600.0 if timeout is None else float(timeout)
        ev = self.machine.wait_for(event, data, int(limit * NS_PER_S))
        self._rebase()
        if ev is None:
            queue = "empty" if self.machine.env.peek() == float("inf") else "past the timeout"
            raise QMPError(
                f"x-blocksim-wait: no {event} event matching {data} can come: "
                f"the simulated event queue is {queue}"
            )
        if self.recorder is not None:
            self.recorder.wait(self.machine.now_ns, args, ev.wire())
        return {"return": ev.wire()}

    def close(self) -> None:
        """End of the session: the recorder writes the final state; NBD stops."""
        listener = self.machine.state.exports.listener
        if listener is not None:
            listener.stop()
        if self.recorder is not None:
            self.recorder.finish(self.machine)


def _event_message(ev: Event) -> dict[str, Any]:
    seconds, rest = divmod(ev.time_ns, NS_PER_S)
    return {
        "timestamp": {"seconds": seconds, "microseconds": rest // 1000},
        "event": ev.name,
        "data": ev.data,
    }


def _number(args: dict[str, Any], key: str, required: bool) -> float | None:
    if key not in args:
        if required:
            raise QMPError(f"Parameter '{key}' is missing")
        return None
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QMPError(f"Invalid parameter type for '{key}', expected: number")
    return float(value)


def _only(args: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in args:
        if key not in allowed:
            raise QMPError(f"Parameter '{key}' is unexpected")


def _no_args(args: dict[str, Any]) -> None:
    _only(args, ())
