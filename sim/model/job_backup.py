"""Backup jobs (drive-backup, blockdev-backup): block/backup.c and
block/copy-before-write.c of QEMU 7.2.

A copy-before-write filter goes above the source; a guest write through it
first copies every not-yet-copied cluster it touches to the target, so the
target ends up with the source as it was when the job started.  The job's
copy bitmap (anonymous, on the source, one bit per job cluster) says what is
left; `len` is its count at the start.  With a sync bitmap, the bitmap is
frozen with a successor for the job's lifetime and its fate at the end
depends on bitmap-mode (backup_cleanup_sync_bitmap).
"""

from __future__ import annotations

from sim.model.bitmap import DirtyBitmap, bits_at_granularity
from sim.model.cbw import CBW_CLUSTER, CopyBeforeWrite, copy_cluster_size
from sim.model.content import (
    FIRST_DATA_STAMP,
    SECTOR,
    SECTOR_SHIFT,
    Content,
    chain_extents,
    chain_next_data,
)
from sim.model.graph import BlockGraph, BlockNode
from sim.model.job_driver import DrainedSection, JobDriver
from sim.model.job_graph import (
    allocation_mask,
    chain_contents,
    drop_filter,
    insert_filter,
    set_bits_from_mask,
)
from sim.model.jobs import Job
from sim.model.qcow2_host import Qcow2Content

JOB_CLUSTER = CBW_CLUSTER
CHUNK_CLUSTERS = 16  # block-copy copies up to 1 MiB per task (progress moves in 1 MiB steps)
POOL_TASKS = 64  # block-copy's task pool (backup's max-workers default)


class BackupKind(JobDriver):
    """State of one backup job: source, target, filter, copy bitmap, sync bitmap."""

    # backup_clean lets go of the job nodes (block_job_remove_all_bdrv)
    releases_on_success = True
    releases_on_abort = True

    filter: BlockNode  # inserted when the job is created

    def __init__(
        self,
        graph: BlockGraph,
        job: Job,
        source: BlockNode,
        target: BlockNode,
        sync: str,
        bitmap: DirtyBitmap | None,
        bitmap_mode: str | None,
        filter_name: str | None,
        close_target: bool,
    ) -> None:
        self.graph, self.job = graph, job
        self.source, self.target = source, target
        self.sync, self.bitmap, self.bitmap_mode = sync, bitmap, bitmap_mode
        self.close_target = close_target
        super().__init__()
        self.cluster = copy_cluster_size(graph, target)
        if bitmap is not None:
            succ = DirtyBitmap(None, bitmap.granularity, bitmap.size_bytes, enabled=bitmap.enabled)
            bitmap.successor = succ
            self._owner_list_of(bitmap, source).insert(0, succ)
            self.successor: DirtyBitmap | None = succ
        else:
            self.successor = None
        self.filter = insert_filter(graph, source, "copy-before-write", filter_name, target)
        self.cbw = CopyBeforeWrite(graph, self.filter, source, target)
        self.cbw.on_copy = self._count_copy
        self.filter.write_hook = self.before_write
        self.cursor = 0
        # block_copy_chunk_size: compressed writes go one cluster per task
        # (COPY_READ_WRITE_CLUSTER), others up to 1 MiB
        self.chunk_clusters = CHUNK_CLUSTERS
        # tasks of the job's block-copy call that took a pool slot so far
        # (block_copy_dirty_clusters creates tasks in offset order and keeps up to 64
        # busy); see `task_yields`
        self.tasks_issued = 0
        self.target_locked = False  # a zero task of the call waits on an L2 allocation
        self.l2_at_call: set[int] = set()  # the target's L2 tables when the call began

    @property
    def copy_map(self) -> DirtyBitmap:
        """The block-copy bitmap: clusters left to copy (on the source)."""
        return self.cbw.copy_map

    def _count_copy(self, index: int) -> None:
        self.job.offset += self.cluster  # progress counts whole clusters, like len

    # -- the driver contract ---------------------------------------------------------------
    def reads_from(self) -> BlockNode:
        return self.source

    def writes_to(self) -> BlockNode:
        return self.target

    def ends_by_itself(self) -> bool:
        return self.sync != "none"  # sync=none only copies before writes; ends by cancel

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """backup_init_bcs_bitmap (+ the unallocated skip of sync=top), at job start."""
        bits = self.copy_map.bits
        if self.sync == "bitmap" and self.bitmap is not None:
            bits.setall(0)
            src = bits_at_granularity(self.bitmap, self.cluster)
            n = min(len(src), len(bits))  # a protocol node's bitmap covers its host file
            bits[:n] |= src[:n]
        elif self.sync == "top":
            bits.setall(0)
            mask = allocation_mask([self.source], self.source.size_bytes, self.cluster)
            set_bits_from_mask(bits, mask)
        else:
            bits.setall(1)
        self.job.len = self._clipped_count()
        self.job.offset = 0
        self.new_call()

    def _count_zero_tasks(self, offset: int, length: int, count: int) -> None:
        """`task_yields` for `count` zero tasks of `length` bytes from `offset` at once:
        the ones from the first that needs a new L2 table on (while the pool first
        fills), else one per missing table; cost grows with the L2 regions crossed."""
        data = self.graph.data_node(self.target)
        content = data.content
        if not isinstance(content, Qcow2Content):
            self.tasks_issued += count if data.driver != "null-co" else 0
            return
        filling = self.tasks_issued < POOL_TASKS
        if self.target_locked and filling:
            self.tasks_issued += count
            return
        missing = self._missing_l2(content, offset, count * length)
        if not missing:
            return
        self.target_locked = True
        if filling:
            start = max(0, missing[0] * content.l2_span_bytes - offset) // length
            self.tasks_issued += count - start
        else:
            self.tasks_issued += len(missing)

    def new_call(self) -> None:
        """backup_loop's block_copy_async (at start, and again after a pause or an error
        the job goes on after): a fresh task pool."""
        self.tasks_issued = 0
        self.target_locked = False
        content = self.graph.data_node(self.target).content
        self.l2_at_call = set(content.l2_tables) if isinstance(content, Qcow2Content) else set()

    def _missing_l2(self, content: Qcow2Content, offset: int, length: int) -> list[int]:
        """L2 regions a zero write to the target would allocate: while the pool first
        fills no task has written the target yet (the model copies a task when it
        starts, QEMU when its read is done), so against the tables the call began with."""
        missing = content.regions_without_l2(offset, length)
        if self.tasks_issued < POOL_TASKS:
            span = content.l2_span_bytes
            lo, hi = offset // span, (offset + length - 1) // span + 1
            missing = [r for r in range(lo, hi) if r not in self.l2_at_call]
        return missing

    def task_yields(self, offset: int, length: int, hole: bool, filling: bool = False) -> bool:
        """Whether a task keeps its pool slot after its creation (its first request
        yields): a data task reads the source; a zero task writes zeroes to the target,
        which a qcow2 target does at once in its metadata cache unless the region needs
        a new L2 table (l2_allocate writes under the image's lock) or, while the pool
        first fills (or `filling`: the rest of a burst that began in it), another zero
        task holds that lock; a file target does I/O, null-co none."""
        if not hole:
            return True
        data = self.graph.data_node(self.target)
        content = data.content
        if isinstance(content, Qcow2Content):
            if self.target_locked and (filling or self.tasks_issued < POOL_TASKS):
                return True
            if self._missing_l2(content, offset, length):
                self.target_locked = True
                return True
            return False
        return data.driver != "null-co"

    def _clipped_count(self) -> int:
        # bdrv_get_dirty_count: a partial last cluster counts whole
        return self.copy_map.bits.count() * self.cluster

    # -- work ------------------------------------------------------------------------------
    def next_chunk(self) -> tuple[int, int] | None:
        """The next block-copy task of the background copy (block_copy_task_create,
        then block_copy_block_status): the run of dirty clusters from the cursor, at
        most 1 MiB (bdrv_dirty_bitmap_next_dirty_area with block-copy's chunk size),
        cut where the source's block status changes between data and zeroes; None
        when nothing is left."""
        if self.sync == "none":
            return None
        bits = self.copy_map.bits
        try:
            i = bits.index(1, self.cursor)
        except ValueError:
            return None
        self.cursor = i
        window = bits[i : i + self.chunk_clusters]
        n = window.index(0) if not window.all() else len(window)
        n = self._status_run(i, n)
        off = i * self.cluster
        return off, min(n * self.cluster, self.source.size_bytes - off)

    def progress_unit(self) -> int:
        return self.cluster  # progress counts whole clusters

    def _host_extent(self, contents: list[Content], index: int) -> tuple[int, int]:
        """Which host extent holds job cluster `index`: (depth of the chain layer that
        has it, that layer's qcow2 host run; 0 for a layer without one)."""
        offset = index * self.cluster
        for depth, content in enumerate(contents):
            if isinstance(content, Qcow2Content):
                run = content.host_run(offset // content.cluster_bytes)
                if run:
                    return depth, run
            sector = offset >> SECTOR_SHIFT
            if sector < content.nsectors and content.stamp_at(sector):
                return depth, 0
        return -1, 0

    def _status_run(self, first: int, count: int) -> int:
        """How many of `count` clusters from `first` one block-copy task takes: the
        clusters block status reports as one extent from the first on: all zeroes,
        or all data lying contiguously in one layer's file (qcow2 reports one extent
        per run of contiguous host clusters; block_copy_block_status rounds the
        status length to whole clusters)."""
        if count <= 1:
            return count
        contents = chain_contents(self.graph, self.source)
        n, data = self._data_run(contents, first, count)
        if not data or n == 1:
            return n
        top = contents[0]
        if (
            len(contents) == 1
            and isinstance(top, Qcow2Content)
            and top.cluster_bytes == self.cluster
        ):
            runs = top.host.extents(first, first + n)  # one qcow2 layer: its host extents
            return min(n, runs[0][1] - first) if runs and runs[0][0] == first else n
        return self._host_run_length(contents, first, n)

    def _data_run(self, contents: list[Content], first: int, count: int) -> tuple[int, bool]:
        """How many of `count` clusters from `first` block status reports alike, and
        whether as data: a cluster is data when some sector of the source chain's read
        in it holds data (zero-written and unallocated sectors read as zeroes, the
        chain ends without backing).  One pass over the read's extents."""
        cluster_sectors = self.cluster >> SECTOR_SHIFT
        lo = first * cluster_sectors
        end_sector = (self.source.size_bytes + SECTOR - 1) >> SECTOR_SHIFT
        hi = min((first + count) * cluster_sectors, end_sector)
        cover = -1  # the end of the run of data clusters from `first`
        for start, end, stamp in chain_extents(contents, lo, hi):
            if stamp < FIRST_DATA_STAMP:
                continue
            c0 = start // cluster_sectors
            if cover < 0 and c0 > first:
                return c0 - first, False
            if c0 > cover >= 0:
                break
            cover = max(cover, (end - 1) // cluster_sectors + 1)
        if cover < 0:
            return count, False
        return min(cover, first + count) - first, True

    def _host_run_length(self, contents: list[Content], first: int, count: int) -> int:
        """How many of `count` clusters from `first` lie in the first one's host extent
        (`_host_extent`).  That can change only where a layer at or above the one holding
        the first cluster changes allocation or host run, so only those places are
        looked at: cost grows with the extents in the run, not its clusters."""
        where = self._host_extent(contents, first)
        cluster, cluster_sectors = self.cluster, self.cluster >> SECTOR_SHIFT
        end = first + count
        edges: set[int] = set()
        for content in contents if where[0] < 0 else contents[: where[0] + 1]:
            if isinstance(content, Qcow2Content):
                per = content.cluster_bytes
                lo, hi = first * cluster // per, (end - 1) * cluster // per + 1
                for a, b, _ in content.host.extents(lo, hi):
                    edges.add(-(-a * per // cluster))
                    edges.add(-(-b * per // cluster))
            for a, b, _ in content.extents(first * cluster_sectors, end * cluster_sectors):
                edges.add(-(-a // cluster_sectors))
                edges.add(-(-b // cluster_sectors))
        for index in sorted(e for e in edges if first < e < end):
            if self._host_extent(contents, index) != where:
                return index - first
        return count

    def chunk_is_hole(self, offset: int, length: int) -> bool:
        """block_copy_block_status: nothing in the source chain's read of the chunk is
        data (block-copy writes zeroes to the target and reads nothing)."""
        contents = chain_contents(self.graph, self.source)
        sector = offset >> SECTOR_SHIFT
        return chain_next_data(contents, sector) >= (offset + length + SECTOR - 1) >> SECTOR_SHIFT

    def next_chunks(self) -> tuple[int, int, int, bool] | None:
        """A run of whole 1 MiB chunks of dirty clusters that are all holes (how far
        the next data lies, by bisection), or else one chunk as `next_chunk` says."""
        if self.sync == "none":
            return None
        bits = self.copy_map.bits
        i = bits.find(1, self.cursor)
        if i < 0:
            return None
        j = bits.find(0, i)
        if j < 0:
            j = len(bits)
        chunk_bytes = self.chunk_clusters * self.cluster
        off = i * self.cluster
        whole = (j - i) // self.chunk_clusters
        if off + whole * chunk_bytes > self.source.size_bytes:
            whole -= 1  # the disk's last chunk is short
        if whole > 1:
            self.cursor = i
            data = chain_next_data(chain_contents(self.graph, self.source), off >> SECTOR_SHIFT)
            holes = min(((data << SECTOR_SHIFT) - off) // chunk_bytes, whole)
            if holes > 0:
                return off, chunk_bytes, holes, True
        return super().next_chunks()

    def copy_chunks(self, offset: int, length: int, count: int) -> None:
        """`count` whole chunks of dirty clusters in one copy (what `copy_chunk` one by
        one does: clear their bits, copy, count the progress)."""
        if count == 1:
            self.copy_chunk(offset, length)
            return
        first = offset // self.cluster
        n = count * (length // self.cluster)
        if self.tasks_issued < POOL_TASKS:
            self._count_zero_tasks(offset, length, count)
        self.cbw.copy_span(first, n, offset, count * length)
        self.job.offset += n * self.cluster

    def copy_chunk(self, offset: int, length: int, counted: bool = False) -> None:
        # once the pool is full its count no longer matters (finish_in_flight)
        if (
            not counted
            and self.tasks_issued < POOL_TASKS
            and self.task_yields(offset, length, self.chunk_is_hole(offset, length))
        ):
            self.tasks_issued += 1
        first = offset // self.cluster
        n = -(-length // self.cluster)
        bits = self.copy_map.bits
        if not bits[first : first + n].all():  # a copy-before-write took some meanwhile
            for i in range(first, first + n):
                self._copy_cluster(i)
            return
        self.cbw.copy_span(first, n, offset, length)
        self.job.offset += n * self.cluster  # progress counts whole clusters, like len

    def _copy_cluster(self, index: int) -> int:
        return self.cbw.copy_cluster(index)

    def before_write(self, node: BlockNode, offset: int, length: int) -> bool:
        """The job's filter: copy-before-write (sim.model.cbw)."""
        return self.cbw.before_write(node, offset, length)

    # -- end ---------------------------------------------------------------------------------
    def commit(self) -> None:
        self._sync_bitmap(success=True)

    def abort(self) -> None:
        self._sync_bitmap(success=False)

    def _sync_bitmap(self, success: bool) -> None:
        bm, succ = self.bitmap, self.successor
        if bm is None or succ is None:
            return
        owner_list = self._owner_list(bm)
        sync = (success or self.bitmap_mode == "always") and self.bitmap_mode != "never"
        bm.successor = None
        if sync:
            # abdicate: the successor takes the name and keeps its own list position
            succ.name, succ.persistent = bm.name, bm.persistent
            succ.readonly = bm.readonly
            bm.abdicated_to = succ
            if bm in owner_list:
                owner_list.remove(bm)
            survivor = succ
        else:
            # reclaim: parent |= successor, the parent keeps its position
            bm.bits |= succ.bits
            bm.enabled = succ.enabled
            if succ in owner_list:
                owner_list.remove(succ)
            survivor = bm
        if not success and self.bitmap_mode == "always":
            survivor.bits |= bits_at_granularity(self.copy_map, survivor.granularity)
        self.successor = None

    def _owner_list(self, bm: DirtyBitmap) -> list[DirtyBitmap]:
        return self._owner_list_of(bm, self.source)

    def _owner_list_of(self, bm: DirtyBitmap, source: BlockNode) -> list[DirtyBitmap]:
        """The list holding `bm`: a node's, or a BlockBackend's (bb-attached)."""
        owners: list[list[DirtyBitmap]] = [n.bitmaps for n in self.graph.nodes]
        owners += [b.bitmaps for b in self.graph.backends.values()]
        for bitmaps in owners:
            if any(b is bm for b in bitmaps):
                return bitmaps
        return source.bitmaps

    def clean_drains(self) -> list[DrainedSection]:
        # bdrv_cbw_drop -> bdrv_drop_filter -> bdrv_replace_node_common drains the
        # filter (and so every parent above it) while it moves its parents down
        return [((self.filter,), False)]

    def clean(self) -> None:
        self.cbw.close()
        drop_filter(self.graph, self.filter)
        if self.target.backing is self.source:
            self.graph.set_backing(self.target, None)
        if self.close_target:
            self.graph.delete_unreferenced(self.target)
