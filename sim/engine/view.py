"""MachineView: what an observer may see of a simulated QEMU process.

Checkers (sim/check) are typed against this protocol, not against `Machine`:
the block state and the event log to read, the clock, whether anything is
still scheduled, whether faults are armed, and the hooks they register on
(QMP commands before and after they run; guest I/O goes through
`state.write_observers` / `state.discard_observers`).  `Machine` satisfies it.
Nothing here lets an observer advance time, run a command or emit an event.
"""

from __future__ import annotations

import functools
import hashlib
import os
import types
from collections.abc import Callable
from typing import Any, Protocol

from sim.errors import SimulatorBug
from sim.model.events import EventLog
from sim.model.state import BlockState


class Armed(Protocol):
    """Something that says whether it holds anything (the fault table: true while a
    fault is armed)."""

    def __bool__(self) -> bool: ...


class MachineView(Protocol):
    """A QEMU process as its observers see it."""

    @property
    def state(self) -> BlockState: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def now_ns(self) -> int: ...

    @property
    def faults(self) -> Armed: ...

    @property
    def command_observers(self) -> list[Any]: ...

    @property
    def before_command_observers(self) -> list[Any]: ...

    def idle(self) -> bool:
        """True when nothing is scheduled: no job or workload can make progress."""
        ...


# -- the read-only guard (a debug mode) ------------------------------------------------------
#
# The protocol above says what an observer may touch; the guard checks at run time that
# it touched nothing.  It digests everything reachable from the machine's state and event
# log before an observer runs and compares after: a change is a SimulatorBug naming the
# observer.  It costs a walk of the state per observer call, so it is off on the hot path
# (campaigns, replays) and on where asked: `BLOCKSIM_GUARD_VIEW=1`, or
# `Replayer(..., guard=True)`.

GUARD_ENV = "BLOCKSIM_GUARD_VIEW"
# attributes observers may change, or that change when read: the observer lists checkers
# register on, and the callbacks the state emits through
NOT_STATE = frozenset({"write_observers", "discard_observers", "emit", "warn"})
_ATOMS = (int, float, str, bytes, bool, type(None), complex)
_CODE = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    functools.partial,
)


def guard_wanted() -> bool:
    """Is the read-only guard asked for in the environment?"""
    return os.environ.get(GUARD_ENV, "") not in ("", "0")


def state_digest(machine: MachineView) -> str:
    """A digest of what an observer can reach: the block state (graph, bitmaps, jobs,
    images, exports, stamps) and the event log.  Callables and numpy arrays are left
    out (in the model an array is a cached copy of lists that are digested); an object
    with a `view_digest()` method (disk content: its write version) is digested by it,
    so that caches a read fills in are not taken for changes."""
    out: list[str] = []
    seen: dict[int, int] = {}
    stack: list[Any] = [machine.state, machine.events, machine.now_ns]
    while stack:
        obj = stack.pop()
        if isinstance(obj, _ATOMS):
            out.append(repr(obj))
            continue
        if isinstance(obj, _CODE) or type(obj).__module__ == "numpy":
            continue
        key = id(obj)
        if key in seen:
            out.append(f"@{seen[key]}")
            continue
        seen[key] = len(seen)
        out.append(type(obj).__name__)
        digest = getattr(obj, "view_digest", None)
        if digest is not None and callable(digest):
            out.append(repr(digest()))
        elif isinstance(obj, dict):
            out.append(f"{{{len(obj)}")
            for k, v in reversed(list(obj.items())):
                stack.extend((v, k))
        elif isinstance(obj, list | tuple):
            out.append(f"[{len(obj)}")
            stack.extend(reversed(obj))
        elif isinstance(obj, set | frozenset):
            out.append(f"<{len(obj)}:{sorted(repr(x) for x in obj)}")
        elif isinstance(obj, type):
            out.append(obj.__qualname__)
        else:
            fields = _fields(obj)
            out.append(",".join(name for name, _ in fields))
            stack.extend(value for _, value in reversed(fields))
    return hashlib.blake2b("\x00".join(out).encode(), digest_size=16).hexdigest()


def _fields(obj: Any) -> list[tuple[str, Any]]:
    names: list[str] = []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    found = [(n, getattr(obj, n)) for n in names if n not in NOT_STATE and hasattr(obj, n)]
    found += [(n, v) for n, v in getattr(obj, "__dict__", {}).items() if n not in NOT_STATE]
    return [(n, v) for n, v in found if not isinstance(v, _CODE)]


class GuardedObserver:
    """Debug mode: runs an observer (a checker hook, a write or command observer) and
    raises SimulatorBug if the machine's state digest changed across the call."""

    def __init__(self, machine: MachineView, fn: Callable[..., Any], name: str) -> None:
        self.machine = machine
        self.fn = fn
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        before = state_digest(self.machine)
        result = self.fn(*args, **kwargs)
        if state_digest(self.machine) != before:
            raise SimulatorBug(
                f"{self.name} changed the machine it observes (observers read the "
                "machine through its view and must not change it)"
            )
        return result


def guard_observers(machine: MachineView, owner: str, marks: dict[str, int]) -> None:
    """Wrap every observer registered since `marks` (list name -> length before) in a
    GuardedObserver attributed to `owner`."""
    for where, hooks in observer_lists(machine).items():
        for i in range(marks.get(where, 0), len(hooks)):
            if not isinstance(hooks[i], GuardedObserver):
                hooks[i] = GuardedObserver(machine, hooks[i], f"{owner} ({where} hook)")


def observer_lists(machine: MachineView) -> dict[str, list[Any]]:
    """The lists observers register on, by name."""
    return {
        "command": machine.command_observers,
        "before-command": machine.before_command_observers,
        "write": machine.state.write_observers,
        "discard": machine.state.discard_observers,
    }
