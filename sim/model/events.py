"""QMP events as values: a history of everything emitted and a queue of what no
`wait` consumed.  They sit at the bottom, like qemu.qmp's models: the model's jobs
emit them, the engine keeps the log, checkers and the QMP surface read it.

Mirrors qemu.qmp's EventListener: a `wait` step consumes the first
not-yet-consumed event whose name matches and whose `data` contains the given
keys with equal values (trace spec, step 3).  Timestamps are simulated
nanoseconds; they are dropped from comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Event:
    """One QMP event as QEMU would send it."""

    time_ns: int
    name: str
    data: dict[str, Any]
    consumed: bool = False

    def wire(self) -> dict[str, Any]:
        return {"event": self.name, "data": self.data}


def data_matches(data: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(k in data and data[k] == v for k, v in want.items())


class EventLog:
    """Every event of a run, in emission order."""

    def __init__(self) -> None:
        self.history: list[Event] = []
        self._scan_from = 0  # every event before this index is consumed

    def append(self, event: Event) -> None:
        self.history.append(event)

    def take(self, name: str, want: dict[str, Any], start: int = 0) -> Event | None:
        """Consume and return the first unconsumed matching event from index `start`
        on (a waiter that already looked at the events before it), if any."""
        history = self.history
        i = self._scan_from
        while i < len(history) and history[i].consumed:
            i += 1
        self._scan_from = i
        for j in range(max(i, start), len(history)):
            ev = history[j]
            if not ev.consumed and ev.name == name and data_matches(ev.data, want):
                ev.consumed = True
                return ev
        return None

    def since(self, index: int) -> list[Event]:
        return self.history[index:]

    def __len__(self) -> int:
        return len(self.history)
