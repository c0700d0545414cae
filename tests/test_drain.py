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


def test_a_parent_attached_to_a_drained_node_is_drained_too() -> None:
    # bdrv_replace_child_noperm: a job above a node that becomes the overlay of a
    # drained node pauses at once and resumes when its link goes or the section ends
    log: list[str] = []
    state, job = _state_with_job(log)
    state.add_drive("drive1", "fmt1", "proto1", "qcow2", 1 << 20)
    fmt0, fmt1 = state.graph.node("fmt0"), state.graph.node("fmt1")
    section = drain.begin(state, [fmt1])
    assert job.status == JobStatus.RUNNING and section.jobs == []
    state.graph.set_backing(fmt0, fmt1)
    state.graph.links_changed()
    assert job.status == JobStatus.PAUSED and section.jobs == [job]
    state.graph.set_backing(fmt0, None)
    state.graph.links_changed()
    assert job.status == JobStatus.RUNNING and section.jobs == []
    state.graph.set_backing(fmt0, fmt1)
    state.graph.links_changed()
    section.end()
    assert log == ["created", "running", "paused", "running", "paused", "running"]
    assert state.drains == [] and state.graph.link_observers == []


def test_a_subtree_section_covers_children_attached_below() -> None:
    # bdrv_apply_subtree_drain: a reopen's new backing child is drained with its parents
    log: list[str] = []
    state, job = _state_with_job(log)
    state.add_drive("drive1", "fmt1", "proto1", "qcow2", 1 << 20)
    fmt0, fmt1 = state.graph.node("fmt0"), state.graph.node("fmt1")
    plain = drain.begin(state, [fmt1])
    section = drain.begin(state, [fmt1], subtree=True)
    state.graph.set_backing(fmt1, fmt0)  # fmt0 (the job's node) is below fmt1 now
    state.graph.links_changed()
    assert job.status == JobStatus.PAUSED and section.jobs == [job] and plain.jobs == []
    section.end()
    plain.end()
    assert log == ["created", "running", "paused", "running"]


def test_a_job_two_sections_reach_resumes_when_the_last_ends() -> None:
    log: list[str] = []
    state, job = _state_with_job(log)
    first = drain.begin(state, [state.graph.node("fmt0")])
    second = drain.begin(state, [state.graph.node("proto0")])
    first.end()
    assert job.status == JobStatus.PAUSED and second.jobs == [job]
    second.end()
    assert log == ["created", "running", "paused", "running"]


def test_a_node_section_pauses_the_newest_job_first_drain_all_the_oldest() -> None:
    # bdrv_parent_drained_begin walks a node's parents newest-attached first;
    # bdrv_drain_all_begin drains node by node in creation order
    log: list[str] = []
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    for name in ("old", "new"):
        job = Job(name, "backup", lambda _n, data: log.append(f"{data['id']}:{data['status']}"))
        job.kind.nodes = [state.graph.node("fmt0")]
        state.register_job(job)
        job_flow.create(job)
        job_flow.start(job)
    log.clear()
    drain.drain(state, [state.graph.node("proto0")])
    assert log == ["new:paused", "old:paused", "new:running", "old:running"]
    log.clear()
    drain.drain(state)
    assert log == ["old:paused", "new:paused", "old:running", "new:running"]


def test_a_job_created_inside_a_section_starts_paused_until_it_ends() -> None:
    # block_job_add_bdrv under a drained node raises the job's pause count: job_start
    # runs it to its pause point (a transaction's backup: created, running, paused)
    log: list[str] = []
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    section = drain.begin(state, [state.graph.node("proto0")])
    job = Job("j", "backup", lambda _n, data: log.append(data["status"]))
    job.kind.nodes = [state.graph.node("fmt0")]
    state.register_job(job)
    job_flow.create(job)
    state.graph.links_changed()
    assert section.jobs == [job]
    job_flow.start(job)
    drain.started(state, job)
    assert job.status == JobStatus.PAUSED
    section.end()
    assert log == ["created", "running", "paused", "running"]


def test_a_section_a_job_holds_pauses_the_others_until_it_lets_go() -> None:
    # mirror_run returns inside bdrv_drained_begin(source): the other jobs above the
    # source pause, the owner does not (it never reaches another pause point), and
    # both count as held (pause count up) until mirror_exit_common ends the section
    log: list[str] = []
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    jobs = []
    for name in ("owner", "other"):
        job = Job(name, "mirror", lambda _n, data: log.append(f"{data['id']}:{data['status']}"))
        job.kind.nodes = [state.graph.node("fmt0")]
        state.register_job(job)
        job_flow.create(job)
        job_flow.start(job)
        jobs.append(job)
    owner, other = jobs
    log.clear()
    drain.hold(state, owner, state.graph.node("fmt0"))
    assert log == ["other:paused"] and owner.status == JobStatus.RUNNING
    assert drain.held_by_jobs(state) == [(owner, state.graph.node("fmt0"))]
    assert drain.held_jobs(state) == [other, owner]
    drain.drain(state, [state.graph.node("proto0")])  # nested: other stays paused
    assert log == ["other:paused", "owner:paused", "owner:running"]
    drain.release(state, owner)
    assert log[-1] == "other:running" and state.drains == []
    assert drain.held_by_jobs(state) == [] and drain.held_jobs(state) == []


def test_query_block_jobs_says_paused_for_a_job_a_section_holds() -> None:
    # job->pause_count > 0 whoever raised it: query-block-jobs' `paused`
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    job = Job("j", "backup", lambda _n, _d: None)
    job.kind.nodes = [state.graph.node("fmt0")]
    state.register_job(job)
    job_flow.create(job)
    job_flow.start(job)
    assert job.query_block_jobs_entry()["paused"] is False
    section = drain.begin(state, [state.graph.node("fmt0")])
    assert drain.held_jobs(state) == [job]
    assert job.query_block_jobs_entry(drained=True)["paused"] is True
    section.end()
    assert drain.held_jobs(state) == []


def test_commit_and_mirror_end_sections_over_the_base_or_target() -> None:
    # measured on QEMU 7.2 from a READY mirror above the base (scenarios/recorded/
    # commit-*-drains-*): an intermediate commit's end drains the subtree of its filter
    # once on success (bdrv_drop_intermediate) and its base twice on every end, plus a
    # subtree section reopening a read-only base read-only; mirror_exit_common drains
    # the target twice, three times with a pivot
    from sim.model.job_commit import CommitKind
    from sim.model.job_mirror import MirrorKind

    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    node = state.graph.node("fmt0")
    commit = CommitKind.__new__(CommitKind)
    commit.base, commit.base_ro = node, False
    commit.filter = state.graph.node("proto0")
    assert commit.prepare_drains() == [((commit.filter,), True)]  # the filter's subtree
    assert commit.clean_drains() == [((node,), False)] * 2
    commit.base_ro = True
    assert commit.clean_drains() == [((node,), True)] + [((node,), False)] * 2
    mirror = MirrorKind.__new__(MirrorKind)
    mirror.target, mirror.pivoted = node, False
    assert mirror.prepare_drains() == [] and mirror.clean_drains() == [((node,), False)] * 2
    mirror.pivoted = True
    assert mirror.clean_drains() == [((node,), False)] * 3


def _jobs_on(state: BlockState, log: list[str], spec: list[tuple[str, str]]) -> list[Job]:
    """Running jobs named and placed as `spec` (name, node), created in that order,
    each with its child_job link attached then (block_job_add_bdrv)."""
    jobs = []
    for name, node in spec:
        job = Job(name, "mirror", lambda _n, data: log.append(f"{data['id']}:{data['status']}"))
        job.kind.nodes = [state.graph.node(node)]
        state.register_job(job)
        state.graph.stamp_links([(job, "job", n) for n in job.kind.nodes])
        job_flow.create(job)
        job_flow.start(job)
        jobs.append(job)
    log.clear()
    return jobs


def test_a_node_section_walks_parents_newest_attached_link_first() -> None:
    # an older job reached through a link attached after the newer job's own link
    # comes first: bdrv_parent_drained_begin follows bs->parents, newest link at the head
    log: list[str] = []
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    state.add_drive("drive1", "fmt1", "proto1", "qcow2", 1 << 20)
    _jobs_on(state, log, [("old", "fmt1"), ("new", "fmt0")])
    state.graph.set_backing(state.graph.node("fmt1"), state.graph.node("fmt0"))
    state.graph.links_changed()
    drain.drain(state, [state.graph.node("fmt0")])
    assert log == ["old:paused", "new:paused", "old:running", "new:running"]


def test_a_subtree_section_walks_the_root_parents_before_its_children() -> None:
    # bdrv_subtree_drained_begin quiesces the root (its parents) and then each child:
    # the job above the root first, though the link below is older than both jobs
    log: list[str] = []
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    state.add_drive("drive1", "fmt1", "proto1", "qcow2", 1 << 20)
    state.graph.set_backing(state.graph.node("fmt1"), state.graph.node("fmt0"))
    state.graph.links_changed()
    _jobs_on(state, log, [("top", "fmt1"), ("below", "fmt0")])
    drain.drain(state, [state.graph.node("fmt1")], subtree=True)
    assert log == ["top:paused", "below:paused", "top:running", "below:running"]
    drain.drain(state, [state.graph.node("fmt0")])  # fmt0's newest link: below's job
    assert log[4:] == ["below:paused", "top:paused", "below:running", "top:running"]


def test_drain_all_pauses_by_first_linked_node_and_resumes_by_last() -> None:
    # bdrv_drain_all_begin/_end go node by node in creation order, each node's own
    # child_job links: a job pauses at its first link and resumes at its last
    log: list[str] = []
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    state.add_drive("drive1", "fmt1", "proto1", "qcow2", 1 << 20)
    older, newer = _jobs_on(state, log, [("older", "fmt1"), ("newer", "fmt0")])
    # created in the order proto0, fmt0, proto1, fmt1
    older.kind.nodes = [state.graph.node("proto1")]
    newer.kind.nodes = [state.graph.node("fmt0"), state.graph.node("fmt1")]
    drain.drain(state)
    assert log == ["newer:paused", "older:paused", "older:running", "newer:running"]


def test_stream_prepare_sections_reaching_below_the_node() -> None:
    # measured on QEMU 7.2 from a job below the streamed node (recorded/stream-end-
    # drains-seen-below-*): stream_prepare's section is a subtree section, and with
    # nothing to stream one of the filter drop's three is too
    from sim.model.job_stream import StreamKind

    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20)
    node = state.graph.node("fmt0")
    stream = StreamKind.__new__(StreamKind)
    stream.node, stream.nothing_to_do = node, False
    plain, subtree = ((node,), False), ((node,), True)
    assert stream.prepare_drains() == [plain, plain, plain, subtree]
    stream.nothing_to_do = True
    assert stream.prepare_drains() == [plain, plain, subtree, subtree]
