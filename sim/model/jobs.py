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
from typing import Any

from sim.errors import QMPError, SimulatorBug

STATUSES = (
    "undefined",
    "created",
    "running",
    "paused",
    "ready",
    "standby",
    "waiting",
    "pending",
    "aborting",
    "concluded",
    "null",
)

# JobSTT (job.c, QEMU 7.2): allowed next states.
JOB_STT: dict[str, frozenset[str]] = {
    "undefined": frozenset({"created"}),
    "created": frozenset({"running", "aborting", "null"}),
    "running": frozenset({"paused", "ready", "waiting", "aborting"}),
    "paused": frozenset({"running"}),
    "ready": frozenset({"standby", "waiting", "aborting"}),
    "standby": frozenset({"ready"}),
    "waiting": frozenset({"pending", "aborting"}),
    "pending": frozenset({"aborting", "concluded"}),
    "aborting": frozenset({"aborting", "concluded"}),
    "concluded": frozenset({"null"}),
    "null": frozenset(),
}

# JobVerbTable (job.c, QEMU 7.2): states in which each verb is accepted.
JOB_VERBS: dict[str, frozenset[str]] = {
    "cancel": frozenset({"created", "running", "paused", "ready", "standby", "waiting", "pending"}),
    "pause": frozenset({"created", "running", "paused", "ready", "standby"}),
    "resume": frozenset({"created", "running", "paused", "ready", "standby"}),
    "set-speed": frozenset({"created", "running", "paused", "ready", "standby"}),
    "complete": frozenset({"ready", "standby"}),
    "finalize": frozenset({"pending"}),
    "dismiss": frozenset({"concluded"}),
}

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
    status: str = "undefined"
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
    kind: Any = None  # the per-kind state object (backup, mirror, ...)
    seq: int = 0  # creation order, for deterministic iteration
    started: bool = False  # job_start() ran (a job of a failed transaction never starts)
    busy_flag: bool = False  # the job's coroutine is inside its work (set by the engine)
    wake: Callable[[], None] = field(default=lambda: None)  # set by the engine

    @property
    def is_block_job(self) -> bool:
        """A BlockJob (backup, mirror, commit, stream) rather than a plain Job
        (blockdev-create's `create`): only block jobs emit BLOCK_JOB_* events and
        appear in query-block-jobs and the block-job-* verbs."""
        return self.type != "create"

    def set_status(self, status: str) -> None:
        """Move to `status` through JobSTT and emit JOB_STATUS_CHANGE."""
        if status not in JOB_STT[self.status]:
            raise SimulatorBug(f"job {self.id!r}: illegal transition {self.status} -> {status}")
        self.status = status
        self.emit("JOB_STATUS_CHANGE", {"status": status, "id": self.id})

    @property
    def ready(self) -> bool:
        return self.status in ("ready", "standby")

    def check_verb(self, verb: str) -> None:
        if self.status not in JOB_VERBS[verb]:
            raise QMPError(
                f"Job '{self.id}' in state '{self.status}' cannot accept command verb '{verb}'"
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
            "status": self.status,
            "total-progress": self.len,
            "type": self.type,
            "id": self.id,
        }
        if self.error is not None and self.status == "concluded":
            entry["error"] = self.error
        return entry

    def query_block_jobs_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "auto-finalize": self.auto_finalize,
            "io-status": self.io_status,
            "device": self.id,
            "auto-dismiss": self.auto_dismiss,
            "busy": self.busy,
            "len": self.len,
            "offset": self.offset,
            "status": self.status,
            "paused": self.user_paused > 0 or self._drained_at_end(),
            "speed": self.speed,
            "ready": self.ready,
            "type": self.type,
        }
        if self.error is not None and self.status == "concluded":
            entry["error"] = self.error
        return entry

    def _drained_at_end(self) -> bool:
        """mirror_run ends inside bdrv_drained_begin(), released only when the job
        is finalized: pause_count > 0 while waiting/pending (seen in query-jobs on 7.2)."""
        return self.status in ("waiting", "pending") and bool(
            getattr(self.kind, "has_ready", False)
        )

    @property
    def busy(self) -> bool:
        """Job.busy: the coroutine is running (not sleeping, paused or yet to enter)."""
        return self.busy_flag and self.status in ("running", "ready") and self.user_paused == 0
