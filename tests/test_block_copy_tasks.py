"""qcow2 host cluster allocation (sim.model.qcow2_host) and how a backup's block-copy
cuts its work into tasks (BackupKind.next_chunk) and lets the pool finish after a
failed read (sim.engine.jobs.finish_in_flight); the recorded scenarios
scenarios/blockapi/backup-block-copy-pool.jsonl and qemu-iotests 257's full-sync
intermediate cases check the same against QEMU 7.2."""

from __future__ import annotations

from pathlib import Path

from sim.model.content import FIRST_DATA_STAMP, ZERO_STAMP
from sim.model.qcow2_host import Qcow2Content
from sim.replay import replay
from sim.trace import load_trace

K = 1024
M = 1 << 20
C = 64 * K


def test_a_write_allocates_its_new_clusters_contiguously() -> None:
    qc = Qcow2Content(64 * M, C)
    qc.write(0, 3 * C, FIRST_DATA_STAMP)
    runs = {qc.host_run(i) for i in range(3)}
    assert len(runs) == 1 and 0 not in runs
    assert qc.host_run(3) == 0  # never written


def test_clusters_written_by_later_requests_are_separate_host_extents() -> None:
    qc = Qcow2Content(64 * M, C)
    qc.write(C, C, FIRST_DATA_STAMP)  # guest cluster 1 first
    qc.write(0, C, FIRST_DATA_STAMP + 1)  # then cluster 0: after it in the file
    assert qc.host_run(0) != qc.host_run(1)
    qc.write(2 * C, C, FIRST_DATA_STAMP + 2)  # right after cluster 0 in the file? no:
    assert qc.host_run(2) != qc.host_run(1)  # cluster 1 lies before cluster 0
    # a partial write into an allocated cluster allocates nothing
    before = qc.next_host
    qc.write(C + 512, 512, FIRST_DATA_STAMP + 3)
    assert qc.next_host == before


def test_sequential_requests_stay_contiguous_and_an_l2_table_breaks_the_run() -> None:
    qc = Qcow2Content(1 << 30, C)
    qc.write(0, C, FIRST_DATA_STAMP)
    qc.write(C, C, FIRST_DATA_STAMP + 1)  # next host cluster: one extent
    assert qc.host_run(0) == qc.host_run(1)
    span = C // 8 * C  # guest bytes one L2 table maps (512 MiB)
    qc.write(span - C, 2 * C, FIRST_DATA_STAMP + 2)  # crosses into a region without L2
    assert qc.host_run(span // C - 1) != qc.host_run(span // C)


def test_zero_writes_and_discards() -> None:
    qc = Qcow2Content(64 * M, C)
    qc.write(0, C, ZERO_STAMP)  # zero flag: no host cluster
    assert qc.host_run(0) == 0
    qc.write(C, 2 * C, FIRST_DATA_STAMP)
    qc.write(C, 2 * C, ZERO_STAMP)  # an allocated cluster keeps its host cluster
    assert qc.host_run(1) != 0
    qc.write(C + 512, C, 0)  # a discard frees only the clusters it covers whole
    assert qc.host_run(1) != 0 and qc.host_run(2) != 0
    qc.write(C, 2 * C, 0)
    assert qc.host_run(1) == 0 and qc.host_run(2) == 0


def test_clone_keeps_its_own_map() -> None:
    qc = Qcow2Content(64 * M, C)
    qc.write(0, C, FIRST_DATA_STAMP)
    copy = qc.clone()
    assert isinstance(copy, Qcow2Content) and copy.host_run(0) == qc.host_run(0)
    copy.write(C, C, FIRST_DATA_STAMP + 1)
    assert qc.host_run(1) == 0 and copy.host_run(1) != 0


def _backup_trace(tmp_path: Path, writes: list[str], immediately: bool) -> Path:
    """A full backup of a 128 MiB qcow2 over blkdebug whose second read after a flush
    fails once."""
    import json

    lines = [
        {"trace": 1, "name": "t", "drives": [], "policy": "qemu-7.2", "seed": 0},
        {"execute": "blockdev-create",
         "arguments": {"job-id": "f", "options": {"driver": "file", "filename": "img", "size": 0}}},
        {"wait": {"event": "JOB_STATUS_CHANGE", "data": {"id": "f", "status": "concluded"}}},
        {"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "p", "filename": "img"}},
        {"execute": "blockdev-create",
         "arguments": {"job-id": "q", "options": {"driver": "qcow2", "file": "p", "size": 128 * M}}},
        {"wait": {"event": "JOB_STATUS_CHANGE", "data": {"id": "q", "status": "concluded"}}},
        {"execute": "blockdev-del", "arguments": {"node-name": "p"}},
        {"execute": "blockdev-add", "arguments": {
            "node-name": "src", "driver": "qcow2", "file": {
                "driver": "blkdebug", "image": {"driver": "file", "filename": "img"},
                "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2},
                              {"event": "read_aio", "state": 2, "new_state": 3}],
                "inject-error": [{"event": "read_aio", "state": 3, "once": True,
                                  "immediately": immediately}]}}},
        *({"execute": "human-monitor-command",
           "arguments": {"command-line": f'qemu-io src "{w}"'}} for w in writes),
        {"execute": "human-monitor-command", "arguments": {"command-line": 'qemu-io src "flush"'}},
        {"execute": "drive-backup",
         "arguments": {"job-id": "bk", "device": "src", "target": "t.qcow2", "sync": "full"}},
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}},
    ]  # fmt: skip
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _completed_offset(path: Path) -> int:
    result = replay(load_trace(path))
    (event,) = [e for e in result.steps[-1].events if e["event"] == "BLOCK_JOB_COMPLETED"]
    assert event["data"]["error"] == "Input/output error"
    return int(event["data"]["offset"])


def test_a_failed_read_lets_the_pools_first_64_tasks_complete(tmp_path: Path) -> None:
    # tasks: [0] data (the first read), [64K, 1M+64K) and [1M+64K, 2M) zeroes, [2M] data
    # (the second read: fails), then 1 MiB zero tasks; the pool's 64 tasks end 60 tasks
    # after the failed one, which stays uncopied
    path = _backup_trace(tmp_path, ["write 0 64k", "write 2M 64k", "write 100M 64k"], False)
    assert _completed_offset(path) == (1 + 16 + 15 + 60 * 16) * C
    # a read that fails before yielding ends the call: nothing after the failed task
    path = _backup_trace(tmp_path, ["write 0 64k", "write 2M 64k", "write 100M 64k"], True)
    assert _completed_offset(path) == (1 + 16 + 15) * C


def test_tasks_end_where_the_host_extent_ends(tmp_path: Path) -> None:
    # 2M and 2M+64K written by one request: one task, which fails whole; written by two
    # requests with another allocation between them: two tasks, the second one copied
    one = _backup_trace(tmp_path, ["write 0 64k", "write 2M 128k", "write 100M 64k"], True)
    assert _completed_offset(one) == (1 + 16 + 15) * C
    two = _backup_trace(
        tmp_path, ["write 0 64k", "write 2M 64k", "write 100M 64k", "write 2112k 64k"], False
    )
    assert _completed_offset(two) == (1 + 16 + 15 + 1 + 59 * 16) * C


def test_resuming_after_an_error_starts_a_new_pool() -> None:
    """on-error=stop, then block-job-resume: backup_loop starts a new block-copy call.
    The first failure (task 4 of call 1: [2M]) leaves 992 clusters copied: the first
    zero task allocates the target's L2 table and the others wait for the image's
    lock, so the pool fills with 64 tasks.  In call 2 the table exists: zero tasks
    finish at once and hold no slot, and every task but the failed one at 100M
    completes (as scenarios/blockapi/backup-block-copy-pool-resume.jsonl recorded)."""
    from tests.helpers import DRIVE0, io, qmp, run_steps

    drive = dict(DRIVE0, size=128 * M)
    fault = {"node": "fmt0", "op": "read", "errno": "EIO", "length": C, "count": 1}
    steps = [
        io("write 0 64k"), io("write 2M 64k"), io("write 100M 64k"),
        {"fault": dict(fault, offset=2 * M)},
        qmp("drive-backup", device="drive0", target="t.qcow2", sync="full",
            **{"job-id": "bk", "on-source-error": "stop"}),
        {"wait": {"event": "BLOCK_JOB_ERROR", "data": {"device": "bk"}}},
        qmp("query-block-jobs"),
        {"fault": dict(fault, offset=100 * M)},
        qmp("block-job-resume", device="bk"),
        {"wait": {"event": "BLOCK_JOB_ERROR", "data": {"device": "bk"}}},
        qmp("query-block-jobs"),
    ]  # fmt: skip
    r = run_steps(steps, drives=[drive])
    first, second = r.steps[6].response["return"][0], r.steps[10].response["return"][0]
    assert first["offset"] == (1 + 16 + 15 + 60 * 16) * C
    assert second["offset"] == 128 * M - C


def _backup_steps(data_mib: int, *after: dict[str, object]) -> list[dict[str, object]]:
    return [
        {"execute": "human-monitor-command",
         "arguments": {"command-line": f'qemu-io drive0 "write -P 7 0 {data_mib}M"'}},
        {"execute": "drive-backup", "arguments": {"device": "drive0", "job-id": "bk",
                                                  "target": "t.qcow2", "sync": "full"}},
        *after,
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}},
    ]  # fmt: skip


def test_a_backups_tasks_copy_concurrently() -> None:
    """block_copy_dirty_clusters starts a task and creates the next without waiting for
    it: 8 tasks of 1 MiB read at once (their latencies overlap, their transfers share
    the source device's bandwidth) and each writes as soon as its read is done, while
    the next is read: one latency and 8 transfers of reading, then the last write,
    instead of 8 reads and 8 writes one after the other."""
    from sim.engine.timing import DeviceTiming
    from tests.helpers import run_steps

    timing = DeviceTiming.from_header(None)
    transfer = int(M * 1e9 / timing.bytes_per_s)
    r = run_steps(_backup_steps(8))
    done = next(e for e in r.machine.events.history if e.name == "BLOCK_JOB_COMPLETED")
    assert done.data["offset"] == 64 * M
    assert done.time_ns == 2 * timing.latency_ns + 9 * transfer
    assert done.time_ns < 8 * 2 * (timing.latency_ns + transfer) / 1.8


def test_a_tasks_progress_counts_when_it_completes() -> None:
    """block_copy_task_entry counts progress when the task's write is done: half way
    through the first tasks' I/O (the disk is all data: no zero task), query-jobs
    still says 0."""
    from tests.helpers import run_steps

    r = run_steps(_backup_steps(64, {"advance": 0.001}, {"execute": "query-jobs"}))
    query = next(s for s in r.steps if s.command.get("execute") == "query-jobs")
    assert query.response["return"][0]["current-progress"] == 0
    assert r.ok
