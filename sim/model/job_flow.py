"""The life of a job: every status change, verbs, completion, finalization, cancel.

The one module that moves a job through `JOB_STT` (`Job.set_status` is called
from here only): creation, start, READY, the pause/resume mapping of
`PAUSED_AS` shared by user pauses, error stops and drains (sim/model/drain.py),
and the end of the work.

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
from sim.model import drain
from sim.model.job_driver import DrainedSection
from sim.model.jobs import ACTIVE, ENDED, PAUSED_AS, RESUMED_AS, Job
from sim.model.jobs import JobStatus as S
from sim.model.qcow2_host import flush_metadata
from sim.model.state import BlockState

ECANCELED = "Operation canceled"


# -- creation, start, READY ---------------------------------------------------------------


def create(job: Job) -> None:
    """job_create: the job exists (`created`)."""
    job.set_status(S.CREATED)


def start(job: Job) -> None:
    """job_start: the work begins (`running`); the driver sets it up."""
    job.started = True
    job.set_status(S.RUNNING)
    job.kind.start()


def become_ready(job: Job) -> None:
    """job_transition_to_ready: `ready` and BLOCK_JOB_READY (kinds with `has_ready`);
    mirror_run flushes its target just before (mirror_flush)."""
    target = job.kind.writes_to()
    while target is not None and target.is_filter:
        target = target.filtered_child()
    if target is not None:
        flush_metadata(target)
    job.set_status(S.READY)
    job.emit("BLOCK_JOB_READY", job.event_data())


# -- the one pause/resume mapping ----------------------------------------------------------


def pause_now(job: Job) -> bool:
    """The job reaches its pause point: running -> paused, ready -> standby.
    Returns False if it was not in a state that pauses, or was force-cancelled:
    job_pause_point returns at once for a job job_is_cancelled calls cancelled, so
    such a job goes on to its end whatever pause a user or a drain asked for."""
    paused = PAUSED_AS.get(job.status)
    if paused is None or (job.cancelled and job.force):
        return False
    job.set_status(paused)
    return True


def resume_now(job: Job) -> bool:
    """The job leaves its pause point: paused -> running, standby -> ready.
    Returns False if it was not paused."""
    resumed = RESUMED_AS.get(job.status)
    if resumed is None:
        return False
    job.set_status(resumed)
    return True


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
    held = job.kind.exit_drain()
    if held is not None:
        drain.hold(state, job, held)
    if job.status in ACTIVE:
        job.set_status(S.WAITING)
    peers = _peers(job)
    if any(not p.work_done for p in peers):
        return  # wait for the other jobs of a grouped transaction
    for p in peers:
        if p.status == S.WAITING:
            p.set_status(S.PENDING)
            if not p.auto_finalize:
                p.emit("BLOCK_JOB_PENDING", {"type": p.type, "id": p.id})
    if all(p.auto_finalize for p in peers):
        finalize(state, job)


def finalize(state: BlockState, job: Job) -> None:
    """job_do_finalize: prepare every peer, then commit (or abort on failure)."""
    peers = _peers(job)
    for p in peers:
        _drains(state, p.kind.prepare_drains())
        p.kind.prepare()
    for p in peers:
        p.kind.commit()
        if p.kind.releases_on_success:  # before the clean-up drops nodes (mirror)
            release_nodes(p)
        _clean(state, p)
        if p.is_block_job:
            p.emit("BLOCK_JOB_COMPLETED", p.event_data())
        p.set_status(S.CONCLUDED)
        if p.auto_dismiss:
            dismiss(state, p)


def _clean(state: BlockState, job: Job) -> None:
    """The job's clean-up (`JobDriver.clean`), after the drained sections its graph
    change opens (`JobDriver.clean_drains`); then the job lets go of the section its
    run() ended in (`drain.release`)."""
    _drains(state, job.kind.clean_drains())
    job.kind.clean()
    drain.release(state, job)


def _drains(state: BlockState, sections: list[DrainedSection]) -> None:
    """The drained sections a job's graph change opens, one after the other."""
    for nodes, subtree in sections:
        drain.drain(state, nodes, subtree)


def abort_txn(state: BlockState, job: Job, deferred: bool = False) -> None:
    """job_completed_txn_abort: every job of the transaction is torn down, newest first.

    A job whose own run just ended (not `deferred`) goes `aborting` first, in
    job_completed; the others go `aborting` one by one as each is finished.
    """
    if job.error is None and not job.cancelled:
        job.cancelled = job.force = True
    if not deferred and job.status not in ENDED:
        job.set_status(S.ABORTING)
    peers = _peers(job)
    for p in peers:
        if p is not job and not p.cancelled:
            p.cancelled = p.force = True
    for p in peers:
        if p.status in (S.CONCLUDED, S.NULL):
            continue
        if p.status != S.ABORTING:
            p.set_status(S.ABORTING)
        p.kind.abort()
        if p.kind.releases_on_abort:
            release_nodes(p)
        _clean(state, p)
        if p.error is None:
            p.error = ECANCELED
            if p.started and p.is_block_job:
                p.emit("BLOCK_JOB_CANCELLED", p.event_data())
        elif p.started and p.is_block_job:
            data = p.event_data()
            data["error"] = p.error
            p.emit("BLOCK_JOB_COMPLETED", data)
        p.set_status(S.CONCLUDED)
        if p.auto_dismiss or not p.started:  # job_conclude: a job never started goes too
            dismiss(state, p)


def dismiss(state: BlockState, job: Job) -> None:
    """job_dismiss / auto-dismiss: block_job_free lets go of the job nodes it kept."""
    job.set_status(S.NULL)
    state.unregister_job(job)
    release_nodes(job, state)


def release_nodes(job: Job, state: BlockState | None = None) -> None:
    """block_job_remove_all_bdrv: drop the job's op blockers and its references; a
    node only the job kept alive (dropped from the graph meanwhile) goes with it."""
    reason = f"block device is in use by block job: {job.type}"
    released = job.kind.nodes
    for node in released:
        for i in range(len(node.blockers) - 1, -1, -1):
            if node.blockers[i][0] == reason and node.blockers[i][1] == frozenset():
                del node.blockers[i]
                break
        node.job_refs -= 1
    job.kind.nodes = []
    if state is not None:
        for node in released:
            if not node.job_refs and not node.is_filter:
                state.graph.delete_unreferenced(node)


def block_nodes(job: Job, nodes: list[Any]) -> None:
    """block_job_add_bdrv for each node: block every operation on it (and reference it)."""
    reason = f"block device is in use by block job: {job.type}"
    for node in nodes:
        node.blockers.append((reason, frozenset()))
        node.job_refs += 1
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
    job.kind.drained()  # the job runs an iteration before it reaches its pause point
    if job.held_tasks and not (job.cancelled and job.force):  # see Job.pausing
        # backup_pause cancels the block-copy call and waits for it: the job reaches its
        # pause point when its tasks in flight complete (the engine pauses it then)
        job.busy_flag = True
        job.wake()
        return
    pause_now(job)


def resume(job: Job) -> None:
    """job_user_resume: 'not paused' is checked before the verb table."""
    if not job.user_paused:
        raise QMPError("Can't resume a job that was not paused")
    job.check_verb("resume")
    job.user_paused = 0
    job.io_status = "ok"  # block_job_user_resume -> block_job_iostatus_reset
    resume_now(job)
    job.wake()


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
        resume_now(job)
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
            pause_now(job)
        if job.io_status == "ok":  # block_job_iostatus_set_err
            job.io_status = "nospace" if errno == "ENOSPC" else "failed"
    elif action == "report" and job.error is None:  # the first error is the job's
        job.error = STRERROR[errno]
    return action


def skip_chunk(job: Job, offset: int, length: int) -> None:
    """After an ignored error, a kind with `ignore_skips` (stream_run) moves past the
    chunk: progress moves on, nothing is copied."""
    job.kind.skip_chunk(offset, length)
    job.offset += length
