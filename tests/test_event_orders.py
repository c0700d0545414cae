"""Traces where QEMU itself races on the order of events: `blocksim record --runs N`
keeps every order QEMU gave (final-expect's other-event-orders, sim.oracle.record
.merge_runs) and a replay accepts any of them (sim.replay.final_difference)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sim.errors import TraceError
from sim.oracle.qemu_runner import RunResult, StepResult
from sim.oracle.record import merge_runs
from sim.replay import final_difference
from sim.trace import parse_lines
from tests.helpers import SCENARIOS, header, qmp


def ev(status: str, job: str) -> dict[str, Any]:
    return {"event": "JOB_STATUS_CHANGE", "data": {"status": status, "id": job}}


A = [ev("waiting", "j0"), ev("aborting", "j1")]
B = [ev("aborting", "j1"), ev("waiting", "j0")]
C = [ev("aborting", "j1"), ev("aborting", "j0")]


def lines(*objs: Any) -> list[str]:
    return [json.dumps(o) for o in objs]


def run(events: list[dict[str, Any]], answer: Any = None, jobs: Any = ()) -> RunResult:
    step: StepResult = {"step": 1, "line": 2, "command": {"execute": "query-jobs"},
                        "response": {"return": answer or []}, "events": []}  # fmt: skip
    return RunResult([step], {"nodes": [], "jobs": list(jobs), "events": events})


def test_runs_in_one_order_record_as_one_run() -> None:
    steps = parse_lines(lines(header(), qmp("query-jobs"))).steps
    merged = merge_runs([run(A), run(A)], steps)
    assert merged.final == run(A).final


def test_other_orders_are_kept_once_each_in_the_order_seen() -> None:
    steps = parse_lines(lines(header(), qmp("query-jobs"))).steps
    merged = merge_runs([run(A), run(B), run(A), run(C), run(B)], steps)
    assert merged.final["events"] == A
    assert merged.final["other-event-orders"] == [B, C]


def test_runs_that_answer_differently_are_refused() -> None:
    steps = parse_lines(lines(header(), qmp("query-jobs"))).steps
    with pytest.raises(TraceError, match="answered step 1 differently in run 2"):
        merge_runs([run(A), run(A, answer=[{"id": "j0"}])], steps)
    with pytest.raises(TraceError, match="final state differs in run 2"):
        merge_runs([run(A), run(A, jobs=[{"id": "j0"}])], steps)


def test_a_replay_may_give_any_recorded_order_and_no_other() -> None:
    expect = {"jobs": [], "events": A, "other-event-orders": [B]}
    assert final_difference(expect, {"jobs": [], "events": A}) is None
    assert final_difference(expect, {"jobs": [], "events": B}) is None
    diff = final_difference(expect, {"jobs": [], "events": C})
    assert diff is not None and "nor one of the 1 other event order(s)" in diff
    # the other keys are compared whatever the order
    assert final_difference(expect, {"jobs": [{"id": "j0"}], "events": B}) is not None


def test_a_malformed_list_of_orders_is_a_trace_error() -> None:
    for bad in ({"events": A, "other-event-orders": A}, {"other-event-orders": [A]}):
        trace = parse_lines(lines(header(), qmp("query-jobs"), {"final-expect": bad}))
        errors = [s.error for s in trace.steps if s.error is not None]
        assert errors and "other-event-orders" in str(errors[0])


def test_124s_transaction_failure_was_recorded_racing() -> None:
    """The recorded scenario holds more than one order (QEMU raced in its 20 runs)."""
    trace = parse_lines(
        (SCENARIOS / "iotests" / "iotest-124-transaction-failure.jsonl").read_text().splitlines()
    )
    assert trace.final_expect is not None
    assert len(trace.final_expect["other-event-orders"]) >= 1
