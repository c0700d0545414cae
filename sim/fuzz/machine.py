"""The fuzzer's state machine: Hypothesis drives a simulated QEMU through QMP.

Theory of operation.  `BlockMachine` is a Hypothesis `RuleBasedStateMachine`
whose every rule builds one *trace step* (a dict exactly as it would appear
in a `.jsonl` file) and feeds it to a `sim.replay.Replayer`, the same code
path `blocksim replay` takes.  The steps run so far are therefore always a
valid trace: a failing example is exported as a file that replays to the
same responses, byte for byte.

- **Invariants** are the selected checkers (`sim.check`), run by the
  Replayer after every step.  A violation fails the example with a
  `FuzzFailure` whose notes hold the shrunk trace as JSON Lines.  A simulator
  exception (a Monitor internal error, or an exception escaping a step) is
  the failure kind `internal-error`.
- **Swarm testing**: the first rule of every example draws which rule groups
  (`GROUPS`) are enabled; the other rules have a precondition on their group,
  so rare combinations of commands get a real probability.
- **Live names**: arguments are drawn mostly from what exists now (devices,
  node names, bitmaps, jobs, image files), read from the simulated state;
  with the `invalid` group on, pools also hold names that do not exist and
  values QEMU refuses.
- A step the replay calls a *trace error* (a `wait` that can never be
  satisfied, a sim-only step the engine refuses) makes the example invalid
  (`hypothesis.reject`), so exported traces never hold one.

Subclass it to add rules or fix the configuration (class attributes
`policy`, `checks`, `drives`, `groups`); see "Fuzzing" in README.md.
"""

from __future__ import annotations

import gc
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from hypothesis import note, reject, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize

from sim.check import CHECKERS, Checker, Violation, make_checkers
from sim.fuzz.choices import Choices
from sim.fuzz.rules_graph import GraphRules
from sim.fuzz.rules_jobs import JobRules
from sim.fuzz.rules_storage import StorageRules
from sim.replay import Replayer, StepOutcome
from sim.trace import Trace, dumps, parse_header, parse_step

MiB = 1 << 20
INTERNAL_ERROR = "internal-error"
GRAPH_CHECK = "graph-well-formed"

# Rule groups for swarm testing.  "time" is always on: it holds `advance`,
# the one rule that is valid in every state.
GROUPS = (
    "bitmap",
    "io",
    "snapshot",
    "blockdev",
    "backup",
    "mirror",
    "commit",
    "stream",
    "verbs",
    "transaction",
    "query",
    "wait",
    "workload",
    "fault",
    "invalid",
)
ALWAYS_ON = frozenset({"time"})
SIM_ONLY_GROUPS = frozenset({"workload", "fault"})

DRIVE0: dict[str, Any] = {
    "id": "drive0",
    "node-name": "fmt0",
    "file-node-name": "proto0",
    "format": "qcow2",
    "size": 64 * MiB,
}
DRIVE1: dict[str, Any] = {
    "id": "drive1",
    "node-name": "fmt1",
    "file-node-name": "proto1",
    "format": "qcow2",
    "size": 64 * MiB,
}

T = TypeVar("T")


class FuzzObserver(Protocol):
    """What a campaign hears from every example (all methods optional in effect)."""

    def example_started(self, machine: MachineCore) -> None: ...

    def step_done(
        self, machine: MachineCore, step: dict[str, Any], outcome: StepOutcome, jobs: dict[str, str]
    ) -> None: ...

    def failure_seen(self, failure: FuzzFailure) -> None: ...

    def example_finished(self, machine: MachineCore) -> float: ...


class FuzzFailure(AssertionError):
    """An example broke an invariant (or the simulator): the trace that shows it.

    `kind` is the invariant's name or "internal-error"; `header` and `steps`
    are the trace (dicts as on the wire); `violations` the checker records
    of the failing step; `message` one line for humans."""

    kind: str = ""

    def __init__(
        self,
        kind: str,
        message: str,
        header: dict[str, Any],
        steps: list[dict[str, Any]],
        violations: list[dict[str, Any]],
    ) -> None:
        super().__init__(f"[{kind}] step {len(steps)}: {message}")
        self.kind = kind
        self.message = message
        self.header = header
        self.steps = steps
        self.violations = violations

    def trace_lines(self) -> list[str]:
        """The failing trace as JSON Lines (header first, no expectations)."""
        return [dumps(self.header)] + [dumps(s) for s in self.steps]


_FAILURE_TYPES: dict[str, type[FuzzFailure]] = {}
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+")


def message_shape(message: str) -> str:
    """A message with names and numbers blanked: `Dirty bitmap '*' not found`."""
    return _NUMBER.sub("N", _QUOTED.sub("'*'", message))[:160]


def failure_key(kind: str, message: str) -> str:
    """What tells two failures apart: the invariant, and the shape of the first two
    clauses of its message (names, numbers and QMP command names blanked), so that
    `device '*' lost guest data in blockdev-add: N bytes differ...` and `... in
    blockdev-del: ...` are one failure but a bitmap now on a snapshot overlay and
    one now on a job's filter are two."""
    from sim.qmp.schema import COMMAND_NAMES

    shape = ": ".join(message_shape(message).split(": ")[:2])
    words = [
        w.replace(w.rstrip(",;:."), "*") if w.rstrip(",;:.") in COMMAND_NAMES else w
        for w in shape.split(" ")
    ]
    return f"{kind}: {' '.join(words)}"


def failure_type(kind: str, message: str) -> type[FuzzFailure]:
    """One exception class per failure key, so that Hypothesis tracks and shrinks each
    distinct failure on its own (it tells bugs apart by exception type)."""
    key = failure_key(kind, message)
    cls = _FAILURE_TYPES.get(key)
    if cls is None:
        tag = re.sub(r"\W+", "_", kind).strip("_")
        cls = type(f"Failure_{tag}_{len(_FAILURE_TYPES)}", (FuzzFailure,), {"kind": kind})
        _FAILURE_TYPES[key] = cls
    return cls


def supported_groups() -> frozenset[str]:
    """The groups this simulator can run: sim-only steps only once the engine has them."""
    from sim.engine.machine import Machine
    from sim.errors import TraceError

    out = set(GROUPS)
    probes = {
        "workload": {
            "workload": {
                "device": "d",
                "pattern": "uniform",
                "rate": 1,
                "size": 512,
                "duration": 1,
            }
        },
        "fault": {"fault": {"node": "n", "op": "write"}},
    }
    for name, body in probes.items():
        m = Machine(parse_header({"trace": 1, "drives": [DRIVE0]}).drives)
        step = parse_step(body, 2)
        try:
            m.sim_only_step(step)
        except TraceError as exc:
            if "not supported" in str(exc) or "unknown sim-only" in str(exc):
                out.discard(name)
        except Exception:  # noqa: BLE001 - an engine mid-rewrite: leave the group out
            out.discard(name)
    return frozenset(out)


_SUPPORTED: frozenset[str] | None = None


class MachineCore(RuleBasedStateMachine):
    """Runs trace steps on a Replayer and turns violations into failures."""

    # -- configuration (override in a subclass) -------------------------------------------
    policy: ClassVar[str] = "qemu-7.2"
    checks: ClassVar[tuple[str, ...] | None] = None  # invariants to check; None: all
    drives: ClassVar[tuple[dict[str, Any], ...]] = (DRIVE0,)
    second_drive: ClassVar[dict[str, Any] | None] = DRIVE1  # sometimes added per example
    groups: ClassVar[tuple[str, ...]] = GROUPS  # the groups swarm testing draws from
    swarm: ClassVar[bool] = True  # False: every group on in every example
    # checked but not failing: invariant names, or failure keys (`failure_key`)
    muted: ClassVar[frozenset[str]] = frozenset()
    observer: ClassVar[FuzzObserver | None] = None
    name: ClassVar[str] = "fuzz"

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, Any]] = []
        self.outcomes: list[StepOutcome] = []
        self.enabled: frozenset[str] = frozenset()
        self.invalid = False
        self.header: dict[str, Any] = {}
        self.replayer: Replayer | None = None
        self.guard = CycleGuard()
        self._counter = 0
        if self.observer is not None:
            self.observer.example_started(self)

    # -- the first step of every example ---------------------------------------------------
    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """Draw the swarm (enabled groups), the drives and the simulator seed."""
        global _SUPPORTED
        if _SUPPORTED is None:
            _SUPPORTED = supported_groups()
        offered = [g for g in self.groups if g in _SUPPORTED]
        if self.swarm:
            # each group is on with probability density/4, the density itself drawn per
            # example: few groups give dense interleavings of few commands
            density = data.draw(st.integers(1, 3))
            chosen = {g for g in offered if data.draw(st.integers(0, 3)) >= 4 - density}
        else:
            chosen = set(offered)
        self.enabled = frozenset(chosen) | ALWAYS_ON
        self.invalid = "invalid" in self.enabled
        drives = [dict(d) for d in self.drives]
        if self.second_drive is not None and data.draw(st.integers(0, 3)) == 3:
            drives.append(dict(self.second_drive))
        seed = data.draw(st.integers(0, 7))
        self.open(drives, seed)

    def open(self, drives: list[dict[str, Any]], seed: int) -> None:
        """Build the header and the Replayer every later step runs on."""
        names = list(self.checks) if self.checks is not None else list(CHECKERS)
        self.header = {
            "trace": 1,
            "name": self.name,
            "drives": drives,
            "policy": self.policy,
            "seed": seed,
            "invariants": names,
        }
        trace = Trace(parse_header(self.header), [], None)
        self.guard = CycleGuard()
        checkers = [
            c if c.name == GRAPH_CHECK else Guarded(c, self.guard) for c in make_checkers(names)
        ]
        self.replayer = Replayer(trace, checkers=checkers)

    # -- running steps ---------------------------------------------------------------------
    @property
    def machine(self) -> Any:
        """The simulated QEMU (sim.engine.machine.Machine) of this example."""
        assert self.replayer is not None
        return self.replayer.machine

    def run(self, step: dict[str, Any]) -> StepOutcome:
        """Run one trace step; fail the example on a violation or a simulator bug."""
        assert self.replayer is not None
        index = len(self.steps) + 1
        self.steps.append(step)
        jobs = {j.id: j.status for j in self.machine.state.jobs}
        internal_before = len(self.replayer.monitor.internal_errors)
        try:
            outcome: StepOutcome | None = self.replayer.run_step(index, parse_step(step, index + 1))
            escaped = ""
        except Exception as exc:  # noqa: BLE001 - an exception escaping the simulator
            outcome, escaped = None, describe_exception(exc)
        if outcome is None:  # outside the except block: the failure must not keep the machine
            self.fail(INTERNAL_ERROR, f"{escaped} (escaped step {index})", [])
        assert outcome is not None
        self.outcomes.append(outcome)
        if outcome.error is not None:
            reject()  # not a valid trace (e.g. a wait that can never be satisfied)
        if self.observer is not None:
            self.observer.step_done(self, step, outcome, jobs)
        if self.guard.cyclic(self.machine, index):
            self.stop_on_cycle(outcome)
        internal = self.replayer.monitor.internal_errors[internal_before:]
        if internal:
            self.fail(INTERNAL_ERROR, internal[0], [])
        live = [v for v in outcome.violations if not self.is_muted(v)]
        if live:
            self.fail(str(live[0]["invariant"]), str(live[0]["message"]), live)
        return outcome

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> StepOutcome:
        step: dict[str, Any] = {"execute": command}
        if arguments is not None:
            step["arguments"] = arguments
        return self.run(step)

    def qemu_io(self, target: str, subcommand: str) -> StepOutcome:
        line = f'qemu-io {target} "{subcommand}"'
        return self.qmp("human-monitor-command", {"command-line": line})

    def fail(self, kind: str, message: str, violations: list[dict[str, Any]]) -> None:
        failure = failure_type(kind, message)(
            kind, message, dict(self.header), list(self.steps), violations
        )
        note("shrunk trace (JSON Lines; replay with `blocksim replay FILE`):")
        note("\n".join(failure.trace_lines()))
        if self.observer is not None:
            self.observer.failure_seen(failure)
        raise failure

    def teardown(self) -> None:
        if self.replayer is None:
            return
        try:
            if sys.exc_info()[0] is None:  # the example ran to its end: end-of-run invariants
                self.check_at_end()
        finally:
            try:
                if self.observer is not None:
                    # push generation towards examples that reach rarely seen coverage
                    target(self.observer.example_finished(self), label="coverage rarity")
            finally:
                # Hypothesis keeps failing examples' exceptions, whose tracebacks
                # reach this object: drop the simulated machine (disk contents, MBs)
                release(self.replayer)
                self.replayer = None
                self.outcomes = []
                collect_garbage()

    def is_muted(self, violation: dict[str, Any]) -> bool:
        kind = str(violation["invariant"])
        if not self.muted:
            return False
        return kind in self.muted or failure_key(kind, str(violation["message"])) in self.muted

    def stop_on_cycle(self, outcome: StepOutcome) -> None:
        """A cyclic graph hangs the model's chain walks: end the example now, as a
        graph-well-formed failure if that checker said so, else as an internal error."""
        said = [v for v in outcome.violations if v["invariant"] == GRAPH_CHECK]
        if said and not self.is_muted(said[0]):
            self.fail(GRAPH_CHECK, str(said[0]["message"]), said)
        if said or GRAPH_CHECK in self.muted:
            reject()  # a known (muted) failure: this example can go no further
        self.fail(INTERNAL_ERROR, "the block graph has a cycle (no checker reported it)", [])

    def check_at_end(self) -> None:
        """Checkers' `at_end()` verdicts, as a replay's final line would report them."""
        assert self.replayer is not None
        found: list[dict[str, Any]] = []
        for checker in self.replayer.checkers:
            found.extend(v.to_dict() for v in checker.at_end())
        live = [v for v in found if not self.is_muted(v)]
        if live:
            self.fail(str(live[0]["invariant"]), str(live[0]["message"]), live)

    # -- live names (the state of the simulated QEMU) --------------------------------------
    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def pick(self, c: Choices, options: Sequence[T], bad: Sequence[T] = ()) -> T:
        """One of `options`; with the invalid group on, one time in eight one of `bad`
        (also when there is no option at all)."""
        use_bad = bool(bad) and (not options or (self.invalid and c.rarely(8)))
        return c.pick(bad if use_bad else options)

    def devices(self) -> list[str]:
        return list(self.machine.state.graph.backends)

    def node_names(self) -> list[str]:
        return [n.node_name for n in self.machine.state.graph.nodes if not n.auto_named]

    def targets(self) -> list[str]:
        """What a `node`/`device` argument may name: devices first, then node names."""
        return self.devices() + self.node_names()

    def bitmap_addresses(self) -> list[tuple[str, str]]:
        """(node-or-device, name) of every named bitmap, by node and by device."""
        g = self.machine.state.graph
        out: list[tuple[str, str]] = []
        for bb in g.backends.values():
            for bm in bb.bitmaps:
                if bm.name:
                    out.append((bb.name, bm.name))
            if bb.root is not None:
                out.extend((bb.name, bm.name) for bm in bb.root.bitmaps if bm.name)
        for node in g.nodes:
            out.extend((node.node_name, bm.name) for bm in node.bitmaps if bm.name)
        return out

    def bitmap_names(self) -> list[str]:
        names = [name for _, name in self.bitmap_addresses()]
        return list(dict.fromkeys(names + ["b0", "b1", "b2"]))

    def job_ids(self) -> list[str]:
        return [j.id for j in self.machine.state.jobs]

    def image_files(self) -> list[str]:
        return list(self.machine.state.graph.images)

    def free_nodes(self) -> list[str]:
        """Named nodes nobody uses: overlays for blockdev-snapshot, targets of *-backup/mirror."""
        g = self.machine.state.graph
        return [n.node_name for n in g.nodes if not n.auto_named and not g.has_users(n)]

    def chain_nodes(self, device: str) -> list[str]:
        """The named data nodes under `device`, top first (for commit/stream bases)."""
        g = self.machine.state.graph
        bb = g.backends.get(device)
        out: list[str] = []
        node = bb.root if bb is not None else None
        while node is not None and len(out) < 64:  # bounded: a broken graph may have a cycle
            if node.is_format and not node.auto_named:
                out.append(node.node_name)
            node = node.filtered_child() if node.is_filter else node.backing
        return out

    def size_of(self, target: str) -> int:
        node = self.machine.state.graph.lookup_bs(target)
        return node.size_bytes if node is not None else 64 * MiB


def release(replayer: Replayer | None) -> None:
    """Forget a finished example's Machine everywhere a module keeps it.

    Workaround: sim.check.observe.StepLog._shared is a WeakKeyDictionary whose values
    (StepLogs) hold their key (the Machine), so no entry ever goes away and every
    Machine a campaign builds stays alive (reported to the checkers' owner)."""
    if replayer is None:
        return
    try:
        from sim.check.observe import StepLog
    except ImportError:  # pragma: no cover - a checker package without StepLog
        return
    shared = getattr(StepLog, "_shared", None)
    if shared is not None:
        shared.pop(replayer.machine, None)


_examples_since_gc = 0
GC_EVERY = 200


def collect_garbage() -> None:
    """A full collection every GC_EVERY examples.  A finished Machine is cyclic garbage
    (simpy processes, observers) holding numpy disk contents; Python only counts objects
    to decide when to collect, and Hypothesis keeps so many long-lived ones that a full
    collection may otherwise wait a long time.  (A full collection costs ~50 ms.)"""
    global _examples_since_gc
    _examples_since_gc += 1
    if _examples_since_gc >= GC_EVERY:
        _examples_since_gc = 0
        gc.collect()


class CycleGuard:
    """Says, once per step, whether the block graph has a cycle (children followed:
    file, backing, target).  Only a simulator bug makes one."""

    def __init__(self) -> None:
        self.index = -1
        self.found = False

    def cyclic(self, machine: Any, index: int) -> bool:
        if index != self.index:
            self.index, self.found = index, has_cycle(machine.state.graph.nodes)
        return self.found


def has_cycle(nodes: list[Any]) -> bool:
    """Depth-first search with colours over the nodes' children."""
    state: dict[int, int] = {}  # id -> 1 on the stack, 2 done
    for root in nodes:
        if id(root) in state:
            continue
        stack = [(root, iter(list(root.children())))]
        state[id(root)] = 1
        while stack:
            node, kids = stack[-1]
            child = next(kids, None)
            if child is None:
                state[id(node)] = 2
                stack.pop()
            elif state.get(id(child)) == 1:
                return True
            elif id(child) not in state:
                state[id(child)] = 1
                stack.append((child, iter(list(child.children()))))
    return False


class Guarded:
    """A checker that sits out steps that leave a cyclic graph: checkers walk backing
    chains, which never end on a cycle; graph-well-formed (unguarded) reports it."""

    def __init__(self, inner: Checker, guard: CycleGuard) -> None:
        self.inner = inner
        self.name = inner.name
        self.guard = guard
        self.machine: Any = None

    def attach(self, machine: Any) -> None:
        self.machine = machine
        self.inner.attach(machine)

    def after_step(self, index: int) -> list[Violation]:
        if self.guard.cyclic(self.machine, index):
            return []
        return self.inner.after_step(index)

    def at_end(self) -> list[Violation]:
        if self.guard.found:
            return []
        return self.inner.at_end()


def describe_exception(exc: BaseException) -> str:
    """`Type: message at file.py:line` (where it was raised), without keeping the traceback."""
    tb = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {tb[0].filename.rsplit('/', 1)[-1]}:{tb[0].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


class BlockMachine(StorageRules, GraphRules, JobRules, MachineCore):
    """The fuzz target: every supported QMP command, guest I/O, time, jobs, faults."""
