"""BlockState: the whole block layer of one simulated QEMU process.

Graph, placement policy, write stamps, jobs and the event sink, with the
start-up drives of a trace header.  No time, no simpy: the engine's
`Machine` owns a BlockState and decides when jobs make progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sim.model.content import DEFAULT_PATTERN, StampTable
from sim.model.exports import ExportTable
from sim.model.graph import BlockBackend, BlockGraph, BlockNode
from sim.model.jobs import Job
from sim.model.policy import PlacementPolicy, get_policy
from sim.model.throttle import ThrottleGroup

if TYPE_CHECKING:
    from sim.model.drain import Drain

Emit = Callable[[str, dict[str, Any]], None]
WriteObserver = Callable[[BlockBackend | None, BlockNode, int, int, int], None]
DiscardObserver = Callable[[BlockBackend | None, BlockNode, int, int, bool], None]


@dataclass(frozen=True, slots=True)
class DriveSpec:
    """One `-drive if=none,...`: a BlockBackend over a format node over a protocol node."""

    id: str
    node_name: str
    file_node_name: str | None
    format: str
    size: int
    discard: str = "ignore"
    timing: dict[str, Any] = field(default_factory=dict)  # the device's timing (engine)


class BlockState:
    """A QEMU process's block layer: what `query-*` would show at this instant."""

    def __init__(
        self, policy: str | PlacementPolicy = "qemu-7.2", emit: Emit | None = None
    ) -> None:
        self.graph = BlockGraph()
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.stamps = StampTable()
        self.jobs: list[Job] = []  # creation order; query output is newest first
        self.emit: Emit = emit if emit is not None else (lambda name, data: None)
        self.graph.emit = lambda name, data: self.emit(name, data)
        self.warnings: list[str] = []
        self.graph.warn = self.warnings.append
        self.exports = ExportTable()  # block exports and the NBD server
        # the `throttle-group` objects of object-add (QOM /objects/<id>), by id
        self.throttle_groups: dict[str, ThrottleGroup] = {}
        self._job_seq = 0
        # observers (checkers) of the guest I/O path (sim/model/io.py): every write,
        # zero-write and zeroing discard as (bb, root, offset, length, stamp); every
        # discard as (bb, root, offset, length, zeroed)
        self.write_observers: list[WriteObserver] = []
        self.discard_observers: list[DiscardObserver] = []
        # observers (the timeline) of drained sections (sim/model/drain.py): the nodes a
        # bdrv_drained_begin quiesces (None: bdrv_drain_all) and the jobs it pauses
        self.drain_observers: list[Callable[[list[str] | None, list[str]], None]] = []
        self.drains: list[Drain] = []  # the drained sections open now, oldest first

    def add_drive(
        self,
        drive_id: str,
        node_name: str,
        file_node_name: str | None,
        fmt: str,
        size_bytes: int,
        discard: str = "ignore",
    ) -> BlockBackend:
        """What `-drive if=none,id=ID,node-name=N,file.node-name=F,format=FMT` creates."""
        image = self.graph.create_image(f"{drive_id}.{fmt}", fmt, size_bytes)
        root = self.graph.open_image(
            image, node_name, file_node_name, discard_unmap=discard == "unmap"
        )
        bb = BlockBackend(drive_id, root, discard_unmap=discard == "unmap")
        self.graph.backends[drive_id] = bb
        return bb

    def new_stamp(self, pattern: int = DEFAULT_PATTERN) -> int:
        return self.stamps.new(pattern)

    def find_job(self, job_id: str) -> Job | None:
        for job in self.jobs:
            if job.id == job_id:
                return job
        return None

    def register_job(self, job: Job) -> None:
        self._job_seq += 1
        job.seq = self._job_seq
        self.jobs.append(job)

    def unregister_job(self, job: Job) -> None:
        if job in self.jobs:
            self.jobs.remove(job)

    def resolve_target(self, name: str) -> tuple[BlockBackend | None, BlockNode | None]:
        """qemu-io's target: a backend (its root) or else a node."""
        bb = self.graph.backends.get(name)
        if bb is not None:
            return bb, bb.root
        return None, self.graph.node(name)
