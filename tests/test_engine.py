"""The engine: timing model, guest workloads, fault injection and job error policies."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sim.engine.timing import DeviceTiming
from sim.engine.workload import ZipfSampler
from sim.errors import TraceError
from sim.replay import ReplayResult
from tests.helpers import DRIVE0, io, qmp, run_steps, snapshot_sync


def workload(**kw: Any) -> dict[str, Any]:
    spec = {
        "device": "drive0",
        "pattern": "uniform",
        "rate": 2000,
        "size": 4096,
        "duration": 0.2,
        "read-ratio": 0.25,
    }
    spec.update(kw)
    return {"workload": spec}


def fault(**kw: Any) -> dict[str, Any]:
    return {"fault": kw}


def wait(event: str, **data: Any) -> dict[str, Any]:
    return {"wait": {"event": event, "data": data}}


def backup(job_id: str = "bk", **kw: Any) -> dict[str, Any]:
    args = {"device": "drive0", "target": f"{job_id}.qcow2", "sync": "full", "job-id": job_id}
    args.update(kw)
    return qmp("drive-backup", **args)


def null_target(name: str = "null0") -> dict[str, Any]:
    return qmp("blockdev-add", driver="null-co", **{"node-name": name, "size": 64 << 20})


def job_events(result: ReplayResult, job_id: str) -> list[str]:
    """The job's events as short strings: JSC statuses and BLOCK_JOB_* names with detail."""
    out = []
    for ev in result.final["events"]:
        data = ev["data"]
        if data.get("id", data.get("device")) != job_id:
            continue
        if ev["event"] == "JOB_STATUS_CHANGE":
            out.append(data["status"])
        elif ev["event"] == "BLOCK_JOB_ERROR":
            out.append(f"ERROR {data['operation']} {data['action']}")
        elif ev["event"] == "BLOCK_JOB_COMPLETED":
            out.append("COMPLETED" + (f" {data['error']}" if "error" in data else ""))
        else:
            out.append(ev["event"])
    return out


def clean(result: ReplayResult) -> ReplayResult:
    problems = result.mismatches + result.trace_errors + result.internal_errors
    assert not problems, problems
    return result


def write_latencies(result: ReplayResult, with_job: str | None = None) -> list[int]:
    return sorted(
        r.latency_ns
        for r in result.machine.io_log
        if r.op == "write" and (with_job is None or with_job in r.jobs)
    )


def p99(values: list[int]) -> int:
    return values[min(int(0.99 * len(values)), len(values) - 1)]


BACKUP_START = ["created", "running", "paused", "running"]
NORMAL_END = ["waiting", "pending", "COMPLETED", "concluded", "null"]


# -- workloads -----------------------------------------------------------------------------


def test_workload_returns_at_once_and_runs_while_time_advances() -> None:
    r = clean(run_steps([workload(), {"advance": 0.1}, {"advance": 0.2}]))
    assert r.steps[0].response == {} and r.steps[0].time_s == 0.0
    log = r.machine.io_log
    assert 300 < len(log) < 500  # ~2000/s for 0.2 s
    assert {rec.op for rec in log} == {"read", "write"}
    assert all(rec.time_ns < 200_000_000 and rec.latency_ns > 0 for rec in log)
    w = r.machine.workloads[0]
    assert w.finished and w.in_flight == 0 and w.reads + w.writes == len(log)


@pytest.mark.parametrize("pattern", ["sequential", "uniform", "zipf", "burst"])
def test_same_seed_same_series_other_seed_differs(pattern: str) -> None:
    steps = [
        qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
        workload(pattern=pattern),
        {"advance": 0.05},
        backup(),
        wait("BLOCK_JOB_COMPLETED", device="bk"),
        {"advance": 0.5},
    ]

    def series(seed: int) -> tuple[Any, ...]:
        r = clean(run_steps(steps, seed=seed))
        return (
            list(r.machine.io_log),
            r.final["events"],
            r.final["nodes"],
            [o.time_s for o in r.steps],
        )

    assert series(3) == series(3)
    if pattern != "sequential":  # sequential offsets and times are fixed; only jitter differs
        assert series(3)[2] != series(4)[2]
    assert series(3)[0] != series(4)[0]


def test_workload_writes_reach_bitmaps_data_and_write_observers() -> None:
    seen: list[tuple[int, int]] = []

    class Spy:
        def attach(self, m: Any) -> None:
            m.state.write_observers.append(lambda bb, root, off, n, stamp: seen.append((off, n)))

        def after_step(self, index: int) -> list[Any]:
            return []

        def at_end(self) -> list[Any]:
            return []

    r = clean(
        run_steps(
            [
                qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
                workload(
                    pattern="sequential",
                    rate=100,
                    size=65536,
                    duration=0.1,
                    **{"read-ratio": 0.0, "fill": 0x42},
                ),
                {"advance": 1},
                io("read -P 0x42 0 640k"),
            ],
            checkers=[Spy()],
        )
    )
    assert seen == [(i * 65536, 65536) for i in range(10)]
    assert r.final["nodes"][0]["dirty-bitmaps"][0]["count"] == 10 * 65536
    assert r.steps[-1].output == "read 655360/655360 bytes at offset 0\n"


def test_copy_before_write_raises_guest_write_latency() -> None:
    steps = [
        # data everywhere: the backup reads and writes every cluster (block-copy writes
        # zeroes for a hole, which costs no device time)
        io("write -P 0x5 0 64M"),
        workload(rate=3000, duration=0.4, **{"read-ratio": 0.0}),
        {"advance": 0.01},
        backup(),
        wait("BLOCK_JOB_COMPLETED", device="bk"),
        {"advance": 0.5},
    ]
    r = clean(run_steps(steps))
    during = write_latencies(r, "backup")
    alone = sorted(rec.latency_ns for rec in r.machine.io_log if rec.op == "write" and not rec.jobs)
    assert len(during) > 100 and len(alone) > 100
    assert p99(during) > 3 * p99(alone)
    # a write that waited for a copy paid at least a 64 KiB read and a 64 KiB write
    timing = DeviceTiming.from_header(None)
    copy_floor = 2 * (timing.latency_ns + 65536 * 1e9 / timing.bytes_per_s) * (1 - timing.jitter)
    assert max(during) > copy_floor


def test_queue_depth_makes_bursts_wait() -> None:
    def latencies(depth: int) -> list[int]:
        drive = dict(DRIVE0, timing={"queue_depth": depth, "jitter": 0})
        r = clean(
            run_steps(
                [workload(pattern="burst", rate=1000, duration=0.1), {"advance": 1}], drives=[drive]
            )
        )
        return sorted(rec.latency_ns for rec in r.machine.io_log)

    deep, shallow = latencies(32), latencies(1)
    assert deep[-1] == deep[0]  # 16 at once fit in the queue: all served in parallel
    assert shallow[-1] >= 15 * shallow[0]  # one at a time: the 16th waits for 15 others


def test_requests_in_service_share_the_bandwidth() -> None:
    """Two 1 MiB requests at once: both wait one latency, then the transfers go one
    after the other (the first ends after one transfer, the second after two)."""
    import simpy

    from sim.engine.timing import Device

    env = simpy.Environment()
    timing = DeviceTiming.from_header(None)
    dev = Device(env, "d", timing)
    ends: list[float] = []

    def request() -> Any:
        yield from dev.io(env, 1 << 20, random.Random(0))
        ends.append(env.now)

    env.process(request())
    env.process(request())
    env.run()
    transfer = int((1 << 20) * 1e9 / timing.bytes_per_s)
    assert ends == [timing.latency_ns + transfer, timing.latency_ns + 2 * transfer]


def test_header_timing_override_changes_latency() -> None:
    slow = dict(DRIVE0, timing={"latency_us": 1000, "bandwidth_mbps": 100, "jitter": 0})
    r = clean(run_steps([workload(**{"read-ratio": 1.0}), {"advance": 1}], drives=[slow]))
    expected = 1_000_000 + int(4096 * 1e9 / (100 * (1 << 20)))
    assert {rec.latency_ns for rec in r.machine.io_log} == {expected}


def test_bad_timing_in_header_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match="unknown timing key 'latency'"):
        run_steps([], drives=[dict(DRIVE0, timing={"latency": 5})])
    with pytest.raises(TraceError, match="queue_depth must be an integer"):
        run_steps([], drives=[dict(DRIVE0, timing={"queue_depth": 0})])


def test_job_speed_limits_progress() -> None:
    r = clean(run_steps([backup(speed=64 << 20), wait("BLOCK_JOB_COMPLETED", device="bk")]))
    assert 0.99 <= r.steps[-1].time_s <= 1.01  # 64 MiB at 64 MiB/s


def test_zipf_sampler_is_skewed_and_in_range() -> None:
    sampler, rng = ZipfSampler(1000, 1.1), random.Random(1)
    draws = [sampler.sample(rng) for _ in range(20000)]
    assert min(draws) == 1 and max(draws) <= 1000
    assert draws.count(1) > draws.count(2) > draws.count(10) > draws.count(500)


# -- bad steps -----------------------------------------------------------------------------

BAD_STEPS = [
    (workload(device="nodrive"), "no device or node named 'nodrive'"),
    (workload(pattern="random"), "'pattern' must be one of"),
    (workload(rate=0), "'rate' must be in"),
    (workload(rate="fast"), "'rate' must be a number"),
    (workload(size=1000), "'size' must be a positive multiple of 512"),
    (workload(size=128 << 20), "is larger than 'drive0'"),
    (workload(duration=-1), "'duration' must be in"),
    (workload(**{"read-ratio": 1.5}), "'read-ratio' must be between 0 and 1"),
    (workload(fill=256), "'fill' must be a byte"),
    (workload(rate=1e7, duration=100), "more than the"),
    (workload(depth=4), "unknown key(s) ['depth']"),
    ({"workload": {"device": "drive0"}}, "missing ['pattern', 'rate', 'size', 'duration']"),
    ({"workload": 5}, "workload takes an object"),
    (fault(node="nosuch", op="write"), "no node or device named 'nosuch'"),
    (fault(node="fmt0", op="flush"), '\'op\' must be "read" or "write"'),
    (fault(node="fmt0", op="write", errno="EPERM"), "'errno' must be one of"),
    (fault(node="fmt0", op="write", offset=-1), "'offset' must be a non-negative integer"),
    (fault(node="fmt0", op="write", offset=64 << 20), "past the end"),
    (fault(node="fmt0", op="write", count=0), "'count' must be from 1"),
    (fault(node="fmt0", op="write", once=True), "unknown key(s) ['once']"),
]


@pytest.mark.parametrize(("step", "message"), BAD_STEPS, ids=[m for _, m in BAD_STEPS])
def test_bad_sim_only_step_is_a_trace_error_and_replay_goes_on(step: Any, message: str) -> None:
    r = run_steps([io("write -P 0x5 0 64k"), step, io("read -P 0x5 0 64k")])
    assert len(r.trace_errors) == 1
    assert r.trace_errors[0].startswith("step 2: line 3: ")
    assert message in r.trace_errors[0]
    assert r.steps[2].output == "read 65536/65536 bytes at offset 0\n"
    assert not r.internal_errors and not r.machine.workloads and not r.machine.faults


def test_wait_that_can_never_be_satisfied_is_reported_not_hung() -> None:
    # a job stopped by an error waits for job-resume: the event queue empties
    r = run_steps(
        [
            null_target(),
            fault(node="null0", op="write"),
            qmp(
                "blockdev-backup",
                device="drive0",
                target="null0",
                sync="full",
                **{"job-id": "bk", "on-target-error": "stop"},
            ),
            wait("BLOCK_JOB_COMPLETED", device="bk"),
            qmp("query-jobs"),
        ]
    )
    assert len(r.trace_errors) == 1
    assert r.trace_errors[0].startswith("step 4: line 5: wait for BLOCK_JOB_COMPLETED")
    assert "can never be satisfied" in r.trace_errors[0]
    assert r.steps[4].response["return"][0]["status"] == "paused"


def test_wait_while_a_workload_runs_ends_with_the_workload() -> None:
    r = run_steps([workload(duration=0.3), wait("BLOCK_JOB_READY", device="nothing")])
    assert "can never be satisfied" in r.trace_errors[0]
    assert r.machine.workloads[0].finished and r.machine.now_ns >= 290_000_000


# -- faults on guest I/O -------------------------------------------------------------------


def test_qemu_io_write_and_read_fail_on_a_fault_then_succeed() -> None:
    r = clean(
        run_steps(
            [
                qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
                fault(node="proto0", op="write", errno="ENOSPC"),
                io("write -P 0x5 0 64k"),
                io("read -P 0 0 64k"),
                io("write -P 0x5 0 64k"),
                fault(node="drive0", op="read", offset=1 << 20, length=512, count=2),
                io("read 0 64k"),
                io("read 1020k 8k"),
                io("read 1M 512"),
                io("read 1M 512"),
            ]
        )
    )
    out = [o.output for o in r.steps]
    assert out[2] == "write failed: No space left on device\n"
    assert out[3] == "read 65536/65536 bytes at offset 0\n"  # the data did not change
    assert out[4] == "wrote 65536/65536 bytes at offset 0\n"
    assert out[6:] == [
        "read 65536/65536 bytes at offset 0\n",
        "read failed: Input/output error\n",
        "read failed: Input/output error\n",
        "read 512/512 bytes at offset 1048576\n",
    ]
    hmp = [o for o in r.steps if o.command.get("execute") == "human-monitor-command"]
    assert all(o.response == {"return": ""} for o in hmp)


def test_failed_write_marks_bitmaps_of_the_nodes_it_reached() -> None:
    # bdrv_co_write_req_finish runs whatever the result: fmt0's bitmap sees a write
    # that failed below it, in proto0
    r = clean(
        run_steps(
            [
                qmp("block-dirty-bitmap-add", node="fmt0", name="b0"),
                fault(node="proto0", op="write"),
                io("write 0 64k"),
            ]
        )
    )
    assert r.final["nodes"][0]["dirty-bitmaps"][0]["count"] == 65536


def test_workload_requests_fail_on_a_fault() -> None:
    r = clean(
        run_steps(
            [
                fault(node="fmt0", op="write", count=5),
                workload(**{"read-ratio": 0.0}),
                {"advance": 1},
            ]
        )
    )
    ops = [rec.op for rec in r.machine.io_log]
    assert ops[:5] == ["write-failed"] * 5 and set(ops[5:]) == {"write"}
    assert r.machine.workloads[0].failed == 5 and not r.machine.faults


# -- job error policies (on-source-error / on-target-error) ---------------------------------


def backup_to_null(
    policy: str, errno: str = "EIO", count: int = 1, extra: list[Any] | None = None
) -> ReplayResult:
    return run_steps(
        [
            io("write -P 0x5 0 1M"),
            null_target(),
            fault(node="null0", op="write", errno=errno, count=count),
            qmp(
                "blockdev-backup",
                device="drive0",
                target="null0",
                sync="full",
                **{"job-id": "bk", "on-target-error": policy},
            ),
            {"advance": 2},
            qmp("query-block-jobs"),
            *(extra or []),
            {"advance": 2},
        ]
    )


def test_report_fails_the_job_with_completed_and_error() -> None:
    r = clean(backup_to_null("report"))
    assert job_events(r, "bk") == BACKUP_START + [
        "ERROR write report",
        "aborting",
        "COMPLETED Input/output error",
        "concluded",
        "null",
    ]


def test_ignore_retries_the_chunk_and_succeeds() -> None:
    r = clean(backup_to_null("ignore", count=3))
    assert job_events(r, "bk") == BACKUP_START + ["ERROR write ignore"] * 3 + NORMAL_END


def test_stop_pauses_with_io_status_and_resume_retries() -> None:
    r = clean(backup_to_null("stop", extra=[qmp("job-resume", id="bk"), qmp("query-block-jobs")]))
    assert (
        job_events(r, "bk") == BACKUP_START + ["ERROR write stop", "paused", "running"] + NORMAL_END
    )
    stopped = r.steps[5].response["return"][0]
    assert (stopped["status"], stopped["paused"], stopped["io-status"], stopped["busy"]) == (
        "paused",
        True,
        "failed",
        False,
    )
    resumed = r.steps[7].response["return"][0]
    assert (resumed["status"], resumed["paused"], resumed["io-status"]) == ("running", False, "ok")


@pytest.mark.parametrize("policy", ["enospc", "auto"])
def test_enospc_stops_on_enospc_and_reports_eio(policy: str) -> None:
    r = clean(backup_to_null(policy, "ENOSPC", extra=[qmp("block-job-resume", device="bk")]))
    assert (
        job_events(r, "bk") == BACKUP_START + ["ERROR write stop", "paused", "running"] + NORMAL_END
    )
    assert r.steps[5].response["return"][0]["io-status"] == "nospace"
    r = clean(backup_to_null(policy, "EIO"))
    assert job_events(r, "bk")[4:7] == [
        "ERROR write report",
        "aborting",
        "COMPLETED Input/output error",
    ]


def test_stop_then_cancel_is_cancelled() -> None:
    r = clean(backup_to_null("stop", extra=[qmp("job-cancel", id="bk")]))
    assert job_events(r, "bk")[4:] == [
        "ERROR write stop",
        "paused",
        "running",
        "aborting",
        "BLOCK_JOB_CANCELLED",
        "concluded",
        "null",
    ]


def test_source_read_error_uses_on_source_error() -> None:
    r = clean(
        run_steps(
            [
                io("write -P 0x5 0 1M"),
                fault(node="fmt0", op="read", offset=512 << 10),
                backup(**{"on-source-error": "ignore", "on-target-error": "stop"}),
                wait("BLOCK_JOB_COMPLETED", device="bk"),
            ]
        )
    )
    assert job_events(r, "bk") == BACKUP_START + ["ERROR read ignore"] + NORMAL_END


def test_failed_incremental_keeps_the_bitmap_and_the_retry_copies_it() -> None:
    steps = [
        qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
        io("write -P 0x5 0 1M"),
        io("write -P 0x6 8M 64k"),
        fault(node="fmt0", op="read", offset=8 << 20, length=65536),
        backup("inc", sync="incremental", bitmap="b0"),
        wait("BLOCK_JOB_COMPLETED", device="inc"),
        qmp("query-named-block-nodes"),
        backup("retry", sync="incremental", bitmap="b0"),
        wait("BLOCK_JOB_COMPLETED", device="retry"),
    ]
    r = clean(run_steps(steps))
    failed = r.steps[5].response["data"]
    assert failed["error"] == "Input/output error" and failed["len"] == 17 * 65536
    assert r.steps[6].response["return"][0]["dirty-bitmaps"][0]["count"] == 17 * 65536
    assert r.steps[8].response["data"] == {
        "device": "retry",
        "len": 17 * 65536,
        "offset": 17 * 65536,
        "speed": 0,
        "type": "backup",
    }
    assert r.final["nodes"][0]["dirty-bitmaps"][0]["count"] == 0


def test_mirror_errors_retry_and_stop_in_ready_goes_to_standby() -> None:
    steps = [
        io("write -P 0x5 0 1M"),
        fault(node="fmt0", op="read", count=2),
        qmp(
            "drive-mirror",
            device="drive0",
            target="m.qcow2",
            sync="full",
            **{
                "job-id": "m0",
                "node-name": "mt",
                "on-source-error": "ignore",
                "on-target-error": "stop",
            },
        ),
        wait("BLOCK_JOB_READY", device="m0"),
        fault(node="mt", op="write"),
        io("write -P 0x7 0 64k"),
        {"advance": 0.1},
        qmp("query-block-jobs"),
        qmp("job-resume", id="m0"),
        {"advance": 0.1},
        qmp("job-complete", id="m0"),
        wait("BLOCK_JOB_COMPLETED", device="m0"),
        io("read -P 0x7 0 64k"),
    ]
    r = clean(run_steps(steps))
    assert job_events(r, "m0") == [
        "created",
        "running",
        "ERROR read ignore",
        "ERROR read ignore",
        "ready",
        "BLOCK_JOB_READY",
        "ERROR write stop",
        "standby",
        "ready",
        "waiting",
        "pending",
        "COMPLETED",
        "concluded",
        "null",
    ]
    stopped = r.steps[7].response["return"][0]
    assert (stopped["status"], stopped["paused"], stopped["io-status"]) == (
        "standby",
        True,
        "failed",
    )
    assert r.steps[-1].output == "read 65536/65536 bytes at offset 0\n"


def test_commit_write_error_in_base_is_a_write_on_on_error() -> None:
    steps = [
        snapshot_sync("ov0.qcow2", "ov0"),
        io("write -P 0x5 0 64k"),
        snapshot_sync("ov1.qcow2", "ov1"),
        fault(node="fmt0", op="write"),
        qmp(
            "block-commit",
            device="drive0",
            **{"job-id": "c0", "top-node": "ov0", "on-error": "report"},
        ),
        wait("BLOCK_JOB_COMPLETED", device="c0"),
    ]
    r = clean(run_steps(steps))
    assert job_events(r, "c0") == [
        "created",
        "running",
        "ERROR write report",
        "aborting",
        "COMPLETED Input/output error",
        "concluded",
        "null",
    ]


def test_commit_reads_only_what_is_allocated_above_the_base() -> None:
    # QEMU's commit_run copies only allocated runs: a fault where nothing is allocated
    # above the base is never hit
    steps = [
        snapshot_sync("ov0.qcow2", "ov0"),
        io("write -P 0x5 0 64k"),
        snapshot_sync("ov1.qcow2", "ov1"),
        fault(node="ov0", op="read", offset=32 << 20, length=65536),
        qmp("block-commit", device="drive0", **{"job-id": "c0", "top-node": "ov0"}),
        wait("BLOCK_JOB_COMPLETED", device="c0"),
    ]
    r = clean(run_steps(steps))
    assert "error" not in r.steps[-1].response["data"]
    assert len(r.machine.faults.faults) == 1


def test_stream_ignore_skips_then_fails_and_keeps_the_backing() -> None:
    steps = [
        io("write -P 0xa 0 2M"),
        snapshot_sync("ov0.qcow2", "ov0"),
        fault(node="fmt0", op="read", offset=1 << 20, length=4096),
        qmp("block-stream", device="drive0", **{"job-id": "s0", "on-error": "ignore"}),
        wait("BLOCK_JOB_COMPLETED", device="s0"),
        io("read -P 0xa 0 2M"),
    ]
    r = clean(run_steps(steps))
    assert job_events(r, "s0") == [
        "created",
        "running",
        "ERROR read ignore",
        "aborting",
        "COMPLETED Input/output error",
        "concluded",
        "null",
    ]
    assert r.steps[4].response["data"]["offset"] == 64 << 20
    ov0 = next(n for n in r.final["nodes"] if n["node-name"] == "ov0")
    assert ov0["backing"] == "fmt0"
    assert r.steps[-1].output == "read 2097152/2097152 bytes at offset 0\n"


def test_cbw_copy_failure_fails_the_guest_write() -> None:
    # rate-limited: the backup created only its first task (at 0) when it is paused,
    # so the cluster at 8.5 MiB is still to copy when the guest writes it
    r = clean(
        run_steps(
            [
                io("write -P 0x5 0 1M"),
                io("write -P 0x5 8M 1M"),
                null_target(),
                qmp(
                    "blockdev-backup",
                    device="drive0",
                    target="null0",
                    sync="full",
                    speed=1 << 20,
                    **{"job-id": "bk"},
                ),
                qmp("job-pause", id="bk"),
                fault(node="null0", op="write", offset=8704 << 10, length=512),
                io("write -P 0x6 8704k 4k"),
                io("read -P 0x5 8704k 4k"),
                io("write -P 0x6 8704k 4k"),
                qmp("job-resume", id="bk"),
                qmp("block-job-set-speed", device="bk", speed=0),
                wait("BLOCK_JOB_COMPLETED", device="bk"),
            ]
        )
    )
    assert [o.output for o in r.steps[6:9]] == [
        "write failed: Input/output error\n",
        "read 4096/4096 bytes at offset 8912896\n",
        "wrote 4096/4096 bytes at offset 8912896\n",
    ]
    assert "error" not in r.steps[-1].response["data"]


@pytest.mark.parametrize("read_ratio", [0, 0.25])
def test_a_burst_applied_at_once_is_the_burst_request_by_request(
    read_ratio: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst's writes go to the model in one io.write_batch; every checker, the
    bitmaps, the contents, the request log and a backup running beside it see what
    they see when each request writes for itself."""
    import json

    from sim.check import make_checkers
    from sim.engine import workload
    from sim.jsonio import dumps
    from sim.replay import Replayer
    from sim.trace import parse_lines
    from tests.helpers import header

    lines: list[Any] = [header()]
    lines.append(qmp("block-dirty-bitmap-add", node="drive0", name="b0", granularity=4096))
    lines.append(qmp("block-dirty-bitmap-add", node="proto0", name="b1"))
    lines.append({"workload": {"device": "drive0", "pattern": "burst", "rate": 4000,
                               "size": 4096, "duration": 0.2, "read-ratio": read_ratio}})  # fmt: skip
    lines.append({"advance": 0.05})
    lines.append(qmp("drive-backup", device="drive0", target="t.qcow2", sync="full",
                     **{"job-id": "bk"}))  # fmt: skip
    lines.append({"advance": 0.3})
    lines.append(qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"))
    lines.append(qmp("x-debug-block-dirty-bitmap-sha256", node="proto0", name="b1"))
    trace = parse_lines([json.dumps(x) for x in lines])

    def run() -> tuple[str, int]:
        r = Replayer(trace, checkers=make_checkers())
        res = r.run()
        assert res.ok, res.mismatches + res.trace_errors + res.internal_errors
        text = "\n".join(dumps(o.json_line()) for o in res.steps)
        log = dumps([list(rec) for rec in r.machine.io_log])
        return text + dumps(res.final, default=str) + log, len(r.machine.io_log)

    batched, n = run()
    applied = workload._Burst.apply

    def one_by_one(self: Any, *args: Any) -> None:
        self.done = True  # no results: each request writes for itself

    monkeypatch.setattr(workload._Burst, "apply", one_by_one)
    assert run()[0] == batched
    assert n > 500
    monkeypatch.setattr(workload._Burst, "apply", applied)


def test_a_force_cancelled_job_does_not_stop_at_a_pause() -> None:
    """job-cancel forces; job-pause right after it is accepted, but job_pause_point
    returns at once for a force-cancelled job, so the mirror goes on to its end: on
    QEMU 7.2 the events after job-pause are aborting, BLOCK_JOB_CANCELLED, concluded
    and null, and query-jobs is empty (the job never reads 'paused')."""
    r = clean(
        run_steps(
            [
                io("write -P 1 0 8M"),
                qmp(
                    "drive-mirror",
                    device="drive0",
                    target="t.qcow2",
                    sync="full",
                    speed=1 << 20,
                    **{"job-id": "job3"},
                ),  # fmt: skip
                qmp("job-cancel", id="job3"),
                qmp("job-pause", id="job3"),
                wait("BLOCK_JOB_CANCELLED", device="job3"),
                qmp("query-jobs"),
            ]
        )
    )
    assert r.steps[3].response == {"return": {}}
    statuses = [e["data"]["status"] for e in r.final["events"] if e["event"] == "JOB_STATUS_CHANGE"]
    assert "paused" not in statuses and statuses[-3:] == ["aborting", "concluded", "null"]
    assert r.steps[5].response == {"return": []}


# -- a completed mirror's drained section ---------------------------------------------------


def _mirror_pending_then_finalize() -> list[dict[str, Any]]:
    """A mirror completed with auto-finalize off waits in PENDING; a guest workload
    writes meanwhile; then job-finalize pivots the device onto the target."""
    return [
        io("write -P 193 0 1M"),
        qmp(
            "drive-mirror",
            device="drive0",
            target="m.qcow2",
            format="qcow2",
            sync="full",
            **{"job-id": "m", "auto-finalize": False, "auto-dismiss": False},
        ),  # fmt: skip
        wait("BLOCK_JOB_READY", device="m"),
        qmp("job-complete", id="m"),
        wait("JOB_STATUS_CHANGE", id="m", status="pending"),
        workload(
            pattern="sequential", rate=20, size=4096, duration=0.1, **{"read-ratio": 0, "fill": 1}
        ),  # fmt: skip
        {"advance": 0.5},
        qmp("job-finalize", id="m"),
        {"advance": 0.1},
        io("read -P 1 0 4k"),
    ]


def test_guest_writes_wait_while_a_completed_mirror_holds_its_source_drained() -> None:
    """mirror_run ends converged inside a drained section of its source, which
    mirror_exit_common ends at finalize after the pivot: a guest write while the job
    waits in PENDING waits too, then lands on the target, where the device reads it
    (the writes were lost at the pivot before: they went to the old source)."""
    from sim.check import make_checkers

    result = run_steps(_mirror_pending_then_finalize(),
                       checkers=make_checkers(["mirror-and-commit-consistency"]))  # fmt: skip
    assert result.final["violations"] == []
    assert "Pattern verification failed" not in (result.steps[-1].output or "")
    pending_at, finalize_at = result.steps[4].time_s, result.steps[7].time_s
    assert finalize_at - pending_at >= 0.5
    writes = [r for r in result.machine.io_log if r[1] == "write"]
    assert writes  # each completed only after the finalize ended the drained section
    assert all(r[0] + r[2] >= finalize_at * 1e9 for r in writes), writes
    assert all(r[0] < finalize_at * 1e9 for r in writes)  # issued while PENDING


def test_without_the_drained_section_the_pivot_loses_the_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The companion: a mirror that let guest writes through while PENDING (the model
    before) loses them at the pivot, which mirror-and-commit-consistency flags."""
    from sim.check import make_checkers
    from sim.model.job_mirror import MirrorKind

    monkeypatch.setattr(MirrorKind, "exit_drain", lambda self: None)
    result = run_steps(_mirror_pending_then_finalize(),
                       checkers=make_checkers(["mirror-and-commit-consistency"]))  # fmt: skip
    assert [v["invariant"] for v in result.final["violations"]] == ["mirror-and-commit-consistency"]
