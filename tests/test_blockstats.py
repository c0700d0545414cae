"""query-blockstats: the device-level accounting of workload requests, and every
node's wr_highest_offset."""

from __future__ import annotations

from typing import Any

from tests.helpers import io, qmp, responses, run_steps


def _workload(rate: float, ratio: float, duration: float = 1.0) -> dict[str, Any]:
    return {
        "workload": {
            "device": "drive0", "pattern": "sequential", "rate": rate, "size": 4096,
            "duration": duration, "read-ratio": ratio,
        }
    }  # fmt: skip


def test_workload_requests_are_accounted_on_the_device() -> None:
    r = run_steps([_workload(100, 0.5), {"advance": 2.0}, qmp("query-blockstats")])
    (entry,) = responses(r)[-1]["return"]
    stats = entry["stats"]
    log = r.machine.io_log
    reads = [x for x in log if x.op == "read"]
    writes = [x for x in log if x.op == "write"]
    assert reads and writes
    assert stats["rd_operations"] == len(reads) and stats["rd_bytes"] == 4096 * len(reads)
    assert stats["wr_operations"] == len(writes) and stats["wr_bytes"] == 4096 * len(writes)
    assert stats["rd_total_time_ns"] == sum(x.latency_ns for x in reads)
    assert stats["wr_total_time_ns"] == sum(x.latency_ns for x in writes)
    last_done = max(x.time_ns + x.latency_ns for x in log)
    assert stats["idle_time_ns"] == r.machine.now_ns - last_done
    assert stats["account_failed"] is True and stats["account_invalid"] is True
    # the node's own counter: the end of the highest write (sequential offsets from 0)
    assert 0 < stats["wr_highest_offset"] <= 4096 * 100
    assert entry["node-name"] == "fmt0" and entry["parent"]["node-name"] == "proto0"
    assert entry["parent"]["stats"]["wr_operations"] == 0  # nodes account no requests


def test_failed_requests_count_as_failed_with_their_time() -> None:
    fault = {"fault": {"node": "drive0", "op": "read", "count": 3}}
    r = run_steps([fault, _workload(50, 1.0), {"advance": 2.0}, qmp("query-blockstats")])
    stats = responses(r)[-1]["return"][0]["stats"]
    failed = [x for x in r.machine.io_log if x.op == "read-failed"]
    assert stats["failed_rd_operations"] == len(failed) == 3
    assert stats["rd_operations"] == len(r.machine.io_log) - 3
    assert stats["rd_total_time_ns"] == sum(x.latency_ns for x in r.machine.io_log)


def test_no_io_means_no_idle_time_and_qemu_io_is_not_accounted() -> None:
    r = run_steps([io("write 0 64k"), io("read 0 64k"), qmp("query-blockstats")])
    stats = responses(r)[-1]["return"][0]["stats"]
    assert "idle_time_ns" not in stats
    assert stats["wr_operations"] == 0 and stats["rd_bytes"] == 0
    assert stats["wr_highest_offset"] == 65536


def test_query_nodes_lists_every_node_in_creation_order() -> None:
    r = run_steps(
        [qmp("blockdev-add", driver="null-co", **{"node-name": "n0"}),
         qmp("query-blockstats", **{"query-nodes": True})]
    )  # fmt: skip
    names = [e["node-name"] for e in responses(r)[-1]["return"]]
    assert names == ["proto0", "fmt0", "n0"]
    assert all("device" not in e for e in responses(r)[-1]["return"])
