"""sim.model.drain: who a drained section reaches and what it emits."""

from __future__ import annotations

from typing import Any

from sim.model import drain, job_flow
from sim.model.jobs import Job, JobStatus
from sim.model.state import BlockState


def _state_with_job(status_log: list[str]) -> tuple[BlockState, Job]:
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)

    def emit(name: str, data: dict[str, Any]) -> None:
        status_log.append(data["status"])

    job = Job("j", "backup", emit)
    job.kind.nodes = [state.graph.node("fmt0")]
    state.register_job(job)
    job_flow.create(job)
    job_flow.start(job)
    return state, job


def test_drain_reaches_a_job_holding_a_node_above_the_drained_one() -> None:
    log: list[str] = []
    state, job = _state_with_job(log)
    section = drain.begin(state, [state.graph.node("proto0")])  # fmt0 is proto0's parent
    assert job.status == JobStatus.PAUSED and section.jobs == [job]
    section.end()
    assert job.status == JobStatus.RUNNING
    assert log == ["created", "running", "paused", "running"]


def test_drain_below_nothing_the_job_holds_leaves_it_running() -> None:
    log: list[str] = []
    state, job = _state_with_job(log)
    state.add_drive("drive1", "fmt1", "proto1", "qcow2", 1 << 20)
    drain.drain(state, [state.graph.node("proto1")])
    assert log == ["created", "running"]


def test_drain_all_and_user_pause() -> None:
    log: list[str] = []
    state, job = _state_with_job(log)
    job_flow.pause(job)  # the user's pause: already at its pause point
    drain.drain(state)
    assert log == ["created", "running", "paused"] and job.status == JobStatus.PAUSED
    job_flow.resume(job)
    drain.drain(state)  # bdrv_drain_all: one pair
    assert log[-3:] == ["running", "paused", "running"]
