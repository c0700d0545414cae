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
  so rare combinations of commands get a real probability.  The `race` group
  (`PINNED`) stays on in every example it is offered to.
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

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from hypothesis import note, reject, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize

from sim.check import CHECKERS, make_checkers
from sim.fuzz.choices import Choices
from sim.fuzz.failures import (
    INTERNAL_ERROR,
    FuzzFailure,
    describe_exception,
    failure_key,
    failure_type,
    message_shape,
)
from sim.fuzz.hygiene import (
    CycleGuard,
    Guarded,
    cache_sort_keys,
    collect_garbage,
    example_finished,
    no_local_constants,
    no_wall_clock_in_search,
    one_swarm_only,
    release,
)
from sim.fuzz.rules_blockapi import BlockApiRules
from sim.fuzz.rules_graph import GraphRules
from sim.fuzz.rules_jobs import JobRules
from sim.fuzz.rules_storage import StorageRules
from sim.fuzz.triage import EXPECTED, MUTE_EXPECTED, classify_expected
from sim.model.job_backup import BackupKind
from sim.model.job_mirror import MirrorKind
from sim.replay import Replayer, StepOutcome, sim_only_step
from sim.trace import Trace, parse_header, parse_step

no_local_constants()  # a campaign is the same function of its seed in every process
cache_sort_keys()  # Hypothesis' shrink order, computed once per example
no_wall_clock_in_search()  # nor on how fast this machine is

MiB = 1 << 20
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
    "race",
    "workload",
    "fault",
    "invalid",
)
ALWAYS_ON = frozenset({"time"})
# Groups the swarm keeps on whenever they are offered: `race` (a command landing while a
# job is part way through is what the fuzzer exists to find; a swarm that switched it off
# in half the examples halved the chance of every race-only bug).
PINNED = frozenset({"race"})
# Groups a campaign asks for by name (`groups`, or a profile such as
# fuzz/profiles/blockapi.toml) and the default swarm leaves out, so the default
# campaigns draw exactly as before they existed: `blockapi` (blockdev-create,
# blockdev-reopen, block_resize, copy-on-read filters, ...; sim/fuzz/rules_blockapi.py).
OPT_IN_GROUPS = ("blockapi",)

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

    def expected_found(self, failure: FuzzFailure) -> None: ...

    def end_checked(self, violations: list[dict[str, Any]]) -> None: ...

    def example_finished(self, machine: MachineCore) -> float | None: ...


def supported_groups() -> frozenset[str]:
    """The groups this simulator can run: sim-only steps only once the engine has them."""
    from sim.engine.machine import Machine
    from sim.errors import TraceError

    out = set(GROUPS) | set(OPT_IN_GROUPS)
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
        "race": {"until": {"job": "j", "point": "chunk"}},
    }
    for name, body in probes.items():
        m = Machine(parse_header({"trace": 1, "drives": [DRIVE0]}).drives)
        step = parse_step(body, 2)
        try:
            sim_only_step(m, step)
        except TraceError as exc:
            if "not supported" in str(exc) or "unknown sim-only" in str(exc):
                out.discard(name)
        except Exception:  # noqa: BLE001 - an engine mid-rewrite: leave the group out
            out.discard(name)
    return frozenset(out)


_SUPPORTED: frozenset[str] | None = None


@functools.cache
def exact_bytes(n: int) -> st.SearchStrategy[bytes]:
    """`st.binary` of exactly n bytes, built once: a new strategy object per example
    is validated and measured again by Hypothesis (the draws are the same)."""
    return st.binary(min_size=n, max_size=n)


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
    # True: a violation triage classes expected (a documented consequence of the policy)
    # goes to the observer's `expected_found` and then passes as a muted one does, so
    # Hypothesis never shrinks it (a campaign exports it as found)
    expected_unshrunk: ClassVar[bool] = False
    observer: ClassVar[FuzzObserver | None] = None
    name: ClassVar[str] = "fuzz"

    def __init__(self) -> None:
        collect_garbage()  # the examples before this one, every GC_EVERY of them
        super().__init__()
        self.steps: list[dict[str, Any]] = []
        self.outcomes: list[StepOutcome] = []
        self.enabled: frozenset[str] = frozenset()
        self.invalid = False
        self.header: dict[str, Any] = {}
        self.replayer: Replayer | None = None
        self.guard = CycleGuard()
        self._counter = 0
        if self.swarm:
            one_swarm_only(self)
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
            # (bytes, not integers: Hypothesis draws small integers far from uniformly,
            # which left both of two given groups on in one example in ten, not four)
            raw = Choices(data.draw(exact_bytes(len(offered) + 1)))
            density = raw.between(1, 3)
            chosen = {g for g in offered if raw.below(4) >= 4 - density or g in PINNED}
        else:
            chosen = set(offered)
        self.enabled = frozenset(chosen) | ALWAYS_ON
        self.invalid = "invalid" in self.enabled
        drives = [dict(d) for d in self.drives]
        more = Choices(data.draw(exact_bytes(2)))
        if self.second_drive is not None and more.rarely(4):
            drives.append(dict(self.second_drive))
        seed = more.below(8)
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
        if internal and not self.is_muted({"invariant": INTERNAL_ERROR, "message": internal[0]}):
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

    def succeeds(self, command: str, arguments: dict[str, Any] | None = None) -> bool:
        """Run a QMP command; whether it answered `return` (not an error)."""
        return "return" in self.qmp(command, arguments).response

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
                    # (None: a shrink or replay run, which generation never learns from)
                    score = self.observer.example_finished(self)
                    if score is not None:
                        target(score, label="coverage rarity")
            finally:
                # Hypothesis keeps failing examples' exceptions, whose tracebacks
                # reach this object: drop the simulated machine (disk contents, MBs)
                release(self.replayer)
                self.replayer = None
                self.outcomes = []
                example_finished()

    def is_muted(self, violation: dict[str, Any]) -> bool:
        """Does this violation pass without failing the example: muted by name or key,
        or triaged expected under `--mute expected` or `expected_unshrunk` (then the
        observer hears of it first)."""
        kind = str(violation["invariant"])
        if not self.muted and not self.expected_unshrunk:
            return False
        message = str(violation["message"])
        if kind in self.muted or failure_key(kind, message) in self.muted:
            return True
        if MUTE_EXPECTED not in self.muted and not self.expected_unshrunk:
            return False
        if classify_expected(self.policy, kind, message, self.steps)[0] != EXPECTED:
            return False
        if MUTE_EXPECTED not in self.muted and self.observer is not None:
            failure = failure_type(kind, message)(
                kind, message, dict(self.header), list(self.steps), [violation]
            )
            self.observer.expected_found(failure)
        return True

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
        if self.observer is not None:  # counted with the steps' violations, once each
            said = {
                (v["invariant"], v.get("step"), v["message"])
                for o in self.outcomes
                for v in o.violations
            }
            self.observer.end_checked(
                [v for v in found if (v["invariant"], v.get("step"), v["message"]) not in said]
            )
        live = [v for v in found if not self.is_muted(v)]
        if live:
            self.fail(str(live[0]["invariant"]), str(live[0]["message"]), live)

    # -- live names (the state of the simulated QEMU) --------------------------------------
    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def pick(self, c: Choices, options: Sequence[T], bad: Sequence[T] = ()) -> T:
        """One of `options`; with the invalid group on, one time in eight one of `bad`
        (also when there is no option at all; with neither, the example is rejected)."""
        use_bad = bool(bad) and (not options or (self.invalid and c.rarely(8)))
        pool = bad if use_bad else options
        if not pool:
            reject()  # nothing to name at all (e.g. every node auto-named): not this example
        return c.pick(pool)

    def devices(self) -> list[str]:
        return list(self.machine.state.graph.backends)

    def node_names(self) -> list[str]:
        return [n.node_name for n in self.machine.state.graph.nodes if not n.auto_named]

    def targets(self) -> list[str]:
        """What a `node`/`device` argument may name: devices first, then node names."""
        return self.devices() + self.node_names()

    def bitmap_addresses(self) -> list[tuple[str, str]]:
        """(node-or-device, name) of every named bitmap, by node and by device."""
        return self._bitmap_addresses(lambda bm: True)

    def usable_bitmap_addresses(self) -> list[tuple[str, str]]:
        """The addresses of `bitmap_addresses` whose bitmap a bitmap command may change:
        not busy (a backup's or an export's), not read-only, not inconsistent."""
        unusable = set(self._bitmap_addresses(lambda bm: bm.busy or bm.readonly or bm.inconsistent))
        return [a for a in self.bitmap_addresses() if a not in unusable]

    def _bitmap_addresses(self, keep: Callable[[Any], bool]) -> list[tuple[str, str]]:
        g = self.machine.state.graph
        out: list[tuple[str, str]] = []
        for bb in g.backends.values():
            out.extend((bb.name, bm.name) for bm in bb.bitmaps if bm.name and keep(bm))
            if bb.root is not None:
                out.extend((bb.name, bm.name) for bm in bb.root.bitmaps if bm.name and keep(bm))
        for node in g.nodes:
            out.extend((node.node_name, bm.name) for bm in node.bitmaps if bm.name and keep(bm))
        return out

    def bitmap_names(self) -> list[str]:
        names = [name for _, name in self.bitmap_addresses()]
        return list(dict.fromkeys(names + ["b0", "b1", "b2"]))

    def job_ids(self) -> list[str]:
        return [j.id for j in self.machine.state.jobs]

    def image_files(self) -> list[str]:
        return list(self.machine.state.graph.images)

    def free_images(self) -> list[str]:
        """Image files no node has open (finished backup targets, ...): what `mode:
        existing` and blockdev-add may open without a write-lock conflict."""
        g = self.machine.state.graph
        used = {n.image.filename for n in g.nodes if n.image is not None}
        return [name for name in g.images if name not in used]

    def io_nodes(self) -> list[str]:
        """Node names qemu-io may write to in QEMU: none below a filter, none a job
        writes to (the job takes the write permission; such writes are refused with a
        permission conflict, which the differential mode draws instead)."""
        g = self.machine.state.graph
        taken = {id(n.filtered_child()) for n in g.nodes if n.is_filter}
        taken |= {
            id(j.kind.target)
            for j in self.machine.state.jobs
            if isinstance(j.kind, BackupKind | MirrorKind)
        }
        return [n.node_name for n in g.nodes if not n.auto_named and id(n) not in taken]

    def free_nodes(self, sinks: bool = True) -> list[str]:
        """Named nodes nobody uses: overlays for blockdev-snapshot, targets of
        *-backup/mirror; without null-co ones (data sinks) unless `sinks`."""
        g = self.machine.state.graph
        return [
            n.node_name
            for n in g.nodes
            if not n.auto_named and not g.has_users(n) and (sinks or n.driver != "null-co")
        ]

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


class BlockMachine(StorageRules, BlockApiRules, GraphRules, JobRules, MachineCore):
    """The fuzz target: every supported QMP command, guest I/O, time, jobs, faults."""


__all__ = [
    "ALWAYS_ON",
    "DRIVE0",
    "DRIVE1",
    "GROUPS",
    "INTERNAL_ERROR",
    "BlockMachine",
    "FuzzFailure",
    "FuzzObserver",
    "MachineCore",
    "describe_exception",
    "failure_key",
    "message_shape",
]
