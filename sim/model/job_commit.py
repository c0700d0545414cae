"""Intermediate block-commit: block/commit.c of QEMU 7.2.

A commit_top filter goes above `top`; the job copies everything allocated in
top and the nodes between top and base into base (dirtying base's bitmaps),
512 KiB at a time over the whole disk (`len` = disk size).  On completion
the overlay of top backs onto base and top (with the nodes between) leaves
the graph (bdrv_drop_intermediate).  Base is read-write while the job runs.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.model.graph import BlockGraph, BlockNode
from sim.model.job_driver import DrainedSection, JobDriver
from sim.model.job_graph import allocation_run, chain_nodes, copy_range, drop_filter, insert_filter
from sim.model.jobs import Job

COMMIT_CHUNK = 512 * 1024


class CommitKind(JobDriver):
    """One intermediate block-commit job (CommitBlockJob): top, base, the nodes in
    between, and the commit_top filter above top."""

    progress_on_next = True  # next_chunk counts the chunks it passes over

    releases_on_abort = True

    filter: BlockNode  # inserted when the job is created

    def __init__(
        self,
        graph: BlockGraph,
        job: Job,
        active: BlockNode,
        top: BlockNode,
        base: BlockNode,
        filter_name: str | None,
    ) -> None:
        self.graph, self.job = graph, job
        self.active, self.top, self.base = active, top, base
        self.base_blk = self.top_blk = True  # the job's BlockBackends on them
        super().__init__()
        self.base_ro = graph.reopen_rw(base)
        self.backing_file: str | None = None  # block-commit's `backing-file`
        self.filter = insert_filter(graph, top, "commit_top", filter_name)
        self.cursor = 0
        self.dropped = False  # prepare dropped the intermediate nodes
        # bs->filename of a node (bdrv_refresh_filename), given by the QMP layer
        self.filename_of: Callable[[BlockNode], str] | None = None

    # -- the driver contract ---------------------------------------------------------------
    def reads_from(self) -> BlockNode:
        return self.top

    def writes_to(self) -> BlockNode:
        return self.base

    def read_stop(self) -> BlockNode:
        return self.base

    def copies_allocated_only(self) -> bool:
        return True

    def start(self) -> None:
        self.job.len = self.top.size_bytes

    def next_chunk(self) -> tuple[int, int] | None:
        """The next run allocated above base, as commit_run asks bdrv_is_allocated_above
        from where it stands for at most 512 KiB: each answer is one iteration, copied
        whole when allocated.  Unallocated runs cost commit_run no I/O and no delay, so
        they are passed over here at once (their progress still counts)."""
        size = self.top.size_bytes
        nodes = chain_nodes(self.graph, self.top, self.base)
        while self.cursor < size:
            allocated, n = allocation_run(nodes, self.cursor, min(COMMIT_CHUNK, size - self.cursor))
            if allocated:
                return self.cursor, n
            self.cursor += n
            self.job.offset += n
        return None

    def copy_chunk(self, offset: int, length: int) -> None:
        contents = [n.content for n in chain_nodes(self.graph, self.top, self.base) if n.content]
        copy_range(self.graph, contents, self.base, offset, length)
        self.cursor = offset + length
        self.job.offset += length

    def prepare(self) -> None:
        """bdrv_drop_intermediate: the overlay of top now backs onto base."""
        g = self.graph
        overlay = g.overlay_of(self.filter) if self.filter.backing is not None else None
        parents = [p for p, role in g.parents(self.filter) if role == "backing"]
        for p in parents:
            g.set_backing(p, self.base)
            if p.image is not None:  # bdrv_drop_intermediate rewrites the header
                # without `backing-file`, base's bs->filename (json:{...} for a node a
                # file name cannot describe)
                named = self.base.image.filename if self.base.image else None
                if self.filename_of is not None:
                    named = self.filename_of(self.base)
                p.image.backing_file = self.backing_file or named
                p.image.backing_format = None  # named after the image it names
        self.dropped = overlay is not None or bool(parents)
        self.base_blk = False  # commit_prepare: blk_unref(s->base) before the graph change

    def abort(self) -> None:
        self.base_blk = False  # commit_abort: blk_unref(s->base)

    def backend_nodes(self) -> list[BlockNode]:
        """commit_start's BlockBackends on the base (until prepare or abort) and on the
        top (until commit_clean)."""
        return [n for n, held in ((self.base, self.base_blk), (self.top, self.top_blk)) if held]

    # bdrv_drop_intermediate (success only) drains the subtree of the commit_top filter
    # once (a job above the base and one below it both pause and resume), and the
    # clean-up twice on every end (commit_clean drops the job's BlockBackends; a job
    # below the base does not see these), after commit_clean's reopen of a read-only
    # base back to read-only (a subtree section); measured on QEMU 7.2 with a READY
    # mirror above the base and one below it: recorded/commit-end-drains-*
    CLEAN_DRAINS = 2

    def prepare_drains(self) -> list[DrainedSection]:
        return [((self.filter,), True)]

    def clean_drains(self) -> list[DrainedSection]:
        drains: list[DrainedSection] = [((self.base,), True)] if self.base_ro else []
        return drains + [((self.base,), False)] * self.CLEAN_DRAINS

    def clean(self) -> None:
        g = self.graph
        self.top_blk = False  # commit_clean: blk_unref(s->top)
        if self.dropped:
            self.filter.backing = None
            g.remove_node(self.filter)
            g.delete_unreferenced(self.top)
        else:
            drop_filter(g, self.filter)
        if self.base_ro:
            self.graph.reopen_ro(self.base)
