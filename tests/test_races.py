"""Races: `until` (time to a point of a job), `tie-break` (same-instant order), race coverage."""

from __future__ import annotations

from typing import Any

import pytest

from sim.fuzz.coverage import Coverage, command_family, race_cells
from tests.helpers import DRIVE0, io, qmp, run_steps

MIRROR = qmp(
    "drive-mirror",
    device="drive0",
    **{"job-id": "m"},
    target="t.qcow2",
    format="qcow2",
    sync="full",
)


def _jobs(result: Any) -> list[dict[str, Any]]:
    return [o.response.get("return") for o in result.steps if "query-block-jobs" in str(o.command)]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_until_progress_stops_at_the_fraction(fraction: float) -> None:
    result = run_steps(
        [
            io("write -P 5 0 32M"),
            MIRROR,
            {"until": {"job": "m", "point": "progress", "fraction": fraction}},
            qmp("query-block-jobs"),
        ]
    )
    [[job]] = _jobs(result)
    assert job["status"] == "running"
    done = job["offset"] / job["len"]
    assert fraction <= done < fraction + 0.05  # one 1 MiB chunk of 32 MiB further at most


def test_until_points_of_a_mirror_in_order() -> None:
    steps: list[Any] = [io("write -P 5 0 8M"), MIRROR]
    for point in ("chunk", "before-ready", "ready"):
        steps += [{"until": {"job": "m", "point": point}}, qmp("query-block-jobs")]
    steps += [
        io("write -P 6 1M 64k"),
        qmp("block-job-complete", device="m"),
        {"until": {"job": "m", "point": "ending"}},
        qmp("query-block-jobs"),
        io("read -P 6 1M 64k"),
    ]
    result = run_steps(steps)
    assert result.ok, result.mismatches + result.trace_errors
    chunk, before, ready, end = _jobs(result)
    assert 0 < chunk[0]["offset"] < chunk[0]["len"] and chunk[0]["status"] == "running"
    assert before[0]["offset"] == before[0]["len"] and before[0]["status"] == "running"
    assert ready[0]["status"] == "ready"
    assert end == []  # completed and dismissed: the pivot happened
    assert result.steps[-1].output is not None and "Pattern verification failed" not in (
        result.steps[-1].output
    )
    assert result.steps[-1].time_s > result.steps[3].time_s


def test_until_stops_at_once_when_the_job_cannot_move() -> None:
    result = run_steps(
        [
            io("write -P 5 0 8M"),
            MIRROR,
            qmp("job-pause", id="m"),
            {"until": {"job": "m", "point": "ending"}},
            {"until": {"job": "nosuch", "point": "ready"}},
        ]
    )
    assert result.ok and result.steps[-1].time_s == 0.0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"job": "m", "point": "half"}, "'point' must be one of"),
        ({"job": 3, "point": "ready"}, "'job' must be a job id"),
        ({"job": "m", "point": "progress", "fraction": 2}, "'fraction' must be a number"),
        ({"job": "m", "point": "ready", "when": 1}, "unknown key(s) ['when']"),
        ({"job": "m", "point": "ready", "limit": 0}, "'limit' must be seconds"),
    ],
)
def test_bad_until_steps_are_trace_errors(body: dict[str, Any], words: str) -> None:
    result = run_steps([{"until": body}, qmp("query-block-jobs")])
    [error] = result.trace_errors
    assert "line 2" in error and words in error
    assert result.steps[1].response == {"return": []}  # the replay went on


DRIVE1 = {"id": "drive1", "node-name": "fmt1", "format": "qcow2", "size": 64 << 20}


def _two_backups(seed: int | None) -> list[str]:
    """Two drives with the same timing, the same data, a backup each: their chunks end at
    the same instants."""
    steps: list[Any] = [io("write -P 5 0 4M"), io("write -P 5 0 4M", device="drive1")]
    if seed is not None:
        steps.append({"tie-break": {"seed": seed}})
    for name, device in (("a", "drive0"), ("b", "drive1")):
        steps.append(
            qmp(
                "drive-backup",
                device=device,
                **{"job-id": name},
                target=f"{name}.qcow2",
                format="qcow2",
                sync="full",
            )
        )
    steps.append({"advance": 5})
    result = run_steps(steps, drives=[DRIVE0, DRIVE1])
    assert result.ok, result.trace_errors
    return [
        f"{e['event']}:{e['data'].get('device', e['data'].get('id'))}"
        for e in result.final["events"]
        if e["event"] == "BLOCK_JOB_COMPLETED"
    ]


def test_tie_break_orders_same_instant_events_and_replays_exactly() -> None:
    default = _two_backups(None)
    assert default == ["BLOCK_JOB_COMPLETED:a", "BLOCK_JOB_COMPLETED:b"]  # oldest job first
    orders = {tuple(_two_backups(seed)) for seed in range(8)}
    assert len(orders) == 2  # some seed lets the newer job finish first
    assert all(_two_backups(seed) == _two_backups(seed) for seed in range(3))


@pytest.mark.parametrize("body", [{"seed": -1}, {"seed": "x"}, {"seed": True}, {"order": 1}])
def test_bad_tie_break_steps_are_trace_errors(body: dict[str, Any]) -> None:
    result = run_steps([{"tie-break": body}])
    [error] = result.trace_errors
    assert "tie-break takes" in error


def test_race_cells_exist_as_qemus_tables_allow() -> None:
    status, deciles = race_cells()
    assert ("complete", "ready") in status and ("complete", "running") not in status
    assert ("finalize", "pending") in status and ("dismiss", "concluded") in status
    assert ("write", "paused") in status
    assert len(deciles) == 4 * 4 * 10
    assert command_family("qemu-io write") == "write"
    assert command_family("block-job-set-speed") == "set-speed"
    assert command_family("query-block") is None


def test_coverage_records_where_a_command_landed() -> None:
    from sim.replay import Replayer
    from sim.trace import parse_header, parse_step

    header = {
        "trace": 1,
        "drives": [{"id": "drive0", "node-name": "fmt0", "format": "qcow2", "size": 32 << 20}],
    }
    from sim.trace import Trace

    replayer = Replayer(Trace(parse_header(header), [], None))
    cov = Coverage()
    cov.start_example(frozenset())
    steps: list[dict[str, Any]] = [
        io("write -P 5 0 32M"),
        MIRROR,
        {"until": {"job": "m", "point": "progress", "fraction": 0.55}},
        io("write -P 6 0 4k"),
    ]
    for index, step in enumerate(steps, start=1):
        jobs = {j.id: j.status for j in replayer.machine.state.jobs}
        outcome = replayer.run_step(index, parse_step(step, index + 1))
        cov.observe_step(replayer.machine, step, outcome, jobs)
    assert cov.hits[("race", "write", "mirror/running/d5")] == 1
    assert cov.hits[("cmd-status", "write", "running")] == 1
    summary = cov.race_summary()
    assert summary["progress-deciles"]["reached"] == 1
    assert summary["interleavings"]["command-sequences"] == 1
