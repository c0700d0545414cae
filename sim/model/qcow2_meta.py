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

Write of data (qcow2_co_pwritev_part), piece by piece (a piece: clusters contiguous
in the file within one L2 table; see `_write` for how failed pieces' tasks stop it):
1. the table, for the first piece in a region: no table yet -> l2_allocate
   (cluster_alloc, refcount block read when not cached, refblock_alloc,
   refblock_load; refcount cache flush: refblock_update_part + write, flush;
   l2_alloc_write; L2 cache flush: l2_update + write per dirty table, flush;
   l1_update + write, flush); a table not cached -> l2_load + read;
2. new clusters -> one allocation (cluster_alloc, refcount block read when not
   cached, refblock_alloc, refblock_load) where qcow2_alloc_clusters finds free host
   clusters (`Qcow2Layout.reserve`); while the host clusters right after the piece's
   are free, new clusters join its piece there without cluster_alloc
   (qcow2_alloc_clusters_at, which reads the refcount block when not cached even when
   the cluster is in use);
3. the piece's task: a new cluster the write covers only in part needs copy-on-write
   of the rest: when that rest reads as zeroes by block status (is_zero_cow),
   cluster_alloc_space and a write-zeroes of the new clusters (handle_alloc_space);
   otherwise the rest is read (cow_read; read_backing_aio when it comes from the
   backing file) and written with the data (merge_cow: write_aio, cow_write + one
   write) or by itself (cow_write + write after the data); else the data: write_aio +
   write;
4. after the last piece, qcow2_alloc_cluster_link_l2 of each piece written: its L2
   table becomes dirty.
Zero clusters that keep their host cluster (QCOW2_CLUSTER_ZERO_ALLOC) are written in
place but handled as new ones in 3 and 4 (handle_copied gives them an l2meta).

Not modelled: compressed writes (cluster_alloc_bytes), encryption, subclusters,
lazy refcounts, external data files, refcount blocks beyond the first (an image file
past 2 GiB), the cache-clean-interval timer (tables unused for 10 minutes leave
the cache), and which of two pieces' tasks QEMU links first.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any

from sim.model.content import (
    FIRST_DATA_STAMP,
    SECTOR_SHIFT,
    UNALLOCATED,
    ZERO_STAMP,
    Content,
    Extent,
)
from sim.model.qcow2_host import Qcow2Content, Qcow2Layout

Step = tuple[Any, ...]
Steps = Generator[Step, int, None]
Steps_ = Generator[Step, int, bool]  # a part of a request's steps: returns "failed"
META = -1  # a metadata request's offset: its host offset is not modelled
TRY = True  # a request whose failure the steps go on from (they are sent how it failed)
FAILED = 1  # sent for a TRY request that failed after yielding (blkdebug's default)
FAILED_AT_ONCE = 2  # sent for one that failed before yielding (`immediately`)
ASYNC = "async"  # 5th item of a task's write: its pwritev_done comes when it completes
OPTIONAL = "optional"  # 4th item of a request whose failure nothing sees (a discard)

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


def _free(layout: Qcow2Layout, discard: bool) -> Steps:
    """qcow2_free_clusters (a failed l2_allocate gives its table's cluster back,
    QCOW2_DISCARD_ALWAYS; qcow2_alloc_cluster_abort a failed piece's clusters,
    QCOW2_DISCARD_NEVER): cluster_free, then update_refcount decreases the count
    (refblock_alloc, refblock_load; the refcount cache now depends on the L2 cache,
    after the L2 cache's own dependency was flushed) and, with `discard`, discards
    the cluster in the file (qcow2_process_discards: its failure is ignored)."""
    cache = layout.cache
    yield ("event", "cluster_free")
    if cache.l2_depends:  # qcow2_cache_set_dependency flushes the dependency's first
        if not (yield from _flush_refcount(layout)):
            cache.l2_depends = False
    if not cache.l2_depends:
        cache.refblock_depends = True
    yield ("event", "refblock_alloc")
    yield ("event", "refblock_load")
    cache.refblock_dirty = True
    if discard:
        yield ("discard", META, 0, OPTIONAL)


def _write_refcount_cache(layout: Qcow2Layout) -> Steps_:
    """qcow2_cache_write of the refcount cache: its dirty block, after the L2 cache it
    depends on has been flushed (a failed write leaves it dirty).  Returns whether it
    failed."""
    if not layout.cache.refblock_dirty:
        return False
    if layout.cache.refblock_depends:  # qcow2_cache_flush_dependency
        if (yield from _flush_l2(layout)):
            return True
        layout.cache.refblock_depends = False
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


def _table(
    layout: Qcow2Layout, content: Qcow2Content, region: int, discards: bool = True
) -> Steps_:
    """get_cluster_table: allocate the region's L2 table, or load it when not cached.
    `discards`: a failed allocation's free discards its cluster in the file (not
    under qcow2_subcluster_zeroize, which caches discards and drops them when it
    fails).  Returns whether it failed (the request fails with it)."""
    if region not in content.l2_tables:
        # l2_allocate; on a failure after its cluster was allocated, the cluster is
        # freed and the new table dropped from the cache (qcow2_cache_discard)
        yield from _alloc(layout)
        failed = yield from _flush_refcount(layout)
        if not failed:
            layout.cache.l2_cached.add(region)
            yield ("event", "l2_alloc_write")
            layout.cache.dirty_table(region)
            failed = yield from _flush_l2(layout)
        if not failed:
            yield ("event", "l1_update")
            failed = bool((yield ("write", META, 0, TRY)))
            if not failed and (yield ("flush", 0, 0, TRY)):
                # the L1 entry reached the file, the table's cluster is freed: the
                # on-disk entry keeps pointing at it (the in-memory one goes back to 0)
                layout.stale_l1[region] = layout.first_free()
                failed = True
        if failed:
            layout.cache.l2_cached.discard(region)
            layout.cache.table_written(region)  # dropped, not written
            yield from _free(layout, discards)
            return True
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


def _counted(steps: Steps_, box: list[int], waited: Callable[[], Steps]) -> Steps_:
    """Steps of the main coroutine passed on, counting in box[0] its requests.  While
    it waits for each, the event loop runs the tasks in flight (`waited`).  A request
    whose failure ends the main coroutine is sent as a TRY request: when it fails,
    `steps` end there and True is returned (the tasks still finish)."""
    try:
        step = next(steps)
        while True:
            if step[0] == "event":
                step = steps.send((yield step))
                continue
            box[0] += 1
            status = yield (step if len(step) > 3 else (*step, TRY))
            yield from waited()
            if status and len(step) < 4:
                steps.close()
                return True
            step = steps.send(status)
    except StopIteration as stop:
        return bool(stop.value)


def _run_end(layout: Qcow2Layout, c: int, hi: int, span: int) -> tuple[int, bool]:
    """From guest cluster `c`, within its L2 region and below `hi`: the end of its run
    of clusters contiguous in the file (hosted: True) or without host clusters."""
    stop = min(hi, (c // span + 1) * span)
    hosted = layout.host.extents(c, stop)
    if hosted and hosted[0][0] == c:
        return hosted[0][1], True
    return (hosted[0][0] if hosted else stop), False


def write_steps(
    layout: Qcow2Layout,
    chain: list[Content],
    offset: int,
    length: int,
    landed: list[tuple[int, int]] | None = None,
) -> Steps:
    """A data write of [offset, offset + length) (`_write`)."""
    yield from _write(layout, chain, offset, length, landed)


def _write(
    layout: Qcow2Layout,
    chain: list[Content],
    offset: int,
    length: int,
    landed: list[tuple[int, int]] | None,
) -> Steps_:
    """A data write of [offset, offset + length) into the qcow2 node whose content
    is chain[0] (chain: its backing chain's contents, top first): qcow2_co_pwritev_part.

    The request goes piece by piece.  The main coroutine gathers each piece under
    s->lock (qcow2_alloc_host_offset): from its first cluster, a run of clusters with
    host clusters contiguous in the file (handle_copied) or of new ones (handle_alloc:
    one allocation); then, while the request goes on, the next cluster's L2 table
    (get_cluster_table: loaded, or allocated by l2_allocate, even in the next region)
    and the next cluster joins the piece if it lies right after the piece in the file:
    a cluster with that host cluster, or new ones while that host cluster and those
    after it are free (qcow2_alloc_clusters_at, which reads the refcount block when not cached, even
    when that host cluster is in use; no cluster_alloc).  Then the piece's task
    starts (qcow2_add_task, `_Task`) and runs until its first I/O, and the next piece
    is gathered; the tasks' I/O completes (pwritev_done) and they go on while the main
    coroutine waits for its own I/O, and at the end (aio_task_pool_wait_all).  A task
    that fails does not stop the request at once: the other pieces' tasks still
    write, and their data lands (`landed` gets each piece written).  A task failing
    `immediately` sets the pool's status before the next piece.  One failing after a
    yield (blkdebug's default) resumes when the main coroutine next waits for I/O,
    then waits for s->lock, which the main coroutine holds while it gathers a piece;
    it takes the lock when the next piece asks for it and sets the status then, so
    the piece after that one does not start.  A failure in the main coroutine ends
    the gathering (the piece it was gathering gives its new clusters back); the
    tasks started still finish.  The tasks copy the rest of their new clusters and
    link them (qcow2_alloc_cluster_link_l2: perform_cow, then the L2 entries) once
    they can take s->lock: after the last piece.  Returns whether the request failed."""
    content = chain[0]
    assert isinstance(content, Qcow2Content)
    layout.cache.written = True
    cl = content.cluster_bytes
    span = content.l2_span_bytes // cl  # clusters one L2 table maps
    end = offset + length
    hi = -(-end // cl)
    box = [0]  # requests of the main coroutine so far
    tasks: list[_Task] = []
    stopped = False  # the task pool's status is set: no piece starts
    failed_at = -1  # box[0] when a task failed after yielding
    failed = False

    def loop_head() -> bool:
        """The while loop's check of the pool's status: whether it stops here."""
        nonlocal stopped, failed_at
        if stopped:
            return True
        if 0 <= failed_at < box[0]:
            # the main coroutine waited for I/O since the task failed: the task woke,
            # waited for s->lock and takes it when the piece starting now asks for it
            stopped, failed_at = True, -1
        return False

    def note(task: _Task, waiting: bool) -> None:
        """A task's failure, seen by the pool when the task ends (needs s->lock)."""
        nonlocal stopped, failed_at
        if not task.status or task.noted:
            return
        task.noted = True
        if task.status == FAILED_AT_ONCE and not waiting:
            stopped = True  # it ended before the main coroutine went on
        elif failed_at < 0:
            # it ends once it has woken (already, when it failed while the main
            # coroutine waited) and taken s->lock
            failed_at = box[0] - 1 if waiting and task.status == FAILED_AT_ONCE else box[0]

    def waited() -> Steps:
        """The event loop runs while the main coroutine waits: each task's I/O in
        flight completes and the task goes on to its next I/O."""
        for task in tasks:
            yield from task.resume()
            note(task, True)

    c = offset // cl
    new: list[tuple[int, int]] = []  # the new clusters of the piece being gathered
    try:
        while c < hi and not loop_head():
            lo = c
            new = []
            if (yield from _counted(_table(layout, content, c // span), box, waited)):
                failed = True
                break
            b, hosted = _run_end(layout, c, hi, span)
            if not hosted:
                if (yield from _counted(_alloc(layout), box, waited)):
                    failed = True
                    break
                layout.reserve(c, b)
                new.append((c, b))
            while b < hi:  # does the next cluster join the piece?
                after = layout.host_of(b - 1) + 1
                if (yield from _counted(_table(layout, content, b // span), box, waited)):
                    failed = True
                    break
                e, hosted = _run_end(layout, b, hi, span)
                if hosted:
                    if layout.host_of(b) != after:
                        break
                else:
                    # qcow2_alloc_clusters_at: the refcount of the host cluster after it
                    if not layout.cache.refblock_cached:
                        box[0] += 1
                        status = yield ("read", META, 0, TRY)
                        yield from waited()
                        if status:
                            failed = True
                            break
                        layout.cache.refblock_cached = True
                    joined = layout.free_at(after, e - b)
                    if not joined:  # in use: the piece ends here
                        break
                    yield from _alloc(layout, event=False)
                    e = b + joined  # as many as are free there
                    layout.reserve(b, e, after)
                    new.append((b, e))
                b = e
            if failed:
                break
            task = _Task(chain, max(offset, lo * cl), min(end, b * cl), new, cl)
            task.zeroed = _zero_allocated(layout, content, task)
            tasks.append(task)
            new = []
            yield from task.resume()
            note(task, False)
            c = b
        if new:  # the piece being gathered gives its clusters back
            for a, z in reversed(new):
                layout.unreserve(a, z)
            yield from _free(layout, False)
        new = []
        # aio_task_pool_wait_all: the tasks' I/O completes, each goes on to its end
        while any(t.inflight for t in tasks):
            yield from waited()
        for task in tasks:  # then each links what it wrote (qcow2_handle_l2meta)
            if not task.status:
                task.status = yield from task.perform_cow()
            if task.status:
                failed = True
                for a, z in task.wiped:  # zeroed in the file before the task failed
                    for region, r0, r1 in _by_region(a * cl, z * cl, span * cl):
                        _in_place(layout, region, r0, r1, [], cl)
                if task.new:  # qcow2_alloc_cluster_abort
                    for a, z in reversed(task.new):
                        layout.unreserve(a, z)
                    yield from _free(layout, False)
                continue
            yield from _link(layout, content, task, span, cl)
            if landed is not None:
                landed.append((task.start, task.stop - task.start))
        return failed
    finally:
        for a, z in reversed(new):  # closed while gathering a piece
            layout.unreserve(a, z)


def _link(layout: Qcow2Layout, content: Qcow2Content, task: _Task, span: int, cl: int) -> Steps:
    """qcow2_alloc_cluster_link_l2 of a piece written: the L2 cache comes to depend on
    the refcount cache (when the refcount cache depends on the L2 cache, that is
    flushed first), its new clusters' L2 entries change (the table gets dirty); the
    rest of it was written in place."""
    cache = layout.cache
    if (task.new or task.zeroed) and cache.refblock_depends:  # qcow2_cache_set_dependency
        if not (yield from _flush_l2(layout)):
            cache.refblock_depends = False
    for region, r0, r1 in _by_region(task.start, task.stop, span * cl):
        mine = [(a, b) for a, b in task.new if a * cl < r1 and r0 < b * cl]
        kept = [(a, b) for a, b in task.zeroed if a * cl < r1 and r0 < b * cl]
        # a zero flag already in the file comes back when the table is lost; one still
        # only in the table goes with it, and the cluster reads as written
        flagged = [r for r in kept if not _pending(layout, region, r[0] * cl, r[1] * cl)]
        _in_place(layout, region, r0, r1, mine, cl)
        for a, b in kept:  # written whole in the file (the rest zeroed)
            _in_place(layout, region, a * cl, b * cl, [], cl)
        if mine or kept:
            for a, b in mine:
                _changed(layout, content, region, a * cl, b * cl, False)
            for a, b in flagged:
                _changed(layout, content, region, a * cl, b * cl, True)
            cache.dirty_table(region)
            if not cache.refblock_depends:
                cache.l2_depends = True


def _pending(layout: Qcow2Layout, region: int, start: int, end: int) -> bool:
    """Whether a change of [start, end)'s L2 entries is in `region`'s table only."""
    first, stop = start >> SECTOR_SHIFT, end >> SECTOR_SHIFT
    return any(f < stop and first < e for f, e, _x, _k in layout.cache.undo.get(region, []))


def _zero_allocated(
    layout: Qcow2Layout, content: Qcow2Content, task: _Task
) -> list[tuple[int, int]]:
    """Runs of the clusters of a piece that are zero clusters keeping their host
    cluster (QCOW2_CLUSTER_ZERO_ALLOC), not new: handle_copied writes them in place
    but gives them an l2meta, so their rest is zeroed in the file as a new cluster's
    is (handle_alloc_space) and the link clears their zero flag in the L2 table.
    Read before the write, extent by extent."""
    cl = task.cl
    per = cl >> SECTOR_SHIFT
    lo, hi = task.start // cl, -(-task.stop // cl)
    out: list[tuple[int, int]] = []
    for a, b, stamp in content.extents(lo * per, hi * per):
        if stamp != ZERO_STAMP:
            continue
        for ha, hb, _value in layout.host.extents(-(-a // per), b // per):  # whole clusters
            cur = ha
            for na, nb in task.new:
                if cur < min(hb, na):
                    out.append((cur, min(hb, na)))
                cur = max(cur, nb)
            if cur < hb:
                out.append((cur, hb))
    return out


def _by_region(start: int, stop: int, span_bytes: int) -> Iterable[tuple[int, int, int]]:
    """(region, start, stop) of each L2 region [start, stop) touches."""
    while start < stop:
        region = start // span_bytes
        end = min(stop, (region + 1) * span_bytes)
        yield region, start, end
        start = end


class _Task:
    """qcow2_co_pwritev_task of the piece [start, stop) whose clusters `new` (runs)
    are new, run as a coroutine of the task pool: `resume` runs it until its next I/O
    is in flight (the first time, from its start; then after its I/O in flight
    completed: pwritev_done), up to its data write (`_unlocked`); `perform_cow` then
    copies the rest of its new clusters under s->lock.  `status`: 0 or how a request
    failed."""

    __slots__ = ("chain", "cl", "gen", "inflight", "new", "noted", "started", "status",
                 "read_early", "start", "stop", "todo", "wiped", "zeroed")  # fmt: skip

    def __init__(
        self, chain: list[Content], start: int, stop: int, new: list[tuple[int, int]], cl: int
    ) -> None:
        self.chain, self.start, self.stop, self.new, self.cl = chain, start, stop, new, cl
        self.status = 0
        self.noted = False  # its failure was seen (`_write`)
        self.inflight: str | None = None  # the op of its I/O in flight
        self.started = False
        # per new run, the parts of it the piece leaves (copied or zeroed)
        self.todo: list[tuple[int, int, list[tuple[int, int]]]] = []
        # runs of zero clusters keeping their host cluster that the piece writes in
        # place (`_zero_allocated`): like new ones, their rest is zeroed, then linked
        self.zeroed: list[tuple[int, int]] = []
        self.read_early = False  # perform_cow's reads came at the task's start
        self.wiped: list[tuple[int, int]] = []  # runs of `zeroed` zeroed in the file
        self.gen = self._unlocked()

    def merged(self) -> bool:
        """merge_cow: one new run holds all of the piece and the rest of it is copied:
        the data goes with the copied rest in one write."""
        n = self.new
        return (
            len(self.todo) == 1
            and len(n) == 1
            and (n[0][0] * self.cl <= self.start and self.stop <= n[0][1] * self.cl)
        )

    def resume(self) -> Steps:
        if self.inflight is None and self.started:
            return
        value: int | None = None
        if self.inflight is not None:
            if self.inflight != "read" and self.status != FAILED_AT_ONCE:
                yield ("event", "pwritev_done")
            self.inflight = None
            value = self.status
        while True:
            try:
                step = self.gen.send(value) if self.started else next(self.gen)
            except StopIteration:
                return
            self.started = True
            if step[0] == "event":
                value = None
                yield step
                continue
            status = yield step
            if status:
                self.status = status
            if status == FAILED_AT_ONCE:
                value = status  # it never yielded: the task goes on at once
                continue
            self.inflight = step[0]
            return

    def _unlocked(self) -> Generator[Step, int | None, None]:
        """handle_alloc_space (a new run whose rest reads as zeroes by block status is
        zeroed: cluster_alloc_space and a write-zeroes), then the data: write_aio and
        the write (not when merge_cow puts it with the copied rest)."""
        cl, off, end = self.cl, self.start, self.stop
        for a, b in sorted(self.new + self.zeroed):
            parts = []
            if off > a * cl:
                parts.append((a * cl, off - a * cl))
            if end < b * cl:
                parts.append((end, b * cl - end))
            if not parts:
                continue
            if all(_reads_zero(self.chain, o, m) for o, m in parts):
                yield ("event", "cluster_alloc_space")
                if (yield ("write-zeroes", a * cl, (b - a) * cl, TRY, ASYNC)):
                    return
                if (a, b) in self.zeroed:  # its host cluster holds zeroes now
                    self.wiped.append((a, b))
            else:
                self.todo.append((a, b, parts))
        if not self.merged():
            yield ("event", "write_aio")
            yield ("write", off, end - off, TRY, ASYNC)
            return
        # nothing to write before the link: the task goes on into qcow2_handle_l2meta at
        # once, and perform_cow reads the rest with s->lock dropped while the request
        # gathers its next piece (its events come now, its write later)
        self.read_early = True
        yield from _cow_reads(self.chain, self.todo[0][2])

    def perform_cow(self) -> Generator[Step, int, int]:
        """perform_cow of each new run whose rest is copied: cow_read (read_backing_aio
        when it comes from the backing file), then the writes: with the data (merged:
        write_aio, cow_write, one write) or each part by itself (cow_write + write)."""
        cl = self.cl
        for a, b, parts in self.todo:
            if not self.read_early:
                yield from _cow_reads(self.chain, parts)
            if self.merged():
                yield ("event", "write_aio")
                yield ("event", "cow_write")  # do_perform_cow_write writes all of it
                return (yield ("write", a * cl, (b - a) * cl, TRY))
            for o, m in parts:
                yield ("event", "cow_write")
                status = yield ("write", o, m, TRY)
                if status:
                    return status
        return 0


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


def zero_steps(
    layout: Qcow2Layout,
    chain: list[Content],
    offset: int,
    length: int,
    landed: list[tuple[int, int]] | None = None,
) -> Steps:
    """A write-zeroes of [offset, offset + length) (qcow2_co_pwrite_zeroes): the block
    layer cuts the unaligned head and tail off (pwrite_zeroes_alignment is the
    cluster) and zeroes the pieces one after the other until one fails
    (bdrv_co_do_pwrite_zeroes; `landed` gets what each piece zeroed); qcow2 zeroes a
    cluster in its L2 table when the rest of it reads as zeroes, and otherwise
    answers -ENOTSUP and the block layer writes a buffer of zeroes instead (the data
    path)."""
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
                if (yield from _write(layout, chain, off, n, landed)):
                    return
                continue
            off, n = c0, c1 - c0
        layout.cache.written = True
        for region, o, m in _regions(content, off, n):
            if (yield from _table(layout, content, region, discards=False)):
                return
            for a, b in _host_runs(content, o, o + m):
                _changed(layout, content, region, a, b, True)
            for a, b in _new_runs(content, o, m):
                _changed(layout, content, region, a * cl, min(b * cl, o + m), False)
            layout.cache.dirty_table(region)
            if landed is not None:  # zero_in_l2_slice: this table's entries are zeroed
                lo, hi_ = max(o, offset), min(o + m, end)
                landed.append((lo, hi_ - lo))


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
