"""Throttle groups and throttle filter nodes: QEMU's limit checks, and the timing
model holding guest I/O and job chunks to the group's limits."""

from __future__ import annotations

from typing import Any

import pytest

from sim.errors import QMPError
from sim.model.throttle import ThrottleConfig, ThrottleGroup, apply_limits, limits_of
from tests.helpers import DRIVE0, io, qmp, responses, run_steps

TG = "throttle-group"


def _group(**limits: int) -> list[dict[str, Any]]:
    return [qmp("object-add", **{"qom-type": TG, "id": "tg0", "limits": limits})]


def _throttle(file: Any = "fmt0", name: str = "th0") -> dict[str, Any]:
    return qmp("blockdev-add", driver="throttle", **{"node-name": name, TG: "tg0", "file": file})


def _workload(device: str, rate: float, duration: float, size: int = 4096, ratio: float = 0.0):
    return {
        "workload": {
            "device": device, "pattern": "sequential", "rate": rate, "size": size,
            "duration": duration, "read-ratio": ratio,
        }
    }  # fmt: skip


def _last_completion_s(result: Any) -> float:
    return max(r.time_ns + r.latency_ns for r in result.machine.io_log) / 1e9


def test_iops_limit_spreads_guest_requests_over_time() -> None:
    """200 writes issued within 1 s through a 50 iops group: the bucket holds 5
    (avg / 10), the other 195 pass at 50 per second."""
    steps = [*_group(**{"iops-total": 50}), _throttle(), _workload("th0", 200, 1.0)]
    r = run_steps([*steps, {"advance": 10.0}])
    assert all(resp.get("return") == {} for resp in responses(r) if "return" in resp)
    assert len(r.machine.io_log) == 200
    assert 3.8 <= _last_completion_s(r) <= 4.0
    # the same workload on the device itself is not held back
    free = run_steps([*steps, _workload("drive0", 200, 1.0), {"advance": 10.0}])
    device_only = [x for x in free.machine.io_log if x.time_ns < 1e9 and x.latency_ns < 1e6]
    assert len(device_only) >= 200


def test_write_limit_leaves_reads_alone_and_bps_counts_bytes() -> None:
    reads = run_steps(
        [*_group(**{"iops-write": 10}), _throttle(), _workload("th0", 100, 1.0, ratio=1.0),
         {"advance": 5.0}]
    )  # fmt: skip
    assert _last_completion_s(reads) < 1.01
    # 64 KiB writes at 1 MiB/s: 100 of them (6.25 MiB) take about 6 s
    written = run_steps(
        [*_group(**{"bps-total": 1 << 20}), _throttle(), _workload("th0", 100, 1.0, size=65536),
         {"advance": 10.0}]
    )  # fmt: skip
    assert 5.9 <= _last_completion_s(written) <= 6.3


def test_burst_lets_requests_through_at_the_burst_rate_first() -> None:
    """iops-total 10, max 100 for 2 s: a bucket of 200 operations, passed at up to
    100 per second (the burst bucket holds 10)."""
    limits = {"iops-total": 10, "iops-total-max": 100, "iops-total-max-length": 2}
    r = run_steps([*_group(**limits), _throttle(), _workload("th0", 1000, 0.2), {"advance": 5.0}])
    done = sorted(x.time_ns + x.latency_ns for x in r.machine.io_log)
    assert len(done) == 200
    assert 1.7 <= done[-1] / 1e9 <= 2.0  # 200 at ~100/s (minus the burst bucket's 10)


def _backup_then_mirror(size_mb: int, rate: int) -> tuple[float, float]:
    """A backup, then a mirror, both reading a fully written node through a throttle node
    (bps-read `rate`): when the backup completed, and how long the mirror took to READY."""
    drive = {**DRIVE0, "size": size_mb << 20}
    steps = [
        io(f"write -P 0x11 0 {size_mb}M", "fmt0"),
        *_group(**{"bps-read": rate}),
        qmp("blockdev-add", driver="null-co", **{"node-name": "t0", "size": size_mb << 20}),
        qmp("blockdev-add", driver="null-co", **{"node-name": "t1", "size": size_mb << 20}),
        _throttle(),
        qmp("blockdev-backup", **{"job-id": "j0", "device": "th0", "target": "t0", "sync": "full"}),
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j0"}}},
        qmp("blockdev-mirror", **{"job-id": "j1", "device": "th0", "target": "t1", "sync": "full"}),
        {"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "j1"}}},
    ]
    r = run_steps(steps, drives=[drive])
    at = {e.name: e.time_ns / 1e9 for e in r.machine.events.history}
    return at["BLOCK_JOB_COMPLETED"], at["BLOCK_JOB_READY"] - at["BLOCK_JOB_COMPLETED"]


def test_jobs_reading_through_a_throttle_node_are_throttled() -> None:
    """QEMU 7.2 (measured): a backup's first 64 MiB are read inside the drained section
    of its start, unthrottled but accounted (16 MiB at 4 MiB/s: backup 0.01 s, then a
    mirror 7.6 s); beyond that it is throttled (128 MiB at 16 MiB/s: 7.8 s, mirror 8.0 s)."""
    backup, mirror = _backup_then_mirror(16, 4 << 20)
    assert backup < 0.5 and 7.0 <= mirror <= 8.0
    backup, mirror = _backup_then_mirror(128, 16 << 20)
    assert 7.5 <= backup <= 8.2 and 7.5 <= mirror <= 8.5


def test_qom_set_limits_takes_effect_for_later_requests() -> None:
    steps = [
        *_group(**{"iops-total": 10}),
        _throttle(),
        qmp("qom-set", path="tg0", property="limits", value={"iops-total": 1000}),
        _workload("th0", 100, 1.0),
        {"advance": 5.0},
    ]
    assert _last_completion_s(run_steps(steps)) < 1.01


def test_limits_round_trip_and_validation() -> None:
    cfg = ThrottleConfig()
    apply_limits(cfg, {"bps-read": 5, "bps-read-max": 10, "bps-read-max-length": 3})
    out = limits_of(cfg)
    assert (out["bps-read"], out["bps-read-max"], out["bps-read-max-length"]) == (5, 10, 3)
    assert out["iops-total-max-length"] == 1 and out["iops-size"] == 0
    with pytest.raises(QMPError, match="cannot be used at the same time"):
        apply_limits(cfg.copy(), {"bps-total": 1})
    group = ThrottleGroup("g")
    group.configure(cfg, 0)
    assert group.wait_ns(0, False) == 0
    group.account(False, 100)  # 100 bytes over a 30-byte bucket at 5 bytes/s
    assert group.wait_ns(0, False) == 14 * 10**9


def test_object_commands_refuse_what_is_not_modelled() -> None:
    r = run_steps(
        [qmp("object-add", **{"qom-type": "iothread", "id": "io0"}),
         qmp("qom-get", path="/machine", property="type"),
         qmp("qom-get", path="machine", property="type")]
    )  # fmt: skip
    descs = [resp["error"]["desc"] for resp in responses(r)]
    assert all(d.startswith("blocksim does not model") for d in descs), descs


def test_a_refusal_against_a_recorded_answer_is_a_difference() -> None:
    """What blocksim does not model never passes a replay of QEMU's answer."""
    step = qmp("object-add", **{"qom-type": "iothread", "id": "io0"})
    step["expect"] = {"return": {}}
    r = run_steps([step])
    assert r.mismatches and "blocksim does not model qom-type 'iothread'" in str(
        r.steps[0].response
    )


def test_qemu_io_waits_for_the_group_while_time_runs_on() -> None:
    """qemu-io over HMP through a throttle node: the first 4 MiB write finds the
    bps-write bucket empty and passes at once; the next write waits until 4 MiB at
    1 MiB/s have leaked down to the bucket size (avg / 10), about 3.9 s, and a workload
    keeps running meanwhile; a read is not held back by a write limit."""
    r = run_steps(
        [*_group(**{"bps-write": 1 << 20}), _throttle(),
         io("write 0 4M", "th0"), _workload("drive0", 100, 10.0, ratio=1.0),
         io("read 0 64k", "th0"), io("write 4M 64k", "th0"), io("read 0 64k", "th0")]
    )  # fmt: skip
    times = [o.time_s for o in r.steps]
    assert times[2] == times[4] == 0.0  # the first write and the read: at once
    assert 3.8 <= times[5] <= 4.0
    assert times[6] == times[5]
    assert len(r.machine.io_log) >= 350  # the workload ran while the command waited
