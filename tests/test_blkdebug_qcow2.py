"""blkdebug under a qcow2 node: the metadata events and requests qcow2 raises on its file
(sim.model.qcow2_meta), seen through which qemu-io command an inject-error rule fails.

Each expected outcome is what QEMU 7.2's qemu-io printed for the same image, rules and
commands (`qemu-io -t writeback` on `json:{"driver": "qcow2", "file": {"driver":
"blkdebug", ...}}`: the write-back cache qemu-io over HMP has); the images are 1 GiB,
so 600M lies under the second L2 table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sim.model.content import ZERO_STAMP
from sim.replay import replay
from sim.trace import parse_lines

OK, FAIL = "ok", "FAIL"


def _scenario_images(path: str) -> Callable[[str], list[tuple[int, int, int]]]:
    """Replay a scenario; then an image's extents in KiB, each with its pattern (0:
    zeroes), as `blocksim diff` compares them with QEMU's."""
    with open(path) as f:
        state = replay(parse_lines(f.read().splitlines())).machine.state

    def image(name: str) -> list[tuple[int, int, int]]:
        content = state.graph.images[name].content
        k = 1024
        return [
            (a * 512 // k, b * 512 // k, 0 if s == ZERO_STAMP else state.stamps.pattern(s))
            for a, b, s in content.extents()
        ]

    return image


def _create(steps: list[dict[str, Any]], filename: str, size: int) -> None:
    tag = filename.split(".")[0]
    steps += [
        {"execute": "blockdev-create", "arguments": {"job-id": "f" + tag, "options": {
            "driver": "file", "filename": filename, "size": 0}}},
        {"wait": {"event": "JOB_STATUS_CHANGE", "data": {"id": "f" + tag, "status": "concluded"}}},
        {"execute": "job-dismiss", "arguments": {"id": "f" + tag}},
        {"execute": "blockdev-add", "arguments": {"driver": "file", "filename": filename,
                                                  "node-name": tag + "p"}},
        {"execute": "blockdev-create", "arguments": {"job-id": "q" + tag, "options": {
            "driver": "qcow2", "file": tag + "p", "size": size}}},
        {"wait": {"event": "JOB_STATUS_CHANGE", "data": {"id": "q" + tag, "status": "concluded"}}},
        {"execute": "job-dismiss", "arguments": {"id": "q" + tag}},
        {"execute": "blockdev-del", "arguments": {"node-name": tag + "p"}},
    ]  # fmt: skip


def _hmp(node: str, command: str) -> dict[str, Any]:
    return {"execute": "human-monitor-command",
            "arguments": {"command-line": f'qemu-io {node} "{command}"'}}  # fmt: skip


def outcomes(
    rule: dict[str, Any],
    commands: list[str],
    before: list[str] = (),  # type: ignore[assignment]
    backing: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """OK / FAIL per qemu-io command on qcow2 node `a` over blkdebug with `rule`
    (once), after `before` was written to the image by an earlier open and with a
    backing image holding `backing`."""
    size = 1 << 30
    steps: list[dict[str, Any]] = [
        {"trace": 1, "name": "t", "drives": [], "policy": "qemu-7.2", "seed": 0}
    ]
    add: dict[str, Any] = {"driver": "qcow2", "node-name": "a", "file": {
        "driver": "blkdebug", "node-name": "dbg", "inject-error": [dict(rule, once=True)],
        "image": {"driver": "file", "filename": "a.qcow2", "node-name": "af"}}}  # fmt: skip
    if backing:
        _create(steps, "b.qcow2", size)
        steps.append({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "b", "file": {"driver": "file", "filename": "b.qcow2"}}})  # fmt: skip
        steps += [_hmp("b", c) for c in backing]
        add["backing"] = "b"
    _create(steps, "a.qcow2", size)
    if before:
        plain = dict(add, file={"driver": "file", "filename": "a.qcow2", "node-name": "af"})
        steps.append({"execute": "blockdev-add", "arguments": plain})
        steps += [_hmp("a", c) for c in before]
        steps.append({"execute": "blockdev-del", "arguments": {"node-name": "a"}})
    steps.append({"execute": "blockdev-add", "arguments": add})
    first = len(steps) - 1  # steps after the header
    steps += [_hmp("a", c) for c in commands]
    result = replay(parse_lines([json.dumps(s) for s in steps]))
    assert not result.trace_errors and not result.internal_errors
    out = []
    for step in result.steps[first:]:
        assert step.response == {"return": ""}, step.response
        out.append(FAIL if step.output and "failed" in step.output else OK)
    return out


# a fresh image: the first write allocates L2 table 0 and a cluster, the second a
# cluster whose rest is zeroed (a 4k write), the third overwrites, then a read, a
# write that allocates L2 table 1, a flush, a write and a zero write
FRESH = ["write 0 64k", "write 64k 4k", "write 0 4k", "read 0 4k", "write 600M 64k",
         "flush", "write 128k 64k", "write -z 192k 64k"]  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # cluster_alloc comes before the refcount block is read: the first write fails
        ({"event": "cluster_alloc", "iotype": "read"}, [FAIL] + [OK] * 7),
        # refblock_load comes after that read: the next read is the guest's
        ({"event": "refblock_load", "iotype": "read"}, [OK, OK, OK, FAIL] + [OK] * 4),
        # l2_update: the next write is the new L2 table's
        ({"event": "l2_update", "iotype": "write"}, [FAIL] + [OK] * 7),
        # only a partial write into a new cluster zeroes it first
        ({"event": "cluster_alloc_space"}, [OK, FAIL] + [OK] * 6),
        ({"event": "cluster_alloc_space", "iotype": "flush"}, [OK] * 4 + [FAIL] + [OK] * 3),
        # after a write the blkdebug node gets flushed; flush_to_disk fails the next write
        ({"event": "flush_to_disk", "iotype": "write"}, [OK] * 6 + [FAIL, OK]),
        # a zero write is a pwritev_zero for the blkdebug node, not a write_aio
        ({"event": "pwritev_zero", "iotype": "flush"}, [OK] * 4 + [FAIL] + [OK] * 3),
        ({"event": "pwritev_done", "iotype": "read"}, [OK, OK, OK, FAIL] + [OK] * 4),
        # tables made since the open stay cached: no l2_load
        ({"event": "l2_load"}, [OK] * 8),
    ],
)
def test_fresh_image(rule: dict[str, Any], expected: list[str]) -> None:
    assert outcomes(rule, FRESH) == expected


def test_l2_load_after_a_reopen() -> None:
    """The tables written by an earlier open are loaded (and read) on first use."""
    before = ["write -P 1 0 128k", "write -P 2 600M 64k"]
    commands = ["write 700M 4k", "read 0 4k", "read 600M 4k"]
    assert outcomes({"event": "l2_load"}, commands, before) == [FAIL, OK, OK]
    assert outcomes({"event": "l2_load", "iotype": "write"}, commands, before) == [FAIL, OK, OK]
    assert outcomes({"event": "read_aio"}, ["write 0 4k"] + commands, before) == [
        OK, OK, FAIL, OK,
    ]  # fmt: skip


def test_copy_on_write_from_the_backing_file() -> None:
    """A partial write into a new cluster whose rest the backing file holds copies it:
    cow_read, read_backing_aio, then write_aio and cow_write before one write."""
    backing = ["write -P 1 0 128k"]
    commands = ["write 4k 4k", "write 256k 4k", "read 0 128k"]
    assert outcomes({"event": "cow_write"}, commands, backing=backing) == [FAIL, OK, OK]
    assert outcomes({"event": "cow_read", "iotype": "write-zeroes"}, commands, backing=backing) == [
        OK, FAIL, OK,
    ]  # fmt: skip
    assert outcomes({"event": "read_backing_aio"}, commands, backing=backing) == [FAIL, OK, OK]
    # the rest of a cluster over nothing in the backing file is zeroed instead
    assert outcomes({"event": "cluster_alloc_space"}, commands, backing=backing) == [OK, FAIL, OK]


def test_tables_never_written_back_lose_their_changes_at_close() -> None:
    """A rule active when the node closes fails the write-back of its dirty L2 tables
    (qcow2_inactivate): the image keeps what they mapped before.  On QEMU 7.2 after
    `write -P 8 0 4k`, `write -P 9 64k 64k`, `write -P 10 600M 64k` under an
    inject-error rule on flush_to_os, the image reads 8 at 0 and 9 at 64k (region 0's
    table was written when 600M's table was allocated) but nothing at 600M."""
    size = 1 << 30
    steps: list[dict[str, Any]] = [
        {"trace": 1, "name": "t", "drives": [], "policy": "qemu-7.2", "seed": 0}
    ]
    _create(steps, "a.qcow2", size)
    file = {"driver": "file", "filename": "a.qcow2", "node-name": "af"}
    steps.append({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "a", "file": file}})  # fmt: skip
    steps += [_hmp("a", "write -P 7 0 64k")]
    steps.append({"execute": "blockdev-del", "arguments": {"node-name": "a"}})
    debug = {"driver": "blkdebug", "inject-error": [{"event": "flush_to_os"}], "image": file}
    steps.append({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "a", "file": debug}})  # fmt: skip
    steps += [
        _hmp("a", c) for c in ("write -P 8 0 4k", "write -P 9 64k 64k", "write -P 10 600M 64k")
    ]
    steps.append({"execute": "blockdev-del", "arguments": {"node-name": "a"}})
    result = replay(parse_lines([json.dumps(s) for s in steps]))
    state = result.machine.state
    content = state.graph.images["a.qcow2"].content

    def patterns(offset: int, length: int) -> set[int]:
        first, end = offset >> 9, (offset + length) >> 9
        runs = content.extents(first, end)
        assert sum(b - a for a, b, _ in runs) == end - first, (offset, runs)
        return {state.stamps.pattern(s) for _a, _b, s in runs}

    assert patterns(0, 4096) == {8} and patterns(4096, 61440) == {7}
    assert patterns(65536, 65536) == {9}
    assert content.extents(600 << 11, (600 << 11) + 128) == []  # lost with region 1's table


def test_only_changed_l2_entries_make_a_table_dirty() -> None:
    """qcow2's one cache model (`Qcow2Layout.cache`): a write in place into an
    allocated cluster leaves its L2 table clean, so the flush after it writes no
    table; a zero write changes the entry, so the flush writes the table (l2_update).
    Outcomes of QEMU 7.2's qemu-io on the same image and rule."""
    before = ["write 0 64k"]
    rule = {"event": "l2_update"}
    assert outcomes(rule, ["write 0 4k", "flush", "read 0 4k"], before) == [OK, OK, OK]
    assert outcomes(rule, ["write -z 0 64k", "flush", "read 0 4k"], before) == [OK, FAIL, OK]
    assert outcomes(rule, ["write 0 4k", "write -z 64k 64k", "flush"], before) == [OK, OK, FAIL]


def test_pieces_of_a_failed_write_land_all_the_same() -> None:
    """qcow2_co_pwritev_part runs each piece contiguous in the file as a task of its
    own: a failing piece leaves the others' data in the image.  The images QEMU 7.2
    left for scenarios/blockapi/blkdebug-qcow2-write-pieces.jsonl (`blocksim diff`
    compared them with the model's: identical)."""
    image = _scenario_images("scenarios/blockapi/blkdebug-qcow2-write-pieces.jsonl")

    # across two L2 regions: the second region's piece lands, the first fails
    assert image("p0.qcow2") == [(524288, 524352, 0x31)]
    assert image("p1.qcow2") == []  # `immediately`: the second piece never starts
    # in place / new / in place: the first fails, the other two land
    assert image("p2.qcow2") == [(0, 64, 0x11), (64, 192, 0x33)]
    assert image("p3.qcow2") == [(0, 64, 0x14), (64, 192, 0x34)]
    # a new cluster after the file's last one joins its piece: no cluster_alloc
    assert image("p4.qcow2") == [(0, 128, 0x35)]
    assert image("p5.qcow2") == [(0, 32, 0x16), (32, 64, 0x37), (192, 256, 0x17)]
    # cluster_alloc fails the second piece in the main coroutine; the first lands
    assert image("p6.qcow2") == [(0, 64, 0x39), (256, 320, 0x1C)]
    # every piece's write is issued before the first completes (pwritev_done): the
    # rule fails the next write's first piece only
    assert image("p7.qcow2") == [(64, 192, 0x3A), (192, 320, 0x3B)]


def test_pieces_link_their_clusters_after_the_last_piece() -> None:
    """A write across two L2 regions whose first piece allocates a cluster in region 0
    (table cached) and whose second allocates region 1's table: the L2 allocation
    flushes only the new table (the first task links its cluster later), so the second
    l2_update is the flush's.  Outcomes of QEMU 7.2's qemu-io."""
    rules = {
        "set-state": [{"event": "l2_update", "state": 1, "new_state": 2}],
        "inject-error": [{"event": "l2_update", "state": 2, "once": True}],
    }
    steps: list[dict[str, Any]] = [
        {"trace": 1, "name": "t", "drives": [], "policy": "qemu-7.2", "seed": 0}
    ]
    _create(steps, "a.qcow2", 1 << 30)
    file = {"driver": "file", "filename": "a.qcow2", "node-name": "af"}
    steps.append({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "a", "file": file}})  # fmt: skip
    steps += [_hmp("a", "write 0 64k")]
    steps.append({"execute": "blockdev-del", "arguments": {"node-name": "a"}})
    debug = dict(rules, driver="blkdebug", image=file)
    steps.append({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "a", "file": debug}})  # fmt: skip
    first = len(steps) - 1
    commands = ["read 0 4k", f"write {(512 << 20) - 65536} 128k", "flush", "read 0 4k"]
    steps += [_hmp("a", c) for c in commands]
    result = replay(parse_lines([json.dumps(s) for s in steps]))
    got = [FAIL if s.output and "failed" in s.output else OK for s in result.steps[first:]]
    assert got == [OK, OK, FAIL, OK]


def _fresh_image_outcomes(rules: list[dict[str, Any]], commands: list[str]) -> list[str]:
    """FAIL or OK for each qemu-io command on a fresh 1 GiB qcow2 image opened over
    blkdebug with these inject-error rules (result.steps has no header line, so index
    `first` of the step list is the first command)."""
    steps: list[dict[str, Any]] = [
        {"trace": 1, "name": "t", "drives": [], "policy": "qemu-7.2", "seed": 0}
    ]
    _create(steps, "a.qcow2", 1 << 30)
    debug = {"driver": "blkdebug", "inject-error": rules,
             "image": {"driver": "file", "filename": "a.qcow2"}}  # fmt: skip
    steps.append({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "a", "file": debug}})  # fmt: skip
    first = len(steps) - 1
    steps += [_hmp("a", c) for c in commands]
    result = replay(parse_lines([json.dumps(s) for s in steps]))
    return [FAIL if s.output and "failed" in s.output else OK for s in result.steps[first:]]


def test_a_failed_l2_allocation_frees_and_discards_its_cluster() -> None:
    """l2_allocate failing after its cluster was allocated frees it (cluster_free,
    refblock_alloc, refblock_load) and discards it in the file: a once rule the free
    made active fails that discard, which nobody sees, so the next write succeeds.
    Outcomes of QEMU 7.2's qemu-io on a fresh image."""
    rules = [{"event": "pwritev", "once": True}, {"event": "refblock_alloc", "once": True}]
    commands = [
        f"write -P 0x8f {(512 << 20) - 65536} 32k",
        "write -P 0x88 4k 64k",
        "read -P 0x88 4k 64k",
    ]
    assert _fresh_image_outcomes(rules, commands) == [FAIL, OK, OK]


def test_a_zero_write_drops_the_discard_of_its_failed_l2_allocation() -> None:
    """Under qcow2_subcluster_zeroize the free of a failed l2_allocate caches its
    discard and drops it when the zero write fails: the refblock_load rule the free
    made active stays active and fails the next write's refcount flush.  Outcomes
    of QEMU 7.2's qemu-io on a fresh image."""
    rules = [
        {"event": "refblock_load", "once": True},
        {"event": "pwritev", "once": True, "immediately": True},
    ]
    commands = ["write -z 96k 64k", f"write -P 0xaf {(512 << 20) - 65536} 96k"]
    assert _fresh_image_outcomes(rules, commands) == [FAIL, FAIL]


def test_zero_clusters_keeping_their_host_cluster_are_linked_when_written() -> None:
    """A write into zero clusters that keep their host cluster zeroes their rest first
    (cluster_alloc_space) and clears their zero flag at the link; a table lost at
    close takes that back.  The images QEMU 7.2 left for
    scenarios/blockapi/blkdebug-qcow2-zero-allocated-clusters.jsonl (`blocksim diff`
    compared them with the model's: identical; the code before: all three differ)."""
    image = _scenario_images("scenarios/blockapi/blkdebug-qcow2-zero-allocated-clusters.jsonl")

    # the once rule on cluster_alloc_space fails the 4k write into a zero cluster
    assert image("z0.qcow2") == [
        (0, 64, 0),
        (64, 68, 3),
        (68, 128, 0),
        (128, 132, 4),
        (132, 256, 1),
    ]
    # the zero flags reached the file, the links did not: zeroes again
    assert image("z1.qcow2") == [(0, 192, 0), (192, 256, 1)]
    # neither reached the file: cluster 0 reads as rewritten whole, cluster 1 as before
    assert image("z2.qcow2") == [(0, 4, 0), (4, 8, 8), (8, 64, 0), (64, 256, 1)]


def test_a_piece_with_merged_copy_on_write_reads_the_backing_at_once() -> None:
    """A piece whose only write is its new cluster's copy merged with the data goes
    into perform_cow when its task starts: its read_backing_aio makes a rule active
    before the next piece's write in place, which fails; the first piece's own write
    lands (its cow_write event makes the other rule, on write-zeroes only, the active
    one).  The image QEMU 7.2 left for
    scenarios/blockapi/blkdebug-qcow2-merged-cow-reads-first.jsonl (`blocksim diff`:
    identical; the code before: the second piece's data landed over the first write's)."""
    image = _scenario_images("scenarios/blockapi/blkdebug-qcow2-merged-cow-reads-first.jsonl")
    # the last cluster's rest was copied from a backing holding nothing there: zeroes of
    # its own (the cluster is allocated whole)
    assert image("o.qcow2") == [(64, 96, 0x02), (96, 128, 0x9E), (128, 224, 0xFE), (224, 256, 0)]


def test_zero_clusters_rewritten_in_the_file_read_as_rewritten_when_tables_are_lost() -> None:
    """Zero clusters keeping their host cluster, their L2 table lost at close: one
    written whole while its zero flag was only in the table reads as written; a
    failed partial write had zeroed its host clusters (the write-zeroes the rule let
    through), so they read as zeroes.  The image QEMU 7.2 left for
    scenarios/blockapi/blkdebug-qcow2-zero-allocated-rewritten.jsonl (`blocksim
    diff`: identical; the code before: [4k, 128k) read the old data, [192k, 256k)
    zeroes)."""
    image = _scenario_images("scenarios/blockapi/blkdebug-qcow2-zero-allocated-rewritten.jsonl")
    assert image("r.qcow2") == [
        (0, 128, 0),
        (128, 192, 0x1E),
        (192, 256, 0x9E),
        (524224, 524320, 0x49),
    ]


def test_stream_and_commit_copy_the_runs_block_status_answers() -> None:
    """block-stream and an intermediate block-commit copy run by run as
    bdrv_is_allocated(_above) answers from where they stand (at most 512 KiB), not in
    512 KiB steps: the commit's second run [576k, 704k) fails, its first [64k, 576k)
    reached the base.  A 4 KiB write into a new cluster whose backing holds nothing
    allocates the cluster whole (zeroes around it): a later stream copies nothing into
    it.  The images QEMU 7.2 left for
    scenarios/blockapi/blkdebug-stream-commit-iterations.jsonl (`blocksim diff`:
    identical; the code before: b2.qcow2 lacked [512k, 576k), o3.qcow2 read the
    backing's later data around the 4 KiB)."""
    image = _scenario_images("scenarios/blockapi/blkdebug-stream-commit-iterations.jsonl")
    assert image("b2.qcow2") == [(64, 576, 0x33)]
    assert image("o3.qcow2") == [(0, 4, 0), (4, 8, 0x44), (8, 64, 0), (64, 128, 0x55)]


def test_a_mirror_fails_op_by_op_with_its_other_ops_in_flight() -> None:
    """A blkdebug rule on the raw target's write covering 1280k fails the mirror's op
    [1M, 2M) alone: the ops before and after it (data runs of at most 1 MiB, the zero
    tail as one write-zeroes) complete and their data is on the target; with
    on-target-error=stop the failed op is copied after the resume.  The images QEMU
    7.2 left for scenarios/blockapi/blkdebug-mirror-ops.jsonl (`blocksim diff`:
    identical; the code before: t1.img lacked [2M, 2560k) and the job reported 1 MiB
    done instead of 3)."""
    image = _scenario_images("scenarios/blockapi/blkdebug-mirror-ops.jsonl")
    assert image("t1.img") == [(0, 1024, 0x11), (2048, 2560, 0x33), (2560, 4096, 0)]
    assert image("t2.img") == [
        (0, 1024, 0x11),
        (1024, 2048, 0x22),
        (2048, 2560, 0x33),
        (2560, 4096, 0),
    ]


def test_a_stale_l1_entry_maps_the_table_that_took_its_cluster() -> None:
    """l2_allocate for region 1 writes its L1 entry, then the flush fails: the table's
    cluster is freed, the in-memory entry goes back to 0, the on-disk one stays.
    Region 0's table takes that cluster next; closed and opened again, region 1 reads
    what region 0 maps.  The image QEMU 7.2 left for
    scenarios/blockapi/blkdebug-qcow2-stale-l1-entry.jsonl (`blocksim diff`:
    identical; the code before: region 1 read zeroes)."""
    image = _scenario_images("scenarios/blockapi/blkdebug-qcow2-stale-l1-entry.jsonl")
    region = 512 << 10  # KiB
    assert image("s.qcow2") == [
        (4, 260, 0x8F),
        (1024, 1088, 0x77),
        (region + 4, region + 260, 0x8F),
        (region + 1024, region + 1088, 0x77),
    ]


def test_a_backup_write_failure_lets_the_tasks_in_flight_complete() -> None:
    """A backup's first task (zeroes, [0, 1M)) fails its write-zeroes on the raw
    target: the call ends, but the tasks created meanwhile complete, their data on
    the target (3 MiB done).  The image QEMU 7.2 left for
    scenarios/blockapi/blkdebug-backup-write-failure-in-flight.jsonl (`blocksim diff`:
    identical; the code before: nothing after the failed task was copied)."""
    image = _scenario_images("scenarios/blockapi/blkdebug-backup-write-failure-in-flight.jsonl")
    assert image("t1.img") == [
        (1024, 1976, 0),
        (1976, 2488, 0x1F),
        (2488, 3220, 0),
        (3220, 3224, 0x12),
        (3224, 4096, 0),
    ]


def test_a_failed_block_status_in_mirror_dirty_init_fails_the_job_at_once() -> None:
    """An active commit's mirror_dirty_init loads the intermediate image's L2 table
    for bdrv_is_allocated_above; a once rule on l2_load fails it: the job ends at once
    with the error and no progress, without BLOCK_JOB_ERROR (QEMU 7.2's events in
    scenarios/blockapi/blkdebug-mirror-dirty-init-fails.jsonl; the code before: the
    job copied and got READY)."""
    with open("scenarios/blockapi/blkdebug-mirror-dirty-init-fails.jsonl") as f:
        result = replay(parse_lines(f.read().splitlines()))
    events = [e.wire() for e in result.machine.events.history]
    ends = [e["data"] for e in events if e["event"] == "BLOCK_JOB_COMPLETED"]
    assert ends[0] == {"device": "j", "len": 0, "offset": 0, "speed": 0, "type": "commit",
                       "error": "Input/output error"}  # fmt: skip
    assert not [e for e in events if e["event"] == "BLOCK_JOB_ERROR"]
    assert "error" not in ends[1]
