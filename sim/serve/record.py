"""`--record-trace`: a served session written as a trace that `blocksim replay` repeats.

Every command that reached the machine becomes an `execute` step whose
`expect` is the answer it got; `x-blocksim-advance` and `x-blocksim-wait`
become `advance` and `wait` steps; simulated time that passed between
commands under realtime pacing becomes an `advance` step before the next
one.  Requests refused by the monitor itself (bad JSON, negotiation, oob)
never reached the machine and are not written.  Lines are flushed as they
happen; `finish` appends the `final-expect` (final state and every event).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sim.engine.machine import NS_PER_S
from sim.qmp.cmd_query import final_state
from sim.trace import Header, dumps

if TYPE_CHECKING:
    from sim.engine.machine import Machine


class Recorder:
    """Writes one trace file while a served session runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._last_ns = 0
        self.steps = 0

    def start(self, header: Header, policy: str, seed: int) -> None:
        raw = dict(header.raw)
        raw["policy"] = policy
        raw["seed"] = seed
        self._file = self.path.open("w", encoding="utf-8")
        self._write(raw)

    def _write(self, obj: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(dumps(obj) + "\n")
            self._file.flush()

    def mark(self, now_ns: int) -> None:
        """Time passed since the last step (realtime pacing): an `advance` step."""
        if now_ns > self._last_ns:
            self._write({"advance": (now_ns - self._last_ns) / NS_PER_S})
            self.steps += 1
            self._last_ns = now_ns

    def execute(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        step: dict[str, Any] = {"execute": request.get("execute", request.get("exec-oob"))}
        if "arguments" in request:
            step["arguments"] = request["arguments"]
        if "id" in request:
            step["id"] = request["id"]
        step["expect"] = {k: v for k, v in response.items() if k != "id"}
        self._write(step)
        self.steps += 1

    def advance(self, now_ns: int, seconds: float) -> None:
        self._write({"advance": seconds})
        self.steps += 1
        self._last_ns = now_ns

    def wait(self, now_ns: int, args: dict[str, Any], event: dict[str, Any]) -> None:
        self._write({"wait": dict(args), "expect": event})
        self.steps += 1
        self._last_ns = now_ns

    def finish(self, machine: Machine) -> None:
        if self._file is None:
            return
        final = final_state(machine)
        final["violations"] = []
        final["events"] = [e.wire() for e in machine.events.history]
        self._write({"final-expect": final})
        self._file.close()
        self._file = None
