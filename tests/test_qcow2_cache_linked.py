"""Qcow2Cache.linked: the clusters whose L2 entries are only in a dirty cached table."""

from __future__ import annotations

from sim.model.qcow2_cache import LINKED_RUNS, Qcow2Cache


def test_unlinked_lists_runs_of_dirty_tables_only() -> None:
    cache = Qcow2Cache()
    for region, first, end in ((0, 3, 5), (1, 9000, 9002), (0, 1, 2)):
        cache.dirty_table(region)
        cache.link(region, first, end)
    assert cache.unlinked() == [(1, 2), (3, 5), (9000, 9002)]
    cache.table_written(0)  # region 0's table reached the file: its entries did too
    assert cache.unlinked() == [(9000, 9002)]
    cache.dirty_table(0)
    assert cache.unlinked() == [(9000, 9002)]  # re-dirtied, nothing linked since
    cache.written_back()
    assert cache.unlinked() == []


def test_too_many_runs_are_not_followed() -> None:
    cache = Qcow2Cache()
    cache.dirty_table(0)
    for i in range(LINKED_RUNS):
        cache.link(0, 2 * i, 2 * i + 1)
    assert len(cache.unlinked() or []) == LINKED_RUNS
    cache.link(0, 2 * LINKED_RUNS, 2 * LINKED_RUNS + 1)
    assert cache.unlinked() is None
    copy = cache.copy()
    assert copy.unlinked() is None
    cache.written_back()  # followed again from the next write-back
    cache.dirty_table(0)
    cache.link(0, 7, 8)
    assert cache.unlinked() == [(7, 8)]
