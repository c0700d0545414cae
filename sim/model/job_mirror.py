"""Mirror jobs and active commit: block/mirror.c of QEMU 7.2.

A mirror_top filter goes above the source (implicit unless named).  The job's
dirty bitmap (anonymous, on the source, recording) starts with what must be
copied and keeps collecting guest writes; the job copies dirty chunks until
none is left, then is READY and keeps the target in sync until completed or
cancelled.  `len` = offset + dirty bytes, recomputed as the job goes, as
mirror_run does.  Completion pivots the device onto the target at finalize
(mirror_exit_common); active commit is the same job with the base as target
and the top as the node replaced.
"""

from __future__ import annotations

from sim.model.bitmap import DirtyBitmap
from sim.model.graph import BlockGraph, BlockNode
from sim.model.job_driver import DrainedSection, JobDriver
from sim.model.job_graph import (
    allocation_mask,
    chain_contents,
    chain_nodes,
    copy_range,
    data_run,
    drop_filter,
    insert_filter,
    replace_node,
    set_bits_from_mask,
)
from sim.model.jobs import Job
from sim.model.qcow2_host import flush_metadata

CHUNK_BYTES = 1 << 20  # bytes copied per iteration at most (buf-size default is 16 MiB)
BUF_SIZE = 16 << 20  # buf-size default: the dirty bytes one mirror_iteration takes at most
MAX_IO_BYTES = 1 << 20  # a data op copies at most this much (buf-size / MAX_IN_FLIGHT)


class MirrorKind(JobDriver):
    """One mirror (or active commit) job: source, target, filter, dirty bitmap."""

    filter: BlockNode  # inserted when the job is created

    has_ready = True
    releases_on_success = True
    releases_on_abort = True

    def __init__(
        self,
        graph: BlockGraph,
        job: Job,
        source: BlockNode,
        target: BlockNode,
        sync: str,
        granularity: int,
        filter_name: str | None,
        *,
        zero_target: bool,
        close_target: bool,
        base: BlockNode | None = None,
        commit: bool = False,
        write_blocking: bool = False,
        leave_backing: bool = False,
        source_chain: bool = False,
    ) -> None:
        self.graph, self.job = graph, job
        self.source, self.target, self.sync = source, target, sync
        self.base = base  # active commit: the node below which nothing is copied
        self.commit_mode = commit
        self.close_target = close_target
        self.write_blocking = write_blocking
        # blockdev-mirror (MIRROR_LEAVE_BACKING_CHAIN): the target keeps the backing it
        # was opened with; drive-mirror gives it the source's chain on completion
        self.leave_backing = leave_backing
        # drive-mirror into a new image (MIRROR_SOURCE_BACKING_CHAIN): mirror_exit_common
        # gives the target the source's base as backing whatever the sync mode (none
        # for sync=full), replacing any backing it got meanwhile
        self.source_chain = source_chain
        super().__init__()
        if commit:
            graph.reopen_rw(target)
        self.filter = insert_filter(graph, source, "mirror_top", filter_name)
        self.filter.write_hook = self.on_guest_write
        if write_blocking:
            self.filter.after_write_hook = self.sync_target_write
        self.dirty = DirtyBitmap(None, granularity, source.size_bytes, enabled=not write_blocking)
        source.bitmaps.insert(0, self.dirty)
        self.zero_target = zero_target
        self.pivoted = False
        self.exited = False  # mirror_exit_common ran (prepare or abort)

    def start(self) -> None:
        """mirror_dirty_init: what must be copied before the job can be READY."""
        g = self.dirty.granularity
        if self.zero_target and not self.target.discard_unmap:
            self.dirty.bits.setall(1)
        elif self.sync != "none":
            if self.zero_target:
                # bdrv_can_write_zeroes_with_unmap(target): the target is zeroed first,
                # then only what the source has allocated is copied
                data = self.graph.data_node(self.target)
                if data.content is not None:
                    data.content.write_sectors(0, data.content.nsectors, 0)
            if self.commit_mode:
                nodes = chain_nodes(self.graph, self.source, self.base)
            elif self.sync == "top":
                nodes = [self.source]
            else:
                nodes = chain_nodes(self.graph, self.source)
            set_bits_from_mask(self.dirty.bits, allocation_mask(nodes, self.source.size_bytes, g))
        self.update_len()

    def init_nodes(self) -> list[BlockNode]:
        """The nodes mirror_dirty_init asks bdrv_is_allocated_above over (top first), or
        none when it marks everything dirty without asking (a target that needs
        zeroing and cannot write zeroes with unmap) or copies nothing (sync=none)."""
        if self.sync == "none" or (self.zero_target and not self.target.discard_unmap):
            return []
        if self.commit_mode:
            return chain_nodes(self.graph, self.source, self.base)
        if self.sync == "top":
            return [self.source]
        return chain_nodes(self.graph, self.source)

    def update_len(self) -> None:
        self.job.len = self.job.offset + self._dirty_bytes()

    def progress_unit(self) -> int:
        return self.dirty.granularity  # a last, partial chunk clears a whole granule

    def _dirty_bytes(self) -> int:
        return self.dirty.bits.count() * self.dirty.granularity

    def next_chunk(self) -> tuple[int, int] | None:
        """The next run of dirty chunks, at most CHUNK_BYTES (one mirror_iteration)."""
        bits = self.dirty.bits
        try:
            i = bits.index(1)
        except ValueError:
            return None
        g = self.dirty.granularity
        window = bits[i : i + max(CHUNK_BYTES // g, 1)]
        n = window.index(0) if not window.all() else len(window)
        off = i * g
        return off, min(n * g, self.source.size_bytes - off)

    def iteration(self, offset: int) -> int:
        """How many bytes mirror_iteration takes from dirty granule `offset`: the dirty
        granules that follow each other from there, at most the 16 MiB buffer."""
        bits = self.dirty.bits
        g = self.dirty.granularity
        i = offset // g
        stop = min(i + max(BUF_SIZE // g, 1), len(bits))
        try:
            n = bits.index(0, i, stop) - i
        except ValueError:
            n = stop - i
        return min(max(n, 1) * g, self.source.size_bytes - offset)

    def next_dirty(self, offset: int) -> int | None:
        """The first dirty granule at or after `offset` (bdrv_dirty_iter_next), or None."""
        g = self.dirty.granularity
        try:
            return self.dirty.bits.index(1, -(-offset // g)) * g
        except ValueError:
            return None

    def ops(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """mirror_iteration's ops over dirty [offset, offset + length): (offset, bytes,
        zero) per run of the source's block status (bdrv_block_status_above down the
        whole chain): data at most 1 MiB, read then written (MIRROR_METHOD_COPY);
        zeroes or nothing allocated, written as zeroes when whole clusters of the
        target (MIRROR_METHOD_ZERO), else copied; never less than a granule."""
        g = self.dirty.granularity
        nodes = chain_nodes(self.graph, self.source)
        target = self.graph.data_node(self.target)
        tc = target.cluster_size if target.driver == "qcow2" else 0
        end = offset + length
        out: list[tuple[int, int, bool]] = []
        while offset < end:
            data, n = data_run(nodes, offset, end - offset)
            if data:
                n = min(n, MAX_IO_BYTES)
            n -= n % g
            zero = False
            if n < g:
                n = g
            elif not data:
                zero = not tc or (offset % tc == 0 and n % tc == 0)
            n = min(n, end - offset)
            out.append((offset, n, zero))
            offset += n
        return out

    def land(self, node: BlockNode, offset: int, length: int) -> None:
        """A piece of a failed write to the target that a qcow2 node there made all the
        same (its tasks run in parallel): its data is in the target; the range stays
        dirty."""
        stop = self.base if self.commit_mode else None
        copy_range(
            self.graph, chain_contents(self.graph, self.source, stop), node, offset, length,
            mark=False,
        )  # fmt: skip

    def copy_chunk(self, offset: int, length: int) -> None:
        g = self.dirty.granularity
        self.dirty.bits[offset // g : -(-(offset + length) // g)] = 0
        stop = self.base if self.commit_mode else None
        # mirror_iteration writes zeroes where the source reads zeroes (it does not
        # leave an existing target's old data there)
        copy_range(
            self.graph,
            chain_contents(self.graph, self.source, stop),
            self.target,
            offset,
            length,
            write_zeroes=not self.commit_mode,
        )
        self.job.offset += length
        self.update_len()

    # -- the driver contract ---------------------------------------------------------------
    def reads_from(self) -> BlockNode:
        return self.source

    def writes_to(self) -> BlockNode:
        return self.target

    def read_stop(self) -> BlockNode | None:
        return self.base if self.commit_mode else None

    def backend_nodes(self) -> list[BlockNode]:
        # mirror_exit_common (at prepare or abort) drops the BlockBackend on the target
        return [] if self.exited else [self.target]

    def drained(self) -> None:
        """A drain wakes a READY mirror, which runs one mirror_iteration (copying
        what guest writes dirtied) before it reaches its pause point."""
        if self.job.status != "ready":
            return
        while (chunk := self.next_chunk()) is not None:
            self.copy_chunk(*chunk)

    def exit_drain(self) -> BlockNode | None:
        """mirror_run ends a converged job (after a complete or a soft cancel) inside
        bdrv_drained_begin(bs) of its source, and mirror_exit_common ends that section
        at finalize, after the pivot: while the job waits (WAITING for its transaction's
        peers, PENDING with auto-finalize off) the source and its parents are drained,
        so guest requests through them wait for the finalize and the other jobs above
        them stay paused (recorded: mirror-held-source-pauses-job-above)."""
        job = self.job
        if job.completion_requested or job.cancelled:
            return self.source
        return None

    def on_guest_write(self, node: BlockNode, offset: int, length: int) -> None:
        """A guest write passed mirror_top: the source's dirty bitmap recorded it (in
        background mode); wake the job so it copies it."""
        self.job.wake()

    def sync_target_write(self, node: BlockNode, offset: int, length: int, stamp: int) -> None:
        """do_sync_target_write (write-blocking mode; QEMU 7.2 does it from the job's start
        until it fails or is force-cancelled): the guest's write goes to the target as
        well, before the guest sees it complete; the chunks it covers whole are clean,
        and its bytes count in the job's progress (remaining, then done)."""
        job = self.job
        if job.error is not None or (job.cancelled and job.force) or self.pivoted:
            return
        g = self.dirty.granularity
        first, end = -(-offset // g), (offset + length) // g
        if first < end:
            self.dirty.bits[first:end] = 0
        data = self.graph.data_node(self.target)
        if data.content is not None:
            data.content.write(offset, length, stamp)
        for bm in self.target.bitmaps:
            bm.record_write(offset, length)
        job.offset += length
        self.update_len()

    # -- end ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """mirror_exit_common on success: pivot if completion was requested."""
        self.update_len()
        if self.job.completion_requested and not self.job.cancelled:
            self._pivot()
        self.exited = True

    def _pivot(self) -> None:
        g = self.graph
        resets = self.sync in ("top", "none") or (self.sync == "full" and self.source_chain)
        if not self.commit_mode and not self.leave_backing and resets:
            backing = {"none": self.source, "top": self.source.backing}.get(self.sync)
            if self.target.backing is not backing:
                g.set_backing(self.target, backing)
        replace_node(g, self.source, self.target)
        self.pivoted = True

    def abort(self) -> None:
        self.exited = True

    # mirror_exit_common, on every end: dropping the job's BlockBackend on the target and
    # the graph changes after it pause and resume the jobs above the target twice, and
    # the pivot's bdrv_drained_begin(target_bs) around bdrv_replace_node once more
    # (measured on QEMU 7.2 with an active commit and a READY mirror above its base:
    # recorded/commit-active-end-drains-base, commit-active-cancel-drains-base)
    EXIT_DRAINS = 2

    def clean_drains(self) -> list[DrainedSection]:
        count = self.EXIT_DRAINS + (1 if self.pivoted else 0)
        return [((self.target,), False)] * count

    def clean(self) -> None:
        g = self.graph
        # mirror_top keeps its backing child when it leaves the graph: closing it
        # flushes that child (bdrv_mirror_top_flush): the source, or after a pivot the
        # target (bdrv_replace_node moved mirror_top's backing link there with the
        # source's other parents)
        flush_metadata(self.target if self.pivoted else self.source)
        if self.dirty in self.source.bitmaps:
            self.source.bitmaps.remove(self.dirty)
        drop_filter(g, self.filter)
        if self.pivoted:
            g.delete_unreferenced(self.source)
        if self.close_target:
            # the job's reference to the target drive-mirror opened goes; a target that
            # replaced a node nobody used has no user left and goes too
            g.delete_unreferenced(self.target)
        # an active-commit base stays read-write, even after a soft cancel (mirror_exit_common keeps the base writable)
