"""Content as extents: every write, copy and read agrees with a per-sector reference."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sim.model.content import (
    SECTOR,
    Content,
    chain_extents,
    new_content,
    read_through,
)


def _reference_runs(ref: np.ndarray) -> list[tuple[int, int]]:
    nz = np.concatenate(([False], ref != 0, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(nz))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


@pytest.mark.parametrize("seed", range(6))
def test_random_writes_match_a_per_sector_reference(seed: int) -> None:
    rng = random.Random(seed)
    nsectors = 200_003
    c = new_content(nsectors * SECTOR)
    ref = np.zeros(nsectors, dtype=np.int32)
    nrng = np.random.default_rng(seed)
    max_chunks = 1
    for step in range(3000):
        first = rng.randrange(nsectors)
        span = rng.choice([5000, 60_000]) if rng.random() < 0.02 else rng.choice([1, 8, 128])
        end = min(first + span, nsectors)
        stamp = rng.choice([0, 1, 2 + step, 2 + step // 3])
        if span <= 128 and rng.random() < 0.1:
            arr = np.array([0, stamp, 7], dtype=np.int32)[nrng.integers(0, 3, end - first)]
            c.write_stamps(first, arr)
            view = ref[first:end]
            np.copyto(view, arr, where=arr != 0)
        elif rng.random() < 0.5:
            c.write_sectors(first, end, stamp)
            ref[first:end] = stamp
        else:  # byte offsets, rounded out to sectors
            c.write(first * SECTOR + 100, (end - first - 1) * SECTOR + 1, stamp)
            ref[first:end] = stamp
        max_chunks = max(max_chunks, len(c._chunks))
        if step % 500 == 0:
            assert np.array_equal(c.read(0, nsectors), ref)
    assert np.array_equal(c.read(0, nsectors), ref)
    assert list(c.allocated_sectors()) == _reference_runs(ref)
    lo, hi = 5000, 150_333
    assert np.array_equal(c.read(lo, hi), ref[lo:hi])
    for a, b, s in c.extents(lo, hi):
        assert lo <= a < b <= hi and s != 0 and (ref[a:b] == s).all()
    for sector in rng.sample(range(nsectors), 200):
        assert c.stamp_at(sector) == ref[sector]
    assert max_chunks > 1  # the run list was split into chunks and joined again


def test_clone_is_independent_both_ways() -> None:
    a = new_content(64 << 20)
    a.write(0, 1 << 20, 5)
    b = a.clone()
    b.write(4096, 4096, 9)
    a.write(8192, 4096, 11)
    assert a.stamp_at(8) == 5 and b.stamp_at(8) == 9
    assert a.stamp_at(16) == 11 and b.stamp_at(16) == 5


def test_allocation_cache_follows_writes() -> None:
    c = new_content(1 << 30)
    c.write(0, 4096, 3)
    assert c.allocated_runs() == [(0, 8)]
    c.write(1 << 20, 4096, 4)
    assert c.allocated_runs() == [(0, 8), (2048, 2056)]
    c.write(0, 4096, 0)
    assert c.allocated_runs() == [(2048, 2056)]


def test_a_huge_sparse_disk_costs_extents_not_bytes() -> None:
    c = new_content(64 << 40)  # 64 TiB
    c.write(0, 64 << 40, 1)  # zero the whole disk: a handful of page entries per page
    c.write(5 << 30, 4096, 9)
    assert c.extents(0, c.nsectors) == [
        (0, (5 << 30) >> 9, 1),
        ((5 << 30) >> 9, ((5 << 30) >> 9) + 8, 9),
        (((5 << 30) >> 9) + 8, c.nsectors, 1),
    ]
    assert c.allocated_bytes(65536) == 64 << 40


def test_read_through_a_chain_falls_through_holes_only() -> None:
    base, mid, top = (Content(1 << 20) for _ in range(3))
    base.write(0, 1 << 20, 2)
    mid.write(4096, 8192, 3)
    top.write(8192, 512, 4)
    chain = [top, mid, base]
    got = read_through(chain, 0, 2048)
    assert got[:8].tolist() == [2] * 8
    assert got[8:16].tolist() == [3] * 8
    assert got[16] == 4 and got[17:24].tolist() == [3] * 7
    assert got[24:].tolist() == [2] * (2048 - 24)
    assert chain_extents(chain, 0, 2048) == [
        (0, 8, 2),
        (8, 16, 3),
        (16, 17, 4),
        (17, 24, 3),
        (24, 2048, 2),
    ]


def _reference_summary(ref: np.ndarray, per: int, per_region: int) -> tuple[int, dict[int, int]]:
    """(data clusters, allocated clusters per L2 region) of a per-sector reference."""
    pad = np.zeros(-(-ref.size // per) * per, dtype=ref.dtype)
    pad[: ref.size] = ref
    cells = pad.reshape(-1, per)
    data = (cells >= 2).any(axis=1)
    alloc = np.flatnonzero((cells != 0).any(axis=1))
    regions, counts = np.unique(alloc // per_region, return_counts=True)
    return int(data.sum()), dict(zip(regions.tolist(), counts.tolist(), strict=True))


@pytest.mark.parametrize("seed", range(4))
def test_cluster_summary_follows_every_kind_of_write(seed: int) -> None:
    """The write-by-write cluster counts equal the counts of a per-sector reference
    (data, zero and deallocating writes, whole and partial clusters, resizes)."""
    rng = random.Random(seed)
    nsectors = 50_003  # a partial last cluster
    c = new_content(nsectors * SECTOR)
    summary = c.cluster_summary(4096)  # 8 sectors a cluster, 512 clusters an L2 region
    ref = np.zeros(nsectors, dtype=np.int32)
    for step in range(1500):
        first = rng.randrange(nsectors)
        span = rng.choice([3000, 40_000]) if rng.random() < 0.03 else rng.choice([1, 3, 8, 20])
        end = min(first + span, nsectors)
        stamp = rng.choice([0, 1, 2 + step, 2 + step, 2 + step])
        kind = rng.random()
        if kind < 0.05:
            arr = np.array([0, stamp, 7], dtype=np.int32)[
                np.random.default_rng(step).integers(0, 3, end - first)
            ]
            c.write_stamps(first, arr)
            np.copyto(ref[first:end], arr, where=arr != 0)
        elif kind < 0.5:
            c.write_sectors(first, end, stamp)
            ref[first:end] = stamp
        else:
            c.write(first * SECTOR, (end - first) * SECTOR, stamp)
            ref[first:end] = stamp
        if step == 700:  # shrink by a partial cluster, then grow back
            c.resize((nsectors - 13) * SECTOR)
            c.resize(nsectors * SECTOR)
            ref[nsectors - 13 :] = 0
            summary = c.cluster_summary(4096)
        if step % 100 == 0 or step == 1499:
            assert c.cluster_summary(4096) is summary  # kept, brought up to date
            data, per_region = _reference_summary(ref, 8, 512)
            assert summary.data == data, step
            assert summary._in == per_region, step
            assert summary.regions == len(per_region), step
    assert c.clone()._summary is None  # checker copies do not pay for it
    fresh = Content(nsectors * SECTOR)
    fresh.write_extents(c.extents())
    built = fresh.cluster_summary(4096)  # built from the extents at once
    assert (built.data, built._in) == (summary.data, summary._in)


def test_iter_extents_is_extents_lazily() -> None:
    rng = random.Random(5)
    c = new_content(100_000 * SECTOR)
    for step in range(2000):
        first = rng.randrange(100_000)
        c.write_sectors(first, first + rng.choice([1, 8, 300]), rng.choice([0, 1, step + 2]))
    for start in (0, 1, 777, 54_321, 99_999):
        merged = c.extents(start)
        runs: list[tuple[int, int, int]] = []
        for lo, hi, s in c.iter_extents(start):
            if runs and runs[-1][1] == lo and runs[-1][2] == s:
                runs[-1] = (runs[-1][0], hi, s)
            else:
                runs.append((lo, hi, s))
        assert runs == merged
