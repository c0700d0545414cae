"""mirror-and-commit-consistency.

While a mirror, commit or stream job exists, the checker keeps each device's
view as of the end of the last step: clones of the stamp stores of the
device's chain, kept up to date by applying the guest's writes through the
device to the clone of the top layer.  In the step where such a job ends
(BLOCK_JOB_COMPLETED, with or without an error, or BLOCK_JOB_CANCELLED), the
device must read exactly what that view holds, wherever either side has
anything allocated: a pivot onto a target that was never fully synchronised
(a hole left with stale data, a missed write) or a commit/stream that drops a
layer before its data arrived shows up here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.check import extents
from sim.check.observe import JOB_END_EVENTS, StepChecker, live_jobs
from sim.model.content import SECTOR_SHIFT, Content
from sim.model.graph import BlockBackend, BlockNode

if TYPE_CHECKING:
    from sim.engine.view import MachineView

WATCHED = ("mirror", "commit", "stream")


class MirrorCommitConsistency(StepChecker):
    """After a mirror pivots, and after a commit or stream completes, every device reads
    exactly what it read just before."""

    name = "mirror-and-commit-consistency"

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.views: dict[str, tuple[BlockBackend, list[Content]]] = {}
        self.stale = False
        machine.state.write_observers.append(self._on_write)

    def _on_write(
        self, bb: BlockBackend | None, root: BlockNode, offset: int, length: int, stamp: int
    ) -> None:
        if not self.views:
            return
        view = self.views.get(bb.name) if bb is not None else None
        if view is None or view[0] is not bb or not view[1]:
            self.stale = True  # a write by node-name: take the views again
            return
        view[1][0].write(offset, length, stamp)

    quiet_work = True

    def needs_quiet_step(self) -> bool:
        return self.stale

    def check_step(self, index: int) -> None:
        ends = [
            ev
            for ev in self.log.events()
            if ev.name in JOB_END_EVENTS and ev.data.get("type") in WATCHED
        ]
        for ev in ends:
            self._compare(index, ev.name, ev.data)
        if not any(j.type in WATCHED for j in live_jobs(self.state.jobs)):
            self.views = {}
        elif ends or self.stale or self.log.data_may_change or not self.views:
            self._take_views()

    def _take_views(self) -> None:
        self.stale = False
        self.views = {}
        for bb in self.graph.backends.values():
            if bb.root is not None:
                self.views[bb.name] = (bb, [c.clone() for c in self._chain(bb.root)])

    def _chain(self, root: BlockNode) -> list[Content]:
        return [n.content for n in self.graph.backing_chain(root) if n.content is not None]

    def _compare(self, index: int, event: str, data: dict[str, object]) -> None:
        for name, (bb, before) in self.views.items():
            if self.graph.backends.get(name) is not bb or bb.root is None:
                continue
            now = self._chain(bb.root)
            nsectors = (bb.root.size_bytes + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT
            runs = extents.clip(
                extents.union(extents.allocated(before), extents.allocated(now)), nsectors
            )
            miss = extents.compare(runs, before, now)
            if miss is None:
                continue
            how = (
                "was cancelled"
                if event == "BLOCK_JOB_CANCELLED"
                else ("failed" if "error" in data else "completed")
            )
            self.report(
                index,
                f"{data.get('type')} job '{data.get('device')}' {how} and device '{name}' "
                f"(now on node '{bb.root.node_name}') no longer reads what it read just "
                f"before: {miss.where()}; {miss.what(self.state.stamps, 'it read')}",
                job=data.get("device"),
                device=name,
                **miss.details(),
            )
