"""Job processes: when jobs make progress in simulated time.

A job is a plain generator function run by simpy.  It asks its kind (model)
for the next chunk, does it, and sleeps for the time the timing model says
the copy takes.  Pause, resume, complete and cancel are flags set
synchronously by the QMP verbs (model/job_flow.py); they wake the process
through a per-job simpy event so it notices at its next pause point.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import simpy

from sim.model import job_flow
from sim.model.jobs import Job

if TYPE_CHECKING:
    from sim.engine.machine import Machine


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
    job.started = True
    job.set_status("running")
    init = getattr(job.kind, "init_work", None)
    if init is not None:
        init()
    m.processes[job.id] = m.env.process(job_process(m, job, waker))


def _done(job: Job) -> bool:
    return job.cancelled and (job.force or not job.kind.has_ready or job.ready)


def job_process(m: Machine, job: Job, waker: _Waker) -> Generator[simpy.Event, Any, None]:
    kind = job.kind
    timing = m.timing_for(job)
    while True:
        if job.status in ("aborting", "concluded", "null"):
            return
        if _done(job) or job.error is not None:
            break
        if job.user_paused:
            yield waker.wait()
            continue
        chunk = kind.next_chunk()
        if chunk is None:
            if kind.has_ready:
                if job.status == "running":
                    job.set_status("ready")
                    job.emit("BLOCK_JOB_READY", job.event_data())
                if job.completion_requested or job.cancelled:
                    break
                yield waker.wait()
                continue
            if getattr(kind, "never_ends", False):
                yield waker.wait()
                continue
            break
        offset, length = chunk
        kind.copy_chunk(offset, length)
        yield m.env.timeout(timing.copy_ns(length, job.speed, m.rng))
    if job.status in ("running", "ready"):
        job_flow.work_finished(m.state, job)
