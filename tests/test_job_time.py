"""Analytic job time (sim/engine/jobs.py `leap`) and the time of holes.

A job does the chunks that end before anything else can happen in one simpy
step; its outputs must be those of the chunk-by-chunk run, byte for byte.  A
backup chunk that block status finds zero or unallocated costs HOLE_CHUNK_NS,
not a device read and write, and still counts against the rate limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.check import make_checkers
from sim.engine import jobs
from sim.engine.timing import HOLE_CHUNK_NS, DeviceTiming
from sim.jsonio import dumps
from sim.replay import Replayer
from sim.trace import load_trace, parse_lines
from tests.helpers import SCENARIOS, header, io, qmp

MIB = 1 << 20
GIB = 1 << 30

# traces where jobs run beside guest I/O, commands, waits with deadlines, rate
# limits, drains, several jobs at once and faults
TRACES = (
    sorted((SCENARIOS / "engine").glob("*.jsonl"))
    + sorted((SCENARIOS / "races").glob("*.jsonl"))[:6]
)


def _run(trace: Any, leaps: bool) -> tuple[str, int]:
    """Every step's output line and the final state, and how many simpy steps ran."""
    r = Replayer(trace, checkers=make_checkers())
    r.machine.leaps = leaps
    env = r.machine.env
    count = [0]
    real_step = env.step

    def step() -> None:
        count[0] += 1
        real_step()

    env.step = step  # type: ignore[method-assign]
    res = r.run()
    text = "\n".join(dumps(o.json_line()) for o in res.steps)
    return text + "\n" + dumps(res.final, default=str), count[0]


@pytest.mark.parametrize("path", TRACES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_leaps_give_the_chunk_by_chunk_outputs(path: Path) -> None:
    trace = load_trace(path)
    assert _run(trace, True)[0] == _run(trace, False)[0]


def backup_trace(
    size: int,
    data: list[int],
    *before: dict[str, Any],
    after: tuple[dict[str, Any], ...] = (),
    **args: Any,
) -> Any:
    drive = {"id": "drive0", "node-name": "fmt0", "file-node-name": "proto0"}
    drive.update({"format": "qcow2", "size": size})
    lines: list[Any] = [header(drives=[drive])]
    lines += [io(f"write -P {i % 200 + 1} {off} 1M") for i, off in enumerate(data)]
    lines += list(before)
    bk = {"device": "drive0", "target": "t.qcow2", "sync": "full", "job-id": "bk"}
    bk.update(args)
    lines.append(qmp("drive-backup", **bk))
    lines += list(after)
    lines.append({"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}})
    return parse_lines([json.dumps(x) for x in lines])


def test_leaps_with_guest_io_and_a_rate_limit_match_chunk_by_chunk() -> None:
    workload = {"device": "drive0", "pattern": "uniform", "rate": 3000, "size": 4096}
    workload.update({"duration": 0.5, "read-ratio": 0.3})
    trace = backup_trace(
        256 * MIB, [0, 37 * MIB, 100 * MIB], {"workload": workload}, speed=200 * MIB
    )
    fast, fast_steps = _run(trace, True)
    slow, slow_steps = _run(trace, False)
    assert fast == slow
    assert fast_steps < slow_steps


def test_progress_seen_between_advances_is_the_chunk_by_chunk_progress() -> None:
    steps: list[dict[str, Any]] = []
    for i in range(12):
        steps += [{"advance": 0.021 * (i % 4 + 1)}, qmp("query-block-jobs")]
    workload = {"device": "drive0", "pattern": "sequential", "rate": 40, "size": 65536}
    workload.update({"duration": 0.3, "read-ratio": 0})
    data = [i * MIB for i in range(0, 64, 3)]
    # rate-limited: without a speed its tasks, 64 at a time, copy it all in ~10 ms;
    # at 100 MiB/s each 100 ms slice lets 10 MiB of tasks go
    trace = backup_trace(
        64 * MIB, data, {"workload": workload}, after=tuple(steps), speed=100 * MIB
    )
    fast, fast_steps = _run(trace, True)
    slow, slow_steps = _run(trace, False)
    assert fast == slow
    assert fast_steps < slow_steps
    r = Replayer(trace)
    offsets = [o.response["return"][0]["offset"] for o in r.run().steps if o.response.get("return")]
    assert len(set(offsets)) > 6  # the queries see the job part way, at many points


def test_a_sparse_backup_takes_hole_time_and_few_steps() -> None:
    data = [i * GIB for i in range(8)]
    trace = backup_trace(64 * GIB, data)
    r = Replayer(trace)
    res = r.run()
    assert res.ok, res.mismatches
    timing = DeviceTiming.from_header(None)
    data_ns = 2 * timing.io_ns(MIB, None)  # type: ignore[arg-type]
    holes = 64 * 1024 - len(data)
    # each data task reads and writes in block-copy's pool while the zero tasks after
    # it (1023 of them, longer than its I/O) go on: only the zero tasks take job time;
    # the first 63 of them run at once in job_start's pool with the data task at 0
    # (each waits for the new target's L2 table, so it is busy)
    assert 1023 * HOLE_CHUNK_NS > data_ns
    assert r.machine.now_ns == (holes - 63) * HOLE_CHUNK_NS
    ev = res.final["events"][-3]
    assert ev["event"] == "BLOCK_JOB_COMPLETED" and ev["data"]["offset"] == 64 * GIB


def test_holes_still_count_against_the_rate_limit() -> None:
    speed = 64 * MIB  # 1 MiB chunks: 1/64 s each, holes included
    r = Replayer(backup_trace(64 * MIB, [0], speed=speed))
    assert r.run().ok
    assert r.machine.now_ns == 64 * jobs.rate_limit_ns(MIB, speed)


def _until_trace(kind: str, points: list[dict[str, Any]]) -> Any:
    drive = {"id": "drive0", "node-name": "fmt0", "file-node-name": "proto0"}
    drive.update({"format": "qcow2", "size": 256 * MIB})
    lines: list[Any] = [header(drives=[drive])]
    lines += [io(f"write -P {i + 1} {i * 24}M 5M") for i in range(8)]
    snap = {"device": "drive0", "snapshot-file": "ov.qcow2", "snapshot-node-name": "ov"}
    if kind in ("stream", "commit"):
        lines.append(qmp("blockdev-snapshot-sync", **snap))
        lines += [io(f"write -P {i + 40} {i * 40 + 3}M 2M") for i in range(5)]
    if kind == "backup":
        lines.append(qmp("drive-backup", device="drive0", target="t.qcow2", sync="full",
                         **{"job-id": "j"}))  # fmt: skip
    elif kind == "mirror":
        lines.append(qmp("drive-mirror", device="drive0", target="m.qcow2", sync="full",
                         **{"job-id": "j"}))  # fmt: skip
    elif kind == "stream":
        lines.append(qmp("block-stream", device="drive0", **{"job-id": "j"}))
    else:
        lines.append(qmp("block-commit", device="drive0", **{"job-id": "j"}))
    lines.append({"workload": {"device": "drive0", "pattern": "uniform", "rate": 2000,
                               "size": 65536, "duration": 0.05, "read-ratio": 0}})  # fmt: skip
    for body in points:
        lines.append({"until": {"job": "j", **body}})
        lines.append(qmp("query-block-jobs"))
        lines.append(io("write -P 99 100M 64k"))
    lines.append(qmp("query-block-jobs"))
    return parse_lines([json.dumps(x) for x in lines])


UNTIL_POINTS = [
    {"point": "progress", "fraction": 0.1},
    {"point": "chunk"},
    {"point": "progress", "fraction": 0.55},
    {"point": "progress", "fraction": 0.56},
    {"point": "before-ready"},
    {"point": "ready"},
    {"point": "ending"},
]


@pytest.mark.parametrize("kind", ["backup", "mirror", "stream", "commit"])
def test_leaps_under_until_stop_where_chunk_by_chunk_stops(kind: str) -> None:
    """An `until` step lets jobs leap, but never past its point: the step outputs, the
    progress queried at each point and the final state are those of the chunk-by-chunk
    run, in fewer simpy steps."""
    trace = _until_trace(kind, UNTIL_POINTS)
    leaping, steps = _run(trace, True)
    chunked, chunk_steps = _run(trace, False)
    assert leaping == chunked
    assert '"offset"' in leaping  # the jobs were seen part way
    if kind in ("backup", "mirror"):
        assert steps < chunk_steps


def _device_run(analytic: bool, depth: int, seed: int) -> list[tuple[int, int, int]]:
    """(request, submitted, ended) of 300 job and guest requests of mixed sizes that
    processes submit to one device at drawn (often equal) instants."""
    import random

    import simpy

    from sim.engine.timing import Device

    rng = random.Random(seed)
    env = simpy.Environment()
    timing = DeviceTiming.from_header({"queue_depth": depth, "latency_us": 50})
    dev = Device(env, "d", timing)
    dev.analytic = analytic
    ended: list[tuple[int, int, int]] = []

    def job_io(i: int, length: int) -> Any:
        start = int(env.now)
        yield from dev.io(env, length, rng)
        ended.append((i, start, int(env.now)))

    def guest_io(i: int, length: int) -> Any:
        start = int(env.now)
        ns = timing.io_ns(length, rng)
        if analytic:
            yield env.timeout(dev.held(start, ns) - start)
        else:
            with dev.queue.request() as slot:
                yield slot
                yield env.timeout(ns)
        ended.append((i, start, int(env.now)))

    def arrivals() -> Any:
        for i in range(300):
            gap = rng.choice((0, 0, 50_000, 100_000, 2_000_000, 3_000_000))
            if gap:
                yield env.timeout(gap)
            length = rng.choice((4096, 65536, MIB))
            env.process((job_io if rng.random() < 0.6 else guest_io)(i, length))

    env.process(arrivals())
    env.run()
    return sorted(ended)


@pytest.mark.parametrize("depth", [1, 2, 32])
def test_a_device_without_jitter_serves_each_request_when_its_queue_and_link_would(
    depth: int,
) -> None:
    """`Device.served` / `held` (one timeout a request) give every request the end
    time that running the device's queue slots and link as simpy resources gives."""
    for seed in range(3):
        analytic = _device_run(True, depth, seed)
        assert analytic == _device_run(False, depth, seed)
        assert len({end for _, _, end in analytic}) > 100  # requests waited and overlapped


def test_a_backup_pool_and_guest_io_on_a_shallow_queue_match_resource_by_resource() -> None:
    """Block-copy's 64 tasks, a mirror and guest I/O on devices whose queues hold two
    requests: with analytic device time the outputs (event times, progress seen by
    queries, guest latencies) are those of the simpy resources, in fewer steps."""
    drives = []
    for i in range(2):
        drive = {"id": f"drive{i}", "node-name": f"fmt{i}", "file-node-name": f"proto{i}"}
        drive.update({"format": "qcow2", "size": 64 * MIB, "timing": {"queue_depth": 2}})
        drives.append(drive)
    lines: list[Any] = [header(drives=drives)]
    lines += [io(f"write -P {i + 1} {i * 3}M 2M", device="drive0") for i in range(20)]
    lines += [io(f"write -P {i + 9} {i * 5}M 3M", device="drive1") for i in range(12)]
    for i in range(2):
        workload = {"device": f"drive{i}", "pattern": "uniform", "rate": 4000, "size": 4096}
        lines.append({"workload": {**workload, "duration": 0.2, "read-ratio": 0.5}})
    lines.append(qmp("drive-backup", device="drive0", target="t.qcow2", sync="full",
                     **{"job-id": "bk"}))  # fmt: skip
    lines.append(qmp("drive-mirror", device="drive1", target="m.qcow2", sync="full",
                     **{"job-id": "mj"}))  # fmt: skip
    for _ in range(6):
        lines += [{"advance": 0.013}, qmp("query-block-jobs"), qmp("query-blockstats")]
    lines.append({"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}})
    lines.append({"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "mj"}}})
    trace = parse_lines([json.dumps(x) for x in lines])
    fast, fast_steps = _run(trace, True)
    slow, slow_steps = _run(trace, False)
    assert fast == slow
    assert '"offset"' in fast and '"wr_total_time_ns"' in fast
    assert fast_steps * 3 < slow_steps * 2
