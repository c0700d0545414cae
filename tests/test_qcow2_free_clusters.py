"""qcow2 host clusters freed and taken again, and copy-on-write from a backing file
(sim.model.qcow2_host): outcomes of QEMU 7.2's qemu-io and `qemu-img map`."""

from __future__ import annotations

from typing import Any

import pytest

from sim.model import io
from sim.model.content import FIRST_DATA_STAMP, SECTOR_SHIFT, ZERO_STAMP
from sim.model.qcow2_host import Qcow2Content

K = 1024
M = 1 << 20
CLUSTER = 64 * K


def _host_offset(content: Qcow2Content, guest: int) -> int:
    layout = content.layout
    return layout.data_start + layout.host_of(guest // CLUSTER) * CLUSTER


def test_freed_host_clusters_are_taken_from_the_free_cluster_index() -> None:
    """qemu-io on a new 1 GiB image (L2 table at 0x40000): write 0 192k, write 1M 64k,
    discard 64k 64k, write 2M 128k, write 3M 64k; then, opened again, write 4M 64k and
    write 5M 128k.  `qemu-img map` gave the host offsets asserted here: the two-cluster
    write passes the one-cluster hole (and the index with it), so does the next
    write; after qcow2_open the index starts at 0 and the hole is taken."""
    content = Qcow2Content(1 << 30, CLUSTER)
    stamp = FIRST_DATA_STAMP
    for offset, length in ((0, 192 * K), (M, 64 * K)):
        content.write(offset, length, stamp)
    content.write(64 * K, 64 * K, ZERO_STAMP)  # a discard: its zeroes, then the unmap
    content.discard(64 * K, 64 * K)
    for offset, length in ((2 * M, 128 * K), (3 * M, 64 * K)):
        content.write(offset, length, stamp)
    content.layout.opened()
    for offset, length in ((4 * M, 64 * K), (5 * M, 128 * K)):
        content.write(offset, length, stamp)
    got = {g: _host_offset(content, g) for g in (0, 128 * K, M, 2 * M, 3 * M, 4 * M, 5 * M)}
    assert got == {
        0: 0x50000,
        128 * K: 0x70000,
        M: 0x80000,
        2 * M: 0x90000,
        3 * M: 0xB0000,
        4 * M: 0x60000,
        5 * M: 0xC0000,
    }
    assert content.layout.host_of(1) == -1  # the discarded cluster has no host cluster


def test_a_partial_write_into_a_new_cluster_copies_the_rest_from_the_backing() -> None:
    """perform_cow: the rest of a new cluster the write covers in part is the backing
    file's data in the overlay's own image; a cluster the overlay already holds (data
    or a zero cluster) copies nothing."""
    base = Qcow2Content(64 * M, CLUSTER)
    base.write(0, 4 * CLUSTER, FIRST_DATA_STAMP)
    top = Qcow2Content(64 * M, CLUSTER)
    top.write(2 * CLUSTER, CLUSTER, ZERO_STAMP)  # a zero cluster
    top.write(3 * CLUSTER, 4 * K, FIRST_DATA_STAMP + 1)
    writes = [(4 * K, 8 * K), (2 * CLUSTER + 4 * K, 4 * K), (3 * CLUSTER + 8 * K, 4 * K)]
    for offset, length in writes:
        clusters = top.cow_clusters(offset, length)
        top.write(offset, length, FIRST_DATA_STAMP + 2)
        top.copy_on_write(clusters, [base], [offset], length)
    sector = CLUSTER >> SECTOR_SHIFT
    new = FIRST_DATA_STAMP + 2
    assert top.extents(0, sector) == [
        (0, 8, FIRST_DATA_STAMP),
        (8, 24, new),
        (24, sector, FIRST_DATA_STAMP),
    ]
    assert top.extents(sector, 2 * sector) == []  # not written: nothing copied
    assert {s for _a, _b, s in top.extents(2 * sector, 3 * sector)} == {ZERO_STAMP, new}
    assert {s for _a, _b, s in top.extents(3 * sector, 4 * sector)} == {FIRST_DATA_STAMP + 1, new}


def test_copy_on_write_reads_the_write_log_without_splicing_it() -> None:
    """The overlay's own data that `cow_clusters` and `copy_on_write` look at includes
    writes still waiting in the write log (asked per cluster, the log not spliced in):
    the same contents and host clusters as when the log is spliced before each ask."""
    base = Qcow2Content(64 * M, CLUSTER)
    base.write(0, 16 * M, FIRST_DATA_STAMP)
    base.write(32 * M, 4 * M, FIRST_DATA_STAMP + 1)
    writes = [((i * 7919 * 4 * K + i * 512) % (60 * M), (4 + i % 3 * 30) * K) for i in range(400)]
    writes += [(5 * CLUSTER + 512, 3 * CLUSTER), (CLUSTER - 512, 1024), (40 * M + 4 * K, 8 * K)]
    contents = []
    for splice in (False, True):
        top = Qcow2Content(64 * M, CLUSTER)
        for n, (offset, length) in enumerate(writes):
            if splice:
                top.extents(0, 0)  # a read splices the log in
            clusters = top.cow_clusters(offset, length)
            top.write(offset, length, FIRST_DATA_STAMP + 2 + n)
            top.copy_on_write(clusters, [base], [offset], length)
        if not splice:
            assert top._log is not None  # still waiting: nothing read the content
        contents.append(top)
    logged, spliced = contents
    assert logged.extents() == spliced.extents()
    assert (
        len({s for _a, _b, s in spliced.extents()} & {FIRST_DATA_STAMP, FIRST_DATA_STAMP + 1}) == 2
    )
    host = logged.layout.host
    assert host.extents() == spliced.layout.host.extents()


def _overlay_machine() -> Any:
    import sim.qmp.commands  # noqa: F401
    from sim.engine.machine import Machine
    from sim.qmp.dispatch import Monitor

    m = Machine(seed=0)
    m.state.add_drive("drive0", "fmt0", "proto0", "qcow2", 64 * M)
    fmt0 = m.state.graph.node("fmt0")
    assert io.write(m.state, None, fmt0, 0, 8 * M, m.state.new_stamp(1)).ok
    snap = {"device": "drive0", "snapshot-file": "ov.qcow2", "snapshot-node-name": "ov"}
    assert "return" in Monitor(m).execute({"execute": "blockdev-snapshot-sync", "arguments": snap})
    return m


@pytest.mark.parametrize("length", [4 * K, 96 * K])
def test_a_burst_into_an_overlay_copies_as_the_writes_one_by_one(length: int) -> None:
    """A burst of writes into an overlay (one path walk) copies the rest of each new
    cluster from the backing file as the same writes one by one do."""
    batched, single = _overlay_machine(), _overlay_machine()
    offsets = [5 * K, 3 * M + 512, 5 * K + 2 * CLUSTER, 6 * M - 4 * K, 3 * M + 512]
    stamps = batched.state.stamps.new_many(9, len(offsets))
    root_b = batched.state.graph.node("ov")
    assert io.write_batch(batched.state, None, root_b, offsets, length, stamps) == [io.OK] * 5
    root_s = single.state.graph.node("ov")
    for off in offsets:
        assert io.write(single.state, None, root_s, off, length, single.state.new_stamp(9)).ok
    got_b = root_b.content.extents()
    assert got_b == root_s.content.extents()
    first = {s for _a, _b, s in got_b}
    assert any(s < stamps[0] for s in first)  # the backing's data was copied up


def test_a_burst_with_several_writes_in_one_new_cluster_copies_around_all_of_them() -> None:
    """Writes of one burst that share a new cluster: the cluster's rest around all of
    them comes from the backing file, as when the writes come one by one."""
    batched, single = _overlay_machine(), _overlay_machine()
    offsets = [5 * K, 20 * K + 512, 40 * K, CLUSTER - 2 * K, 7 * M + 3 * K, 7 * M + 50 * K]
    stamps = batched.state.stamps.new_many(9, len(offsets))
    root_b = batched.state.graph.node("ov")
    assert io.write_batch(batched.state, None, root_b, offsets, 4 * K, stamps) == [io.OK] * 6
    root_s = single.state.graph.node("ov")
    for off in offsets:
        assert io.write(single.state, None, root_s, off, 4 * K, single.state.new_stamp(9)).ok
    got = root_b.content.extents()
    assert got == root_s.content.extents()
    assert root_b.content.layout.host.extents() == root_s.content.layout.host.extents()
    old = {s for a, _b, s in got if a < CLUSTER >> SECTOR_SHIFT and s < stamps[0]}
    assert len(old) == 1  # cluster 0: the backing's data between the burst's writes


def test_write_runs_logs_as_the_writes_one_by_one() -> None:
    """`Content.write_runs` (perform_cow's copies at once) leaves the write log, the
    version and the contents that `write` one by one leaves: lengths equal to the
    log's or not, and made at once when there is no log to append to."""
    cases = [
        [(4 * K, 4 * K, 7), (8 * K, 4 * K, 8)],
        [(4 * K, 4 * K, 7), (9 * K, 2 * K, 8), (70 * K, 60 * K, 9)],
        [(0, 4 * K, 7), (M, 128 * K, 8)],  # longer than a log holds: made at once
    ]
    for runs in cases:
        for first_length in (4 * K, 8 * K, None):
            pair = []
            for batched in (True, False):
                content = Qcow2Content(64 * M, CLUSTER)
                if first_length is not None:
                    content.write(32 * M, first_length, 5)
                if batched:
                    content.write_runs(runs)
                else:
                    for offset, length, stamp in runs:
                        content.write(offset, length, stamp)
                log = content._log
                state = (
                    content.version,
                    None if log is None else (list(log.writes()), log.length),
                )
                pair.append((state, content.extents()))
            assert pair[0] == pair[1]


def test_a_zero_write_that_may_unmap_frees_the_clusters_it_covers() -> None:
    """qemu-io's `write -z -u 64k 128k` on 256 KiB of data frees the host clusters of
    guest clusters 1 and 2 (zero_in_l2_slice), with discard=ignore as with
    discard=unmap; the next new cluster (300k) takes the first of them.  Without -u
    they keep their host clusters and the new one goes after the others.  What QEMU
    7.2 left for scenarios/blockapi/qcow2-zero-write-unmap-frees-clusters.jsonl (the
    protocol nodes' bitmaps: `blocksim diff` identical; the code before: two differ)."""
    from sim.replay import replay
    from sim.trace import parse_lines

    with open("scenarios/blockapi/qcow2-zero-write-unmap-frees-clusters.jsonl") as f:
        state = replay(parse_lines(f.read().splitlines())).machine.state

    def hosts(name: str) -> list[int]:
        content = state.graph.images[name].content
        assert isinstance(content, Qcow2Content)
        return [content.layout.host_of(c) for c in range(5)]

    for name in ("u0.qcow2", "u1.qcow2"):
        h = hosts(name)
        assert h[1] == h[2] == -1  # zero flag only
        assert h[4] == h[0] + 1  # the first freed host cluster, right after cluster 0's
    h = hosts("k0.qcow2")
    assert h[:4] == [h[0], h[0] + 1, h[0] + 2, h[0] + 3]  # zero clusters keep theirs
    assert h[4] == h[0] + 4


def test_a_partial_zero_write_allocates_its_new_cluster_whole() -> None:
    """`write -z 4k 8k` into an overlay whose backing holds nothing in cluster 0 makes
    it a zero cluster; `write -z 68k 8k` where the backing holds data writes the
    zeroes as data, the rest of cluster 1 copied from the backing.  After the backing
    changed, the overlay still reads what QEMU 7.2 left for
    scenarios/blockapi/qcow2-partial-zero-write-allocates-cluster.jsonl (`blocksim
    diff`: identical; the code before read the backing's new data around the zeroes)."""
    from sim.replay import replay
    from sim.trace import parse_lines

    path = "scenarios/blockapi/qcow2-partial-zero-write-allocates-cluster.jsonl"
    with open(path) as f:
        state = replay(parse_lines(f.read().splitlines())).machine.state
    content = state.graph.images["o6.qcow2"].content
    old = [s for _a, _b, s in content.extents(128, 136)][0]  # the backing's data at 64k
    assert old >= FIRST_DATA_STAMP and state.stamps.pattern(old) == 0x61
    assert content.extents() == [
        (0, 128, ZERO_STAMP),
        (128, 136, old),
        (136, 152, ZERO_STAMP),
        (152, 256, old),
    ]
