"""block-stream: block/stream.c of QEMU 7.2.

A copy-on-read filter goes above the streamed node (`device`); the job pulls
everything allocated below it, down to (excluding) `base`, into it, without
dirtying its bitmaps (copy-on-read writes bypass tracking).  On completion the
node backs onto base (or nothing) and the streamed-over nodes leave the graph.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.model.content import Extent, chain_extents, sector_span
from sim.model.graph import BlockGraph, BlockNode
from sim.model.job_driver import DrainedSection, JobDriver
from sim.model.job_graph import (
    allocation_run,
    chain_contents,
    chain_nodes,
    drop_filter,
    insert_filter,
)
from sim.model.jobs import Job

STREAM_CHUNK = 512 * 1024


class StreamKind(JobDriver):
    """One block-stream job (StreamBlockJob): the streamed node, its base, and the
    copy-on-read filter above it."""

    progress_on_next = True  # next_chunk counts the chunks it passes over

    filter: BlockNode  # inserted when the job is created

    ignore_skips = True  # stream_run moves past a chunk whose error was ignored
    errors_as_reads = True  # every failure is a read: stream_populate is a COR read

    def __init__(
        self,
        graph: BlockGraph,
        job: Job,
        node: BlockNode,
        base: BlockNode | None,
        filter_name: str | None,
    ) -> None:
        self.graph, self.job = graph, job
        self.node, self.base = node, base
        super().__init__()
        # stream_start reopens a read-only node (one that follows its format parent
        # too) read-write, and stream_clean reopens it read-only by name: its own option
        self.node_ro = graph.is_read_only(node)
        self.filter = insert_filter(graph, node, "copy-on-read", filter_name)
        node.read_only = node.ro_from_parent = False
        self.cursor = 0
        self.nothing_to_do = node.backing is base or node.backing is None
        self.backing_file: str | None = None  # block-stream's `backing-file`
        # the base's bs->filename (bdrv_refresh_filename: json:{...} for a node whose
        # backing is not the one its header names), given by the QMP layer
        self.filename_of: Callable[[BlockNode], str] | None = None
        self.filter_dropped = False

    def intermediates(self) -> list[BlockNode]:
        out = []
        cur = self.node.backing
        while cur is not None and cur is not self.base:
            out.append(cur)
            cur = cur.backing
        return out

    # -- the driver contract ---------------------------------------------------------------
    def reads_from(self) -> BlockNode | None:
        return self.node.backing

    def writes_to(self) -> BlockNode:
        return self.node

    def read_stop(self) -> BlockNode | None:
        return self.base

    def copies_allocated_only(self) -> bool:
        return True

    def skip_chunk(self, offset: int, length: int) -> None:
        self.cursor = offset + length

    def start(self) -> None:
        self.job.len = 0 if self.nothing_to_do else self.node.size_bytes

    def next_chunk(self) -> tuple[int, int] | None:
        """The next run to pull up, as stream_run asks from where it stands for at most
        512 KiB: bdrv_is_allocated on the node, and where it holds nothing,
        bdrv_is_allocated_above below it down to base; each answer is one iteration,
        copied whole when allocated below.  Runs the node holds, or with nothing
        allocated below, cost stream_run no I/O and no delay, so they are passed over
        here at once (their progress still counts)."""
        if self.nothing_to_do:
            return None
        size = self.node.size_bytes
        below = chain_nodes(self.graph, self.node.backing, self.base) if self.node.backing else []
        while self.cursor < size:
            own, n = allocation_run([self.node], self.cursor, min(STREAM_CHUNK, size - self.cursor))
            if not own:
                copy, n = allocation_run(below, self.cursor, n)
                if copy:
                    return self.cursor, n
            self.cursor += n
            self.job.offset += n
        return None

    def _fill(self, offset: int, length: int) -> list[Extent]:
        """The extents to copy into the node for this range: what a read through the
        chain below sees where the node itself has nothing allocated (none when the
        node holds the whole range or nothing below is allocated there)."""
        below = self.node.backing
        own = self.node.content
        if below is None or own is None:
            return []
        first, end = sector_span(offset, length)
        end = min(end, own.nsectors)
        holes: list[tuple[int, int]] = []
        cur = first
        for lo, hi, _ in own.extents(first, end):
            if lo > cur:
                holes.append((cur, lo))
            cur = hi
        if cur < end:
            holes.append((cur, end))
        if not holes:
            return []
        chain = chain_contents(self.graph, below, self.base)
        return [run for lo, hi in holes for run in chain_extents(chain, lo, hi)]

    def copy_chunk(self, offset: int, length: int) -> None:
        fill = self._fill(offset, length)
        if fill and self.node.content is not None:
            self.node.content.write_extents(fill)
        self.cursor = offset + length
        self.job.offset += length

    def prepare(self) -> None:
        # stream_prepare drops the copy-on-read filter first (it holds the backing
        # chain), so the overlay is the device's root again when its backing changes
        self._drop_filter()
        # even with nothing streamed, the backing link is set again (its op blocker
        # then names the overlay as it is known now) and the header rewritten
        if self.node.backing is not None:
            old = self.node.backing
            self.graph.set_backing(self.node, self.base)
            if self.node.image is not None:  # stream_prepare: bdrv_change_backing_file
                # stream_prepare: `backing-file`, else the base's bs->filename
                base_image = self.base.image if self.base is not None else None
                named = base_image.filename if base_image else None
                if self.base is not None and self.filename_of is not None:
                    named = self.filename_of(self.base)
                # a `backing-file` given to block-stream is written instead of the
                # base's file name (only when there is a base)
                self.node.image.backing_file = (
                    self.backing_file if self.base is not None and self.backing_file else named
                )
                self.node.image.backing_format = None  # named after the image it names
            if old is not self.base:
                self.graph.delete_unreferenced(old)

    # Dropping the copy-on-read filter of a job that ran (bdrv_cor_filter_drop) pauses
    # and resumes the jobs above the node three times on QEMU 7.2, and a successful
    # stream_prepare once more (measured with a READY mirror above the node, with and
    # without a backing link to change: recorded/stream-end-drains-*)
    FILTER_DROP_DRAINS = 3

    def prepare_drains(self) -> list[DrainedSection]:
        """The filter drop's sections, then stream_prepare's.  A job below the node (a
        READY mirror of a node backed by the base or below it) sees stream_prepare's and,
        when there was nothing to stream, one of the filter drop's: those are subtree
        sections (measured on QEMU 7.2: recorded/stream-end-drains-seen-below-*)."""
        plain, subtree = ((self.node,), False), ((self.node,), True)
        drops = [plain] * self.FILTER_DROP_DRAINS
        if self.nothing_to_do:
            drops[-1] = subtree
        return [*drops, subtree]

    def clean_drains(self) -> list[DrainedSection]:
        drains: list[DrainedSection] = []
        if not self.filter_dropped:
            drains += [((self.node,), False)] * self.FILTER_DROP_DRAINS
        if self.node_ro:
            # stream_clean reopens the node read-only: a subtree section over it
            drains.append(((self.node,), True))
        return drains

    def clean(self) -> None:
        self._drop_filter()
        self.node.read_only = self.node_ro

    def _drop_filter(self) -> None:
        if not self.filter_dropped:
            drop_filter(self.graph, self.filter)
            self.filter_dropped = True
