"""The read-only guard: a checker that changes the machine it observes is caught.

Checkers see the machine through `sim.engine.view.MachineView`; with the guard on
(`Replayer(guard=True)` or `BLOCKSIM_GUARD_VIEW=1`) every checker hook and every
observer a checker registered runs between two digests of the machine's state, and a
change is a SimulatorBug naming the checker.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from sim.check import CHECKERS, Checker, Violation, make_checkers
from sim.engine.view import state_digest
from sim.errors import SimulatorBug, TraceError
from sim.replay import Replayer
from sim.trace import load_trace, parse_lines
from tests.helpers import SCENARIOS, header, io, qmp

STEPS = [
    qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
    io("write 0 64k"),
    qmp("blockdev-snapshot-sync", device="drive0", **{"snapshot-file": "s1.qcow2"}),
    io("write 64k 64k"),
]


def replayer(checkers: list[Any], guard: bool = True) -> Replayer:
    lines = [json.dumps(header("qemu-7.2"))] + [json.dumps(s) for s in STEPS]
    return Replayer(parse_lines(lines), checkers=checkers, guard=guard)


class ClearsBitmaps(Checker):
    """Wrongly clears every bitmap it reads after a step."""

    name = "clears-bitmaps"

    def after_step(self, index: int) -> list[Violation]:
        for node in self.machine.state.graph.nodes:
            for bm in node.bitmaps:
                bm.bits.setall(0)
                bm.enabled = not bm.enabled
        return []


class RenamesOnWrite(Checker):
    """Wrongly renames the node a guest write went to, from its write observer."""

    name = "renames-on-write"

    def attach(self, machine: Any) -> None:
        super().attach(machine)
        machine.state.write_observers.append(self.saw_write)

    def saw_write(self, bb: Any, root: Any, offset: int, length: int, stamp: int) -> None:
        root.node_name = root.node_name + "x"


def test_a_checker_that_changes_state_in_after_step_fails() -> None:
    with pytest.raises(SimulatorBug, match="checker clears-bitmaps .after_step. changed"):
        replayer([ClearsBitmaps()]).run()


def test_a_checker_that_changes_state_from_a_write_observer_fails() -> None:
    r = replayer([RenamesOnWrite()])
    result = r.run()  # the model reports an exception inside a command as an internal error
    assert any("renames-on-write (write hook) changed" in e for e in r.monitor.internal_errors)
    assert result.internal_errors


def test_without_the_guard_the_same_checker_goes_unnoticed() -> None:
    result = replayer([ClearsBitmaps()], guard=False).run()
    assert not result.internal_errors


@pytest.mark.parametrize(
    "name", ["checkers/mcc-mirror-stream-commit", "checkers/pit-side-write-bypasses-backup-filter"]
)
def test_every_checker_only_reads(name: str) -> None:
    trace = load_trace(SCENARIOS / f"{name}.jsonl")
    guarded = Replayer(trace, checkers=make_checkers(list(CHECKERS)), guard=True).run()
    plain = Replayer(trace, checkers=make_checkers(list(CHECKERS)), guard=False).run()
    assert guarded.final == plain.final
    assert not guarded.internal_errors


def test_the_digest_sees_a_change_and_not_a_read() -> None:
    r = replayer([])
    r.run()
    m = r.machine
    before = state_digest(m)
    for node in m.state.graph.nodes:  # reads fill caches (allocation runs, arrays)
        if node.content is not None:
            node.content.allocated_sectors()
    assert state_digest(m) == before
    m.state.graph.nodes[0].read_only = not m.state.graph.nodes[0].read_only
    assert state_digest(m) != before


@pytest.mark.slow
def test_every_scenario_with_every_checker_only_reads(request: pytest.FixtureRequest) -> None:
    """The whole corpus under the guard, every checker on: a few minutes, so in CI only
    (`-m slow`, scripts/run-tests.sh) or with BLOCKSIM_SLOW=1."""
    wanted = "slow" in str(request.config.getoption("markexpr", ""))
    if not (wanted or os.environ.get("BLOCKSIM_SLOW")):
        pytest.skip("a few minutes: runs with -m slow (CI) or BLOCKSIM_SLOW=1")
    changed = []
    traces = sorted(SCENARIOS.rglob("*.jsonl"))
    for path in traces:
        try:
            trace = load_trace(path)
        except TraceError:
            continue  # the corpus of malformed traces
        r = Replayer(trace, checkers=make_checkers(list(CHECKERS)), guard=True)
        try:
            r.run()
        except SimulatorBug as exc:
            changed.append(f"{path.relative_to(SCENARIOS)}: {exc}")
        # a hook that runs inside a command is reported as the command's internal error
        changed += [e for e in r.monitor.internal_errors if "changed the machine" in e]
    assert len(traces) > 400
    assert not changed, "\n".join(changed[:20])
