"""Where a qcow2 image's clusters lie in its file: the host cluster allocation of
block/qcow2-cluster.c (QEMU 7.2), as far as block status shows it.

qcow2's block status (qcow2_co_block_status, qcow2_get_host_offset) reports
one extent for guest clusters whose host clusters follow each other in the
file; block-copy cuts its tasks there (block_copy_block_status), so which
clusters are contiguous decides how a backup splits its work.  A write that
reaches clusters with no host cluster allocates new ones at the end of what
is in use, one run after the other in guest order (qcow2_alloc_host_offset,
handle_alloc); the first write or zero write into a guest region that one
L2 table maps allocates that table first (l2_allocate), so it sits between
data clusters.  A discard that unmaps (stamp 0) frees the whole clusters it
covers; zero writes keep the host cluster of an allocated cluster and give
none to an unallocated one (zero flag in the L2 entry).

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
(`Qcow2Layout.place_log`) and counts again from the new run list.  Cost
grows with the writes and the map's extents, never with the image size.
Not modelled: freed host clusters being reused (allocation always goes to
the end), refcount blocks allocated as the file grows, metadata of
internal snapshots and bitmaps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.model.content import (
    FIRST_DATA_STAMP,
    SECTOR,
    SECTOR_SHIFT,
    UNALLOCATED,
    ClusterSummary,
    Content,
    WriteLog,
    stable_sort,
)

if TYPE_CHECKING:
    import numpy as np
else:
    from sim.lazy import numpy as np

L2_ENTRY_BYTES = 8  # a qcow2 L2 entry without subclusters
_BIAS = 1 << 40  # keeps a map value above the content's special stamps


class Qcow2Layout(ClusterSummary):
    """What a qcow2 image's L2 tables say (block/qcow2-cluster.c): which host cluster
    each guest cluster has, which L2 tables exist, where the next host cluster goes,
    and the counts of `ClusterSummary`.  Block-copy asks it which guest clusters lie
    contiguously in the file (`host_run`); the host-file layout behind
    query-named-block-nodes reads its counts."""

    __slots__ = ("host", "l2_tables", "next_host")

    def __init__(self, content: Content, cluster_bytes: int) -> None:
        super().__init__(content, cluster_bytes)
        self.host = Content(-(-content.size_bytes // cluster_bytes) << SECTOR_SHIFT)
        self.l2_tables: set[int] = set()  # guest regions whose L2 table exists
        self.next_host = 0  # the next free host cluster (relative)

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
        return other

    # -- allocation -----------------------------------------------------------------------
    def allocate(self, first: int, end: int, stamp: int, nsectors: int) -> None:
        """Host clusters for a write of `stamp` to sectors [first, end) of a disk of
        `nsectors`: a data write allocates what has none, a zero write only L2 tables,
        a discard (stamp 0) frees the clusters it covers whole."""
        if first >= end:
            return
        per = self.per
        lo, hi = first // per, (end - 1) // per + 1
        if stamp == UNALLOCATED:
            whole_lo, whole_hi = -(-first // per), end // per
            if end == nsectors:
                whole_hi = hi
            if whole_lo < whole_hi and self.host.next_data(whole_lo) < whole_hi:
                self.host.write_sectors(whole_lo, whole_hi, UNALLOCATED)
            return
        cur = lo
        for a, b, _ in self.host.extents(lo, hi):
            if a > cur:
                self._place(cur, a, stamp >= FIRST_DATA_STAMP)
            cur = b
        if cur < hi:
            self._place(cur, hi, stamp >= FIRST_DATA_STAMP)

    def _place(self, lo: int, hi: int, data: bool) -> None:
        """Clusters [lo, hi) have no host cluster: a data write allocates them in guest
        order, each region's L2 table first; a zero write only needs the L2 tables."""
        span = self.per_region  # clusters one L2 table maps
        while lo < hi:
            region = lo // span
            stop = min(hi, (region + 1) * span)
            if region not in self.l2_tables:
                self.l2_tables.add(region)
                self.next_host += 1
            if data:
                self.host.write_sectors(lo, stop, self.next_host - lo + _BIAS)
                self.next_host += stop - lo
            lo = stop

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
        head = np.empty(total, dtype=bool)
        head[:1] = True
        np.not_equal(cluster[1:], cluster[:-1], out=head[1:])
        group = np.flatnonzero(head)
        clusters = cluster[group]
        del cluster, head
        hs, hv = self.host.arrays()
        hosted = hv[np.searchsorted(hs, clusters, side="right") - 1] != UNALLOCATED
        first_data = np.minimum.reduceat(np.where(data[pair], pair, total), group)
        want = ~hosted & (first_data < total)
        placed = clusters[want]
        data_at = first_data[want]  # the pair that allocates each new data cluster
        first_pair = np.minimum.reduceat(pair, group)
        del pair, group, hosted, first_data, want
        region = clusters // span
        heads = np.flatnonzero(np.concatenate(([True], region[1:] != region[:-1])))
        regions = region[heads]
        known = np.fromiter(self.l2_tables, dtype=np.int64, count=len(self.l2_tables))
        new = ~np.isin(regions, known)
        table_at = np.minimum.reduceat(first_pair, heads)[new]  # first pair in a new region
        del region, heads, first_pair, clusters
        table = np.zeros(total, dtype=np.int64)  # host clusters each pair allocates
        table[table_at] = 1
        events = table.copy()
        events[data_at] += 1
        before = np.cumsum(events) - events  # allocated by the pairs before
        hosts = self.next_host + before[data_at] + table[data_at]  # a pair's table first
        del table, events, before
        if table_at.size:
            self.l2_tables.update(regions[new].tolist())
        self.next_host += int(table_at.size + data_at.size)
        if placed.size:
            hosts -= placed - _BIAS
            self.host._merge_sectors(placed, placed + 1, hosts)

    # -- block status ---------------------------------------------------------------------
    def host_run(self, cluster: int) -> int:
        """An id of the host extent holding guest cluster `cluster` (equal for guest
        clusters that lie contiguously in the file); 0 when it has no host cluster."""
        return self.host.stamp_at(cluster)

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

    # -- writes ---------------------------------------------------------------------------
    def _write_now(self, first: int, end: int, stamp: int) -> None:
        layout = self._summary
        assert isinstance(layout, Qcow2Layout)
        layout.allocate(first, end, stamp, self.nsectors)
        super()._write_now(first, end, stamp)

    def write_sectors(self, first: int, end: int, stamp: int) -> None:
        if self._log is not None:
            self._settle()
        layout = self._summary
        assert isinstance(layout, Qcow2Layout)
        layout.allocate(first, min(end, self.nsectors), stamp, self.nsectors)
        super().write_sectors(first, end, stamp)

    def _merge_log(self, log: WriteLog) -> None:
        layout = self._summary
        assert isinstance(layout, Qcow2Layout)
        offsets = np.frombuffer(log.offsets, dtype=np.int64)
        lengths = np.frombuffer(log.lengths, dtype=np.int64)
        firsts = offsets >> SECTOR_SHIFT
        ends = (offsets + lengths + (SECTOR - 1)) >> SECTOR_SHIFT
        stamps = np.frombuffer(log.stamps, dtype=np.int64)
        by_first, order = stable_sort(firsts, self.nsectors)
        sorted_writes = (by_first, ends[order], order)
        layout.place_log(firsts, ends, stamps, sorted_writes)
        self._merge_sectors(firsts, ends, stamps, sorted_writes)

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


def new_qcow2_content(size_bytes: int, cluster_bytes: int) -> Qcow2Content:
    """An empty qcow2 image's content."""
    return Qcow2Content(size_bytes, cluster_bytes)
