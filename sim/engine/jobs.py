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

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import simpy

from sim.engine.faults import read_path
from sim.engine.throttle import groups_on_path, throttled
from sim.engine.timing import rate_limit_ns
from sim.model import job_flow
from sim.model.graph import BlockNode
from sim.model.io import note_job_write, write_path
from sim.model.job_backup import BackupKind
from sim.model.jobs import ACTIVE, ENDED, Job, JobStatus

if TYPE_CHECKING:
    from sim.engine.machine import Machine

Proc = Generator[simpy.Event, Any, None]


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
    """job_start: running, initialise the work, and spawn the process."""
    waker = _Waker(m.env)
    job.wake = waker.wake
    job_flow.start(job)
    m.processes[job.id] = m.env.process(job_process(m, job, waker))


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


def job_process(m: Machine, job: Job, waker: _Waker) -> Proc:
    kind = job.kind
    source, target = kind.reads_from(), kind.writes_to()
    ignored_error: str | None = None  # stream: an ignored error fails the job at the end
    # job_start enters the job's coroutine at once: a backup's block-copy issues its
    # first request (up to 1 MiB) before the command returns, so a cancel or pause
    # that follows right away finds it in flight and lets it complete
    in_flight = job.type == "backup"
    while True:
        if job.status in ENDED:
            return
        if job.error is not None or (_done(job) and not in_flight):
            break
        if job.user_paused and not in_flight:
            job.busy_flag = False
            yield waker.wait()
            continue
        job.busy_flag = True
        chunk = kind.next_chunk()
        if chunk is None:
            if in_flight:  # nothing to issue: what came meanwhile applies now
                in_flight = False
                continue
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
        in_flight = False
        offset, length = chunk
        failure = chunk_fault(m, job, offset, length) if m.faults else None
        if failure is None:
            kind.copy_chunk(offset, length)
            if target is not None:
                note_job_write(m.state.graph, target, offset, length)
            yield from chunk_io(m, job, source, target, length, write=True)
            continue
        is_read, errno = failure
        yield from chunk_io(m, job, source, target, length, write=not is_read)
        if job.status in ENDED:
            return
        if is_read and isinstance(kind, BackupKind):
            finish_in_flight(m, job, kind, offset // kind.cluster)
        if _done(job):
            break
        action = job_flow.error_action(job, is_read, errno)
        if action == "ignore" and kind.ignore_skips:
            job_flow.skip_chunk(job, offset, length)
            ignored_error = ignored_error or job_flow.STRERROR[errno]
    if ignored_error is not None and job.error is None and not job.cancelled:
        job.error = ignored_error
    if job.status in ACTIVE:
        job_flow.work_finished(m.state, job)


BLOCK_COPY_MAX_WORKERS = 64  # block-copy's task pool (perf max-workers default)
BLOCK_COPY_MAX_BUFFER = 1 << 20  # a task copies at most 1 MiB


def finish_in_flight(m: Machine, job: Job, kind: BackupKind, failed: int) -> None:
    """A backup's block-copy runs its tasks concurrently (up to 64 in flight): when
    one task's read fails, the tasks already issued still complete before the job
    sees the error (block_copy_dirty_clusters waits for the whole pool).  The model
    takes the failed request as the chunk's first cluster, which stays to be copied,
    and the rest of the copy bitmap, up to what the pool holds (64 tasks of at most
    1 MiB), as issued: copied now, each cluster through the armed faults like any
    request (a rule that is not `once` fails it too).  Recorded on QEMU 7.2
    (qemu-iotests 257 and 124 with blkdebug): with a handful of dirty clusters, all
    but the failed one are copied.  QEMU splits tasks where the source's allocation
    changes and creates them while earlier ones run, so a large job leaves more
    behind (257's full-sync case copies 945 of 1024 clusters; the model 1023)."""
    bits = kind.copy_map.bits
    cluster = kind.cluster
    size = kind.source.size_bytes
    budget = BLOCK_COPY_MAX_WORKERS * BLOCK_COPY_MAX_BUFFER - cluster
    for index in bits.search(1):
        if budget <= 0:
            break
        if index == failed:
            continue
        budget -= cluster
        offset = index * cluster
        length = min(cluster, size - offset)
        if m.faults and chunk_fault(m, job, offset, length) is not None:
            continue
        kind.copy_chunk(offset, length)
        note_job_write(m.state.graph, kind.target, offset, length)


def chunk_fault(m: Machine, job: Job, offset: int, length: int) -> tuple[bool, str] | None:
    """(is_read, errno) when an armed fault fails this chunk's read or write."""
    kind = job.kind
    source, target = kind.reads_from(), kind.writes_to()
    graph = m.state.graph
    allocated_only = kind.copies_allocated_only()
    reads: list[BlockNode] = []
    if source is not None:
        reads = read_path(graph, source, offset, length, kind.read_stop(), allocated_only)
    hit = m.faults.take(reads, "read", offset, length)
    if hit is not None:
        # stream_run reports every failure as a read (stream_populate is a COR read)
        return True, hit[1].errno
    if target is None or (allocated_only and not reads):
        return None
    hit = m.faults.take(write_path(graph, target), "write", offset, length)
    if hit is not None:
        return kind.errors_as_reads, hit[1].errno
    return None


def chunk_io(
    m: Machine,
    job: Job,
    source: BlockNode | None,
    target: BlockNode | None,
    length: int,
    write: bool,
) -> Proc:
    """The time a chunk takes: read on the source's device, write on the target's,
    then the rest of what the job's `speed` asks for (block_job_ratelimit)."""
    env, rng = m.env, m.rng
    start = env.now
    throttling = bool(m.state.throttle_groups)
    if source is not None:
        if throttling and groups_on_path(source):
            yield from throttled(m, groups_on_path(source), False, length)
        yield from m.device_of(source).io(env, length, rng)
    if write and target is not None:
        if throttling and groups_on_path(target):
            yield from throttled(m, groups_on_path(target), True, length)
        yield from m.device_of(target).io(env, length, rng)
    rest = rate_limit_ns(length, job.speed) - (env.now - start)
    if rest > 0:
        yield env.timeout(rest)
