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

Theory of operation.  `Qcow2Content` is the content of a qcow2 image plus a
map of its clusters, itself a `Content` indexed by cluster instead of
sector: each allocated cluster carries `host - guest + _BIAS`, so clusters
that are contiguous in the file carry equal values and form one extent of
the map.  Cost grows with the map's extents, never with the image size.
Not modelled: freed host clusters being reused (allocation always goes to
the end), refcount blocks allocated as the file grows, metadata of
internal snapshots and bitmaps.
"""

from __future__ import annotations

from sim.model.content import (
    FIRST_DATA_STAMP,
    SECTOR_SHIFT,
    UNALLOCATED,
    Content,
)

L2_ENTRY_BYTES = 8  # a qcow2 L2 entry without subclusters
_BIAS = 1 << 40  # keeps a map value above the content's special stamps


class Qcow2Content(Content):
    """The guest content of a qcow2 image and the host cluster of each guest cluster
    (which guest clusters qcow2's block status reports as one extent)."""

    __slots__ = ("cluster_bytes", "host", "l2_tables", "next_host")

    def __init__(self, size_bytes: int, cluster_bytes: int) -> None:
        super().__init__(size_bytes)
        self.cluster_bytes = cluster_bytes
        self.host = Content(self._clusters(size_bytes) << SECTOR_SHIFT)
        self.l2_tables: set[int] = set()  # guest regions whose L2 table exists
        self.next_host = 0  # the next free host cluster (relative)

    def _clusters(self, size_bytes: int) -> int:
        return -(-size_bytes // self.cluster_bytes)

    # -- writes ---------------------------------------------------------------------------
    def write(self, offset: int, length: int, stamp: int) -> None:
        first = offset >> SECTOR_SHIFT
        self._allocate(first, (offset + length + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT, stamp)
        super().write(offset, length, stamp)

    def write_sectors(self, first: int, end: int, stamp: int) -> None:
        self._allocate(first, min(end, self.nsectors), stamp)
        super().write_sectors(first, end, stamp)

    def _allocate(self, first: int, end: int, stamp: int) -> None:
        """Host clusters for a write of `stamp` to sectors [first, end)."""
        if first >= end:
            return
        per = self.cluster_bytes >> SECTOR_SHIFT
        lo, hi = first // per, (end - 1) // per + 1
        if stamp == UNALLOCATED:  # a discard frees the clusters it covers whole
            whole_lo, whole_hi = -(-first // per), end // per
            if end == self.nsectors:
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
        span = self.cluster_bytes // L2_ENTRY_BYTES  # clusters one L2 table maps
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

    @property
    def l2_span_bytes(self) -> int:
        """Guest bytes one L2 table maps."""
        return self.cluster_bytes // L2_ENTRY_BYTES * self.cluster_bytes

    def regions_without_l2(self, offset: int, length: int) -> list[int]:
        """The L2 regions a write to [offset, offset + length) touches that have no
        table yet (the write allocates them first)."""
        if length <= 0:
            return []
        span = self.l2_span_bytes
        lo, hi = offset // span, (offset + length - 1) // span + 1
        return [r for r in range(lo, hi) if r not in self.l2_tables]

    def needs_l2(self, offset: int, length: int) -> bool:
        """A write to [offset, offset + length) needs an L2 table allocated first."""
        return bool(self.regions_without_l2(offset, length))

    # -- block status ---------------------------------------------------------------------
    def host_run(self, cluster: int) -> int:
        """An id of the host extent holding guest cluster `cluster` (equal for guest
        clusters that lie contiguously in the file); 0 when it has no host cluster."""
        return self.host.stamp_at(cluster)

    # -- the rest of Content --------------------------------------------------------------
    def resize(self, size_bytes: int) -> None:
        super().resize(size_bytes)  # a shrink frees, through write_sectors
        self.host.resize(self._clusters(size_bytes) << SECTOR_SHIFT)

    def clone(self) -> Content:
        other = super().clone()
        assert isinstance(other, Qcow2Content)
        other.cluster_bytes = self.cluster_bytes
        other.host = self.host.clone()
        other.l2_tables = set(self.l2_tables)
        other.next_host = self.next_host
        return other


def new_qcow2_content(size_bytes: int, cluster_bytes: int) -> Qcow2Content:
    """An empty qcow2 image's content."""
    return Qcow2Content(size_bytes, cluster_bytes)
