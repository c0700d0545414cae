"""The life of a job after creation: verbs, completion, finalization, cancel.

Follows job.c of QEMU 7.2 (job_completed, job_do_finalize, job_cancel_locked,
job_cancel_async_locked, job_user_pause/resume) and blockjob.c for the
BLOCK_JOB_* events.  Each kind supplies `prepare/commit/abort/clean` hooks
(the JobDriver callbacks); this module runs them in QEMU's order and moves
the status through `Job.set_status` (JobSTT).

Event order on the success path:
  waiting, pending, [BLOCK_JOB_PENDING when auto-finalize is off],
  (finalize:) prepare, commit, clean, BLOCK_JOB_COMPLETED, concluded, [null]
On the abort path (force cancel or error):
  aborting, abort, clean, BLOCK_JOB_CANCELLED | BLOCK_JOB_COMPLETED+error,
  concluded, [null]
"""

from __future__ import annotations

from typing import Any

from sim.errors import QMPError
from sim.model.jobs import Job
from sim.model.state import BlockState

ECANCELED = "Operation canceled"


class KindBase:
    """Defaults for a job kind (QEMU's JobDriver callbacks)."""

    has_ready = False
    nodes: list[Any]

    def prepare(self) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def clean(self) -> None: ...


def _peers(job: Job) -> list[Job]:
    """The jobs of job's transaction in QEMU's txn list order: newest first."""
    peers = list(job.txn) if job.txn else [job]
    return sorted(peers, key=lambda p: -p.seq)


def work_finished(state: BlockState, job: Job) -> None:
    """The job's run() returned (job_completed): move on to waiting or aborting."""
    job.work_done = True
    if job.error is not None or (job.cancelled and job.force):
        abort_txn(state, job)
        return
    if job.status in ("running", "ready"):
        job.set_status("waiting")
    peers = _peers(job)
    if any(not p.work_done for p in peers):
        return  # wait for the other jobs of a grouped transaction
    for p in peers:
        if p.status == "waiting":
            p.set_status("pending")
            if not p.auto_finalize:
                p.emit("BLOCK_JOB_PENDING", {"type": p.type, "id": p.id})
    if all(p.auto_finalize for p in peers):
        finalize(state, job)


def finalize(state: BlockState, job: Job) -> None:
    """job_do_finalize: prepare every peer, then commit (or abort on failure)."""
    peers = _peers(job)
    for p in peers:
        p.kind.prepare()
    for p in peers:
        p.kind.commit()
        p.kind.clean()
        release_nodes(p)
        if p.is_block_job:
            p.emit("BLOCK_JOB_COMPLETED", p.event_data())
        p.set_status("concluded")
        if p.auto_dismiss:
            dismiss(state, p)


def abort_txn(state: BlockState, job: Job, deferred: bool = False) -> None:
    """job_completed_txn_abort: every job of the transaction is torn down, newest first.

    A job whose own run just ended (not `deferred`) goes `aborting` first, in
    job_completed; the others go `aborting` one by one as each is finished.
    """
    if job.error is None and not job.cancelled:
        job.cancelled = job.force = True
    if not deferred and job.status not in ("aborting", "concluded", "null"):
        job.set_status("aborting")
    peers = _peers(job)
    for p in peers:
        if p is not job and not p.cancelled:
            p.cancelled = p.force = True
    for p in peers:
        if p.status in ("concluded", "null"):
            continue
        if p.status != "aborting":
            p.set_status("aborting")
        p.kind.abort()
        p.kind.clean()
        release_nodes(p)
        if p.error is None:
            p.error = ECANCELED
            if p.started and p.is_block_job:
                p.emit("BLOCK_JOB_CANCELLED", p.event_data())
        elif p.started and p.is_block_job:
            data = p.event_data()
            data["error"] = p.error
            p.emit("BLOCK_JOB_COMPLETED", data)
        p.set_status("concluded")
        if p.auto_dismiss:
            dismiss(state, p)


def dismiss(state: BlockState, job: Job) -> None:
    job.set_status("null")
    state.unregister_job(job)


def release_nodes(job: Job) -> None:
    """block_job_remove_all_bdrv: drop the job's op blockers."""
    reason = f"block device is in use by block job: {job.type}"
    for node in getattr(job.kind, "nodes", []):
        for i in range(len(node.blockers) - 1, -1, -1):
            if node.blockers[i][0] == reason and node.blockers[i][1] == frozenset():
                del node.blockers[i]
                break
    job.kind.nodes = []


def block_nodes(job: Job, nodes: list[Any]) -> None:
    """block_job_add_bdrv for each node: block every operation on it."""
    reason = f"block device is in use by block job: {job.type}"
    for node in nodes:
        node.blockers.append((reason, frozenset()))
    job.kind.nodes = list(nodes)


# -- verbs ---------------------------------------------------------------------------------


def find_job(state: BlockState, job_id: str, block_job_api: bool) -> Job:
    job = state.find_job(job_id)
    if job is None or (block_job_api and not job.is_block_job):
        if block_job_api:
            raise QMPError(f"Block job '{job_id}' not found", "DeviceNotActive")
        raise QMPError("Job not found")
    return job


def pause(job: Job) -> None:
    job.check_verb("pause")
    if job.user_paused:
        raise QMPError("Job is already paused")
    job.user_paused = 1
    flush = getattr(job.kind, "flush_on_drain", None)
    if flush is not None:  # the job runs an iteration before it reaches its pause point
        flush()
    if job.status == "running":
        job.set_status("paused")
    elif job.status == "ready":
        job.set_status("standby")


def resume(job: Job) -> None:
    """job_user_resume: 'not paused' is checked before the verb table."""
    if not job.user_paused:
        raise QMPError("Can't resume a job that was not paused")
    job.check_verb("resume")
    job.user_paused = 0
    job.io_status = "ok"  # block_job_user_resume -> block_job_iostatus_reset
    _unpause(job)
    job.wake()


def _unpause(job: Job) -> None:
    if job.status == "paused":
        job.set_status("running")
    elif job.status == "standby":
        job.set_status("ready")


def set_speed(job: Job, speed: int) -> None:
    job.check_verb("set-speed")
    if speed < 0:
        raise QMPError("Parameter 'speed' expects a non-negative value")
    job.speed = speed
    job.wake()


def complete(job: Job) -> None:
    job.check_verb("complete")
    if not job.kind.has_ready or job.cancelled:
        raise QMPError(f"The active block job '{job.id}' cannot be completed")
    job.completion_requested = True
    job.wake()


def user_finalize(state: BlockState, job: Job) -> None:
    job.check_verb("finalize")
    finalize(state, job)


def user_dismiss(state: BlockState, job: Job) -> None:
    job.check_verb("dismiss")
    dismiss(state, job)


def cancel(state: BlockState, job: Job, force: bool) -> None:
    """job_user_cancel -> job_cancel_locked (QEMU 7.2)."""
    job.check_verb("cancel")
    if job.kind.has_ready:
        force = force or not job.ready  # mirror_cancel: before READY every cancel is forced
    else:
        force = True
    if job.user_paused:
        job.user_paused = 0
        _unpause(job)
    deferred = job.work_done
    if force or not deferred:
        job.cancelled = True
        job.force = job.force or force
    if not job.started:
        abort_txn(state, job)
    elif deferred:
        if job.cancelled and job.force:
            abort_txn(state, job, deferred=True)
    else:
        job.wake()


# -- I/O errors ----------------------------------------------------------------------------
# block_job_error_action (blockjob.c, QEMU 7.2) and what each job kind's run()
# does with its result: backup_loop, mirror_{read,write}_complete and
# commit_run retry the chunk after `ignore` and after `stop` + resume;
# stream_run skips it after `ignore` but fails at the end ("do not remove the
# backing file if an error was there but ignored"); `report` ends the run with
# the error, which job_completed turns into BLOCK_JOB_COMPLETED with `error`.

STRERROR = {"EIO": "Input/output error", "ENOSPC": "No space left on device"}


def error_policy_action(policy: str, errno: str) -> str:
    """BlockdevOnError x errno -> BlockErrorAction: report, ignore or stop."""
    if policy in ("enospc", "auto"):
        return "stop" if errno == "ENOSPC" else "report"
    if policy in ("stop", "ignore"):
        return policy
    return "report"


def error_action(job: Job, is_read: bool, errno: str) -> str:
    """A job's I/O request failed with `errno`: emit BLOCK_JOB_ERROR and act.

    `is_read` picks the policy (on-source-error / on-target-error; commit and
    stream have one on-error for both).  `stop` pauses the job as if the user
    had (job-resume retries) and sets io-status; `report` records the error the
    job will end with.  Returns the action taken."""
    policy = job.on_source_error if is_read else job.on_target_error
    action = error_policy_action(policy, errno)
    job.emit(
        "BLOCK_JOB_ERROR",
        {"device": job.id, "operation": "read" if is_read else "write", "action": action},
    )
    if action == "stop":
        if not job.user_paused:
            job.user_paused = 1
            if job.status == "running":
                job.set_status("paused")
            elif job.status == "ready":
                job.set_status("standby")
        if job.io_status == "ok":  # block_job_iostatus_set_err
            job.io_status = "nospace" if errno == "ENOSPC" else "failed"
    elif action == "report":
        job.error = STRERROR[errno]
    return action


def ignore_is_skip(job: Job) -> bool:
    """After `ignore`, stream moves past the chunk; every other kind retries it."""
    return job.type == "stream"


def skip_chunk(job: Job, offset: int, length: int) -> None:
    """stream_run after an ignored error: progress moves on, nothing is copied."""
    kind = job.kind
    if hasattr(kind, "cursor"):
        kind.cursor = offset + length
    job.offset += length
