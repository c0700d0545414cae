"""Job processes: when jobs make progress in simulated time.

A job is a plain generator function run by simpy.  It asks its kind (model)
for the next chunk, checks the chunk's reads and writes against the armed
faults, does it, and spends the time the devices say the copy takes: a read
on the source's device, then a write on the target's, each waiting for a
queue slot like guest I/O does, then whatever the job's `speed` still asks
for.  The model copy is applied when the chunk starts, so the model is
consistent at every instant.

Pause, resume, complete and cancel are flags set synchronously by the QMP
verbs (model/job_flow.py); they wake the process through a per-job simpy
event so it notices at its next pause point.  An I/O error goes through
`job_flow.error_action` (BLOCK_JOB_ERROR, then report / ignore / stop as
QEMU 7.2's job kinds do; see the end of model/job_flow.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import simpy
from simpy.resources.resource import Release

from sim.engine import reqlist
from sim.engine.faults import read_path
from sim.engine.throttle import groups_on_path, throttled
from sim.engine.timing import HOLE_CHUNK_NS, NS_PER_S, Device, rate_limit_ns
from sim.model import drain, job_flow
from sim.model.graph import BlockNode
from sim.model.io import note_job_write, write_path
from sim.model.job_backup import BackupKind
from sim.model.job_mirror import MirrorKind
from sim.model.job_stream import StreamKind
from sim.model.jobs import ACTIVE, ENDED, Job, JobStatus

if TYPE_CHECKING:
    from sim.engine.machine import Machine

Proc = Generator[simpy.Event, Any, None]
_NO_RNG = random.Random(0)  # io_ns draws nothing without jitter


class _Waker:
    """The simpy event a sleeping job waits on; `wake()` fires it."""

    __slots__ = ("env", "event")

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.event: simpy.Event | None = None

    def wait(self) -> simpy.Event:
        self.event = self.env.event()
        return self.event

    def wake(self) -> None:
        if self.event is not None and not self.event.triggered:
            self.event.succeed()


def start_job(m: Machine, job: Job) -> None:
    """job_start: running, initialise the work, and spawn the process.  A backup's
    coroutine runs at once: its block-copy call creates its first tasks before the
    command returns (`first_tasks`)."""
    waker = _Waker(m.env)
    job.wake = waker.wake
    job_flow.start(job)
    kind = job.kind
    # stream_run returns at once when there is nothing to stream
    idle_stream = isinstance(kind, StreamKind) and kind.nothing_to_do
    idle_backup = isinstance(kind, BackupKind) and kind.ends_by_itself()
    if (idle_stream or idle_backup) and kind.next_chunk() is None:
        m.idle_starts.append((job, waker))
    else:
        pool = TaskPool(m, job) if isinstance(kind, BackupKind) else None
        first = first_tasks(m, job, pool) if pool is not None and kind.ends_by_itself() else None
        m.processes[job.id] = m.env.process(job_process(m, job, waker, pool, first))
    drain.started(m.state, job)  # started inside a drained section: its pause point


# what a backup's first block-copy tasks leave to its process: a created task that waits
# for a pool slot, a task whose request fails, or a rate-limit sleep
Pending = tuple[str, Any]


def first_tasks(m: Machine, job: Job, pool: TaskPool) -> Pending | None:
    """What a backup's block-copy call does in job_start, before the command returns:
    block_copy_dirty_clusters creates a task, starts it in the pool and creates the
    next, until 64 tasks are busy (a data task reads the source; a zero task is busy
    when `BackupKind.task_yields`, else it is done at once) and one more was created
    that then waits for a slot; with a `speed`, ratelimit_calculate_delay lets tasks
    go until a time slice's quota (speed x SLICE_TIME) is dispatched and makes the next
    wait (one 1 MiB task at 1 MiB/s; two one-cluster tasks of a compressed backup).  A cancel or pause right after the
    command finds them all in flight and lets them complete (65 MiB of a disk of
    data, recorded on QEMU 7.2: scenarios/blockapi/backup-first-tasks.jsonl).
    Returns what is left for the job's process to do first, or None."""
    kind = pool.kind
    dispatched = 0  # bytes the rate limiter has accounted in this slice
    while True:
        chunk = kind.next_chunk()
        if chunk is None:
            return None
        offset, length = chunk
        failure = chunk_fault(m, job, offset, length) if m.faults else None
        if failure is not None:  # the job's process runs the failing task
            return "fault", (offset, length, failure)
        full = pool.full()  # then the task, whatever it does, waits for a slot
        hole, progress, busy = take_chunk(m, job, offset, length)
        if full:
            job.offset -= progress
            return "slot", (offset, length, progress, hole, pool.created(offset, length))
        if busy:
            pool.start(offset, length, progress, unthrottled_read=True, hole=hole)
        if job.speed:
            dispatched += length
            if dispatched * NS_PER_S >= job.speed * SLICE_TIME_NS:
                return "sleep", rate_limit_ns(dispatched, job.speed)


def take_chunk(m: Machine, job: Job, offset: int, length: int) -> tuple[bool, int, bool]:
    """The model's work for one chunk, done when it starts (for a backup, when
    block_copy_task_create takes its clusters): copy it and mark what the write to
    the target marks.  Returns whether it is a hole, the progress it made, and
    whether a backup's task keeps a pool slot (`BackupKind.task_yields`: a data task,
    or a zero task whose write yields)."""
    kind = job.kind
    hole = kind.chunk_is_hole(offset, length)
    issued = kind.tasks_issued if isinstance(kind, BackupKind) else 0
    before = job.offset
    kind.copy_chunk(offset, length)
    target = kind.writes_to()
    if target is not None:
        note_job_write(m.state.graph, target, offset, length)
    busy = not hole or (isinstance(kind, BackupKind) and kind.tasks_issued > issued)
    return hole, job.offset - before, busy


def end_idle_jobs(m: Machine) -> None:
    """After a command: a backup it started with nothing to copy has returned from
    backup_run (job_start enters the coroutine at once; with nothing copied the rate
    limit never sleeps), as has a stream with nothing to stream from stream_run, and
    its completion runs before the next command.  One that
    a drain still holds, or that was paused or cancelled meanwhile, runs as a process."""
    started, m.idle_starts = m.idle_starts, []
    for job, waker in started:
        if (
            job.status == JobStatus.RUNNING
            and not job.user_paused
            and not job.cancelled
            and job.kind.next_chunk() is None
        ):
            job_flow.work_finished(m.state, job)
        elif job.status in ACTIVE:
            m.processes[job.id] = m.env.process(job_process(m, job, waker, TaskPool(m, job)))


def start_oneshot_job(m: Machine, job: Job, delay_ns: int, work: Callable[[], None]) -> None:
    """job_start for a job whose run is one piece of work (blockdev-create's `create`):
    running now; after `delay_ns` of simulated time the work is done and the job ends
    (a cancel meanwhile does not stop the work, it turns the end into an abort)."""
    job_flow.start(job)

    def run() -> Proc:
        yield m.env.timeout(delay_ns)
        work()
        job_flow.work_finished(m.state, job)

    m.processes[job.id] = m.env.process(run())


def _done(job: Job) -> bool:
    """Force-cancelled (job_is_cancelled).  A soft cancel of a READY mirror is not:
    mirror_run keeps copying until source and target are in sync, then exits."""
    return job.cancelled and job.force


def job_process(
    m: Machine,
    job: Job,
    waker: _Waker,
    pool: TaskPool | None = None,
    first: Pending | None = None,
) -> Proc:
    """A job's run in simulated time; a backup's `pool` holds the block-copy tasks
    in flight and `first` is what its first tasks left to do (`first_tasks`)."""
    kind = job.kind
    env = m.env
    source, target = kind.reads_from(), kind.writes_to()
    ignored_error: str | None = None  # stream: an ignored error fails the job at the end
    pending: tuple[int, int, tuple[bool, str, bool]] | None = None  # a failing task
    next_at: float = 0  # a backup's call creates no task before then (its rate limit)
    if isinstance(kind, MirrorKind) and m.faults.blkdebug:
        rule = m.faults.allocation_failure(kind.init_nodes(), kind.source.size_bytes)
        if rule is not None:  # mirror_dirty_init failed: the job fails before its progress
            job.len = job.offset = 0
            job.error = job_flow.STRERROR[rule.errno]
            job_flow.work_finished(m.state, job)
            return
    if first is not None:
        assert pool is not None
        what, arg = first
        if what == "slot":  # created in job_start, it runs once a slot is free
            yield from pool.wait_slot()
            offset, length, progress, hole, created = arg
            pool.start(
                offset,
                length,
                progress,
                unthrottled_read=True,
                hole=hole,
                withheld=True,
                created=created,
            )
        elif what == "sleep":
            next_at = env.now + arg
        else:
            pending = arg
    while True:
        started = pending is not None  # in job_start, inside the drained section
        failure: tuple[bool, str, bool] | None
        if pending is not None:  # started in job_start: it fails whatever came since
            offset, length, failure = pending
            pending = None
        else:
            if job.status in ENDED:
                return
            if job.error is not None or _done(job):
                break
            if job.user_paused:
                if pool is not None:  # backup_pause ends the call: its tasks finish first
                    yield from pool.wait_all()
                if job.user_paused:  # not resumed while its tasks finished
                    job_flow.pause_now(job)  # its pause point (paused already, mostly)
                    job.busy_flag = False
                    yield waker.wait()
                if isinstance(kind, BackupKind):  # a pause ends the block-copy call
                    kind.new_call()
                continue
            # backup_loop waits for its block-copy call in job_yield, not busy
            job.busy_flag = pool is None
            if env.now < next_at:
                # block_copy_dirty_clusters' rate-limit sleep: a pause, a cancel or a new
                # speed kicks it (block_copy_kick), the call then goes on or ends
                yield env.any_of([env.timeout(next_at - env.now), waker.wait()])
                continue
            if m.leaps:
                ns = leap(m, job, source, target)
                if ns:
                    yield env.timeout(ns)
                    continue
            chunk = kind.next_chunk()
            if chunk is None:
                if kind.has_ready:
                    if job.status == JobStatus.RUNNING:
                        job_flow.become_ready(job)
                    if job.completion_requested or job.cancelled:
                        break
                    job.busy_flag = False
                    yield waker.wait()
                    continue
                if not kind.ends_by_itself():
                    job.busy_flag = False
                    yield waker.wait()
                    continue
                break
            offset, length = chunk
            if m.faults.blkdebug and isinstance(kind, MirrorKind):
                length = kind.iteration(offset)
                failures = mirror_ops(m, job, kind, offset, length)
                yield from chunk_io(m, job, source, target, length, True)
                if job.status in ENDED:
                    return
                for is_read, errno in failures:
                    if _done(job):
                        break
                    job_flow.error_action(job, is_read, errno)
                continue
            failure = chunk_fault(m, job, offset, length) if m.faults else None
        if failure is None:
            hole, progress, _busy = take_chunk(m, job, offset, length)
            if pool is not None and not hole:
                # created, the task waits for a slot; it then runs whatever came meanwhile
                job.offset -= progress
                created = pool.created(offset, length)
                yield from pool.wait_slot()
                pool.start(offset, length, progress, withheld=True, created=created)
                next_at = env.now + rate_limit_ns(length, job.speed)
                continue
            yield from chunk_io(m, job, source, target, length, True, hole)
            continue
        is_read, errno, immediately = failure
        yield from chunk_io(m, job, source, target, length, not is_read, False, started)
        if job.status in ENDED:
            return
        if pool is not None and (is_read or m.faults.blkdebug):
            # a data task's write comes after its read yielded: the tasks after it were
            # created meanwhile, whether or not the write fails before yielding (the
            # sim-only fault keeps its simpler rule: a failed write ends the call)
            at_once = immediately and (is_read or kind.chunk_is_hole(offset, length))
            pooled = finish_in_flight(m, job, pool.kind, offset, length, at_once)
            for at, size, progress in pooled:
                pool.start(at, size, progress)
        if pool is not None:  # block_copy_dirty_clusters waits for the pool
            yield from pool.wait_all()
        if job.status in ENDED:
            return
        if _done(job):
            break
        action = job_flow.error_action(job, is_read, errno)
        if isinstance(kind, BackupKind):  # backup_loop retries with a new block-copy call
            kind.new_call()
        if action == "ignore" and kind.ignore_skips:
            job_flow.skip_chunk(job, offset, length)
            ignored_error = ignored_error or job_flow.STRERROR[errno]
    if pool is not None:  # the call ends when its last task does
        yield from pool.wait_all()
        if job.status in ENDED:
            return
    if ignored_error is not None and job.error is None and not job.cancelled:
        job.error = ignored_error
    if job.status in ACTIVE:
        job_flow.work_finished(m.state, job)


BLOCK_COPY_MAX_WORKERS = 64  # block-copy's task pool (perf max-workers default)
SLICE_TIME_NS = 100_000_000  # BLOCK_JOB_SLICE_TIME: the rate limiter's time slice
BLOCK_COPY_MAX_BUFFER = 1 << 20  # a task copies at most 1 MiB


def finish_in_flight(
    m: Machine, job: Job, kind: BackupKind, offset: int, length: int, immediately: bool
) -> list[tuple[int, int, int]]:
    """A backup's block-copy call runs its tasks concurrently: block_copy_dirty_clusters
    creates a task, starts it and goes on creating the next one while the pool holds
    fewer than 64 busy tasks; it stops creating tasks once one has failed, and waits
    for the pool before the job sees the error.  A task stays busy when its first
    request yields (`BackupKind.task_yields`: a read of the source, a zero write
    that allocates the target's L2 table or waits for the lock of one that does);
    one that does not finishes at once and frees its slot.  So while the pool first
    fills nothing has finished yet: a read failing in it (failed task at [offset,
    offset + length), which stays to be copied) lets every task created until 64
    are busy complete; later, the pool is full and the failure ends the call before
    the next busy task.  A read that fails before yielding (blkdebug's
    `immediately`) ends the task at once, before the next is created.  The job
    process reaches the failed task after creating the ones before it (they are in
    its `TaskPool`); the ones after it are created now, each through the armed
    faults like any request (a rule that is not `once` fails it too), and the data
    tasks among them are returned (offset, length, progress) for the pool to run.
    Recorded on QEMU 7.2: qemu-iotests 257's
    full-sync backups (the second read fails in the fourth of 64 busy tasks: 945 of
    1024 clusters copied) and scenarios/blockapi/backup-block-copy-pool*.jsonl
    (after a resume the target's L2 table exists, every task but the failed one
    completes)."""
    filling = kind.tasks_issued < BLOCK_COPY_MAX_WORKERS  # no task has finished yet
    kind.tasks_issued += 1  # the failed task
    copied: list[tuple[int, int, int]] = []  # the data tasks: offset, length, progress
    if immediately:
        return copied
    resume = kind.cursor
    kind.cursor = (offset + length) // kind.cluster
    while True:
        chunk = kind.next_chunk()
        if chunk is None:
            break
        at, size = chunk
        if kind.task_yields(at, size, kind.chunk_is_hole(at, size), filling):
            if kind.tasks_issued >= BLOCK_COPY_MAX_WORKERS:
                break  # the pool is full: the failure ends the call first
            kind.tasks_issued += 1
        kind.cursor = (at + size) // kind.cluster
        if m.faults and chunk_fault(m, job, at, size) is not None:
            continue
        hole = kind.chunk_is_hole(at, size)
        before = job.offset
        kind.copy_chunk(at, size, counted=True)
        note_job_write(m.state.graph, kind.target, at, size)
        if not hole:
            copied.append((at, size, job.offset - before))
    kind.cursor = resume
    return copied


# a created block-copy task: its request in flight, whether a throttle group holds it
Task = tuple[simpy.Event, bool]


class TaskPool:
    """A backup's block-copy tasks in flight (block_copy_dirty_clusters' aio task
    pool of BLOCK_COPY_MAX_WORKERS): the call creates a task, starts it and goes on
    to the next without waiting for it, until 64 are in flight.  Each task reads the
    source and writes the target on its own (`chunk_io`), so the devices serve them
    concurrently; its progress counts when it completes (block_copy_task_entry's
    progress_work_done).  The model copy is done when the task is created, as for
    every chunk.  After the first tasks (`first_tasks`), a zero task (block status:
    zeroes) takes the job's own time, one after the other, as QEMU completes one
    that needs no I/O before it creates the next.  A task is in the block-copy
    state's list of requests in flight (`sim.engine.reqlist`) from its creation to
    its completion: a guest write to its clusters waits for it."""

    __slots__ = ("m", "job", "kind", "running")

    def __init__(self, m: Machine, job: Job) -> None:
        assert isinstance(job.kind, BackupKind)
        self.m, self.job, self.kind = m, job, job.kind
        self.running: list[simpy.Process] = []

    def full(self) -> bool:
        if len(self.running) < BLOCK_COPY_MAX_WORKERS:  # ended tasks included: not full
            return False
        self.running = [p for p in self.running if p.is_alive]
        return len(self.running) >= BLOCK_COPY_MAX_WORKERS

    def wait_slot(self) -> Proc:
        """aio_task_pool_wait_slot: wait until fewer than 64 tasks are in flight."""
        while self.full():
            yield self.m.env.any_of(self.running)

    def created(self, offset: int, length: int) -> Task:
        """block_copy_task_create: the task over [offset, offset + length) is in flight
        from now on (`start` runs it): its request in flight (fired when it completes)
        and whether a throttle group holds it (`Job.pausing`)."""
        held = bool(self.m.state.throttle_groups) and bool(
            groups_on_path(self.kind.reads_from()) or groups_on_path(self.kind.writes_to())
        )
        if held:
            self.job.held_tasks += 1
        return reqlist.add(self.m, self.kind.cbw, offset, length), held

    def start(
        self,
        offset: int,
        length: int,
        progress: int,
        unthrottled_read: bool = False,
        hole: bool = False,
        withheld: bool = False,
        created: Task | None = None,
    ) -> None:
        """aio_task_pool_start_task: the task's I/O runs on its own (a busy zero task:
        its write of zeroes); its `progress` (in the job's offset unless `withheld`)
        counts when it completes, and it leaves the requests in flight then
        (`created`: when it was created, else now)."""
        job, kind = self.job, self.kind
        if not withheld:
            job.offset -= progress
        source, target = kind.reads_from(), kind.writes_to()
        done, held = created if created is not None else self.created(offset, length)

        def task() -> Proc:
            yield from chunk_io(
                self.m, job, source, target, length, True, hole, unthrottled_read, False
            )
            job.offset += progress
            if held:
                job.held_tasks -= 1
                if job.user_paused and not job.held_tasks:
                    # the call a pause cancelled has ended: the job reaches its pause point
                    job_flow.pause_now(job)
            reqlist.end(done)

        proc = self.m.env.process(task())
        proc.actor = f"job:{job.id}"  # type: ignore[attr-defined]  # tie-break actor
        self.running.append(proc)

    def wait_all(self) -> Proc:
        """aio_task_pool_wait_all: until every task in flight has completed."""
        live = [p for p in self.running if p.is_alive]
        self.running = []
        if live:
            yield self.m.env.all_of(live)


MIRROR_MAX_IN_FLIGHT = 16  # mirror's ops in flight at most (MAX_IN_FLIGHT)


def mirror_ops(
    m: Machine, job: Job, kind: MirrorKind, offset: int, length: int
) -> list[tuple[bool, str]]:
    """One mirror_iteration over the dirty run [offset, offset + length) with blkdebug
    rules armed: its ops (`MirrorKind.ops`), each asking the source's block status
    first and then going through the armed faults on its own (a data op reads the
    source, then writes the target; a zero op only writes zeroes), copied when it
    succeeds; a failed one stays dirty, and the pieces of its write a qcow2 target
    made all the same keep their data.  QEMU starts ops (this iteration's, then the
    next dirty runs') until 16 are in flight before the first completes, and an op
    completes whatever the others do: after a failed op the 15 started after it
    still run, and so does the rest of its iteration unless the action is report
    (mirror_iteration stops starting ops once s->ret is set); after a report failure
    of an op's first request before yielding (`immediately`) no op after it starts.  Returns the failures
    (is_read, errno), in the order their BLOCK_JOB_ERROR comes."""
    failures: list[tuple[bool, str]] = []
    graph = m.state.graph
    source, target = kind.reads_from(), kind.writes_to()
    ops = kind.ops(offset, length)
    in_iteration = len(ops)
    reach = offset + length  # the end of the dirty runs `ops` covers
    limit = -1  # how many ops start, once one failed
    i = 0
    while i < len(ops) and (limit < 0 or i < limit):
        at, n, zero = ops[i]
        i += 1
        # the source's whole chain, the base of an active commit too: mirror reads
        # mirror_top's backing child, and its block status goes down to the end
        reads = read_path(graph, source, at, n)
        m.faults.block_status(reads, at, n)  # mirror_iteration's bdrv_block_status_above
        hit = None if zero else m.faults.take(reads, "read", at, n)
        is_read = hit is not None
        if hit is None:
            m.faults.landed = []
            op = "write-zeroes" if zero else "write"
            hit = m.faults.take(write_path(graph, target), op, at, n)
            if hit is not None:
                for node, off, size in m.faults.landed:  # qcow2 pieces written all the same
                    kind.land(node, off, size)
                m.faults.landed = []
        if hit is None:
            kind.copy_chunk(at, n)
            note_job_write(graph, target, at, n)
            continue
        fault = hit[1]
        failures.append((is_read, fault.errno))
        policy = job.on_source_error if is_read else job.on_target_error
        started = i - 1 + MIRROR_MAX_IN_FLIGHT
        if job_flow.error_policy_action(policy, fault.errno) == "report":
            # an op's first request failing before it yields stops the iteration at
            # once; a data op's write comes after its read yielded
            cap = i if fault.immediately and (is_read or zero) else started
            limit = cap if limit < 0 else min(limit, cap)
        elif limit < 0:
            limit = max(started, in_iteration)
        while len(ops) < limit:  # the next dirty runs' ops QEMU started meanwhile
            nxt = kind.next_dirty(reach)
            if nxt is None:
                break
            run = kind.iteration(nxt)
            ops += kind.ops(nxt, run)
            reach = nxt + run
    return failures


def chunk_fault(m: Machine, job: Job, offset: int, length: int) -> tuple[bool, str, bool] | None:
    """(is_read, errno, immediately) when an armed fault fails this chunk's read or
    write (`immediately`: the request fails before it yields, see `Fault`)."""
    kind = job.kind
    source, target = kind.reads_from(), kind.writes_to()
    graph = m.state.graph
    allocated_only = kind.copies_allocated_only()
    reads: list[BlockNode] = []
    if source is not None:
        reads = read_path(graph, source, offset, length, kind.read_stop(), allocated_only)
    if isinstance(kind, BackupKind) and reads:
        m.faults.block_status(reads, offset, length)
    hit = m.faults.take(reads, "read", offset, length)
    if hit is not None:
        # stream_run reports every failure as a read (stream_populate is a COR read)
        return True, hit[1].errno, hit[1].immediately
    if target is None or (allocated_only and not reads):
        return None
    # block-copy writes zeroes where block status finds no data in the source
    op = "write-zeroes" if kind.chunk_is_hole(offset, length) else "write"
    hit = m.faults.take(write_path(graph, target), op, offset, length)
    if hit is not None:
        return kind.errors_as_reads, hit[1].errno, hit[1].immediately
    return None


def chunk_io(
    m: Machine,
    job: Job,
    source: BlockNode | None,
    target: BlockNode | None,
    length: int,
    write: bool,
    hole: bool = False,
    unthrottled_read: bool = False,
    rate_limited: bool = True,
) -> Proc:
    """The time a chunk takes: read on the source's device, write on the target's,
    then the rest of what the job's `speed` asks for (block_job_ratelimit).  A hole
    (block status: zeroes or unallocated) reads nothing and writes zeroes, a metadata
    update that costs HOLE_CHUNK_NS and no device time; it still counts against the
    rate limit (block-copy spends the whole request)."""
    env, rng = m.env, m.rng
    start = env.now
    throttling = bool(m.state.throttle_groups)
    if hole:
        if write and target is not None:
            if throttling and groups_on_path(target):
                yield from throttled(m, groups_on_path(target), True, length)
            yield env.timeout(HOLE_CHUNK_NS)
    else:
        if source is not None:
            if throttling and unthrottled_read:
                for group in groups_on_path(source):
                    group.account(False, length)
            elif throttling and groups_on_path(source):
                yield from throttled(m, groups_on_path(source), False, length)
            yield from m.device_of(source).io(env, length, rng)
        if write and target is not None:
            if throttling and groups_on_path(target):
                yield from throttled(m, groups_on_path(target), True, length)
            yield from m.device_of(target).io(env, length, rng)
    rest = rate_limit_ns(length, job.speed) - (env.now - start) if rate_limited else 0
    if rest > 0:
        yield env.timeout(rest)


def leap(m: Machine, job: Job, source: BlockNode | None, target: BlockNode | None) -> int:
    """Analytic job time: do in the model, at once, every chunk that would start and
    end before anything else can happen, and answer the simulated time they take
    (0: none).

    Nothing else can happen before the next scheduled event that is not this job's
    own (guest I/O, another job, a workload, the end of the current `advance` or
    `wait`, `Machine.leap_limit`), and no command runs meanwhile, so nobody sees the
    model between the chunks: doing them now and sleeping once until the last one
    ends gives the same states, events and times as chunk by chunk.  A chunk's time
    then has no queueing and no RNG draw: leaps of data chunks need devices without
    jitter and with a free queue slot; a run of holes uses no device (its time is
    the job's own, `HOLE_CHUNK_NS`), so it leaps while a backup's tasks fill the
    queues.  No leap with an armed fault or a throttle group on the way.  The
    chunk that would end at or after that next event is left to the chunk-by-chunk
    path."""
    env = m.env
    now = env.now
    limit = min(_next_foreign_event(env), m.leap_limit)
    if limit <= now or m.faults:
        return 0
    if m.state.throttle_groups and (groups_on_path(source) or groups_on_path(target)):
        return 0  # a throttle group's buckets decide when each request may go
    src = m.device_of(source) if source is not None else None
    dst = m.device_of(target) if target is not None else None
    # data chunks queue for no device slot and draw no jitter
    devices_free = not any(
        dev is not None and (dev.timing.jitter or dev.full(now)) for dev in (src, dst)
    )
    kind, speed = job.kind, job.speed
    guard = m.leap_guard
    point = guard[1] if guard is not None and guard[0] is job else None
    t = now
    while True:
        if point is not None and t > now and kind.progress_on_next:
            break  # its next_chunk would count skipped chunks as progress now, early
        run = kind.next_chunks()
        if run is None:
            break
        offset, length, count, hole = run
        if not hole and (isinstance(kind, BackupKind) or not devices_free):
            break  # block-copy's data tasks run concurrently (TaskPool)
        ns = chunk_ns(src, dst, length, hole, speed)
        if ns <= 0:
            break
        fit = count if limit == float("inf") else min(count, int((limit - 1 - t) // ns))
        if point is not None:  # progress after the copies stays below the `until` point
            fit = min(fit, _fit_below(job, point(job), length))
        if fit <= 0:
            break
        kind.copy_chunks(offset, length, fit)
        if target is not None:
            note_job_write(m.state.graph, target, offset, fit * length)
        t += fit * ns
        if fit < count:
            break
    return int(t - now)


def _fit_below(job: Job, bound: float | None, length: int) -> int:
    """How many chunks of `length` a guarded leap may copy so that the job's progress
    surely stays below `bound` (None: no bound), with a chunk's margin: a chunk adds
    at most its length rounded up to whole clusters (backup counts whole clusters), and
    a mirror's last, partial chunk may lower its length by less than a granule."""
    if bound is None:
        return 1 << 62
    unit = max(job.kind.progress_unit(), 1)
    step = -(-length // unit) * unit + unit
    return int((bound - job.offset) // step) - 2


def chunk_ns(src: Device | None, dst: Device | None, length: int, hole: bool, speed: int) -> int:
    """What `chunk_io` takes for a chunk without a fault when no request queues and
    no device has jitter."""
    if hole:
        io = HOLE_CHUNK_NS if dst is not None else 0
    else:
        io = src.timing.io_ns(length, _NO_RNG) if src is not None else 0
        io += dst.timing.io_ns(length, _NO_RNG) if dst is not None else 0
    return max(io, rate_limit_ns(length, speed))


def _next_foreign_event(env: simpy.Environment) -> float:
    """When the next scheduled event is due, leaving out the slot releases of requests
    that just ended (nobody waits for their slot, so they change nothing)."""
    queue = env._queue  # noqa: SLF001 - simpy's heap of (time, priority, id, event)
    if not queue:
        return float("inf")
    first = queue[0]
    if not (isinstance(first[3], Release) and not first[3].resource.put_queue):
        return float(first[0])
    best = float("inf")
    for when, _prio, _eid, event in queue:
        if when < best and not (isinstance(event, Release) and not event.resource.put_queue):
            best = when
    return float(best)
