"""`until`: let simulated time run to a chosen point of a running job (sim-only).

A race lands a command or a guest write while a job is part way through.  The
`until` step moves the clock event by event (simpy's `step()`, the order
`advance` uses) and stops right after the event that brought the job to the
point, possibly between two events due at the same instant:

| point | stops when |
|---|---|
| `progress` | the job's offset reaches `fraction` (0 to 1) of its current length |
| `chunk` | the job's offset next changes (a chunk boundary) |
| `before-ready` | a job that has a READY state copied its last chunk (offset = length) but is not READY yet |
| `ready` | the job has just become READY |
| `ending` | the job has just left running/READY for waiting, pending, aborting or concluded (a mirror: the pivot is next) |

It also stops when the job is gone or cannot move (user-paused, waiting for a
verb), when nothing is left to simulate, and after `limit` simulated seconds
(default 60).  Answers `{}`; a bad body is a trace error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.engine.machine import Machine
    from sim.model.jobs import Job

NS_PER_S = 1_000_000_000
POINTS = ("progress", "chunk", "before-ready", "ready", "ending")
MOVING = ("running", "ready")
DEFAULT_LIMIT_S = 60.0


@dataclass(frozen=True, slots=True)
class Until:
    """One parsed `until` step (sim-only): run the clock until job `job` reaches
    `point` of its run (`fraction` of the way for "progress"), at most `limit_ns` of
    simulated time."""

    job: str
    point: str
    fraction: float = 0.5
    limit_ns: int = int(DEFAULT_LIMIT_S * NS_PER_S)


def _reached(job: Job, spec: Until, start_offset: int, start_status: str) -> bool:
    if spec.point == "progress":
        return job.len > 0 and job.offset >= spec.fraction * job.len
    if spec.point == "chunk":
        return job.offset != start_offset
    if spec.point == "before-ready":
        return job.kind.has_ready and (
            job.status == "ready" or (job.len > 0 and job.offset >= job.len)
        )
    if spec.point == "ready":
        return job.status == "ready" and start_status != "ready"
    return job.status not in MOVING


def run_until(m: Machine, spec: Until) -> None:
    """Step the clock until `spec`'s point, or until the job can go no further."""
    job = m.state.find_job(spec.job)
    if job is None or job.status not in MOVING:
        return
    env = m.env
    deadline = env.now + spec.limit_ns
    start_offset, start_status = job.offset, job.status
    # the point is looked for after every simpy step: jobs leap (engine/jobs.py) only
    # where that changes nothing: no chunk may end past the deadline, and the job's
    # own leaps stop short of the progress the point names (the chunk that reaches it
    # is a simpy step of its own, as without leaps)
    saved = m.leap_limit, m.leap_guard
    m.leap_limit = min(m.leap_limit, deadline + 1)
    m.leap_guard = (job, lambda j: _progress_bound(j, spec, start_offset))
    try:
        _step_until(m, spec, job, deadline, start_offset, start_status)
    finally:
        m.leap_limit, m.leap_guard = saved


def _progress_bound(job: Job, spec: Until, start_offset: int) -> float | None:
    """The progress (job offset) the job's leaps stay below: reached by `progress` at
    the fraction, by `before-ready` at the length; `chunk` stops at the next change."""
    if spec.point == "progress":
        return spec.fraction * job.len
    if spec.point == "chunk":  # the offset may not change at all in a leap
        return float(start_offset)
    if spec.point == "before-ready" and job.kind.has_ready:
        return float(job.len)
    return None  # `ready`, `ending`: a leap never changes a job's status


def _step_until(
    m: Machine, spec: Until, job: Job, deadline: float, start_offset: int, start_status: str
) -> None:
    env = m.env
    while True:
        if _reached(job, spec, start_offset, start_status):
            return
        if job.user_paused or job not in m.state.jobs:
            return
        if job.status == "ready" and not (job.completion_requested or job.cancelled):
            return  # a READY job waits for a verb (it only copies what the guest writes)
        nxt = env.peek()
        if nxt == float("inf"):
            return
        if nxt > deadline:
            if deadline > env.now:
                env.run(until=deadline)
            return
        env.step()
