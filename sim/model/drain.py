"""Drain: QEMU's quiescing of I/O around a graph change (block/io.c, QEMU 7.2).

`bdrv_drained_begin(bs)` quiesces a node and every parent of it: a job whose
job nodes include a drained node is a parent (its `child_job`), so it is asked
to pause, runs up to its pause point (`JobDriver.drained`: a READY mirror
copies what guest writes dirtied) and pauses, `running` -> `paused` or `ready`
-> `standby` (JOB_STATUS_CHANGE).  `bdrv_drained_end` resumes it
(`paused` -> `running`, `standby` -> `ready`).  `bdrv_drain_all` does the same
for every job.  A job the user paused is already at its pause point and is
left alone; a job that is not running (created, waiting, pending, ...) has no
coroutine to pause.

Who drains, as observed on QEMU 7.2: `transaction` (every action's prepare ..
clean, and drain_all when a backup target is closed), snapshots, backups,
blockdev-reopen, qemu-io through a node name (its own BlockBackend's
attach and detach each drain the node: two pairs per command), and a job's
clean-up that drops its filter (`JobDriver.clean_drains`: a backup's
copy-before-write filter, whatever ends it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sim.model import job_flow
from sim.model.graph import BlockNode
from sim.model.jobs import ACTIVE, Job
from sim.model.state import BlockState


@dataclass
class Drain:
    """One drained section: the nodes it quiesces (None: every node, bdrv_drain_all)
    and the jobs it paused, which `end()` resumes."""

    nodes: tuple[BlockNode, ...] | None
    jobs: list[Job]

    def end(self) -> None:
        """bdrv_drained_end: every job this section paused resumes, unless the user
        paused it meanwhile."""
        for job in self.jobs:
            if job.user_paused == 0:
                job_flow.resume_now(job)
        self.jobs = []


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


def begin(state: BlockState, nodes: Iterable[BlockNode] | None = None) -> Drain:
    """bdrv_drained_begin over `nodes` (None: bdrv_drain_all_begin): the active jobs
    holding one of them, or a node above one, run to their pause point and pause,
    oldest first."""
    quiesced = None if nodes is None else tuple(quiesced_by(state, nodes))
    jobs = [j for j in state.jobs if j.user_paused == 0 and j.status in ACTIVE]
    if quiesced is not None:
        jobs = [j for j in jobs if any(n is k for n in quiesced for k in j.kind.nodes)]
    for job in jobs:
        job.kind.drained()
    for job in jobs:
        job_flow.pause_now(job)
    for job in state.jobs:
        # a user pause still waiting for a backup's tasks: the drain polls until the
        # job reaches that pause point
        if job.pausing and (
            quiesced is None or any(n is k for n in quiesced for k in job.kind.nodes)
        ):
            job_flow.pause_now(job)
    for observe in state.drain_observers:
        names = None if quiesced is None else [n.node_name for n in quiesced]
        observe(names, [j.id for j in jobs])
    return Drain(quiesced, jobs)


def drain(state: BlockState, nodes: Iterable[BlockNode] | None = None) -> None:
    """A drained section with nothing inside it that a job could see: each job it
    reaches pauses and resumes (one JOB_STATUS_CHANGE pair)."""
    begin(state, nodes).end()
