"""What a checker sees of a step, and read-only helpers over the model.

`StepChecker` is the base of the checkers in this package: it keeps a
`StepLog` (the QMP commands of the current step with their responses, the
events emitted since the last step, whether simulated time moved) and calls
`check_step(index)` after every step and `check_end()` once at the end.

A step is *quiet* when it only did guest I/O or queries, emitted no event and
let no time pass: the graph, the jobs and the bitmaps' owners cannot have
changed, so checkers may look only at what the I/O touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sim.check.base import Checker, Violation
from sim.model.bitmap import DirtyBitmap
from sim.model.events import Event
from sim.model.graph import BlockBackend, BlockGraph, BlockNode

if TYPE_CHECKING:
    from sim.engine.view import MachineView
    from sim.model.jobs import Job

Owner = BlockNode | BlockBackend
T = TypeVar("T")
QUIET_COMMANDS = ("human-monitor-command", "x-debug-block-dirty-bitmap-sha256")
BITMAP_COMMANDS = (
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "block-dirty-bitmap-merge",
)
ENDED = ("concluded", "null")
JOB_END_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")


class Command:
    """One QMP command of a step: name, arguments, response."""

    __slots__ = ("name", "arguments", "response")

    def __init__(self, name: str, arguments: dict[str, Any], response: dict[str, Any]) -> None:
        self.name, self.arguments, self.response = name, arguments, response

    @property
    def ok(self) -> bool:
        return "return" in self.response

    def actions(self) -> list[tuple[str, dict[str, Any]]]:
        """(type, data) of each action: a transaction's actions, else the command itself."""
        if self.name == "transaction":
            raw = self.arguments.get("actions")
            if not isinstance(raw, list):
                return []
            return [(str(a.get("type")), a.get("data") or {}) for a in raw if isinstance(a, dict)]
        return [(self.name, self.arguments)]


class SharedLog:
    """The one StepLog of the checkers `make_checkers` built together: made for the
    first machine one of them watches, made anew for another machine.  A checker
    built alone gets a SharedLog of its own.  Nothing is stored on the machine."""

    def __init__(self) -> None:
        self._log: StepLog | None = None

    def of(self, machine: MachineView) -> StepLog:
        if self._log is None or self._log.machine is not machine:
            self._log = StepLog(machine)
        return self._log


class StepLog:
    """The commands, events and time of one step, as seen from outside.

    One StepLog serves every checker built together (`SharedLog`): it records commands as they run and moves on to a new step when the first
    checker asks about it (`sync(index)`), so its verdicts (`quiet`,
    `data_may_change`) are computed once per step, not once per checker.
    """

    def __init__(self, machine: MachineView) -> None:
        self.machine = machine
        self.index = 0  # the step the fields below describe
        self.commands: list[Command] = []
        self._pending: list[Command] = []  # commands of the step that is running
        self._event_mark = self._next_event_mark = len(machine.events.history)
        self._time_mark = self._next_time_mark = machine.now_ns
        # quiet: only guest I/O and queries, no event, no time (nothing but contents changed)
        self.quiet = False
        self._data: bool | None = None
        self._once: dict[str, Any] = {}  # what `once` computed for this step
        machine.command_observers.append(self._on_command)

    def _on_command(self, request: Any, response: dict[str, Any]) -> None:
        if isinstance(request, dict):
            name = request.get("execute")
            if isinstance(name, str):
                args = request.get("arguments")
                self._pending.append(Command(name, args if type(args) is dict else {}, response))

    def sync(self, index: int) -> None:
        """Describe step `index` (which just ran); a no-op when it already does."""
        if index == self.index:
            return
        self.index = index
        self.commands, self._pending = self._pending, []
        self._event_mark, self._time_mark = self._next_event_mark, self._next_time_mark
        machine = self.machine
        self._next_event_mark = len(machine.events.history)
        self._next_time_mark = machine.now_ns
        self._data = None
        self._once = {}
        self.quiet = not self._moved and all(
            c.name in QUIET_COMMANDS or c.name.startswith("query-") for c in self.commands
        )

    def once(self, key: str, compute: Callable[[], T]) -> T:
        """`compute()` as the model is after this step, computed for the first checker
        that asks and handed to the others (checkers change nothing, so it holds for
        the whole step).  Only for values no checker changes."""
        if key not in self._once:
            self._once[key] = compute()
        found: T = self._once[key]
        return found

    def events(self) -> list[Event]:
        """Events emitted during this step, in order."""
        return self.machine.events.history[self._event_mark : self._next_event_mark]

    @property
    def _moved(self) -> bool:
        return self._next_time_mark != self._time_mark or self._next_event_mark != self._event_mark

    @property
    def data_may_change(self) -> bool:
        """Could this step have changed the graph or any node's data other than by guest
        writes?  Not if time stood still, nothing was emitted and the commands only
        touched bitmaps, did guest I/O or queried."""
        if self._data is None:
            self._data = self._moved or any(
                not (kind in QUIET_COMMANDS or kind in BITMAP_COMMANDS or kind.startswith("query-"))
                for cmd in self.commands
                for kind, _ in cmd.actions()
            )
        return self._data


class StepChecker(Checker):
    """A checker fed with a StepLog: implement `check_step` and `check_end`."""

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.state = machine.state
        self.graph = machine.state.graph
        self.log = (self.shared or SharedLog()).of(machine)
        self.step = 0

    quiet_work = False  # True: needs_quiet_step() may say yes (see there)

    def after_step(self, index: int) -> list[Violation]:
        self.step = index
        log = self.log
        if log.index != index:
            log.sync(index)
        if log.quiet and not (self.quiet_work and self.needs_quiet_step()):
            return []
        start = len(self.found)
        self.check_step(index)
        return self.found[start:]

    def needs_quiet_step(self) -> bool:
        """Does `check_step` have work after a quiet step (guest I/O, queries)?  Most
        checkers have none: such a step changes neither the graph, nor jobs, nor bitmaps'
        owners.  (Checkers that look at guest writes do that in their write observer.)"""
        return False

    def at_end(self) -> list[Violation]:
        self.check_end()
        return self.violations()

    def check_step(self, index: int) -> None:
        """Look at the model after step `index` and report what is broken."""

    def check_end(self) -> None:
        """Look at the model once more after the last step."""


# -- read-only helpers over the model --------------------------------------------------------


def owners(graph: BlockGraph) -> list[Owner]:
    """Everything that holds bitmaps: backends (bb-attached policy), then nodes."""
    out: list[Owner] = list(graph.backends.values())
    out.extend(graph.nodes)
    return out


def listed_bitmaps(graph: BlockGraph) -> list[tuple[Owner, DirtyBitmap]]:
    """(owner, bitmap) for every bitmap listed anywhere, in owner order."""
    return [(o, bm) for o in owners(graph) for bm in o.bitmaps]


def label(owner: Owner) -> str:
    """How a message names an owner: `device 'drive0'` or `node 'fmt0'`."""
    if isinstance(owner, BlockBackend):
        return f"device '{owner.name}'"
    if owner.is_filter:
        return f"{owner.driver} filter node '{owner.node_name}'"
    return f"node '{owner.node_name}'"


def owner_of(graph: BlockGraph, bm: DirtyBitmap) -> Owner | None:
    """The first owner listing `bm`, or None when no list holds it."""
    for owner in owners(graph):
        for other in owner.bitmaps:
            if other is bm:
                return owner
    return None


def live_jobs(jobs: list[Job]) -> list[Job]:
    """Jobs that have not concluded yet, in creation order."""
    return [j for j in jobs if j.status not in ENDED]
