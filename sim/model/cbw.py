"""The copy-before-write filter's state (block/copy-before-write.c, QEMU 7.2).

A copy-before-write node sits above its `file` (the source) and holds a
`target` child.  Before a write through it touches a cluster that the
block-copy state still marks as to be copied, the old data of that cluster
is copied to the target (cbw_do_copy_before_write): the target then keeps
the source as it was when the filter was opened.  Three anonymous,
disabled bitmaps carry the state, as in QEMU:

- the block-copy bitmap (`copy_map`), on the source: clusters not yet
  copied (all of them, or the dirty clusters of the `bitmap` option);
- `done_map`, on the filter: clusters a copy-before-write copied;
- `access_map`, on the filter: clusters a snapshot reader may read
  (equal to the block-copy bitmap at open; a snapshot discard clears it).

The snapshot API (what a `snapshot-access` node above the filter reads
through) serves a done cluster from the target and any other accessible
cluster from the source; an inaccessible cluster is EACCES.  The same
state serves a backup job's filter (sim/model/job_backup.py), whose job
also copies in the background and counts its progress through `on_copy`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sim.model.bitmap import DirtyBitmap, bits_at_granularity
from sim.model.content import SECTOR_SHIFT, read_through, sector_span
from sim.model.graph import BlockGraph, BlockNode
from sim.model.job_graph import chain_contents, copy_range

if TYPE_CHECKING:
    import numpy as np
else:
    from sim.lazy import numpy as np

CBW_CLUSTER = 65536  # BLOCK_COPY_CLUSTER_SIZE_DEFAULT


def copy_cluster_size(graph: BlockGraph, target: BlockNode) -> int:
    """block_copy_calculate_cluster_size: the target format's cluster size (bdrv_get_info),
    at least 64 KiB; 64 KiB when the target has none (raw, file; recorded on QEMU 7.2:
    an incremental backup into a 128 KiB-cluster qcow2 copies 128 KiB clusters)."""
    data = graph.data_node(target)
    if data.driver == "qcow2":
        return max(CBW_CLUSTER, data.cluster_size)
    return CBW_CLUSTER


ON_CBW_ERRORS = ("break-guest-write", "break-snapshot")
ETIMEDOUT = 110  # what a copy that outlived cbw-timeout fails with


class CopyBeforeWrite:
    """BDRVCopyBeforeWriteState with its BlockCopyState: the bitmaps above, the
    error policy (`on-cbw-error`) and the timeout (`cbw-timeout`, seconds)."""

    def __init__(
        self,
        graph: BlockGraph,
        flt: BlockNode,
        source: BlockNode,
        target: BlockNode,
        bitmap: DirtyBitmap | None = None,
        on_cbw_error: str = "break-guest-write",
        cbw_timeout: int = 0,
    ) -> None:
        self.graph, self.filter = graph, flt
        self.source, self.target = source, target
        self.on_cbw_error, self.cbw_timeout = on_cbw_error, cbw_timeout
        self.cluster = copy_cluster_size(graph, target)
        self.snapshot_error = 0  # errno of the first failed copy under break-snapshot
        self.on_copy: Callable[[int], None] | None = None  # a backup job's progress
        size = source.size_bytes
        # block_copy_state_new: the copy bitmap on the source, all dirty or the bitmap's
        self.copy_map = DirtyBitmap(None, self.cluster, size, enabled=False)
        if bitmap is None:
            self.copy_map.bits.setall(1)
        else:
            src = bits_at_granularity(bitmap, self.cluster)
            n = min(len(src), len(self.copy_map.bits))
            self.copy_map.bits[:n] |= src[:n]
        self.done_map = DirtyBitmap(None, self.cluster, size, enabled=False)
        self.access_map = DirtyBitmap(None, self.cluster, size, enabled=False)
        self.access_map.bits |= self.copy_map.bits
        # bdrv_create_dirty_bitmap puts each new bitmap at the head of its node's list
        source.bitmaps.insert(0, self.copy_map)
        flt.bitmaps[:0] = [self.access_map, self.done_map]
        flt.write_hook = self.before_write
        flt.cbw = self

    # -- copying ---------------------------------------------------------------------------
    def copy_span(self, first: int, count: int, offset: int, length: int) -> None:
        """Copy `length` bytes at `offset` (clusters `first` .. `first + count` of the
        block-copy bitmap, which are cleared) from the source's chain to the target,
        zeroes written as zeroes (block_copy_do_copy)."""
        self.copy_map.bits[first : first + count] = 0
        copy_range(
            self.graph,
            chain_contents(self.graph, self.source),
            self.target,
            offset,
            length,
            write_zeroes=True,
        )

    def copy_cluster(self, index: int) -> int:
        """Copy one cluster the block-copy bitmap still marks; its length, 0 when there
        was nothing to copy, -1 when the copy failed (the cluster ends past the target:
        the write to it is refused, and the cluster stays to be copied)."""
        bits = self.copy_map.bits
        if index >= len(bits) or not bits[index]:
            return 0
        off = index * self.cluster
        length = min(self.cluster, self.source.size_bytes - off)
        if off + length > self.target.size_bytes:
            return -1
        self.copy_span(index, 1, off, length)
        if self.on_copy is not None:
            self.on_copy(index)
        return length

    def before_write(self, node: BlockNode, offset: int, length: int) -> bool:
        """cbw_do_copy_before_write: copy the old data of every touched cluster and mark
        them done.  A failed copy fails the guest write (False) under
        `break-guest-write`; under `break-snapshot` it breaks the snapshot (every
        snapshot read is then EACCES) and the write goes on."""
        if self.snapshot_error:
            return True
        first = offset // self.cluster
        last = (offset + length - 1) // self.cluster
        failed = any(self.copy_cluster(i) < 0 for i in range(first, last + 1))
        if failed:
            if self.on_cbw_error == "break-guest-write":
                return False
            self.snapshot_error = 5  # EIO
            return True
        self.done_map.bits[first : last + 1] = 1
        return True

    def copy_timed_out(self, offset: int, length: int) -> bool:
        """cbw_do_copy_before_write when its block-copy call outlived `cbw-timeout`: the
        copy goes on in the background (its clusters are copied, here at once, and are
        not copied again) but is not marked done; the guest write then fails (False)
        under `break-guest-write`, the snapshot breaks under `break-snapshot`."""
        first = offset // self.cluster
        last = (offset + length - 1) // self.cluster
        for i in range(first, last + 1):
            self.copy_cluster(i)
        if self.on_cbw_error == "break-guest-write":
            return False
        if not self.snapshot_error:
            self.snapshot_error = ETIMEDOUT
        return True

    # -- the snapshot API (snapshot-access reads through it) ---------------------------------
    def accessible(self, offset: int, length: int) -> bool:
        """cbw_snapshot_read_lock: no snapshot error and every touched cluster readable."""
        if self.snapshot_error:
            return False
        if length <= 0:
            return True
        first = offset // self.cluster
        last = (offset + length - 1) // self.cluster
        return bool(self.access_map.bits[first : last + 1].all())

    def snapshot_stamps(self, offset: int, length: int) -> np.ndarray:
        """Per-sector stamps of the point-in-time view: a done cluster from the target,
        any other from the source (cbw_co_preadv_snapshot)."""
        first, end = sector_span(offset, length)
        from_source = read_through(chain_contents(self.graph, self.source), first, end)
        done = self.done_map.bits
        if not done.any():
            return from_source
        from_target = read_through(chain_contents(self.graph, self.target), first, end)
        per = self.cluster >> SECTOR_SHIFT
        sectors = np.arange(first, end, dtype=np.int64)
        clusters = sectors // per
        done_arr = np.unpackbits(np.frombuffer(done.tobytes(), dtype=np.uint8), bitorder="little")[
            : len(done)
        ].astype(bool)
        mask = done_arr[np.minimum(clusters, len(done) - 1)]
        return np.where(mask, from_target, from_source)

    def discard_aborts(self, offset: int, length: int) -> bool:
        """QEMU 7.2's cbw_co_pdiscard_snapshot resets the access and copy bitmaps over
        the range as given: a range not aligned to the cluster size (unless it ends at
        the end of the disk) fails hbitmap_reset's alignment assertion (recorded)."""
        end = offset + length
        return length > 0 and (
            offset % self.cluster != 0
            or (end % self.cluster != 0 and end != self.source.size_bytes)
        )

    def discard_snapshot(self, offset: int, length: int) -> None:
        """cbw_co_pdiscard_snapshot: the clusters leave the snapshot (not readable,
        never copied again); the target's copy is discarded (nobody can read it)."""
        lo = offset // self.cluster
        hi = -(-(offset + length) // self.cluster)
        if hi <= lo:
            return
        self.access_map.bits[lo:hi] = 0
        self.copy_map.bits[lo:hi] = 0

    def close(self) -> None:
        """cbw_close and block_copy_state_free: the three bitmaps go."""
        for owner, bm in (
            (self.source, self.copy_map),
            (self.filter, self.access_map),
            (self.filter, self.done_map),
        ):
            if any(b is bm for b in owner.bitmaps):
                owner.bitmaps.remove(bm)
        self.filter.write_hook = None
        self.filter.cbw = None
