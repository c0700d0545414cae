"""MachineView: what an observer may see of a simulated QEMU process.

Checkers (sim/check) are typed against this protocol, not against `Machine`:
the block state and the event log to read, the clock, whether anything is
still scheduled, whether faults are armed, and the hooks they register on
(QMP commands before and after they run; guest I/O goes through
`state.write_observers` / `state.discard_observers`).  `Machine` satisfies it.
Nothing here lets an observer advance time, run a command or emit an event.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any, Protocol

from sim.model.events import EventLog
from sim.model.state import BlockState

CommandObserver = Callable[[Any, dict[str, Any]], None]  # (request, response)
BeforeCommandObserver = Callable[[Any], None]  # (request)


class MachineView(Protocol):
    """A QEMU process as its observers see it."""

    @property
    def state(self) -> BlockState: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def now_ns(self) -> int: ...

    @property
    def faults(self) -> Sized: ...

    @property
    def command_observers(self) -> list[Any]: ...

    @property
    def before_command_observers(self) -> list[Any]: ...

    def idle(self) -> bool:
        """True when nothing is scheduled: no job or workload can make progress."""
        ...
