"""backup-point-in-time.

When a backup job appears, the checker copies the source's guest-visible
contents (clones of the chain's stamp stores: cheap, numpy) and notes which
clusters the sync mode promises: all (`full`, and `none`, whose fleecing
target reads through to the source), the clusters allocated in the top node
(`top`), the bitmap's dirty chunks (`bitmap`/`incremental`).  When the job
reports BLOCK_JOB_COMPLETED without an error, the target read through its
chain must equal that copy on the promised clusters, compared where anything
could differ: what the source had allocated, what the guest wrote since, and
what the target holds.  A fleecing target (`sync: none`) must read as the
copy after every guest write, while the job lives.

The chain property: a full backup taken with a bitmap (`sync: full` with
`bitmap`, or in the same transaction as the bitmap's add or clear) anchors a
chain; each incremental that consumes the bitmap adds its target on top.
After each successful incremental, reading the anchor plus every incremental
(newest on top) must give the source as it was when that incremental started.
A clear, a disabled bitmap under guest writes, or a removal ends the chain.

A copy-before-write filter added by blockdev-add (QEMU 7.x fleecing) is
checked the same way: when it appears the checker copies its source's
contents, and after every guest write through it its point-in-time view
(what a snapshot-access node above it reads) must equal that copy wherever
the view is readable (its access bitmap; a broken snapshot is not readable at
all).  A write that reaches the source without passing the filter (QEMU 7.2
allows it while the filter has no parent) changes the view there, and the
checker takes the new view as the reference for that range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sim.check import extents
from sim.check.extents import Runs
from sim.check.observe import StepChecker, listed_bitmaps
from sim.errors import QMPError
from sim.model import bitmap_ops
from sim.model.bitmap import DirtyBitmap
from sim.model.cbw import CopyBeforeWrite
from sim.model.content import SECTOR_SHIFT, Content
from sim.model.graph import BlockBackend, BlockNode
from sim.model.io import write_path
from sim.model.job_backup import BackupKind

if TYPE_CHECKING:
    from sim.engine.view import MachineView
    from sim.model.jobs import Job

JOB_CLUSTER_BYTES = 65536  # backup's cluster size for a qcow2 target (block-copy)


@dataclass(eq=False)
class BackupRun:
    """What the checker remembers of one backup job from its start."""

    job: Job
    step: int
    sync: str
    source: BlockNode
    target: BlockNode
    target_chain: list[Content]
    snapshot: list[Content]
    promised: Runs | None  # None: every cluster
    bitmap: DirtyBitmap | None
    successor: DirtyBitmap | None
    anchors: list[DirtyBitmap]
    written: Runs = field(default_factory=list)
    unchecked: Runs = field(default_factory=list)  # sync=none: written since the last check

    @property
    def nsectors(self) -> int:
        return (self.source.size_bytes + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT


@dataclass(eq=False)
class FleeceRun:
    """A blockdev-added copy-before-write filter: its source as it was when it opened."""

    cbw: CopyBeforeWrite
    step: int
    snapshot: list[Content]
    unchecked: Runs = field(default_factory=list)  # written since the last check


@dataclass(eq=False)
class Chain:
    """A full backup plus the incrementals taken after it with one bitmap."""

    layers: list[Content]  # newest first, as a backing chain reads
    jobs: list[str]


class BackupPointInTime(StepChecker):
    """A backup that concludes successfully holds exactly the source's guest-visible
    content at the instant it started on every cluster its sync mode promises, and a full
    backup plus every incremental after it reproduces the disk at the last one's start."""

    name = "backup-point-in-time"

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.runs: dict[str, BackupRun] = {}
        self.known: set[Job] = set()
        self.chains: dict[DirtyBitmap, Chain] = {}
        self._chain_broken = False  # a write found a chained bitmap not recording
        self.fleeces: dict[int, FleeceRun] = {}
        machine.state.write_observers.append(self._on_write)

    def _on_write(
        self, bb: BlockBackend | None, root: BlockNode, offset: int, length: int, stamp: int
    ) -> None:
        path: list[BlockNode] | None = None
        if self.runs:
            run_ = extents.byte_run(offset, length)
            for run in self.runs.values():
                run.written.append(run_)
                if run.sync == "none":
                    # only a write that reaches the source can change what the fleecing
                    # target must read (its copy-before-write copies, or the source
                    # itself through a backing link); a write elsewhere changes neither
                    if path is None:
                        path = write_path(self.graph, root)
                    if run.source in path:
                        run.unchecked.append(run_)
        if self.fleeces:
            path = write_path(self.graph, root) if path is None else path
            for fleece in self.fleeces.values():
                if any(n is fleece.cbw.filter for n in path):
                    fleece.unchecked.append(extents.byte_run(offset, length))
                else:
                    self._adopt(fleece, offset, length)
        for bm in self.chains:
            if not bm.recording:
                self._chain_broken = True

    # -- steps ---------------------------------------------------------------------------
    quiet_work = True

    def needs_quiet_step(self) -> bool:
        return (
            self._chain_broken
            or any(run.unchecked for run in self.runs.values())
            or any(f.unchecked for f in self.fleeces.values())
        )

    def check_step(self, index: int) -> None:
        self._fleecing(index)
        self._cbw_views(index)
        if self.log.quiet:
            self._drop_unrecording()
            return
        self._drop_unrecording()
        self._cleared()
        for job in self.state.jobs:
            if isinstance(job.kind, BackupKind) and job not in self.known:
                self.known.add(job)
                run = self._start(job, index)
                if run is not None:
                    self.runs[job.id] = run
        for ev in self.log.events():
            if ev.name not in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
                continue
            run = self.runs.pop(str(ev.data.get("device")), None)
            if run is None:
                continue
            ok = ev.name == "BLOCK_JOB_COMPLETED" and "error" not in ev.data
            if ok:
                self._verify(run, index)
            self._settle_chain(run, ok, index)
        listed = {bm for _, bm in listed_bitmaps(self.graph)}
        for bm in [b for b in self.chains if b not in listed]:
            del self.chains[bm]

    def _drop_unrecording(self) -> None:
        if self._chain_broken:
            for bm in [b for b in self.chains if not b.recording]:
                del self.chains[bm]
            self._chain_broken = False

    def _cleared(self) -> None:
        """A clear restarts the bitmap: the chain it carried means nothing any more."""
        for cmd in self.log.commands:
            if not cmd.ok:
                continue
            for kind, data in cmd.actions():
                if kind == "block-dirty-bitmap-clear":
                    bm = self._lookup(str(data.get("node")), str(data.get("name")))
                    if bm is not None:
                        self.chains.pop(bm, None)

    def _lookup(self, address: str, name: str) -> DirtyBitmap | None:
        try:
            return bitmap_ops.search(self.graph, self.state.policy, address, name)[2]
        except QMPError:
            return None

    # -- a job starts --------------------------------------------------------------------
    def _start(self, job: Job, index: int) -> BackupRun | None:
        kind = job.kind
        if not isinstance(kind, BackupKind):
            return None
        source, target = kind.source, kind.target
        if self.graph.data_node(target).content is None:
            return None  # a target that keeps no data (null-co) promises nothing
        sync, bitmap = kind.sync, kind.bitmap
        snapshot = [c.clone() for c in self._chain(source)]
        promised: Runs | None = None
        if sync == "top":
            top = self.graph.data_node(source).content
            promised = _to_clusters(extents.allocated([top] if top is not None else []))
        elif sync == "bitmap" and isinstance(bitmap, DirtyBitmap):
            promised = extents.bit_runs(bitmap.bits, bitmap.granularity, bitmap.size_bytes)
        anchors: list[DirtyBitmap] = []
        if sync == "full":
            anchors = self._bitmaps_reset_now()
        return BackupRun(
            job,
            index,
            sync,
            source,
            target,
            self._chain(target),
            snapshot,
            promised,
            bitmap if isinstance(bitmap, DirtyBitmap) else None,
            bitmap.successor if isinstance(bitmap, DirtyBitmap) else None,
            anchors,
        )

    def _chain(self, node: BlockNode) -> list[Content]:
        return [n.content for n in self.graph.backing_chain(node) if n.content is not None]

    def _bitmaps_reset_now(self) -> list[DirtyBitmap]:
        """Bitmaps added or cleared by this step's commands (a full backup next to them
        anchors their incremental chain)."""
        out: list[DirtyBitmap] = []
        for cmd in self.log.commands:
            if not cmd.ok:
                continue
            for kind, data in cmd.actions():
                if kind in ("block-dirty-bitmap-add", "block-dirty-bitmap-clear"):
                    bm = self._lookup(str(data.get("node")), str(data.get("name")))
                    if bm is None:  # the address moved within the transaction
                        bm = self._lookup_anywhere(str(data.get("name")))
                    if bm is not None:
                        out.append(bm)
        return out

    def _lookup_anywhere(self, name: str) -> DirtyBitmap | None:
        for _, bm in listed_bitmaps(self.graph):
            if bm.name == name:
                return bm
        return None

    # -- checks --------------------------------------------------------------------------
    def _fleecing(self, index: int) -> None:
        for run in self.runs.values():
            if run.sync != "none" or not run.unchecked:
                continue
            runs = extents.clip(extents.union(run.unchecked), run.nsectors)
            run.unchecked = []
            miss = extents.compare(runs, run.snapshot, self._chain(run.target))
            if miss is not None:
                self.report(
                    index,
                    f"fleecing target {self._name(run.target)} of backup job '{run.job.id}' "
                    f"(sync=none, started at step {run.step}) no longer reads as the source "
                    f"did when the job started: {miss.where()}; "
                    f"{miss.what(self.state.stamps, 'expected the old')}",
                    job=run.job.id,
                    **miss.details(),
                )

    def _cbw_views(self, index: int) -> None:
        """Blockdev-added copy-before-write filters: new ones are remembered with their
        source's contents; the views of known ones are compared where written."""
        job_filters = {id(j.kind.cbw) for j in self.state.jobs if isinstance(j.kind, BackupKind)}
        live: dict[int, FleeceRun] = {}
        for node in self.graph.nodes:
            cbw = node.cbw
            if cbw is None or id(cbw) in job_filters:
                continue
            fleece = self.fleeces.get(id(cbw))
            if fleece is None:
                snapshot = [c.clone() for c in self._chain(cbw.source)]
                fleece = FleeceRun(cbw, index, snapshot)
            live[id(cbw)] = fleece
        self.fleeces = live
        for fleece in live.values():
            if fleece.unchecked:
                self._check_view(fleece, index)

    def _adopt(self, fleece: FleeceRun, offset: int, length: int) -> None:
        """A write that reached the source without passing the filter (a device whose
        root is the source, or qemu-io on the source while the filter has no parent:
        QEMU 7.2 allows both) changes the view there; the view is what it now is."""
        first, end = extents.byte_run(offset, length)
        end = min(end, fleece.snapshot[0].nsectors) if fleece.snapshot else first
        if end <= first:
            return
        stamps = fleece.cbw.snapshot_stamps(first << SECTOR_SHIFT, (end - first) << SECTOR_SHIFT)
        fleece.snapshot[0].write_stamps(first, stamps)

    def _check_view(self, fleece: FleeceRun, index: int) -> None:
        cbw = fleece.cbw
        nsectors = (cbw.source.size_bytes + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT
        written = extents.clip(extents.union(fleece.unchecked), nsectors)
        fleece.unchecked = []
        if cbw.snapshot_error:
            return
        readable = extents.bit_runs(cbw.access_map.bits, cbw.cluster, cbw.source.size_bytes)
        runs = extents.intersect(written, readable)

        def view(lo: int, hi: int) -> np.ndarray:
            return cbw.snapshot_stamps(lo << SECTOR_SHIFT, (hi - lo) << SECTOR_SHIFT)

        miss = extents.compare_view(runs, fleece.snapshot, view)
        if miss is not None:
            self.report(
                index,
                f"the point-in-time view of copy-before-write node "
                f"'{cbw.filter.node_name}' (opened at step {fleece.step}) no longer reads as "
                f"its source did then: {miss.where()}; "
                f"{miss.what(self.state.stamps, 'expected the old')}",
                node=cbw.filter.node_name,
                **miss.details(),
            )

    def _verify(self, run: BackupRun, index: int) -> None:
        run.written = extents.union(run.written)
        near = extents.union(
            extents.allocated(run.snapshot), run.written, extents.allocated(run.target_chain)
        )
        if run.promised is not None:
            near = extents.intersect(near, run.promised)
        miss = extents.compare(extents.clip(near, run.nsectors), run.snapshot, run.target_chain)
        if miss is None:
            return
        self.report(
            index,
            f"backup job '{run.job.id}' (sync={run.sync}, started at step {run.step}) "
            f"completed, but its target {self._name(run.target)} does not hold the source "
            f"as it was at the start: {miss.where()}; {miss.what(self.state.stamps)}",
            job=run.job.id,
            sync=run.sync,
            **miss.details(),
        )

    def _settle_chain(self, run: BackupRun, ok: bool, index: int) -> None:
        """Anchor, extend or keep the incremental chain of the job's bitmap."""
        own = [run.target.content] if run.target.content is not None else []
        bm, succ = run.bitmap, run.successor
        took_over = bm is not None and succ is not None and succ.name == bm.name
        if run.sync == "full" and ok:
            for anchor in run.anchors:
                self.chains[anchor] = Chain(list(run.target_chain), [run.job.id])
            if took_over and succ is not None:
                self.chains[succ] = Chain(list(run.target_chain), [run.job.id])
            return
        if bm is None:
            return
        chain = self.chains.pop(bm, None)
        if chain is None:
            return
        if not took_over or succ is None:
            self.chains[bm] = chain  # the bitmap kept its bits: the chain goes on
            return
        layers = own + chain.layers
        jobs = chain.jobs + [run.job.id]
        if ok and run.sync == "bitmap":
            near = extents.union(extents.allocated(run.snapshot), extents.allocated(layers))
            miss = extents.compare(extents.clip(near, run.nsectors), run.snapshot, layers)
            if miss is not None:
                self.report(
                    index,
                    f"restoring the backup chain {' + '.join(jobs)} (bitmap '{bm.name}') does "
                    f"not reproduce the source as it was when '{run.job.id}' started: "
                    f"{miss.where()}; {miss.what(self.state.stamps)}",
                    job=run.job.id,
                    chain=jobs,
                    **miss.details(),
                )
                return  # a broken chain is not extended
        self.chains[succ] = Chain(layers, jobs)

    def _name(self, node: BlockNode) -> str:
        if node.image is not None:
            return f"'{node.image.filename}' (node '{node.node_name}')"
        return f"node '{node.node_name}'"


def _to_clusters(runs: Runs) -> Runs:
    per = JOB_CLUSTER_BYTES >> SECTOR_SHIFT
    return extents.union([((f // per) * per, -(-e // per) * per) for f, e in runs])
