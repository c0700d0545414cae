"""The differential draw: traces from the fuzzer's rules that real QEMU answers the same
way whatever the timing (no advance, no sim-only step, every job waited for)."""

from __future__ import annotations

from sim.fuzz.differential import to_trace
from sim.fuzz.difftraces import draw_traces
from sim.replay import replay


def test_draw_is_a_function_of_seed_and_index() -> None:
    first = draw_traces(4, seed=7)
    assert draw_traces(4, seed=7) == first
    assert draw_traces(2, seed=7, first=2) == first[2:]
    assert draw_traces(4, seed=8) != first


def test_drawn_traces_are_timing_independent() -> None:
    traces = draw_traces(8, seed=3)
    for steps in traces:
        kinds = {next(iter(s)) for s in steps[1:]}
        assert kinds <= {"execute", "wait"}, kinds  # no advance, workload or fault
        result = replay(to_trace(steps))
        assert not result.trace_errors, result.trace_errors  # every wait is satisfied
        assert not result.internal_errors
        # after the last step no job is left moving on its own
        moving = [
            j
            for j in result.final["jobs"]
            if j["status"] in ("created", "running", "waiting", "aborting")
            and j.get("type") != "backup"
        ]
        assert not moving, moving
    assert any(
        s.get("execute") in ("drive-mirror", "blockdev-mirror", "drive-backup", "block-commit")
        for steps in traces
        for s in steps
    )


def test_rules_needing_a_bitmap_wait_for_one_the_draw_may_name() -> None:
    # seed 9191's first round had bitmaps only on auto-named nodes (which the draw never
    # names) when the rollback rule ran: picking from no addresses raised IndexError
    traces = draw_traces(60, seed=9191)
    assert len(traces) == 60
    assert all(steps[0].get("trace") == 1 for steps in traces)  # each one a whole trace


def test_settle_waits_for_pending_by_the_job_id() -> None:
    # QEMU's BLOCK_JOB_PENDING names the job by `id`, not `device`: a wait matching
    # on `device` is never satisfied, and every draw whose job reached PENDING was lost
    from sim.fuzz.difftraces import DifferentialMachine
    from tests.helpers import DRIVE0

    machine = DifferentialMachine()
    machine.open([dict(DRIVE0)], 0)
    machine.qmp(
        "drive-backup",
        {"device": "drive0", "job-id": "j0", "sync": "full", "target": "t.qcow2",
         "auto-finalize": False},
    )  # fmt: skip
    assert machine.steps[-1] == {"wait": {"event": "BLOCK_JOB_PENDING", "data": {"id": "j0"}}}
    assert [(j.id, j.status) for j in machine.machine.state.jobs] == [("j0", "pending")]
    assert not replay(to_trace([machine.header, *machine.steps])).trace_errors


def test_guest_io_finalizes_a_pending_mirror_first() -> None:
    # QEMU 7.2 keeps a pending mirror's source drained until job-finalize: a read through
    # drive0 would never complete on QEMU (the monitor hangs with it)
    from sim.fuzz.difftraces import DifferentialMachine
    from tests.helpers import DRIVE0

    machine = DifferentialMachine()
    machine.open([dict(DRIVE0)], 0)
    machine.qmp(
        "drive-mirror",
        {"device": "drive0", "job-id": "j0", "sync": "full", "target": "m.qcow2",
         "format": "qcow2", "auto-finalize": False},
    )  # fmt: skip
    machine.qmp("job-complete", {"id": "j0"})
    assert [(j.id, j.status) for j in machine.machine.state.jobs] == [("j0", "pending")]
    machine.qemu_io("drive0", "read 0 512")
    commands = [s.get("execute") or s["wait"]["event"] for s in machine.steps]
    finalize = commands.index("job-finalize")
    assert commands[finalize:] == ["job-finalize", "human-monitor-command"]
    assert machine.machine.state.jobs == []  # finalized (and dismissed) before the read
