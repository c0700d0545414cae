"""job-state-legality.

The checker replays every job's life from the events alone, against its own
copy of QEMU 7.2's tables (job.c `JobSTT`, `JobVerbTable`; deliberately not
the model's, so a broken model table is caught), and checks:

- every JOB_STATUS_CHANGE is a JobSTT edge, starting from `undefined`;
- BLOCK_JOB_READY comes right as the job enters `ready` (once per job),
  BLOCK_JOB_PENDING only in `pending`;
- BLOCK_JOB_COMPLETED (success) only in `pending`, BLOCK_JOB_COMPLETED with an
  error and BLOCK_JOB_CANCELLED only in `aborting`, at most one of them, and
  a job that ran emits one before `concluded` (job_finalize_single_locked);
- a job verb command (cancel, pause, resume, set-speed, complete, finalize,
  dismiss) is accepted only in a state JobVerbTable allows, and refused with
  "cannot accept command verb" only in a state it forbids;
- verbs mean what they say: a command that drains every node (a successful
  `transaction`, `blockdev-snapshot-sync`, `blockdev-snapshot`, `drive-backup`,
  `blockdev-backup`) pauses and resumes every active job that the user has not
  paused (`paused` then `running`, or `standby` then `ready`, in that step;
  QEMU 7.2's bdrv_drain_all, verified on the binary) and that was not
  force-cancelled (job_pause_point returns at once for such a job); a job whose cancel was a
  force-cancel (`force`, `job-cancel`, or any cancel before READY, as job.c's
  job_cancel_async and mirror_cancel decide) never again reaches `waiting`,
  `pending` or READY and never completes successfully;
- at the end, with nothing left to simulate, no force-cancelled job is still
  alive (every job terminates on force-cancel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.check.observe import Command, StepChecker
from sim.model.events import Event

if TYPE_CHECKING:
    from sim.engine.view import MachineView

# job.c, QEMU 7.2: JobSTT[from] = allowed next states
JOB_STT: dict[str, tuple[str, ...]] = {
    "undefined": ("created",),
    "created": ("running", "aborting", "null"),
    "running": ("paused", "ready", "waiting", "aborting"),
    "paused": ("running",),
    "ready": ("standby", "waiting", "aborting"),
    "standby": ("ready",),
    "waiting": ("pending", "aborting"),
    "pending": ("aborting", "concluded"),
    "aborting": ("aborting", "concluded"),
    "concluded": ("null",),
    "null": (),
}
# job.c, QEMU 7.2: JobVerbTable[verb] = states accepting it
JOB_VERBS: dict[str, tuple[str, ...]] = {
    "cancel": ("created", "running", "paused", "ready", "standby", "waiting", "pending"),
    "pause": ("created", "running", "paused", "ready", "standby"),
    "resume": ("created", "running", "paused", "ready", "standby"),
    "set-speed": ("created", "running", "paused", "ready", "standby"),
    "complete": ("ready", "standby"),
    "finalize": ("pending",),
    "dismiss": ("concluded",),
}
# QMP command -> (verb, argument naming the job)
VERB_COMMANDS: dict[str, tuple[str, str]] = {
    "block-job-cancel": ("cancel", "device"),
    "job-cancel": ("cancel", "id"),
    "block-job-pause": ("pause", "device"),
    "job-pause": ("pause", "id"),
    "block-job-resume": ("resume", "device"),
    "job-resume": ("resume", "id"),
    "block-job-set-speed": ("set-speed", "device"),
    "block-job-complete": ("complete", "device"),
    "job-complete": ("complete", "id"),
    "block-job-finalize": ("finalize", "id"),
    "job-finalize": ("finalize", "id"),
    "block-job-dismiss": ("dismiss", "id"),
    "job-dismiss": ("dismiss", "id"),
}
# commands that go through qmp_transaction, which starts with bdrv_drain_all()
DRAIN_COMMANDS = (
    "transaction",
    "blockdev-snapshot-sync",
    "blockdev-snapshot",
    "drive-backup",
    "blockdev-backup",
)
DRAIN_PAIRS = {"running": ("paused", "running"), "ready": ("standby", "ready")}
_REFUSAL = re.compile(r"Job '(.*)' in state '([a-z]+)' cannot accept command verb '([a-z-]+)'")


@dataclass(eq=False)
class JobLife:
    """One job as its events tell it."""

    id: str
    status: str = "undefined"
    started: bool = False  # reached running
    ended_by: str | None = None  # BLOCK_JOB_COMPLETED / BLOCK_JOB_CANCELLED
    ready_sent: bool = False
    force_cancelled_at: int = 0  # step of a successful force-cancel
    user_paused: bool = False  # a pause was accepted and no resume since
    block_job: bool = True  # a plain Job (blockdev-create's) emits no BLOCK_JOB_* events


class JobStateLegality(StepChecker):
    """Every job state change is one QEMU 7.2's JobSTT allows, job events come in QEMU's
    order, verbs are accepted exactly in the states JobVerbTable allows, and every job
    terminates on force-cancel."""

    name = "job-state-legality"

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.lives: dict[str, JobLife] = {}

    def check_step(self, index: int) -> None:
        drains = any(c.ok and c.name in DRAIN_COMMANDS for c in self.log.commands)
        active = (
            {
                job_id: life.status
                for job_id, life in self.lives.items()
                if life.status in DRAIN_PAIRS
                and not life.user_paused
                and not life.force_cancelled_at
            }
            if drains
            else {}
        )
        for cmd in self.log.commands:
            if cmd.name in VERB_COMMANDS:
                self._verb(index, cmd)
        seen: dict[str, list[str]] = {}
        for ev in self.log.events():
            if ev.name == "JOB_STATUS_CHANGE":
                seen.setdefault(str(ev.data.get("id")), []).append(str(ev.data.get("status")))
            self._event(index, ev)
        for job_id, status in active.items():
            self._drained(index, job_id, status, seen.get(job_id, []))

    def _drained(self, index: int, job_id: str, status: str, moves: list[str]) -> None:
        """A drain must pause and resume a job that was `status` before it."""
        pause, resume = DRAIN_PAIRS[status]
        if pause in moves and resume in moves[moves.index(pause) + 1 :]:
            return
        self.report(
            index,
            f"job '{job_id}' was '{status}' and not paused by the user, but the drain of this "
            f"step did not take it to '{pause}' and back to '{resume}' (its changes: "
            f"{', '.join(moves) or 'none'})",
            job=job_id,
            status=status,
            moves=moves,
        )

    def check_end(self) -> None:
        if not self.machine.idle():
            return  # the run stopped while jobs could still move
        for life in self.lives.values():
            if life.force_cancelled_at and life.status not in ("concluded", "null"):
                self.report(
                    self.step,
                    f"job '{life.id}' was force-cancelled at step {life.force_cancelled_at} "
                    f"but is still '{life.status}' with nothing left to simulate",
                    job=life.id,
                    status=life.status,
                )

    # -- verbs -----------------------------------------------------------------------------
    def _verb(self, index: int, cmd: Command) -> None:
        verb, key = VERB_COMMANDS[cmd.name]
        job_id = str(cmd.arguments.get(key))
        life = self.lives.get(job_id)
        if cmd.ok:
            if life is None:
                self.report(
                    index,
                    f"{cmd.name} was accepted for job '{job_id}', which does not exist",
                    job=job_id,
                    verb=verb,
                )
            elif life.status not in JOB_VERBS[verb]:
                self.report(
                    index,
                    f"{cmd.name} was accepted for job '{job_id}' in state '{life.status}', "
                    f"where JobVerbTable refuses verb '{verb}' (allowed in: "
                    f"{', '.join(JOB_VERBS[verb])})",
                    job=job_id,
                    verb=verb,
                    status=life.status,
                )
            elif verb == "cancel" and (
                cmd.arguments.get("force") or cmd.name == "job-cancel" or not life.ready_sent
            ):
                life.force_cancelled_at = index
            elif verb in ("pause", "resume"):
                life.user_paused = verb == "pause"
            return
        desc = str(cmd.response.get("error", {}).get("desc", ""))
        refusal = _REFUSAL.fullmatch(desc)
        if refusal is None or life is None:
            return
        said = refusal.group(2)
        if said != life.status:
            self.report(
                index,
                f"{cmd.name} for job '{job_id}' was refused as if the job were "
                f"'{said}', but its events say '{life.status}'",
                job=job_id,
                verb=verb,
                status=life.status,
                said=said,
            )
        elif life.status in JOB_VERBS[verb]:
            self.report(
                index,
                f"{cmd.name} for job '{job_id}' was refused in state '{life.status}', where "
                f"JobVerbTable accepts verb '{verb}'",
                job=job_id,
                verb=verb,
                status=life.status,
            )

    # -- events ----------------------------------------------------------------------------
    def _event(self, index: int, ev: Event) -> None:
        data: dict[str, Any] = ev.data
        if ev.name == "JOB_STATUS_CHANGE":
            self._status(index, str(data.get("id")), str(data.get("status")))
            return
        if not ev.name.startswith("BLOCK_JOB_") or ev.name == "BLOCK_JOB_ERROR":
            return
        job_id = str(data.get("device") if "device" in data else data.get("id"))
        life = self.lives.get(job_id)
        if life is None:
            self.report(
                index,
                f"{ev.name} for job '{job_id}', which does not exist",
                job=job_id,
                event=ev.name,
            )
            return
        if life.force_cancelled_at and (
            ev.name == "BLOCK_JOB_READY"
            or (ev.name == "BLOCK_JOB_COMPLETED" and "error" not in data)
        ):
            self._after_cancel(index, life, ev.name)
        if ev.name == "BLOCK_JOB_READY":
            self._expect(index, life, ev.name, ("ready",), once=life.ready_sent)
            life.ready_sent = True
        elif ev.name == "BLOCK_JOB_PENDING":
            self._expect(index, life, ev.name, ("pending",))
        elif ev.name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            failed = ev.name == "BLOCK_JOB_CANCELLED" or "error" in data
            self._expect(
                index,
                life,
                ev.name,
                ("aborting",) if failed else ("pending",),
                once=life.ended_by is not None,
            )
            life.ended_by = ev.name

    def _expect(
        self, index: int, life: JobLife, event: str, states: tuple[str, ...], once: bool = False
    ) -> None:
        if once:
            self.report(
                index, f"job '{life.id}' emitted {event} a second time", job=life.id, event=event
            )
        elif life.status not in states:
            self.report(
                index,
                f"job '{life.id}' emitted {event} in state '{life.status}'; "
                f"QEMU emits it only in {' or '.join(states)}",
                job=life.id,
                event=event,
                status=life.status,
            )

    def _after_cancel(self, index: int, life: JobLife, what: str) -> None:
        self.report(
            index,
            f"job '{life.id}' was force-cancelled at step {life.force_cancelled_at} but then "
            f"{what}; a force-cancelled job can only abort",
            job=life.id,
            after=what,
        )

    def _status(self, index: int, job_id: str, status: str) -> None:
        life = self.lives.get(job_id)
        if life is None:
            life = self.lives[job_id] = JobLife(job_id)
            job = self.machine.state.find_job(job_id)
            life.block_job = job is None or job.is_block_job
        if life.force_cancelled_at and status in ("waiting", "pending"):
            self._after_cancel(index, life, f"went to '{status}'")
        allowed = JOB_STT.get(life.status, ())
        if status not in allowed:
            self.report(
                index,
                f"job '{job_id}' went from '{life.status}' to '{status}', which JobSTT does "
                f"not allow (from '{life.status}' only: {', '.join(allowed) or 'nothing'})",
                job=job_id,
                status=status,
                previous=life.status,
            )
        if status == "running":
            life.started = True
        elif status == "concluded" and life.started and life.ended_by is None and life.block_job:
            self.report(
                index,
                f"job '{job_id}' concluded without BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED",
                job=job_id,
            )
        life.status = status
        if status == "null":
            del self.lives[job_id]
