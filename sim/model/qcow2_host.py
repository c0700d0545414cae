"""Where a qcow2 image's clusters lie in its file: the host cluster allocation of
block/qcow2-cluster.c (QEMU 7.2), as far as block status shows it.

qcow2's block status (qcow2_co_block_status, qcow2_get_host_offset) reports
one extent for guest clusters whose host clusters follow each other in the
file; block-copy cuts its tasks there (block_copy_block_status), so which
clusters are contiguous decides how a backup splits its work.  A write that
reaches clusters with no host cluster allocates new ones one run after the
other in guest order (qcow2_alloc_host_offset, handle_alloc): right after the
host cluster of the cluster before them while those are free
(qcow2_alloc_clusters_at), else at the first run of free host clusters long
enough from s->free_cluster_index on (alloc_clusters_noref: at the end of what
is in use, or in a hole freed since; a free sets the index back to the freed
cluster, qcow2_open to the file's start); the first write or zero write into a guest region that one
L2 table maps allocates that table first (l2_allocate), so it sits between
data clusters.  A discard that unmaps (stamp 0) frees the whole clusters it
covers (their host clusters are free again); zero writes keep the host cluster of an allocated cluster and give
none to an unallocated one (zero flag in the L2 entry), unless they may unmap (qemu-io's
`write -z -u`): then they free the host clusters of the whole clusters they cover.

Theory of operation.  One `Qcow2Layout` per image holds what its L2 tables
say: the host map, the L2 tables that exist, the next free host cluster, and
the cluster counts of `ClusterSummary` (data clusters, allocated clusters per
L2 region) that the host-file layout reads.  The host map is itself a
`Content` indexed by cluster instead of sector: each allocated cluster carries
`host - guest + _BIAS`, so clusters that are contiguous in the file carry
equal values and form one extent of the map.  The counts are not the map's:
a cluster zeroed after it held data keeps its host cluster but counts as
zeroes, and a discard frees host clusters but no L2 table.  `Qcow2Content`
(the image's content) keeps the layout up to date: a write made at once
places its clusters and counts them; a write log spliced in with numpy
(`Content._merge_log`) places the clusters of all its writes in one pass
(`Qcow2Layout.place_log`) and brings the counts up to date as
`Content._merge_sectors` says.  Cost
grows with the writes and the map's extents, never with the image size.
A write log spliced in with numpy allocates at the end: while freed host
clusters are left it is spliced write by write instead.  Not modelled:
refcount blocks allocated as the file grows, metadata of
internal snapshots and bitmaps.

The writes to the image file (what a dirty bitmap on the protocol node sees,
bdrv_co_write_req_finish on the file child; collected for writes made at
once, `collect_host_writes`): a data write lands in place on allocated
clusters and whole on newly allocated ones; a new L2 table writes back the
refcount block, writes the table whole and its L1 entry's sector
(l2_allocate); allocations and zero writes change L2 entries and refcounts
in the metadata caches (`Qcow2Cache`, sim.model.qcow2_cache: the one model of
them, which blkdebug's events under a qcow2 node read too), written back at a
flush, a reopen read-only or the next L2 allocation (`flush`); a write log spliced
in at once leaves them as its writes one by one would.  Unaligned zero writes (which QEMU turns into
data writes) and discards only touch the caches here.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from sim.model.content import (
    FIRST_DATA_STAMP,
    SECTOR,
    SECTOR_SHIFT,
    UNALLOCATED,
    ZERO_STAMP,
    ClusterSummary,
    Content,
    WriteLog,
    chain_extents,
    run_heads,
    stable_sort,
)
from sim.model.qcow2_cache import LINKED_RUNS, Qcow2Cache

if TYPE_CHECKING:
    import numpy as np

    from sim.model.graph import BlockNode
else:
    from sim.lazy import numpy as np

L2_ENTRY_BYTES = 8  # a qcow2 L2 entry without subclusters
L1_ENTRY_BYTES = 8
QCOW2_CREATE_CLUSTERS = 3  # header, refcount table, one refcount block (qcow2_co_create)
_BIAS = 1 << 40  # keeps a map value above the content's special stamps


class Qcow2Layout(ClusterSummary):
    """What a qcow2 image's L2 tables say (block/qcow2-cluster.c): which host cluster
    each guest cluster has, which L2 tables exist, where the next host cluster goes,
    and the counts of `ClusterSummary`.  Block-copy asks it which guest clusters lie
    contiguously in the file (`host_run`); the host-file layout behind
    query-named-block-nodes reads its counts."""

    __slots__ = (
        "cache",
        "data_start",
        "free",
        "host",
        "host_writes",
        "l2_host",
        "l2_tables",
        "next_host",
        "scan",
        "stale_l1",
        "synced_host",
    )

    def __init__(self, content: Content, cluster_bytes: int) -> None:
        super().__init__(content, cluster_bytes)
        self.host = Content(-(-content.size_bytes // cluster_bytes) << SECTOR_SHIFT)
        self.l2_tables: set[int] = set()  # guest regions whose L2 table exists
        # host clusters (relative to `data_start`): every one from `next_host` on is
        # free, below it those in `free` (sorted, apart: [start, end) runs whose
        # refcount went back to 0); `scan` is s->free_cluster_index, where
        # qcow2_alloc_clusters starts looking
        self.next_host = 0
        # `next_host` when a flush last reached the file (fdatasync: ext4 has allocated
        # every block written so far); -1: never since open
        self.synced_host = -1
        self.free: list[tuple[int, int]] = []
        self.scan = 0
        # host offset of relative cluster 0: after the header, refcount table,
        # refcount block and L1 table qcow2_co_create writes
        l1_bytes = -(-content.size_bytes // self.l2_span_bytes) * L1_ENTRY_BYTES
        self.data_start = (QCOW2_CREATE_CLUSTERS + -(-l1_bytes // cluster_bytes)) * cluster_bytes
        self.l2_host: dict[int, int] = {}  # L2 region -> relative host cluster of its table
        # L1 entries on disk that differ from the in-memory table: a failed l2_allocate
        # whose entry reached the file before its flush failed (region -> the freed
        # host cluster the entry points at)
        self.stale_l1: dict[int, int] = {}
        # the metadata caches: L2 tables and the refcount block changed since the last
        # write-back (qcow2_cache_flush), and what blkdebug's events read of them
        self.cache = Qcow2Cache()
        # while set, every write to the image file is appended (host offset, length):
        # what a dirty bitmap on the protocol node below sees (`collect_host_writes`)
        self.host_writes: list[tuple[int, int]] | None = None

    @property
    def l2_span_bytes(self) -> int:
        """Guest bytes one L2 table maps."""
        return self.per_region * self.cluster_bytes

    def copy(self) -> Qcow2Layout:
        other = Qcow2Layout.__new__(Qcow2Layout)
        other.cluster_bytes, other.per, other.per_region = (
            self.cluster_bytes, self.per, self.per_region,
        )  # fmt: skip
        other.data, other.regions, other._in = self.data, self.regions, dict(self._in)
        other.host = self.host.clone()
        other.l2_tables = set(self.l2_tables)
        other.next_host = self.next_host
        other.synced_host = self.synced_host
        other.free = list(self.free)
        other.scan = self.scan
        other.data_start = self.data_start
        other.l2_host = dict(self.l2_host)
        other.stale_l1 = dict(self.stale_l1)
        other.cache = self.cache.copy()
        other.host_writes = None
        return other

    # -- allocation -----------------------------------------------------------------------
    def allocate(
        self, first: int, end: int, stamp: int, nsectors: int, content: Content | None = None
    ) -> None:
        """Host clusters for a write of `stamp` to sectors [first, end) of a disk of
        `nsectors`: a data write allocates what has none, a zero write only L2 tables,
        a discard (stamp 0) frees the clusters it covers whole.  A zero write into part
        of a cluster holding data in `content` (the image's, before the write) writes
        it in place instead (qcow2_co_pwrite_zeroes answers -ENOTSUP, the block layer
        writes zeroes as data)."""
        if first >= end:
            return
        per = self.per
        lo, hi = first // per, (end - 1) // per + 1
        if stamp == UNALLOCATED:
            whole_lo, whole_hi = -(-first // per), end // per
            if end == nsectors:
                whole_hi = hi
            self.unmap(whole_lo, whole_hi)
            return
        data = stamp >= FIRST_DATA_STAMP
        cb = self.cluster_bytes
        cur = lo
        join = -1  # the host cluster after the previous one of this request
        for a, b, value in self.host.extents(lo, hi):
            if a > cur:
                self._place(cur, a, data, join)
            join = value - _BIAS + b
            if data:  # written in place
                start = max(first << SECTOR_SHIFT, a * cb)
                stop = min(end << SECTOR_SHIFT, b * cb)
                host = self.data_start + (value - _BIAS + a) * cb
                self._host_write(host + start - a * cb, stop - start)
            else:  # the zero flag goes into the L2 entries
                za, zb = a, b
                for c in (a, b - 1) if b - 1 > a else (a,):  # a partial cluster with data: in place
                    if content is not None and self._partial_data(content, c, first, end):
                        start = max(first << SECTOR_SHIFT, c * cb)
                        stop = min(end << SECTOR_SHIFT, (c + 1) * cb)
                        host = self.data_start + (value - _BIAS + c) * cb
                        self._host_write(host + start - c * cb, stop - start)
                        za, zb = (c + 1, zb) if c == za else (za, c)
                if za < zb:
                    self._touch_l2(za, zb)
            cur = b
        if cur < hi:
            self._place(cur, hi, data, join if cur > lo else -1)

    def unmap(self, lo: int, hi: int, passthrough: bool = True) -> None:
        """Guest clusters [lo, hi) lose their host clusters (qcow2_cluster_discard,
        zero_in_l2_slice with BDRV_REQ_MAY_UNMAP): their L2 entries change, their
        refcounts drop to 0 (free again, `give_back`) and, with `passthrough`, the freed
        host clusters are discarded in the file (update_refcount_discard, which the
        protocol node's bitmaps see as written)."""
        if lo >= hi or self.host.next_data(lo) >= hi:
            return
        cache = self.cache
        # update_refcount decreasing: the refcount cache comes to depend on the L2
        # cache (qcow2_cache_set_dependency flushes the refcount cache first when the
        # L2 cache depends on it)
        if cache.l2_depends:
            if cache.refblock_dirty:
                self.write_refblock()
            cache.l2_depends = False
        cache.refblock_depends = True
        cb = self.cluster_bytes
        for a, b, value in self.host.extents(lo, hi):
            host = value - _BIAS + a
            self.give_back(host, b - a)
            if passthrough:
                self._host_write(self.data_start + host * cb, (b - a) * cb)
        self.host.write_sectors(lo, hi, UNALLOCATED)
        self._touch_l2(lo, hi)
        self.cache.refblock_dirty = True

    def _partial_data(self, content: Content, c: int, first: int, end: int) -> bool:
        """Whether a zero write of sectors [first, end) covers guest cluster `c` only in
        part (the disk's end counts as the cluster's) and `content` holds data there."""
        lo, hi = c * self.per, min((c + 1) * self.per, content.nsectors)
        if first <= lo and hi <= end:
            return False
        return any(s >= FIRST_DATA_STAMP for _a, _b, s in content.extents(lo, hi))

    def reserve(self, lo: int, hi: int, at: int = -1) -> None:
        """Host clusters for guest clusters [lo, hi) (in a region with an L2 table),
        written whole: one qcow2_alloc_clusters, or (`at`) qcow2_alloc_clusters_at
        right after the piece's clusters (the caller asked `free_at` how many are
        free there).  Their L2 entries change when they are linked (the caller marks
        the cache)."""
        host = self._take(hi - lo) if at < 0 else self._take_at(at, hi - lo)
        self._put(lo, hi, host)

    def unreserve(self, lo: int, hi: int) -> None:
        """qcow2_alloc_cluster_abort: the host clusters `reserve` gave guest clusters
        [lo, hi) are free again (`give_back`)."""
        host = self.host_of(lo)
        self.host.write_sectors(lo, hi, UNALLOCATED)
        self.give_back(host, hi - lo)

    def _put(self, lo: int, hi: int, host: int) -> None:
        """Guest clusters [lo, hi) get host clusters from `host` on, written whole."""
        self.host.write_sectors(lo, hi, host - lo + _BIAS)
        self._host_write(
            self.data_start + host * self.cluster_bytes, (hi - lo) * self.cluster_bytes
        )

    # -- free host clusters (qcow2-refcount.c) ------------------------------------------
    def _take(self, n: int) -> int:
        """alloc_clusters_noref for `n` clusters: the first run of `n` free host
        clusters from s->free_cluster_index on (runs too short are passed, and the
        index with them); the index goes to the run's end.  Returns the run's start."""
        free = self.free
        i = max(bisect_right(free, (self.scan, self.scan)) - 1, 0)
        while i < len(free):
            a, b = free[i]
            start = max(a, self.scan)
            if start < b and (b - start >= n or b == self.next_host):
                self._cut(i, start, min(b, start + n))
                self.next_host = max(self.next_host, start + n)
                self.scan = start + n
                return start
            i += 1
        start = max(self.next_host, self.scan)
        self.next_host = self.scan = start + n
        return start

    def first_free(self) -> int:
        """The host cluster the next one-cluster allocation takes (`_take`).  Read only."""
        free = self.free
        i = max(bisect_right(free, (self.scan, self.scan)) - 1, 0)
        while i < len(free):
            a, b = free[i]
            if max(a, self.scan) < b:
                return max(a, self.scan)
            i += 1
        return max(self.next_host, self.scan)

    def stale_tables(self) -> list[tuple[int, int]]:
        """(region, other region) for each stale on-disk L1 entry (`stale_l1`) of a region
        without a table in memory that points at the host cluster another region's
        table took since: opened again, the image maps the first region with the other
        region's table."""
        by_host = {host: region for region, host in self.l2_host.items()}
        return [
            (region, by_host[host])
            for region, host in sorted(self.stale_l1.items())
            if region not in self.l2_tables and by_host.get(host, region) != region
        ]

    def free_at(self, host: int, n: int) -> int:
        """How many of the `n` host clusters from `host` on are free (counted until
        the first one in use, as qcow2_alloc_clusters_at does).  Read only."""
        if host >= self.next_host:
            return n
        free = self.free
        i = bisect_right(free, (host, self.next_host)) - 1
        if i < 0 or not free[i][0] <= host < free[i][1]:
            return 0
        return n if free[i][1] == self.next_host else min(n, free[i][1] - host)

    def _take_at(self, host: int, n: int) -> int:
        """qcow2_alloc_clusters_at: the `n` host clusters from `host` on, all free
        (`free_at`); s->free_cluster_index stays."""
        assert self.free_at(host, n) == n
        free = self.free
        i = bisect_right(free, (host, self.next_host)) - 1
        if i >= 0 and free[i][0] <= host < free[i][1]:
            self._cut(i, host, min(free[i][1], host + n))
        self.next_host = max(self.next_host, host + n)
        return host

    def _cut(self, i: int, start: int, stop: int) -> None:
        """Host clusters [start, stop) of free run `i` are in use now."""
        a, b = self.free[i]
        self.free[i : i + 1] = [r for r in ((a, start), (stop, b)) if r[0] < r[1]]

    def give_back(self, host: int, n: int) -> None:
        """update_refcount decreasing host clusters [host, host + n) to refcount 0:
        free again, and s->free_cluster_index goes back to the first of them, so the
        next allocation may take them (or a hole before them)."""
        if n <= 0:
            return
        free = self.free
        start, stop = host, host + n
        i = bisect_right(free, (start, start))
        if i > 0 and free[i - 1][1] == start:
            i -= 1
            start = free[i][0]
        j = i
        while j < len(free) and free[j][0] <= stop:
            stop = max(stop, free[j][1])
            j += 1
        free[i:j] = [(start, stop)]
        self.scan = min(self.scan, host)

    def opened(self) -> None:
        """qcow2_open: s->free_cluster_index starts at 0 (the first allocation looks
        for free clusters from the file's start)."""
        self.scan = 0

    def _place(self, lo: int, hi: int, data: bool, join: int = -1) -> None:
        """Clusters [lo, hi) have no host cluster: a data write allocates them in guest
        order, each region's L2 table first; a zero write only needs the L2 tables.
        `join`: the host cluster after the one of the cluster before `lo` in this
        request (-1: none); new clusters take it while free (qcow2_alloc_clusters_at,
        the piece goes on), the rest one run where qcow2_alloc_clusters finds it."""
        span = self.per_region  # clusters one L2 table maps
        while lo < hi:
            region = lo // span
            stop = min(hi, (region + 1) * span)
            if region not in self.l2_tables:
                # l2_allocate: the refcount block is written back, the new table
                # written whole (with every other dirty table), then its L1 entry
                self.cache.refblock_dirty = True
                self.add_table(region)
                self.cache.dirty_table(region)
                self.flush()
                self.write_l1_entry(region)
            if data:  # whole clusters (the rest of each is zeroed or copied on write)
                self._link()
                cur = lo
                joined = self.free_at(join, stop - lo) if join >= 0 else 0
                if joined:
                    self._put(lo, lo + joined, self._take_at(join, joined))
                    cur = lo + joined
                if cur < stop:
                    self._put(cur, stop, self._take(stop - cur))
                join = self.host_of(stop - 1) + 1
                self.cache.refblock_dirty = True
                self.cache.link(region, lo, stop)
            self.cache.dirty_table(region)
            lo = stop

    def _link(self) -> None:
        """qcow2_alloc_cluster_link_l2's qcow2_cache_set_dependency: the L2 cache comes
        to depend on the refcount cache; when the refcount cache depends on the L2
        cache (a free since), the L2 cache is written back first."""
        cache = self.cache
        if cache.refblock_depends:
            for region in list(cache.l2_dirty):
                self.write_table(region)
            cache.refblock_depends = False
        cache.l2_depends = True

    # -- the image file's writes ------------------------------------------------------------
    def _host_write(self, offset: int, length: int) -> None:
        if self.host_writes is not None and length > 0:
            self.host_writes.append((offset, length))

    def _touch_l2(self, lo: int, hi: int) -> None:
        """L2 entries of clusters [lo, hi) changed in the cache (written back later)."""
        span = self.per_region
        for region in range(lo // span, (hi - 1) // span + 1):
            if region in self.l2_tables:
                self.cache.dirty_table(region)

    def add_table(self, region: int) -> None:
        """l2_allocate: `region`'s L2 table gets the next host cluster."""
        self.l2_tables.add(region)
        self.l2_host[region] = self._take(1)

    def write_table(self, region: int) -> None:
        """qcow2_cache_entry_flush of `region`'s L2 table: written to its host cluster."""
        if region in self.l2_host:
            cb = self.cluster_bytes
            self._host_write(self.data_start + self.l2_host[region] * cb, cb)
        self.cache.table_written(region)

    def write_refblock(self) -> None:
        """qcow2_cache_entry_flush of the refcount block (the one qcow2_co_create wrote)."""
        cb = self.cluster_bytes
        self._host_write((QCOW2_CREATE_CLUSTERS - 1) * cb, cb)
        self.cache.refblock_dirty = False

    def write_l1_entry(self, region: int) -> None:
        """qcow2_write_l1_entry: the sector holding `region`'s L1 entry (QEMU writes the
        entry alone: the file's request alignment is 1); on disk it is the in-memory
        entry again."""
        self.stale_l1.pop(region, None)
        l1_entry = QCOW2_CREATE_CLUSTERS * self.cluster_bytes + region * L1_ENTRY_BYTES
        self._host_write(l1_entry - l1_entry % SECTOR, SECTOR)

    def flush(self) -> None:
        """qcow2_write_caches: the dirty L2 tables and refcount block are written back
        (a flush, a reopen read-only, an L2 table allocation)."""
        cache = self.cache
        if cache.l2_dirty:  # the refcount block first when they depend on it
            cache.l2_depends = False
        for region in sorted(cache.l2_dirty):
            self.write_table(region)
        if cache.refblock_dirty:
            cache.refblock_depends = False
            self.write_refblock()
        cache.written_back()

    def collect_host_writes(self, on: bool) -> list[tuple[int, int]]:
        """Start (on) or stop collecting the image file's writes; returns those collected."""
        got = self.host_writes or []
        self.host_writes = [] if on else None
        return got

    def place_log(
        self,
        firsts: np.ndarray,
        ends: np.ndarray,
        stamps: np.ndarray,
        by_first: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """`allocate` for data and zero writes of sectors [firsts[i], ends[i]), made in
        order, all at once: each (write, cluster) pair in order allocates its region's
        L2 table if it is the first to touch a region without one, then its cluster if
        it is the first data write to a cluster without a host cluster; host clusters
        are handed out in that order.  `by_first`: the writes sorted by first sector
        (as `merge_writes` takes them), when the caller has them."""
        per, span = self.per, self.per_region
        lo = firsts // per
        counts = (ends - 1) // per + 1 - lo
        total = int(counts.sum())
        data = stamps >= FIRST_DATA_STAMP
        if total == lo.size and by_first is not None:  # one cluster a write
            cluster, pair = by_first[0] // per, by_first[2]  # pairs are writes
        else:
            cluster = lo
            if total != lo.size:  # some write reaches more than one cluster
                cluster = np.repeat(lo, counts) + (
                    np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
                )
                data = np.repeat(data, counts)
            cluster, pair = stable_sort(cluster, self.host.nsectors)
        del lo, counts
        # groups of pairs on one cluster (in any order within a group)
        head = run_heads(cluster)
        group = np.flatnonzero(head)
        clusters = cluster[group]
        del cluster, head
        hs, hv = self.host.arrays()
        hosted = hv[np.searchsorted(hs, clusters, side="right") - 1] != UNALLOCATED
        first_pair = np.minimum.reduceat(pair, group)
        all_data = bool(data.all())
        if all_data:  # data writes only: a cluster's first pair is a data write's
            first_data = first_pair
        else:
            first_data = np.minimum.reduceat(np.where(data[pair], pair, total), group)
        want = ~hosted & (first_data < total)
        placed = clusters[want]
        data_at = first_data[want]  # the pair that allocates each new data cluster
        # per cluster the last pair that changes its L2 entry: the one placing it, or a
        # zero write (a data write in place leaves the entry as it is); -1: none
        changed_at = np.where(want, first_data, -1)
        if not all_data:
            np.maximum(
                changed_at,
                np.maximum.reduceat(np.where(data[pair], -1, pair), group),
                out=changed_at,
            )
        del pair, group, hosted, first_data, want, data
        region = clusters // span
        heads = np.flatnonzero(run_heads(region))
        regions = region[heads]
        known = np.fromiter(self.l2_tables, dtype=np.int64, count=len(self.l2_tables))
        new = ~np.isin(regions, known)
        table_at = np.minimum.reduceat(first_pair, heads)[new]  # first pair in a new region
        del region, heads, first_pair
        events = np.zeros(total, dtype=np.int8)  # host clusters each pair allocates
        events[data_at] = 1
        events[table_at] += 1
        upto = np.cumsum(events, dtype=np.int64)  # allocated by the pairs up to each
        hosts = upto[data_at]  # a pair's table first, then its data cluster
        hosts += self.next_host - 1
        table_hosts = upto[table_at] - events[table_at] + self.next_host  # each new table
        del events, upto
        if table_at.size:
            self.l2_tables.update(regions[new].tolist())
            for reg, at in zip(regions[new].tolist(), table_hosts.tolist(), strict=True):
                self.l2_host[reg] = int(at)
        # the caches: each new table writes every dirty table and the refcount block
        # back first (l2_allocate), so what stays dirty is what changed from the last
        # table-allocating pair on
        cache = self.cache
        since = -1
        if table_at.size:
            since = int(table_at.max())
            cache.written_back()
        dirty = clusters[changed_at >= since] if since >= 0 else clusters[changed_at >= 0]
        regs = dirty // span  # ascending, as the clusters are
        for reg in regs[run_heads(regs)].tolist():
            if reg in self.l2_tables:
                cache.dirty_table(reg)
        if data_at.size and int(data_at.max()) >= since:
            cache.refblock_dirty = True
            _link_runs(cache, placed[data_at >= since], span)
        if data_at.size:
            cache.l2_depends = True  # the links (`_link`)
        self.next_host += int(table_at.size + data_at.size)
        if placed.size:
            hosts -= placed - _BIAS
            self.host._merge_sectors(placed, placed + 1, hosts)

    # -- block status ---------------------------------------------------------------------
    def host_run(self, cluster: int) -> int:
        """An id of the host extent holding guest cluster `cluster` (equal for guest
        clusters that lie contiguously in the file); 0 when it has no host cluster."""
        return self.host.stamp_at(cluster)

    def host_of(self, cluster: int) -> int:
        """The host cluster (relative, as `next_host`) of guest cluster `cluster`; -1
        when it has none."""
        value = self.host.stamp_at(cluster)
        return -1 if value == UNALLOCATED else value - _BIAS + cluster

    def regions_without_l2(self, offset: int, length: int) -> list[int]:
        """The L2 regions a write to [offset, offset + length) touches that have no
        table yet (the write allocates them first)."""
        if length <= 0:
            return []
        span = self.l2_span_bytes
        lo, hi = offset // span, (offset + length - 1) // span + 1
        return [r for r in range(lo, hi) if r not in self.l2_tables]

    def allocates(self, offset: int, length: int, zero: bool = False) -> bool:
        """Whether a write (a zero write: `zero`) to [offset, offset + length) would
        allocate anything: an L2 table, or (a data write) a host cluster for a guest
        cluster that has none.  Read only."""
        if length <= 0:
            return False
        if self.regions_without_l2(offset, length):
            return True
        if zero:
            return False
        lo = offset // self.cluster_bytes
        hi = (offset + length - 1) // self.cluster_bytes + 1
        covered = sum(b - a for a, b, _ in self.host.extents(lo, hi))
        return covered < hi - lo


class Qcow2Content(Content):
    """The guest content of a qcow2 image, whose `layout` (a `Qcow2Layout`) follows
    every write: which guest clusters qcow2's block status reports as one extent,
    and the counts the host-file layout reads."""

    __slots__ = ("cluster_bytes",)

    def __init__(self, size_bytes: int, cluster_bytes: int) -> None:
        super().__init__(size_bytes)
        self.cluster_bytes = cluster_bytes
        self._summary = Qcow2Layout(self, cluster_bytes)

    @property
    def layout(self) -> Qcow2Layout:
        """The image's qcow2 layout, with every write so far in it."""
        if self._log is not None:
            self._settle()
        layout = self._summary
        assert isinstance(layout, Qcow2Layout)
        return layout

    @property
    def host(self) -> Content:
        """The host map: per guest cluster, its host run (`Qcow2Layout.host`)."""
        return self.layout.host

    @property
    def l2_tables(self) -> set[int]:
        return self.layout.l2_tables

    @property
    def next_host(self) -> int:
        return self.layout.next_host

    @property
    def l2_span_bytes(self) -> int:
        """Guest bytes one L2 table maps."""
        return self.cluster_bytes // L2_ENTRY_BYTES * self.cluster_bytes

    def regions_without_l2(self, offset: int, length: int) -> list[int]:
        return self.layout.regions_without_l2(offset, length)

    def needs_l2(self, offset: int, length: int) -> bool:
        """A write to [offset, offset + length) needs an L2 table allocated first."""
        return bool(self.layout.regions_without_l2(offset, length))

    def host_run(self, cluster: int) -> int:
        return self.layout.host_run(cluster)

    def collect_host_writes(self, on: bool) -> list[tuple[int, int]]:
        """Start (on) or stop collecting the image file's writes of the writes made at
        once in between (`Qcow2Layout.collect_host_writes`)."""
        return self.layout.collect_host_writes(on)

    # -- writes ---------------------------------------------------------------------------
    def write(self, offset: int, length: int, stamp: int) -> None:
        if UNALLOCATED < stamp < FIRST_DATA_STAMP and (offset | length) % self.cluster_bytes:
            # a zero write not aligned to clusters is decided cluster by cluster against
            # the content (`Qcow2Layout.allocate`): made at once, never logged
            if self._log is not None:
                self._settle()
            self._write_now(
                offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT, stamp
            )
            return
        super().write(offset, length, stamp)

    def _write_now(self, first: int, end: int, stamp: int) -> None:
        layout = self._summary
        assert isinstance(layout, Qcow2Layout)
        layout.allocate(first, end, stamp, self.nsectors, self)
        super()._write_now(first, end, stamp)

    def write_sectors(self, first: int, end: int, stamp: int) -> None:
        if self._log is not None:
            self._settle()
        layout = self._summary
        assert isinstance(layout, Qcow2Layout)
        layout.allocate(first, min(end, self.nsectors), stamp, self.nsectors, self)
        super().write_sectors(first, end, stamp)

    def _merge_log(self, log: WriteLog) -> None:
        layout = self._summary
        assert isinstance(layout, Qcow2Layout)
        if layout.free or layout.cache.refblock_depends:
            # freed host clusters to reuse (and the caches' order after a free): write
            # by write (`allocate`)
            for offset, length, stamp in log.writes():
                self._write_now(
                    offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT, stamp
                )
            return
        firsts, ends, stamps = log.sectors()
        by_first, order = stable_sort(firsts, self.nsectors)
        sorted_writes = (by_first, ends[order], order)
        layout.place_log(firsts, ends, stamps, sorted_writes)
        self._merge_sectors(firsts, ends, stamps, sorted_writes)

    def discard(self, offset: int, length: int, passthrough: bool = True) -> None:
        """qcow2_co_pdiscard of [offset, offset + length) after its zeroes were
        written (or a zero write that may unmap): the whole clusters it covers (and a
        last partial one at the disk's end) give their host clusters back
        (`Qcow2Layout.unmap`; their discard reaches the file with `passthrough`); the
        block layer leaves the partial clusters at either end to qcow2, which ignores
        them."""
        cb = self.cluster_bytes
        end = offset + length
        lo = -(-offset // cb)
        hi = -(-end // cb) if end >= self.size_bytes else end // cb
        if lo < hi:
            self.layout.unmap(lo, hi, passthrough)

    def cow_clusters(self, offset: int, length: int) -> list[int]:
        """The clusters a data write of [offset, offset + length) allocates and covers
        only in part: its first and its last (the disk's end ends a cluster) when
        this image holds nothing of its own there yet (unallocated: no host cluster,
        or one the write's own allocation just took; a zero cluster reads as zeroes
        and copies nothing).  QEMU copies the rest of them into the new clusters
        from the backing file (perform_cow).  Read only: ask before the write."""
        cb = self.cluster_bytes
        end = offset + length
        first, last = offset // cb, (end - 1) // cb
        partial = []
        if offset % cb:
            partial.append(first)
        if end < min((last + 1) * cb, self.size_bytes) and last not in partial:
            partial.append(last)
        if not partial:
            return partial
        per = cb >> SECTOR_SHIFT
        # the run list and the write log asked apart: the log is not spliced in
        log = self._log
        logged = log.clusters(cb) if log is not None else ()
        holds = self._run_list_holds
        return [c for c in partial if c not in logged and not holds(c * per, (c + 1) * per)]

    def copy_on_write(
        self, clusters: list[int], below: list[Content], offsets: list[int], length: int
    ) -> None:
        """perform_cow, after the writes of `length` bytes at `offsets` that
        `cow_clusters` was asked for: what the backing chain `below` (top first) holds
        as data in those clusters, where the writes did not go, becomes this image's
        (read from the backing file and written into the new clusters), run by run.
        Where the backing reads as zeroes the new cluster holds zeroes of its own (the
        cluster is allocated whole: a later change of the backing file does not show
        through it).  The clusters held nothing of this image's before the writes, so
        what it holds there now is what the writes stamped; the chain is read once a
        cluster."""
        cb = self.cluster_bytes
        per = cb >> SECTOR_SHIFT
        wanted = sorted(set(clusters))
        if len(offsets) == 1:  # one write: one sector run in each cluster
            run = (offsets[0] >> SECTOR_SHIFT, (offsets[0] + length + SECTOR - 1) >> SECTOR_SHIFT)
            written = {c: [run] for c in wanted}
        else:  # the sector runs the writes stamp, by cluster
            written = {c: [] for c in wanted}
            for offset in offsets:
                run = (offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT)
                for c in range(offset // cb, (offset + length - 1) // cb + 1):
                    runs = written.get(c)
                    if runs is not None:
                        runs.append(run)
        copies: list[tuple[int, int, int]] = []  # (offset, length, stamp), in order
        for c in wanted:
            lo, hi = c * per, min((c + 1) * per, self.nsectors)
            holes: list[tuple[int, int]] = []
            cur = lo
            for a, b in sorted(written[c]):
                if a > cur:
                    holes.append((cur, a))
                cur = max(cur, b)
            if cur < hi:
                holes.append((cur, hi))
            if not holes:
                continue
            chain = chain_extents(below, holes[0][0], holes[-1][1])
            for hlo, hhi in holes:
                cur = hlo
                for a, b, stamp in chain:
                    if stamp >= FIRST_DATA_STAMP and a < hhi and b > hlo:
                        a, b = max(a, hlo), min(b, hhi)
                        if a > cur:
                            copies.append(
                                (cur << SECTOR_SHIFT, (a - cur) << SECTOR_SHIFT, ZERO_STAMP)
                            )
                        copies.append((a << SECTOR_SHIFT, (b - a) << SECTOR_SHIFT, stamp))
                        cur = b
                if cur < hhi:
                    copies.append((cur << SECTOR_SHIFT, (hhi - cur) << SECTOR_SHIFT, ZERO_STAMP))
        self.write_runs(copies)

    def share_table(self, region: int, other: int) -> None:
        """Region `region`'s L1 entry on disk points at region `other`'s L2 table
        (`Qcow2Layout.stale_tables`): opened again, the image reads in `region` what
        `other` maps, from the same host clusters (counted once by the refcounts: a
        corrupt image; later writes to one region are not seen in the other here)."""
        layout = self.layout
        span = layout.per_region
        per = self.cluster_bytes >> SECTOR_SHIFT
        shift = (region - other) * span  # in clusters
        lo, hi = other * span * per, min((other + 1) * span * per, self.nsectors)
        mapped = self.extents(lo, hi)
        Content.write_sectors(self, region * span * per, (region + 1) * span * per, UNALLOCATED)
        for a, b, stamp in mapped:
            Content.write_sectors(self, a + shift * per, b + shift * per, stamp)
        host = layout.host
        hosts = host.extents(other * span, (other + 1) * span)
        host.write_sectors(region * span, (region + 1) * span, UNALLOCATED)
        for a, b, value in hosts:
            host.write_sectors(a + shift, b + shift, value - shift)
        layout.l2_tables.add(region)
        layout.l2_host[region] = layout.l2_host[other]
        del layout.stale_l1[region]

    # -- the rest of Content --------------------------------------------------------------
    def cluster_summary(self, cluster_bytes: int) -> ClusterSummary:
        if cluster_bytes == self.cluster_bytes:
            return self.layout
        return ClusterSummary(self, cluster_bytes)  # another size: counted, not kept

    def resize(self, size_bytes: int) -> None:
        super().resize(size_bytes)  # a shrink frees, through write_sectors
        self.layout.host.resize(-(-size_bytes // self.cluster_bytes) << SECTOR_SHIFT)

    def clone(self) -> Content:
        other = super().clone()
        assert isinstance(other, Qcow2Content)
        other.cluster_bytes = self.cluster_bytes
        other._summary = self.layout.copy()
        return other


def _link_runs(cache: Qcow2Cache, clusters: np.ndarray, span: int) -> None:
    """`Qcow2Cache.link` for each run of consecutive clusters (ascending) in one region."""
    if cache.linked is None or not clusters.size:
        return
    if cache.linked_runs + clusters.size > LINKED_RUNS:
        cache.linked = None
        return
    regions = clusters // span
    breaks = np.flatnonzero((np.diff(clusters) != 1) | (np.diff(regions) != 0)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [clusters.size]))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        cache.link(int(regions[a]), int(clusters[a]), int(clusters[b - 1]) + 1)


def new_qcow2_content(size_bytes: int, cluster_bytes: int) -> Qcow2Content:
    """An empty qcow2 image's content."""
    return Qcow2Content(size_bytes, cluster_bytes)


def flush_metadata(node: BlockNode) -> None:
    """bdrv_flush of a qcow2 node (a flush, a reopen read-only): its dirty metadata is
    written back, and the dirty bitmaps of its file child see those writes."""
    content = node.content
    if node.driver != "qcow2" or not isinstance(content, Qcow2Content):
        return
    layout = content.layout
    bitmaps = node.file.bitmaps if node.file is not None else []
    if not bitmaps:
        layout.flush()
    else:
        layout.collect_host_writes(True)
        layout.flush()
        for offset, length in layout.collect_host_writes(False):
            for bm in bitmaps:
                bm.record_write(offset, length)
    layout.synced_host = layout.next_host  # the file is flushed too
