"""The content's write log (sim.model.content.WriteLog): writes appended and spliced in
when something reads, either write by write or all at once with numpy
(`merge_writes`, `Qcow2Layout.place_log`); both must leave what the writes made at
once leave: the run list, the qcow2 host map, L2 tables, next host cluster, the
metadata caches' dirty tables and refcount block, and the cluster counts."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

import sim.model.content as content_module
from sim.model.content import SECTOR, ClusterSummary, Content
from sim.model.qcow2_host import Qcow2Content


def _scribble(seed: int, settle_each: bool) -> list[Any]:
    """Rounds of random writes (data, zero, discards, bursts; aligned or not, within
    one cluster and across clusters and L2 regions) on a qcow2 content; after each
    round, everything its layout and run list say."""
    rng = random.Random(seed)
    cluster = rng.choice([4096, 65536])
    size = rng.choice([64 << 20, (64 << 20) + 3 * SECTOR, 1 << 30])
    qc = Qcow2Content(size, cluster)
    plain = Content(size)
    plain.cluster_summary(cluster)
    stamp = 2
    out: list[Any] = []
    for _ in range(5):
        for _ in range(rng.choice([1, 40, 400, 1500])):
            length = rng.choice([512, 1536, 4096, 4096, 65536, 65536 + 4608])
            top = min(size, 4 << 20) if rng.random() < 0.5 else size  # hot spots overlap
            offset = rng.randrange(0, top - length) // SECTOR * SECTOR
            if rng.random() < 0.1:
                offset = min(offset + rng.randrange(1, SECTOR), size - length)
            kind = rng.random()
            if kind < 0.03:  # a discard that unmaps: made at once
                for c in (qc, plain):
                    c.write(offset, length, 0)
            elif kind < 0.2:
                offsets = [rng.randrange(0, size - length) // SECTOR * SECTOR for _ in range(16)]
                for c in (qc, plain):
                    c.write_many(offsets, length, list(range(stamp, stamp + 16)))
                stamp += 16
            else:
                value = 1 if rng.random() < 0.15 else stamp
                for c in (qc, plain):
                    c.write(offset, length, value)
                stamp += 1
            if settle_each:
                qc.stamp_at(0)
                plain.stamp_at(0)
        layout = qc.layout
        counts = plain.cluster_summary(cluster)
        out.append(
            (
                qc.extents(),
                qc.version,
                layout.host.extents(),
                sorted(layout.l2_tables),
                layout.next_host,
                (sorted(layout.cache.l2_dirty), layout.cache.refblock_dirty),
                (layout.data, layout.regions, dict(layout._in)),
                plain.extents() == qc.extents(),
                (counts.data, counts.regions, dict(counts._in)),
            )
        )
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_log_spliced_at_once_is_the_writes_one_by_one(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_by_one = _scribble(seed, settle_each=True)
    monkeypatch.setattr(content_module, "LOG_MERGE_MIN", 2)
    monkeypatch.setattr(content_module, "LOG_MERGE_RATIO", 1 << 40)  # numpy every time
    at_once = _scribble(seed, settle_each=False)
    assert at_once == one_by_one
    assert all(r[7] for r in at_once)  # a plain content holds the same run list


def test_a_log_too_big_for_one_merge_goes_in_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overlapping writes that cover more pieces than one merge may: halves, in order."""
    monkeypatch.setattr(content_module, "LOG_MERGE_MIN", 2)
    monkeypatch.setattr(content_module, "MERGE_MAX_COVER", 50)
    ref = Content(1 << 20)
    logged = Content(1 << 20)
    rng = random.Random(3)
    for i in range(300):
        offset, length = rng.randrange(0, 1 << 19) // SECTOR * SECTOR, 8192
        ref.write_sectors(offset // SECTOR, (offset + length) // SECTOR, i + 2)
        logged.write(offset, length, i + 2)
    assert logged.extents() == ref.extents()


def test_merged_chunks_take_later_writes_and_clones() -> None:
    """After a numpy merge the run list is chunked again: writes in place, writes
    across chunks, clones sharing chunks all still work."""
    c = Content(1 << 30)
    offsets = (np.random.default_rng(2).integers(0, (1 << 30) // 4096, 5000) * 4096).tolist()
    c.write_many(offsets, 4096, list(range(2, 5002)))
    ref = Content(1 << 30)
    for off, s in zip(offsets, range(2, 5002), strict=True):
        ref.write_sectors(off // SECTOR, off // SECTOR + 8, s)
    assert c.extents() == ref.extents()
    copy = c.clone()
    for x in (c, ref):
        x.write_sectors(100, 1 << 20, 9000)
        x.write(5 << 20, 4096, 9001)
    assert c.extents() == ref.extents()
    assert copy.stamp_at(100) != 9000 and c.stamp_at(100) == 9000


def test_a_write_that_allocates_is_said_to_before_it_is_made() -> None:
    """`Qcow2Layout.allocates` answers, without changing anything, whether a write
    would allocate an L2 table or a host cluster."""
    rng = random.Random(4)
    qc = Qcow2Content(4 << 30, 65536)
    for i in range(400):
        length = rng.choice([512, 4096, 65536, 3 * 65536])
        offset = rng.randrange(0, (4 << 30) - length) // SECTOR * SECTOR
        zero = rng.random() < 0.2
        layout = qc.layout
        said = layout.allocates(offset, length, zero=zero)
        before = (layout.next_host, len(layout.l2_tables), qc.version)
        assert layout.allocates(offset, length, zero=zero) == said  # read only
        qc.write(offset, length, 1 if zero else i + 2)
        layout = qc.layout
        allocated = (layout.next_host, len(layout.l2_tables)) != before[:2]
        assert allocated == said, (offset, length, zero)


def test_a_full_log_is_spliced_in_without_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log reaching LOG_MAX_WRITES is spliced in at once: memory stays bounded, and
    nothing a reader sees changes."""
    monkeypatch.setattr(content_module, "LOG_MAX_WRITES", 100)
    c = Qcow2Content(1 << 30, 65536)
    ref = Qcow2Content(1 << 30, 65536)
    rng = random.Random(6)
    for i in range(250):
        offset = rng.randrange(0, (1 << 30) // 4096) * 4096
        c.write(offset, 4096, i + 2)
        ref.write(offset, 4096, i + 2)
        ref.stamp_at(0)
        assert c._log is None or len(c._log.stamps) < 100
    c.write_many([0, 4096], 4096, [300, 301])
    ref.write_many([0, 4096], 4096, [300, 301])
    assert c.version == ref.version == 252
    assert c.extents() == ref.extents()
    assert c.layout.host.extents() == ref.layout.host.extents()


def _data_logs(seed: int, settle_each: bool) -> list[Any]:
    """A qcow2 content holding data, zeroes and holes, then logs of data writes only
    (the counts follow them without a recount): writes that do not overlap (some
    touching, at the disk's first and last sector, several in one cluster, across
    clusters), and logs where they do; after each log, everything the layout, its
    counts and the run list say, and the counts made from scratch."""
    rng = random.Random(seed)
    cluster = rng.choice([4096, 65536])
    size = rng.choice([64 << 20, (64 << 20) + 3 * SECTOR])
    qc = Qcow2Content(size, cluster)
    plain = Content(size)
    plain.cluster_summary(cluster)
    stamp = 2
    for _ in range(300):  # made one by one: extents of every kind
        length = rng.choice([512, 4096, 65536, 3 * 65536])
        offset = rng.randrange(0, size - length) // SECTOR * SECTOR
        value = rng.choice([0, 1, 1, stamp])
        for c in (qc, plain):
            c.write(offset, length, value)
            c.stamp_at(0)
        stamp += 1
    out: list[Any] = []
    for rnd in range(6):
        slots = size // 4096
        if rnd % 2 == 0:  # no two writes overlap
            picked = rng.sample(range(1, slots - 1), 600) + [0]
            for _ in range(20):  # runs of writes, each starting where one ends
                base = rng.randrange(1, slots - 8)
                picked += range(base, base + rng.randrange(2, 6))
            writes = [(s * 4096, 4096) for s in dict.fromkeys(picked)]
            writes.append((size - SECTOR, SECTOR))  # the disk's last sector
        else:
            writes = [
                (rng.randrange(0, size - n) // SECTOR * SECTOR, n)
                for n in (rng.choice([512, 4096, 65536 + 4608]) for _ in range(500))
            ]
        rng.shuffle(writes)
        for offset, length in writes:
            for c in (qc, plain):
                c.write(offset, length, stamp)
                if settle_each:
                    c.stamp_at(0)
            stamp += 1
        layout = qc.layout
        counts = plain.cluster_summary(cluster)
        fresh = ClusterSummary(qc, cluster)
        out.append(
            (
                qc.extents(),
                layout.host.extents(),
                sorted(layout.l2_tables),
                layout.next_host,
                (layout.data, layout.regions, dict(layout._in)),
                (counts.data, counts.regions, dict(counts._in)),
                (fresh.data, fresh.regions, dict(fresh._in)),
                plain.extents() == qc.extents(),
            )
        )
    return out


@pytest.mark.parametrize("seed", range(4))
def test_data_logs_spliced_at_once_are_the_writes_one_by_one(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logs of data writes go through the numpy merge of writes that do not overlap
    and the counts that follow the clusters they touch: the same run list, host
    map and counts as the writes made one by one, and counts equal to a recount."""
    one_by_one = _data_logs(seed, settle_each=True)
    monkeypatch.setattr(content_module, "LOG_MERGE_MIN", 2)
    monkeypatch.setattr(content_module, "LOG_MERGE_RATIO", 1 << 40)  # numpy every time
    at_once = _data_logs(seed, settle_each=False)
    assert at_once == one_by_one
    for r in at_once:
        assert r[4] == r[5] == r[6]  # kept counts == a plain content's == a recount
        assert r[7]
