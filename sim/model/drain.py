"""Drain: QEMU's quiescing of I/O around a graph change (block/io.c, QEMU 7.2).

`bdrv_drained_begin(bs)` quiesces a node and every parent of it: a job whose
job nodes include a drained node is a parent (its `child_job`), so it is asked
to pause, runs up to its pause point (`JobDriver.drained`: a READY mirror
copies what guest writes dirtied) and pauses, `running` -> `paused` or `ready`
-> `standby` (JOB_STATUS_CHANGE).  `bdrv_drained_end` resumes it
(`paused` -> `running`, `standby` -> `ready`).  `bdrv_drain_all` does the same
for every job.  A job the user paused is already at its pause point and is
left alone; a job that is not running (created, waiting, pending, ...) has no
coroutine to pause.  A job two sections reach pauses once and resumes when the
last of them ends (job_pause/job_resume count).

A section follows the graph while it is open (`BlockGraph.links_changed`): a
parent attached to a drained child is drained too, one detached from it is no
longer (bdrv_replace_child_noperm: the child's quiesce_counter against the
parent's, bdrv_parent_drained_begin_single / _end_single), so a node that
becomes an overlay or a filter above a drained node pauses the jobs above it
(blockdev-snapshot of a job's node, a reopen's new backing), and a subtree
section (bdrv_subtree_drained_begin, what a reopen takes) covers children
attached below it meanwhile (bdrv_apply_subtree_drain).  A job created inside
a section that reaches its nodes (a transaction's backup) is held from then on:
it pauses at its first pause point when it starts (`started`) and resumes when
the last section holding it ends.

Who drains, as observed on QEMU 7.2: `transaction` (every action's prepare ..
clean, and drain_all when a backup target is closed), snapshots, backups,
blockdev-reopen (a subtree section over the reopened nodes), qemu-io through a
node name (its own BlockBackend's attach and detach each drain the node: two
pairs per command), block-stream's start and end, block-commit's reopen of a
read-only base, and a job's end that changes the graph
(`JobDriver.prepare_drains` / `clean_drains`: a backup's or a stream's filter,
a stream's reopens, an intermediate commit's base, a mirror's or active
commit's target).  A converged mirror holds its source drained from the end of
its run until its prepare or abort (`hold` / `release`), however long it waits
for job-finalize.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sim.model import job_flow
from sim.model.graph import BlockNode
from sim.model.jobs import ACTIVE, Job
from sim.model.jobs import JobStatus as S
from sim.model.state import BlockState


@dataclass(eq=False)
class Drain:
    """One drained section: the nodes it was begun on (`roots`, None: every node,
    bdrv_drain_all; with `subtree`, their children too), and the jobs it paused,
    which `end()` resumes.  While open it is listed in `BlockState.drains`.  A section
    a job holds across its own end (`owner`: mirror_run's bdrv_drained_begin of its
    source, ended in mirror_exit_common) does not pause that job."""

    state: BlockState
    roots: tuple[BlockNode, ...] | None
    subtree: bool
    jobs: list[Job]
    owner: Job | None = None

    def nodes(self) -> list[BlockNode] | None:
        """What the section quiesces in the graph as it is now (None: every node)."""
        if self.roots is None:
            return None
        if not self.subtree:
            return quiesced_by(self.state, self.roots)
        below = [n for root in self.roots for n in self.state.graph.subtree(root)]
        return quiesced_by(self.state, below)

    def follow(self) -> None:
        """A child link changed inside the section: jobs no longer above a drained node
        resume, jobs that now are pause."""
        nodes = self.nodes()
        for job in [j for j in self.jobs if not _reached(j, nodes)]:
            self.jobs.remove(job)
            _release(self.state, job)
        held = self.jobs
        new = [
            j
            for j in _pausable(self.state)
            if j is not self.owner and _reached(j, nodes) and _absent(j, held)
        ]
        new = _in_walk_order(self.state, new, self.roots, self.subtree)
        _pause(new)
        self.jobs.extend(new)

    def end(self) -> None:
        """bdrv_drained_end: every job this section paused resumes, unless the user
        paused it meanwhile or another open section still reaches it."""
        self.state.drains = [s for s in self.state.drains if s is not self]
        observers = self.state.graph.link_observers
        observers[:] = [f for f in observers if getattr(f, "__self__", None) is not self]
        jobs, self.jobs = self.jobs, []
        for job in _in_walk_order(self.state, jobs, self.roots, self.subtree, ending=True):
            _release(self.state, job)


def held_by_jobs(state: BlockState) -> list[tuple[Job, BlockNode]]:
    """The drained sections jobs hold while they wait to be finalized (a completed
    mirror or active commit holds its source: `JobDriver.exit_drain`), as (job, node):
    a request through that node or a parent of it waits until the section ends."""
    return [
        (section.owner, node)
        for section in state.drains
        if section.owner is not None and section.roots is not None
        for node in section.roots
    ]


def held_jobs(state: BlockState) -> list[Job]:
    """The jobs an open section holds (their pause count is up: query-block-jobs says
    `paused`), the owner of a section included (its own child_job link to the drained
    node counts: a completed mirror waiting to be finalized is `paused`)."""
    out: list[Job] = []
    for section in state.drains:
        for job in [*section.jobs, *([section.owner] if section.owner else [])]:
            if _absent(job, out):
                out.append(job)
    return out


def hold(state: BlockState, job: Job, node: BlockNode) -> None:
    """The job's run() returns inside a drained section over `node` (mirror_run's
    bdrv_drained_begin(bs) once source and target converged): the other jobs reaching
    it pause now and resume when the job lets go of it (`release`), at its finalize or
    abort, however long it waits for them."""
    begin(state, [node], owner=job)


def release(state: BlockState, job: Job) -> None:
    """The job ends the sections it holds (mirror_exit_common's bdrv_drained_end(src))."""
    for section in [s for s in state.drains if s.owner is job]:
        section.end()


def quiesced_by(state: BlockState, nodes: Iterable[BlockNode]) -> list[BlockNode]:
    """`nodes` and every node above them: bdrv_parent_drained_begin drains each
    parent of a drained node (bdrv_child_cb_drained_begin), up to the roots."""
    out: list[BlockNode] = []
    todo = list(nodes)
    while todo:
        node = todo.pop()
        if any(n is node for n in out):
            continue
        out.append(node)
        todo.extend(parent for parent, _role in state.graph.parents(node))
    return out


def _reached(job: Job, nodes: list[BlockNode] | None) -> bool:
    """The job is a parent (child_job) of a quiesced node (None: bdrv_drain_all)."""
    return nodes is None or any(n is k for n in nodes for k in job.kind.nodes)


def _absent(job: Job, jobs: list[Job]) -> bool:
    return not any(j is job for j in jobs)


def _in_walk_order(
    state: BlockState,
    jobs: list[Job],
    roots: tuple[BlockNode, ...] | None,
    subtree: bool,
    ending: bool = False,
) -> list[Job]:
    """The order a section pauses its jobs, or (`ending`) resumes them.  A job has a
    pause count per child_job link the section reaches (job_pause / job_resume): it
    pauses at the first and resumes at the last.  A section over nodes reaches them in
    the order of its walk over the graph (`_walk`); bdrv_drain_all node by node in
    creation order, each node's own job links only (ignore_bds_parents)."""
    if len(jobs) < 2:
        return list(jobs)
    if roots is None:
        index = {id(node): i for i, node in enumerate(state.graph.nodes)}

        def place(job: Job) -> int:
            at = [index[id(n)] for n in job.kind.nodes if id(n) in index]
            return (max(at) if ending else min(at)) if at else len(index)

        return sorted(jobs, key=place)
    walked = _walk(state, roots, subtree)
    rank: dict[int, int] = {}
    for i, job in enumerate(walked):
        if ending or id(job) not in rank:
            rank[id(job)] = i
    return sorted(jobs, key=lambda job: rank.get(id(job), len(walked)))


# bounds a walk over a graph of many diamonds (each path is walked, as QEMU does)
WALK_LIMIT = 10_000


def _walk(state: BlockState, roots: tuple[BlockNode, ...], subtree: bool) -> list[Job]:
    """Each job link a section over `roots` reaches, in the order bdrv_drained_begin
    (and bdrv_drained_end) reach them, a job once per link: each root's parents
    (bdrv_parent_drained_begin) in its parents list order, newest-attached link first
    (`BlockGraph.stamp_links`), a node's link recursing to all of that node's parents
    first (bdrv_child_cb_drained_begin); for a subtree section
    (bdrv_subtree_drained_begin) then each child, newest-attached first, the same way,
    but for the link it was reached through."""
    graph = state.graph
    job_links = [(job, "job", node) for job in state.jobs for node in job.kind.nodes]
    graph.stamp_links(job_links)
    stamps = graph.link_stamps
    above: dict[int, list[tuple[int, BlockNode | Job]]] = {}
    for (parent, _role, child), stamp in stamps.items():
        if isinstance(parent, (BlockNode, Job)):
            above.setdefault(id(child), []).append((stamp, parent))
    for links in above.values():
        links.sort(key=lambda link: -link[0])
    visits: list[Job] = []

    def up(node: BlockNode, ignore: BlockNode | None = None) -> None:
        for _stamp, parent in above.get(id(node), []):
            if len(visits) >= WALK_LIMIT:
                return
            if isinstance(parent, Job):
                visits.append(parent)
            elif parent is not ignore:
                up(parent)

    def down(node: BlockNode, came_from: BlockNode | None, done: set[int]) -> None:
        up(node, came_from)
        children = [(stamps.get((node, role, c), -1), c) for role, c in _child_links(node)]
        for _stamp, child in sorted(children, key=lambda link: -link[0]):
            if id(child) not in done:
                done.add(id(child))
                down(child, node, done)

    for root in roots:
        if subtree:
            down(root, None, {id(root)})
        else:
            up(root)
    return visits


def _child_links(node: BlockNode) -> list[tuple[str, BlockNode]]:
    return [(role, c) for role in ("file", "backing", "target") if (c := getattr(node, role))]


def _pausable(state: BlockState) -> list[Job]:
    """Jobs a drain can pause: running or ready, or created and not started yet (a
    backup a transaction's action made: it pauses when it starts, `started`), not
    paused by their user."""
    return [
        j
        for j in state.jobs
        if j.user_paused == 0 and (j.status in ACTIVE or (j.status == S.CREATED and not j.started))
    ]


def _pause(jobs: list[Job]) -> None:
    """Each running job runs to its pause point, then all pause, in `jobs`' order."""
    active = [job for job in jobs if job.status in ACTIVE]
    for job in active:
        job.kind.drained()
    for job in active:
        job_flow.pause_now(job)


def started(state: BlockState, job: Job) -> None:
    """job_start of a job an open section holds (its pause count is up): it runs to its
    first pause point and pauses there, until the sections holding it end."""
    if any(j is job for section in state.drains for j in section.jobs):
        job_flow.pause_now(job)


def _release(state: BlockState, job: Job) -> None:
    """One section lets go of `job`: it resumes unless the user paused it or another
    open section reaches it (which then holds it)."""
    if job.user_paused:
        return
    for other in state.drains:
        if other.owner is not job and _reached(job, other.nodes()):
            if _absent(job, other.jobs):
                other.jobs.append(job)
            return
    job_flow.resume_now(job)


def begin(
    state: BlockState,
    nodes: Iterable[BlockNode] | None = None,
    subtree: bool = False,
    owner: Job | None = None,
) -> Drain:
    """bdrv_drained_begin over `nodes` (None: bdrv_drain_all_begin; `subtree`:
    bdrv_subtree_drained_begin): the active jobs holding one of them, or a node
    above one, run to their pause point and pause (`_in_walk_order`), and `end`
    resumes them in the same order.  `owner`: the job whose own run() begins the
    section as it returns (it never reaches another pause point)."""
    section = Drain(state, None if nodes is None else tuple(nodes), subtree, [], owner)
    quiesced = section.nodes()
    section.jobs = _in_walk_order(
        state,
        [j for j in _pausable(state) if j is not owner and _reached(j, quiesced)],
        section.roots,
        subtree,
    )
    _pause(section.jobs)
    for job in state.jobs:
        # a user pause still waiting for a backup's tasks: the drain polls until the
        # job reaches that pause point
        if job.pausing and _reached(job, quiesced):
            job_flow.pause_now(job)
    for observe in state.drain_observers:
        names = None if quiesced is None else [n.node_name for n in quiesced]
        observe(names, [j.id for j in section.jobs])
    state.drains.append(section)
    state.graph.link_observers.append(section.follow)
    return section


def drain(
    state: BlockState, nodes: Iterable[BlockNode] | None = None, subtree: bool = False
) -> None:
    """A drained section with nothing inside it that a job could see: each job it
    reaches pauses and resumes (one JOB_STATUS_CHANGE pair)."""
    begin(state, nodes, subtree).end()
