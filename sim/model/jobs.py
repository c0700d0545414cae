"""Block jobs: QEMU 7.2's job state machine and verb table, as data.

Theory of operation.  `JOB_STT` is job.c's `JobSTT` and `JOB_VERBS` its
`JobVerbTable` (QEMU 7.2).  Every status change goes through `Job.set_status`,
which looks the edge up in the table and emits `JOB_STATUS_CHANGE`; an edge
the table forbids is a simulator bug (`SimulatorBug`), never silently taken.
Every verb goes through `check_verb`, which raises QEMU's exact refusal.

The engine decides *when* a job makes progress; the per-kind modules
(`job_backup`, `job_mirror`, `job_commit`, `job_stream`) decide *what* a chunk
of progress does to the graph; this module decides which states follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sim.errors import QMPError, SimulatorBug
from sim.model.job_driver import JobDriver


class JobStatus(StrEnum):
    """JobStatus (qapi/job.json, QEMU 7.2); members compare equal to their QAPI names."""

    UNDEFINED = "undefined"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    READY = "ready"
    STANDBY = "standby"
    WAITING = "waiting"
    PENDING = "pending"
    ABORTING = "aborting"
    CONCLUDED = "concluded"
    NULL = "null"


S = JobStatus
STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)

# JobSTT (job.c, QEMU 7.2): allowed next states.
JOB_STT: dict[JobStatus, frozenset[JobStatus]] = {
    S.UNDEFINED: frozenset({S.CREATED}),
    S.CREATED: frozenset({S.RUNNING, S.ABORTING, S.NULL}),
    S.RUNNING: frozenset({S.PAUSED, S.READY, S.WAITING, S.ABORTING}),
    S.PAUSED: frozenset({S.RUNNING}),
    S.READY: frozenset({S.STANDBY, S.WAITING, S.ABORTING}),
    S.STANDBY: frozenset({S.READY}),
    S.WAITING: frozenset({S.PENDING, S.ABORTING}),
    S.PENDING: frozenset({S.ABORTING, S.CONCLUDED}),
    S.ABORTING: frozenset({S.ABORTING, S.CONCLUDED}),
    S.CONCLUDED: frozenset({S.NULL}),
    S.NULL: frozenset(),
}

# JobVerbTable (job.c, QEMU 7.2): states in which each verb is accepted.
_LIVE = frozenset({S.CREATED, S.RUNNING, S.PAUSED, S.READY, S.STANDBY})
JOB_VERBS: dict[str, frozenset[JobStatus]] = {
    "cancel": _LIVE | {S.WAITING, S.PENDING},
    "pause": _LIVE,
    "resume": _LIVE,
    "set-speed": _LIVE,
    "complete": frozenset({S.READY, S.STANDBY}),
    "finalize": frozenset({S.PENDING}),
    "dismiss": frozenset({S.CONCLUDED}),
}

# The one pause/resume mapping (job_pause_point / job_resume: a running job
# pauses as `paused`, a ready one as `standby`, and comes back as it was).
PAUSED_AS: dict[JobStatus, JobStatus] = {S.RUNNING: S.PAUSED, S.READY: S.STANDBY}
RESUMED_AS: dict[JobStatus, JobStatus] = {v: k for k, v in PAUSED_AS.items()}
# States in which the job's coroutine is alive and not paused.
ACTIVE = frozenset(PAUSED_AS)
# States after which the job never runs again.
ENDED = frozenset({S.ABORTING, S.CONCLUDED, S.NULL})

Emit = Callable[[str, dict[str, Any]], None]


@dataclass(eq=False)
class Job:
    """A QEMU block job (BlockJob/Job): identity, status, progress and options."""

    id: str
    type: str  # backup, mirror, commit, stream, create
    emit: Emit
    auto_finalize: bool = True
    auto_dismiss: bool = True
    speed: int = 0
    status: JobStatus = JobStatus.UNDEFINED
    len: int = 0
    offset: int = 0
    user_paused: int = 0
    cancelled: bool = False
    force: bool = False
    completion_requested: bool = False
    error: str | None = None
    io_status: str = "ok"
    on_source_error: str = "report"
    on_target_error: str = "report"
    txn: list[Job] | None = None  # grouped completion peers, this job included
    work_done: bool = False  # run() finished
    kind: JobDriver = field(default_factory=JobDriver)  # what this kind of job does
    seq: int = 0  # creation order, for deterministic iteration
    started: bool = False  # job_start() ran (a job of a failed transaction never starts)
    busy_flag: bool = False  # the job's coroutine is inside its work (set by the engine)
    # block-copy tasks of a backup's call in flight that a throttle group holds (set by
    # the engine): a pause waits for them (backup_pause), see `pausing`
    held_tasks: int = 0
    wake: Callable[[], None] = field(default=lambda: None)  # set by the engine

    @property
    def is_block_job(self) -> bool:
        """A BlockJob (backup, mirror, commit, stream) rather than a plain Job
        (blockdev-create's `create`): only block jobs emit BLOCK_JOB_* events and
        appear in query-block-jobs and the block-job-* verbs."""
        return self.kind.block_job

    def set_status(self, status: JobStatus) -> None:
        """Move to `status` through JobSTT and emit JOB_STATUS_CHANGE.  Only
        sim.model.job_flow calls this (tests/test_layering.py checks it)."""
        status = JobStatus(status)
        if status not in JOB_STT[self.status]:
            raise SimulatorBug(f"job {self.id!r}: illegal transition {self.status} -> {status}")
        self.status = status
        self.emit("JOB_STATUS_CHANGE", {"status": status.value, "id": self.id})

    @property
    def ready(self) -> bool:
        return self.status in (S.READY, S.STANDBY)

    def check_verb(self, verb: str) -> None:
        if self.status not in JOB_VERBS[verb]:
            raise QMPError(
                f"Job '{self.id}' in state '{self.status.value}' cannot accept command verb '{verb}'"
            )

    def event_data(self) -> dict[str, Any]:
        """The common data of BLOCK_JOB_COMPLETED / CANCELLED / READY."""
        return {
            "device": self.id,
            "len": self.len,
            "offset": self.offset,
            "speed": self.speed,
            "type": self.type,
        }

    def query_jobs_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "current-progress": self.offset,
            "status": self.status.value,
            "total-progress": self.len,
            "type": self.type,
            "id": self.id,
        }
        if self.error is not None and self.status == "concluded":
            entry["error"] = self.error
        return entry

    def query_block_jobs_entry(self, drained: bool = False) -> dict[str, Any]:
        """`drained`: an open drained section holds the job (sim/model/drain.py)."""
        entry: dict[str, Any] = {
            "auto-finalize": self.auto_finalize,
            "io-status": self.io_status,
            "device": self.id,
            "auto-dismiss": self.auto_dismiss,
            "busy": self.busy,
            "len": self.len,
            "offset": self.offset,
            "status": self.status.value,
            # job->pause_count > 0: paused by its user or held by a drained section
            "paused": self.user_paused > 0 or drained,
            "speed": self.speed,
            "ready": self.ready,
            "type": self.type,
        }
        if self.error is not None and self.status == "concluded":
            entry["error"] = self.error
        return entry

    @property
    def busy(self) -> bool:
        """Job.busy: the coroutine is running (not sleeping, paused or yet to enter); a
        backup on its way to a pause point waits for its tasks busy (backup_pause)."""
        return self.busy_flag and self.status in ACTIVE and (self.user_paused == 0 or self.pausing)

    @property
    def pausing(self) -> bool:
        """Paused by the user but not at its pause point yet: a backup's block-copy call
        ends when its tasks in flight complete (backup_pause), and only then does the
        job pause.  Counted only for tasks whose I/O passes a throttle group: QEMU's
        own time-based limit holds them for as long in simulated time as on QEMU
        (seconds); a task of plain device I/O completes on QEMU (the host's page
        cache) before the next QMP command arrives, where blocksim's commands take
        no simulated time, so the job pauses at once (recorded on QEMU 7.2: paused in
        scenarios/checkers/job-lifecycles.jsonl, running until the held task
        completes in scenarios/blockapi/backup-pause-waits-for-tasks.jsonl)."""
        return bool(self.user_paused) and self.status in ACTIVE and self.held_tasks > 0
