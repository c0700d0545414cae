"""Block-copy requests in flight (sim/engine/reqlist.py): a guest write through a
copy-before-write filter waits for the tasks over the clusters it touches."""

from __future__ import annotations

from typing import Any

from sim.engine.timing import NS_PER_S, DeviceTiming
from tests.helpers import DRIVE0, io, qmp, run_steps

MiB = 1 << 20


def backup(**kw: Any) -> dict[str, Any]:
    args = {"device": "drive0", "target": "bk.qcow2", "sync": "full", "job-id": "bk"}
    args.update(kw)
    return qmp("drive-backup", **args)


def clean(result: Any) -> Any:
    problems = result.mismatches + result.trace_errors + result.internal_errors
    assert not problems, problems
    return result


def test_qemu_io_write_waits_for_the_task_over_its_cluster() -> None:
    """128 MiB of data: the backup's call creates its first 65 tasks (0-65 MiB) in
    job_start.  A write into one of them returns once that task has completed
    (simulated time ran during the command, the task's progress counts); a write
    past them finds its cluster still to copy and copies it itself at once."""
    steps = [
        io("write -P 0x11 0 128M"),
        backup(),
        io("write -P 0x22 100M 64k"),
        qmp("query-block-jobs"),
        io("write -P 0x22 10M 64k"),
        qmp("query-block-jobs"),
    ]
    r = clean(run_steps(steps, drives=[{**DRIVE0, "size": 128 * MiB}]))
    past, first_query, inside, second_query = r.steps[2:6]
    # only the write's own copy counted
    assert past.time_s == 0.0 and first_query.response["return"][0]["offset"] == 65536
    assert inside.time_s > 0.0
    # one 1 MiB task alone reads and writes 1 MiB: the 11th of 65 sharing the devices
    # waited for at least ten others' transfers
    timing = DeviceTiming.from_header(None)
    transfer_s = MiB / timing.bytes_per_s
    assert inside.time_s > 10 * transfer_s
    assert second_query.response["return"][0]["offset"] >= 11 * MiB
    # the target holds the data as it was at the start, the device the new write
    tail = [
        qmp(
            "blockdev-add",
            driver="qcow2",
            **{"node-name": "bkn", "read-only": True},
            file={"driver": "file", "filename": "bk.qcow2"},
        ),
        io("read -P 0x11 10M 64k", "bkn"),
        io("read -P 0x11 100M 64k", "bkn"),
        io("read -P 0x22 10M 64k"),
    ]
    wait = {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}}
    r = clean(run_steps([*steps, wait, *tail], drives=[{**DRIVE0, "size": 128 * MiB}]))
    assert all("Pattern verification failed" not in (s.output or "") for s in r.steps)


def test_workload_write_into_an_in_flight_task_waits_for_it() -> None:
    """A guest write whose cluster a task is copying completes after the task: the
    first write of a sequential workload started with the backup (offset 0, in the
    first task) takes longer than that task's 1 MiB read alone."""
    steps = [
        io("write -P 0x11 0 16M"),
        backup(),
        {
            "workload": {
                "device": "drive0",
                "pattern": "sequential",
                "rate": 1,
                "size": 65536,
                "duration": 0.5,
                "read-ratio": 0,
            }
        },
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}},
        {"advance": 1},
    ]
    r = clean(run_steps(steps, drives=[{**DRIVE0, "size": 16 * MiB}]))
    first = r.machine.io_log[0]
    assert first.op == "write" and first.time_ns == 0
    timing = DeviceTiming.from_header(None)
    assert first.latency_ns > MiB * NS_PER_S / timing.bytes_per_s


def test_a_wait_longer_than_cbw_timeout_fails_the_write() -> None:
    """A qemu-io write waiting for another write's copy (a workload's, on a device of
    2 s latency) through a copy-before-write filter with cbw-timeout 1 fails with
    ETIMEDOUT after 1 s (break-guest-write); a write elsewhere does not wait."""
    slow = {**DRIVE0, "size": 8 * MiB, "timing": {"latency_us": 2_000_000}}
    target = {
        "id": "drive1",
        "node-name": "fmt1",
        "file-node-name": "proto1",
        "format": "qcow2",
        "size": 8 * MiB,
    }
    steps = [
        qmp(
            "blockdev-add",
            driver="copy-before-write",
            **{"node-name": "cbw0", "cbw-timeout": 1},
            file="fmt0",
            target="fmt1",
        ),
        {
            "workload": {
                "device": "cbw0",
                "pattern": "sequential",
                "rate": 1,
                "size": 65536,
                "duration": 0.5,
                "read-ratio": 0,
            }
        },
        {"advance": 0.001},
        io("write -P 0x22 0 64k", "cbw0"),
        io("write -P 0x22 64k 64k", "cbw0"),
    ]
    r = clean(run_steps(steps, drives=[slow, target]))
    timed_out, elsewhere = r.steps[3:5]
    assert timed_out.output == "write failed: Connection timed out\n"
    assert timed_out.time_s == 1.001
    assert elsewhere.output.startswith("wrote 65536/65536") and elsewhere.time_s == 1.001


# -- a pause waits for the tasks (backup_pause) ------------------------------------------

TARGET = {
    "id": "drive1",
    "node-name": "fmt1",
    "file-node-name": "proto1",
    "format": "qcow2",
    "size": 8 * MiB,
}


def held_backup() -> list[dict[str, Any]]:
    """A rate-limited backup of 8 MiB of data whose first task's target write waits
    about four seconds in a throttle group (an earlier write filled its bucket)."""
    return [
        io("write -P 0x11 0 8M"),
        qmp("object-add", **{"qom-type": "throttle-group", "id": "tg0"}, limits={"bps-write": MiB}),
        qmp(
            "blockdev-add",
            driver="throttle",
            **{"node-name": "th1", "throttle-group": "tg0"},
            file="fmt1",
        ),  # fmt: skip
        io("write -P 0x33 0 4M", "th1"),
        qmp(
            "blockdev-backup",
            **{"job-id": "bk"},
            device="drive0",
            target="th1",
            sync="full",
            speed=MiB,
        ),  # fmt: skip
    ]


def run_held(steps: list[Any]) -> Any:
    return clean(run_steps([*held_backup(), *steps], drives=[{**DRIVE0, "size": 8 * MiB}, TARGET]))


def statuses(r: Any) -> list[tuple[str, float]]:
    """The job's JOB_STATUS_CHANGE statuses with their simulated time (s)."""
    return [
        (ev.data["status"], ev.time_ns / NS_PER_S)
        for ev in r.machine.events.history
        if ev.name == "JOB_STATUS_CHANGE" and ev.data["id"] == "bk"
    ]


def test_pause_with_a_held_task_is_reached_when_the_task_completes() -> None:
    r = run_held([qmp("job-pause", id="bk"), qmp("query-block-jobs"), {"advance": 10}])
    info = r.steps[6].response["return"][0]
    assert (info["status"], info["busy"], info["paused"]) == ("running", True, True)
    moves = statuses(r)
    assert [s for s, _ in moves][-1] == "paused"
    paused_at = moves[-1][1]
    assert 3.0 < paused_at < 5.0  # the held task's target write: about four seconds
    assert r.machine.state.jobs[0].offset == MiB  # that task's progress, no other task


def test_resume_before_the_pause_point_leaves_no_paused_status() -> None:
    wait = {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}}
    r = run_held([qmp("job-pause", id="bk"), qmp("job-resume", id="bk"), wait])
    assert [s for s, _ in statuses(r)] == [
        # the transaction's drain pauses and resumes it; job-pause does not
        "created", "running", "paused", "running", "waiting", "pending", "concluded", "null",
    ]  # fmt: skip


def test_a_drain_reaches_a_pending_pause_at_once() -> None:
    """A drained section polls until the job is at its pause point: qemu-io on the
    source's node name (its own BlockBackend: a drain) finds the job paused after."""
    r = run_held([qmp("job-pause", id="bk"), io("read 0 512", "fmt0"), qmp("query-jobs")])
    assert r.steps[7].response["return"][0]["status"] == "paused"
    assert statuses(r)[-1] == ("paused", 0.0)


def test_cancel_kicks_the_rate_limit_sleep() -> None:
    """block_copy_kick: a cancel wakes the call from its rate-limit sleep; a backup of
    1 MiB/s whose first 1 MiB task is done ends at the cancel, not a second later."""
    wait = {"wait": {"event": "BLOCK_JOB_CANCELLED", "data": {"device": "bk"}}}
    steps = [
        io("write -P 0x11 0 8M"),
        backup(speed=MiB),
        {"advance": 0.1},
        qmp("job-cancel", id="bk"),
        wait,
    ]
    r = clean(run_steps(steps, drives=[{**DRIVE0, "size": 8 * MiB}]))
    assert r.steps[4].time_s == 0.1
    assert r.steps[4].response["data"]["offset"] == MiB
