"""What a qcow2 node asks of its file while it serves a request: the blkdebug events
it raises there (BLKDBG_EVENT in block/qcow2.c, qcow2-cluster.c, qcow2-refcount.c,
qcow2-cache.c of QEMU 7.2) and the requests between them, in QEMU's order.

A blkdebug node under a qcow2 node sees two things from it: events, which run the
blkdebug rules of the current state (an inject-error rule becomes active), and
requests, which fail by an active rule.  Which requests follow which events depends
on qcow2's metadata caches: this module reads and changes the image layout's caches
(`Qcow2Layout.cache`, a `Qcow2Cache`: the one model of them, whose write-backs the
layout also turns into host writes for dirty bitmaps on the protocol node) and
answers the sequence for a request as a generator of steps (`write_steps`,
`zero_steps`, `read_steps`, `flush_steps`).  The caller sends each request to the
blkdebug node; when one fails the caller stops, so the caches and the layout keep
what QEMU had done until then (a step's effect comes after its request): a new L2
table is in the layout once its L1 entry is written, new data clusters once their
data is (qcow2_alloc_cluster_link_l2).

Steps: ("event", name) or ("read" | "write" | "write-zeroes" | "flush", offset,
length[, TRY]).  A request's failure ends the steps, except for a TRY request (a
metadata cache write: qcow2_cache_write goes on to the next table), to which the
consumer sends whether it failed; steps that end after a failed TRY request fail
the request they serve.  Data requests carry guest offsets (as blkdebug's `sector` is matched in
the rest of blocksim); metadata requests carry offset -1 (host offsets of
metadata are not modelled).

The caches of an open qcow2 node (qcow2_cache_create at open, new ones at a reopen;
sim.model.qcow2_cache): the L2 cache covers the whole image, so an L2 table once
loaded or allocated stays cached; the refcount cache holds the first refcount block
(it covers the first 2 GiB of the file with 16-bit refcounts), loaded by the first
allocation after open.
Dirty tables are written when a cache is flushed: l2_allocate flushes both caches,
a guest flush writes the L2 cache (the refcount cache first: the L2 cache depends on
it once a write allocated clusters) and then the refcount cache.

Write of data (qcow2_co_pwritev_part), per L2 table the request touches, in order:
1. the table: no table yet -> l2_allocate (cluster_alloc, refcount block read when
   not cached, refblock_alloc, refblock_load; refcount cache flush:
   refblock_update_part + write, flush; l2_alloc_write; L2 cache flush: l2_update +
   write per dirty table, flush; l1_update + write, flush); a table not cached ->
   l2_load + read;
2. clusters without a host cluster -> one allocation per run (cluster_alloc,
   refcount block read when not cached, refblock_alloc, refblock_load);
3. a new cluster the write covers only in part needs copy-on-write of the rest: when
   that rest reads as zeroes by block status (is_zero_cow), cluster_alloc_space and
   a write-zeroes of the new clusters (handle_alloc_space); otherwise the rest is read
   (cow_read; read_backing_aio when it comes from the backing file) and written with
   the data (merge_cow: write_aio, cow_write + one write) or by itself (cow_write +
   write after the data);
4. the data: write_aio + write;
5. qcow2_alloc_cluster_link_l2: the L2 table becomes dirty.

Not modelled: compressed writes (cluster_alloc_bytes), encryption, subclusters,
lazy refcounts, external data files, refcount blocks beyond the first (an image file
past 2 GiB), the cache-clean-interval timer (tables unused for 10 minutes leave
the cache), new clusters placed right after allocated ones of the same request
(qcow2_alloc_clusters_at: no cluster_alloc event there), and a request that goes on
after one of its pieces failed.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any

from sim.model.content import (
    FIRST_DATA_STAMP,
    SECTOR_SHIFT,
    UNALLOCATED,
    Content,
    Extent,
)
from sim.model.qcow2_host import Qcow2Content, Qcow2Layout

Step = tuple[Any, ...]
Steps = Generator[Step, bool, None]
Steps_ = Generator[Step, bool, bool]  # a part of a request's steps: returns "failed"
META = -1  # a metadata request's offset: its host offset is not modelled
TRY = True  # a request whose failure the steps go on from (they are sent True)

# every event qcow2 raises in the flows above (the rest of BlkdebugEvent is refused)
QCOW2_EVENTS = (
    "l1_update", "l2_load", "l2_update", "l2_alloc_write", "cluster_alloc",
    "cluster_alloc_space", "refblock_load", "refblock_update_part", "refblock_alloc",
    "cow_read", "cow_write", "read_backing_aio",
)  # fmt: skip


def _alloc(layout: Qcow2Layout, event: bool = True) -> Steps_:
    """qcow2_alloc_clusters: alloc_clusters_noref reads the refcount block through
    the cache, update_refcount finds it (alloc_refcount_block) and dirties it."""
    if event:
        yield ("event", "cluster_alloc")
    if not layout.cache.refblock_cached:
        yield ("read", META, 0)
        layout.cache.refblock_cached = True
    yield ("event", "refblock_alloc")
    yield ("event", "refblock_load")
    layout.cache.refblock_dirty = True
    return False


def _write_refcount_cache(layout: Qcow2Layout) -> Steps_:
    """qcow2_cache_write of the refcount cache: its dirty block (a failed write leaves
    it dirty).  Returns whether it failed."""
    if not layout.cache.refblock_dirty:
        return False
    yield ("event", "refblock_update_part")
    if (yield ("write", META, 0, TRY)):
        return True
    layout.write_refblock()
    return False


def _flush_refcount(layout: Qcow2Layout) -> Steps_:
    """qcow2_cache_flush of the refcount cache: write it, then flush the file."""
    if (yield from _write_refcount_cache(layout)):
        return True
    return bool((yield ("flush", 0, 0, TRY)))


def _write_l2_cache(layout: Qcow2Layout) -> Steps_:
    """qcow2_cache_write of the L2 cache: every dirty table, each after the refcount
    cache it depends on has been flushed (qcow2_cache_entry_flush); a table whose
    dependency or write fails stays dirty and the next one is tried all the same.
    Returns whether any failed."""
    failed = False
    for region in list(layout.cache.l2_dirty):
        if layout.cache.l2_depends:
            if (yield from _flush_refcount(layout)):
                failed = True
                continue
            layout.cache.l2_depends = False
        yield ("event", "l2_update")
        if (yield ("write", META, 0, TRY)):
            failed = True
            continue
        layout.write_table(region)
    return failed


def _flush_l2(layout: Qcow2Layout) -> Steps_:
    """qcow2_cache_flush of the L2 cache."""
    if (yield from _write_l2_cache(layout)):
        return True
    return bool((yield ("flush", 0, 0, TRY)))


def _table(layout: Qcow2Layout, content: Qcow2Content, region: int) -> Steps_:
    """get_cluster_table: allocate the region's L2 table, or load it when not cached.
    Returns whether it failed (the request fails with it)."""
    if region not in content.l2_tables:
        # l2_allocate
        yield from _alloc(layout)
        if (yield from _flush_refcount(layout)):
            return True
        layout.cache.l2_cached.add(region)
        yield ("event", "l2_alloc_write")
        layout.cache.dirty_table(region)
        if (yield from _flush_l2(layout)):
            return True
        yield ("event", "l1_update")
        yield ("write", META, 0)
        yield ("flush", 0, 0)
        # the table is in the file, where the L2 cache flush above wrote it
        layout.add_table(region)
        layout.write_table(region)
        layout.write_l1_entry(region)
    elif region not in layout.cache.l2_cached:
        yield ("event", "l2_load")
        yield ("read", META, 0)
        layout.cache.l2_cached.add(region)
    return False


def _regions(content: Qcow2Content, offset: int, length: int) -> Iterable[tuple[int, int, int]]:
    """(region, offset, length) of each L2 region [offset, offset + length) touches."""
    span = content.l2_span_bytes
    end = offset + length
    while offset < end:
        region = offset // span
        stop = min(end, (region + 1) * span)
        yield region, offset, stop - offset
        offset = stop


def _new_runs(content: Qcow2Content, offset: int, length: int) -> list[tuple[int, int]]:
    """Runs [first, end) of the clusters [offset, offset + length) touches that have
    no host cluster (a data write allocates them)."""
    cl = content.cluster_bytes
    lo, hi = offset // cl, -(-(offset + length) // cl)
    runs: list[tuple[int, int]] = []
    cur = lo
    for a, b, _ in content.host.extents(lo, hi):
        if a > cur:
            runs.append((cur, a))
        cur = max(cur, b)
    if cur < hi:
        runs.append((cur, hi))
    return runs


def _host_runs(content: Qcow2Content, start: int, end: int) -> list[tuple[int, int]]:
    """Byte runs of [start, end) whose clusters have host clusters."""
    cl = content.cluster_bytes
    return [
        (max(a * cl, start), min(b * cl, end))
        for a, b, _ in content.host.extents(start // cl, -(-end // cl))
    ]


def _unallocated(chain: list[Content], offset: int, length: int) -> bool:
    """bdrv_is_allocated_above over the whole chain: nothing allocated there (a zero
    cluster counts as allocated)."""
    if length <= 0:
        return True
    first = offset >> SECTOR_SHIFT
    end = (offset + length + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT
    for content in chain:
        for _a, _b, stamp in content.extents(first, min(end, content.nsectors)):
            if stamp != UNALLOCATED:
                return False
    return True


def _cluster_status(content: Content, first: int, end: int) -> str:
    """What block status says of sectors [first, end) of one node: "data", "zero" or
    "unallocated" (a read falls through to the backing file).  A qcow2 node answers
    for whole clusters: a cluster with any data was allocated whole (the rest of it
    was copied or zeroed when it was), a zero cluster reads as zeroes."""
    if isinstance(content, Qcow2Content):
        sectors = content.cluster_bytes >> SECTOR_SHIFT
        first, end = first // sectors * sectors, -(-end // sectors) * sectors
    stamps = {stamp for _a, _b, stamp in content.extents(first, min(end, content.nsectors))}
    if any(stamp >= FIRST_DATA_STAMP for stamp in stamps):
        return "data"
    return "zero" if stamps else "unallocated"


def _reads_zero(chain: list[Content], offset: int, length: int) -> bool:
    """bdrv_co_is_zero_fast: [offset, offset + length) (within one cluster) reads as
    zeroes by block status: a zero cluster, or unallocated all the way down."""
    if length <= 0:
        return True
    first = offset >> SECTOR_SHIFT
    end = (offset + length + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT
    for content in chain:
        if first >= content.nsectors:
            break
        status = _cluster_status(content, first, end)
        if status != "unallocated":
            return status == "zero"
    return True


def write_steps(layout: Qcow2Layout, chain: list[Content], offset: int, length: int) -> Steps:
    """A data write of [offset, offset + length) into the qcow2 node whose content
    is chain[0] (chain: its backing chain's contents, top first)."""
    content = chain[0]
    assert isinstance(content, Qcow2Content)
    layout.cache.written = True
    cl = content.cluster_bytes
    for region, off, n in _regions(content, offset, length):
        if (yield from _table(layout, content, region)):
            return
        runs = _new_runs(content, off, n)
        for _run in runs:
            yield from _alloc(layout)
        cows: list[tuple[int, int]] = []  # the parts of new clusters the write leaves
        end = off + n
        for a, b in runs:
            start, stop = max(a * cl, off), min(b * cl, end)
            if start > a * cl:
                cows.append((a * cl, start - a * cl))
            if stop < b * cl:
                cows.append((stop, b * cl - stop))
        if cows and all(_reads_zero(chain, o, m) for o, m in cows):
            # handle_alloc_space: zero the new clusters instead of copying the rest
            yield ("event", "cluster_alloc_space")
            for a, b in runs:
                yield ("write-zeroes", a * cl, (b - a) * cl)
            cows = []
        if not cows:
            yield ("event", "write_aio")
            yield ("write", off, n)
        elif len(runs) == 1 and runs[0][0] * cl <= off and end <= runs[0][1] * cl:
            # merge_cow: the data goes with the copied rest in one write (perform_cow,
            # after reading the rest through the node: from the backing file where
            # this node has nothing)
            yield from _cow_reads(chain, cows)
            yield ("event", "write_aio")
            yield ("event", "cow_write")  # do_perform_cow_write writes all of it
            yield ("write", runs[0][0] * cl, (runs[0][1] - runs[0][0]) * cl)
        else:
            yield ("event", "write_aio")
            yield ("write", off, n)
            yield from _cow_reads(chain, cows)
            for o, m in cows:
                yield ("event", "cow_write")
                yield ("write", o, m)
        _in_place(layout, region, off, end, runs, cl)
        if runs:
            # qcow2_alloc_cluster_link_l2
            for a, b in runs:
                _changed(layout, content, region, a * cl, b * cl, False)
                layout.place(a, b)
            layout.cache.dirty_table(region)
            layout.cache.l2_depends = True


def _in_place(
    layout: Qcow2Layout, region: int, start: int, end: int, runs: list[tuple[int, int]], cl: int
) -> None:
    """The parts of a write to [start, end) that land in clusters it does not allocate
    go to the file in place: where the L2 entry in the file maps that cluster (a zero
    flag that never reached the file), a failed write-back does not take them back."""
    undo = layout.cache.undo.get(region)
    if not undo:
        return
    parts, cur = [], start
    for a, b in runs:
        if a * cl > cur:
            parts.append((cur, a * cl))
        cur = max(cur, b * cl)
    if cur < end:
        parts.append((cur, end))
    for p0, p1 in parts:
        first, stop = p0 >> SECTOR_SHIFT, -(-p1 >> SECTOR_SHIFT)
        kept = []
        for f, e, extents, keeps in undo:
            if not keeps or e <= first or stop <= f:
                kept.append((f, e, extents, keeps))
                continue
            if f < first:
                kept.append((f, first, _clip(extents, f, first), keeps))
            if stop < e:
                kept.append((stop, e, _clip(extents, stop, e), keeps))
        undo[:] = kept


def _clip(extents: list[Extent], first: int, end: int) -> list[Extent]:
    return [(max(a, first), min(b, end), v) for a, b, v in extents if a < end and first < b]


def _changed(
    layout: Qcow2Layout, content: Qcow2Content, region: int, start: int, end: int, keeps: bool
) -> None:
    """L2 entries of [start, end) change in the cache: keep what they mapped before
    (`keeps`: the clusters keep their host clusters)."""
    first = start >> SECTOR_SHIFT
    stop = min(content.nsectors, (end + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT)
    if first < stop:
        entry = (first, stop, content.extents(first, stop), keeps)
        layout.cache.undo.setdefault(region, []).append(entry)


def _cow_reads(chain: list[Content], cows: list[tuple[int, int]]) -> Steps:
    """do_perform_cow_read of each part: through the node's own read (its backing
    file where the node has nothing)."""
    for o, m in cows:
        yield ("event", "cow_read")
        if len(chain) > 1 and _unallocated(chain[:1], o, m):
            yield ("event", "read_backing_aio")


def zero_steps(layout: Qcow2Layout, chain: list[Content], offset: int, length: int) -> Steps:
    """A write-zeroes of [offset, offset + length) (qcow2_co_pwrite_zeroes): the block
    layer cuts the unaligned head and tail off (pwrite_zeroes_alignment is the
    cluster); qcow2 zeroes a cluster in its L2 table when the rest of it reads as
    zeroes, and otherwise answers -ENOTSUP and the block layer writes a buffer of
    zeroes instead (the data path)."""
    content = chain[0]
    assert isinstance(content, Qcow2Content)
    cl = content.cluster_bytes
    end = offset + length
    head_end = min(end, -(-offset // cl) * cl)
    tail_start = max(head_end, end // cl * cl)
    pieces = []
    if offset < head_end and offset % cl:
        pieces.append((offset, head_end - offset, True))
    else:
        head_end = offset
    if head_end < tail_start:
        pieces.append((head_end, tail_start - head_end, False))
    if tail_start < end:
        pieces.append((tail_start, end - tail_start, True))
    for off, n, partial in pieces:
        if partial:
            c0 = off // cl * cl
            c1 = min(c0 + cl, content.size_bytes)
            rest_zero = _reads_zero(chain, c0, off - c0) and _reads_zero(
                chain, off + n, c1 - off - n
            )
            if not rest_zero:
                yield from write_steps(layout, chain, off, n)
                continue
            off, n = c0, c1 - c0
        layout.cache.written = True
        for region, o, m in _regions(content, off, n):
            if (yield from _table(layout, content, region)):
                return
            for a, b in _host_runs(content, o, o + m):
                _changed(layout, content, region, a, b, True)
            for a, b in _new_runs(content, o, m):
                _changed(layout, content, region, a * cl, min(b * cl, o + m), False)
            layout.cache.dirty_table(region)


def read_steps(layout: Qcow2Layout, chain: list[Content], offset: int, length: int) -> Steps:
    """A read of [offset, offset + length) (qcow2_co_preadv_part): per L2 region, the
    table when it is not cached (a region without one reads as unallocated), then each
    piece: clusters contiguous in the file (read_aio + read), or clusters the node
    does not have while it has a backing file (read_backing_aio; the backing node's
    own requests go to its file); zero clusters read nothing."""
    content = chain[0]
    assert isinstance(content, Qcow2Content)
    cl = content.cluster_bytes
    per = cl >> SECTOR_SHIFT
    end = offset + length
    for region, off, n in _regions(content, offset, length):
        if region in content.l2_tables and region not in layout.cache.l2_cached:
            yield ("event", "l2_load")
            yield ("read", META, 0)
            layout.cache.l2_cached.add(region)
        lo, hi = off // cl, -(-(off + n) // cl)
        cur = lo
        for a, b, _host in content.host.extents(lo, hi):
            if a > cur:
                yield from _unmapped(content, chain, cur, a)
            # a run contiguous in the file; zero-flagged clusters in it read nothing
            start, stop = max(a * cl, offset), min(b * cl, end)
            if _cluster_status(content, a * per, b * per) == "data":
                yield ("event", "read_aio")
                yield ("read", start, stop - start)
            cur = b
        if cur < hi:
            yield from _unmapped(content, chain, cur, hi)


def _unmapped(content: Qcow2Content, chain: list[Content], lo: int, hi: int) -> Steps:
    """Clusters [lo, hi) without a host cluster: zero clusters read nothing, the rest
    comes from the backing file when there is one."""
    if len(chain) < 2:
        return
    per = content.cluster_bytes >> SECTOR_SHIFT
    first, stop = lo * per, min(hi * per, content.nsectors)
    if sum(b - a for a, b, _ in content.extents(first, stop)) < stop - first:
        yield ("event", "read_backing_aio")


def status_steps(layout: Qcow2Layout, content: Qcow2Content, offset: int, length: int) -> Steps:
    """Block status of [offset, offset + length) (qcow2_co_block_status): the L2
    tables it needs, loaded when not cached (l2_load + read).  A caller that swallows
    its failure (block-copy copies the range as data then) leaves the table uncached,
    so the read after it loads it again."""
    for region, _off, _n in _regions(content, offset, length):
        if region in content.l2_tables and region not in layout.cache.l2_cached:
            yield ("event", "l2_load")
            yield ("read", META, 0)
            layout.cache.l2_cached.add(region)


def _flush(layout: Qcow2Layout) -> Steps_:
    """bdrv_co_flush of the qcow2 node: flush_to_os (qcow2_write_caches: the L2 cache,
    then the refcount cache), flush_to_disk when the node was written since its last
    flush, then its file is flushed; a failure ends it."""
    yield ("event", "flush_to_os")
    if (yield from _write_l2_cache(layout)):
        return True
    if (yield from _write_refcount_cache(layout)):
        return True
    if layout.cache.written:
        yield ("event", "flush_to_disk")
    if (yield ("flush", 0, 0, TRY)):
        return True
    layout.cache.written = False
    return False


def flush_steps(layout: Qcow2Layout) -> Steps:
    """A flush of the qcow2 node (`_flush`)."""
    yield from _flush(layout)


def close_steps(layout: Qcow2Layout) -> Steps:
    """bdrv_close of the qcow2 node: a flush (its failure ignored), then
    qcow2_inactivate flushes the L2 cache and the refcount cache (each tried).  The
    tables still dirty after it never reach the file (`lost_changes`)."""
    yield from _flush(layout)
    yield from _flush_l2(layout)
    yield from _flush_refcount(layout)
