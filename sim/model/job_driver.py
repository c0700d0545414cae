"""The job-driver contract: what every kind of job declares about itself.

QEMU gives each job kind a `JobDriver` / `BlockJobDriver` (job.h, blockjob_int.h:
`run`, `prepare`, `commit`, `abort`, `clean`, `drain`, ...).  `JobDriver` here
is that contract plus the facts about a kind that the engine, the QMP surface
and the checkers need: which nodes it holds, where a chunk reads and writes,
where its reads stop going down the backing chain, whether it ends by itself,
what one chunk of work does and what it does when drained.  Each kind
(`job_backup.BackupKind`, `job_mirror.MirrorKind`, `job_commit.CommitKind`,
`job_stream.StreamKind`, blockdev-create's `CreateKind`) subclasses it and
overrides what differs; nobody asks a kind which attributes it happens to have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from sim.model.graph import BlockNode

# A drained section a job's end opens: its nodes and whether it is a subtree
# section (bdrv_subtree_drained_begin, what a reopen takes); see sim/model/drain.py.
DrainedSection = tuple[tuple["BlockNode", ...], bool]


class JobDriver:
    """A kind of QEMU job (JobDriver): its nodes, its unit of work, its callbacks."""

    # READY exists for this kind (mirror, active commit): the work ends in READY
    # and waits there for job-complete or a cancel.
    has_ready: ClassVar[bool] = False
    # A BlockJob (backup, mirror, commit, stream), not a plain Job (blockdev-create):
    # only block jobs emit BLOCK_JOB_* events and answer the block-job-* verbs.
    block_job: ClassVar[bool] = True
    # After an on-error=ignore failure the kind moves past the chunk (stream)
    # instead of retrying it (backup, mirror, commit).
    ignore_skips: ClassVar[bool] = False
    # A failed write is reported as a failed read (stream: a copy-on-read).
    errors_as_reads: ClassVar[bool] = False
    # When the job lets go of its job nodes (block_job_remove_all_bdrv: their op
    # blockers and references) before it is freed: mirror_exit_common and
    # backup_clean do on success and on abort, commit_abort on abort; stream and a
    # successful commit keep them (and nodes the graph dropped stay alive) until
    # the job is dismissed (block_job_free).
    releases_on_success: ClassVar[bool] = False
    releases_on_abort: ClassVar[bool] = False
    # `next_chunk` passes over chunks with nothing to copy and counts their progress
    # at once, before the chunk it answers is copied (commit, stream).
    progress_on_next: ClassVar[bool] = False

    def __init__(self) -> None:
        # The job nodes (block_job_add_bdrv): blocked for other operations while
        # the job exists; a drain of any of them pauses the job.
        self.nodes: list[BlockNode] = []
        # The filter node the job inserted above what it reads (copy-before-write,
        # mirror_top, commit_top, copy-on-read); None for a kind without one.
        self.filter: BlockNode | None = None

    # -- where the work goes ---------------------------------------------------------------
    def reads_from(self) -> BlockNode | None:
        """The node a chunk reads from (None: the kind copies nothing)."""
        return None

    def writes_to(self) -> BlockNode | None:
        """The node a chunk writes to (None: the kind copies nothing)."""
        return None

    def read_stop(self) -> BlockNode | None:
        """The backing node at which a chunk's read stops (excluded); None: the whole chain."""
        return None

    def copies_allocated_only(self) -> bool:
        """True if a chunk copies only what is allocated above `read_stop` (commit, stream)."""
        return False

    def backend_nodes(self) -> list[BlockNode]:
        """Nodes the job holds through a BlockBackend of its own (a mirror's target,
        an active commit's base): they count as in use for blockdev-del."""
        return []

    def ends_by_itself(self) -> bool:
        """False for a kind whose work never runs out (backup sync=none): it ends by cancel."""
        return True

    # -- the work ------------------------------------------------------------------------
    def start(self) -> None:
        """job_start: set up the work (progress length, what must be copied)."""

    def next_chunk(self) -> tuple[int, int] | None:
        """The next (offset, length) to copy, or None when nothing is left now."""
        return None

    def progress_unit(self) -> int:
        """A chunk adds its length to the progress rounded up to this many bytes at
        most, and the progress length can drop by less than this (backup counts whole
        clusters; a mirror's dirty granule)."""
        return 1

    def copy_chunk(self, offset: int, length: int) -> None:
        """Do one chunk of work in the model (contents, bitmaps, progress)."""

    def chunk_is_hole(self, offset: int, length: int) -> bool:
        """True when block status finds nothing but zeroes or unallocated sectors in
        the chunk (block-copy then writes zeroes, which reads nothing)."""
        return False

    def next_chunks(self) -> tuple[int, int, int, bool] | None:
        """(offset, length, count, hole): the next `count` chunks, each `length` bytes,
        back to back from `offset`, all holes or all data (`chunk_is_hole`); None when
        nothing is left now.  Copying them with `copy_chunks` is the same as copying
        them one by one, asking `next_chunk` before each.  A kind that cannot say more
        than one chunk ahead answers one."""
        chunk = self.next_chunk()
        if chunk is None:
            return None
        return chunk[0], chunk[1], 1, self.chunk_is_hole(*chunk)

    def copy_chunks(self, offset: int, length: int, count: int) -> None:
        """Do `count` chunks of `next_chunks` in the model at once."""
        for i in range(count):
            self.copy_chunk(offset + i * length, length)

    def skip_chunk(self, offset: int, length: int) -> None:
        """Move past a chunk whose failure was ignored (kinds with `ignore_skips`)."""

    def drained(self) -> None:
        """What the job does between a drain's pause request and its pause point."""

    def exit_drain(self) -> BlockNode | None:
        """The node the job's run() leaves drained when it returns without error (a
        converged mirror: `drain.hold`), held until its prepare or abort; none for most
        kinds."""
        return None

    # -- JobDriver callbacks, in job_do_finalize / job_abort order ------------------------
    def prepare(self) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def clean(self) -> None: ...

    def prepare_drains(self) -> list[DrainedSection]:
        """The drained sections `prepare`'s graph change opens first, in order (each
        pauses and resumes the other jobs it reaches); none for most kinds."""
        return []

    def clean_drains(self) -> list[DrainedSection]:
        """The drained sections `clean`'s graph change opens first, as `prepare_drains`."""
        return []
