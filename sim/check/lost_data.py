"""no-lost-guest-data.

A shadow disk per device holds the stamp of the last write the guest made
through it (a `Content`, dense or sparse like the model's).  After a step that
only did guest I/O, the ranges just written are compared; after any other
step (a graph change, a job's progress or end, a cancel, a failure) every
range the guest ever wrote is compared, together with everything the device's
chain has allocated (where the guest never wrote, the device must read
zeroes: every drive starts empty).

A guest write through a filter that writes elsewhere too (copy-before-write
copies the old data of the clusters it touches to its target; a
write-blocking mirror writes the same data to its target) may change what a
device whose chain holds that target reads: after such a step every range is
compared, as after a step that may change data, so a loss is reported at the
write that caused it (QEMU 7.2 lets a copy-before-write filter's target be a
device's active node, and the device then reads the copied data).

A write that enters at a node-name instead of a device counts as a write
through every device whose data node it lands on (through raw over a format
node: on that node, at raw's offset + its own); one that lands deeper in a
device's chain, and a discard on a `discard=unmap` drive, make the device's
view of that range whatever it now is (it is adopted, not checked).  After a
reported loss the shadow adopts what the device reads, so each loss is
reported once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sim.check import extents
from sim.check.extents import Mismatch, Runs
from sim.check.observe import JOB_END_EVENTS, StepChecker
from sim.model.content import (
    SECTOR,
    SECTOR_SHIFT,
    ZERO_STAMP,
    Content,
    new_content,
    read_through,
)
from sim.model.graph import BlockBackend, BlockNode
from sim.model.io import landing

if TYPE_CHECKING:
    from sim.check.base import Violation
    from sim.engine.view import MachineView


@dataclass(eq=False)
class DeviceShadow:
    """What the guest wrote through one device."""

    backend: BlockBackend
    content: Content
    written: Runs = field(default_factory=list)
    pending: Runs = field(default_factory=list)  # written this step and suspicious
    adopt: Runs = field(default_factory=list)  # changed by something other than the guest
    # the shadow's and the chain's contents and write versions when a whole comparison
    # last found them equal: the same key gives the same answer, nothing to compare
    agreed: tuple[Any, ...] = ()

    @property
    def nsectors(self) -> int:
        return self.content.nsectors


class NoLostGuestData(StepChecker):
    """Reading any range through a device returns what the guest last wrote there (zeroes
    where it never wrote), across every graph change, job completion, cancel and failure."""

    name = "no-lost-guest-data"

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.shadows: dict[str, DeviceShadow] = {}
        machine.state.write_observers.append(self._on_write)
        machine.state.discard_observers.append(self._on_discard)
        self._wrote = False  # guest writes since the last check
        self._new_devices()

    def _new_devices(self) -> None:
        """Every device gets a shadow from its first sight: it starts empty (zeroes)."""
        for bb in self.graph.backends.values():
            self._shadow(bb)

    def _shadow(self, bb: BlockBackend) -> DeviceShadow | None:
        shadow = self.shadows.get(bb.name)
        if shadow is None or shadow.backend is not bb:
            if bb.root is None:
                return None
            shadow = DeviceShadow(bb, new_content(bb.root.size_bytes))
            self.shadows[bb.name] = shadow
        elif bb.root is not None and shadow.content.size_bytes != bb.root.size_bytes:
            # block_resize: a shrink discards what lay past the new end, growth is empty
            shadow.content.resize(bb.root.size_bytes)
            n = shadow.nsectors
            shadow.written = extents.clip(extents.union(shadow.written), n)
            shadow.pending = extents.clip(extents.union(shadow.pending), n)
            shadow.adopt = extents.clip(extents.union(shadow.adopt), n)
        return shadow

    def _on_write(
        self, bb: BlockBackend | None, root: BlockNode, offset: int, length: int, stamp: int
    ) -> None:
        if length <= 0:
            return
        self._wrote = True
        if bb is None:  # raw over a format node: the write lands there, at raw's offset
            landed, shift = landing(self.graph, root)
            offset += shift
        run = (offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT)
        if bb is not None:
            self._guest_wrote(bb, offset, length, stamp, run)
            return
        for device in self.graph.backends.values():
            if device.root is None:
                continue
            if self.graph.data_node(device.root) is landed:
                self._guest_wrote(device, offset, length, stamp, run)
            elif any(n is landed for n in self.graph.backing_chain(device.root)):
                shadow = self._shadow(device)
                if shadow is not None:
                    shadow.adopt.append(run)

    def _guest_wrote(
        self, bb: BlockBackend, offset: int, length: int, stamp: int, run: tuple[int, int]
    ) -> None:
        shadow = self.shadows.get(bb.name)
        if shadow is None or shadow.backend is not bb:
            shadow = self._shadow(bb)
            if shadow is None:
                return
        shadow.content.write(offset, length, stamp)
        shadow.written.append(run)
        # the write must have landed in the device's top data node: spot-check its last
        # sector now; a suspicious range is compared through the whole chain after the step,
        # and every range is, after every step that may change data
        root = bb.root
        top = self.graph.data_node(root).content if root is not None else None
        if top is None or not _holds(top, run[1] - 1, stamp):
            shadow.pending.append(run)

    def _on_discard(
        self, bb: BlockBackend | None, root: BlockNode, offset: int, length: int, zeroed: bool
    ) -> None:
        """A discard may zero data (whole clusters, on a discard=unmap drive): every
        device that reads the node adopts the range, whatever it reads now."""
        landed, shift = landing(self.graph, root)
        offset += shift
        for device in self.graph.backends.values():
            if device.root is not None and (
                device is bb or any(n is landed for n in self.graph.backing_chain(device.root))
            ):
                shadow = self._shadow(device)
                if shadow is not None:
                    shadow.adopt.append(extents.byte_run(offset, length))

    # -- steps ---------------------------------------------------------------------------
    quiet_work = True

    def after_step(self, index: int) -> list[Violation]:
        found = super().after_step(index)
        self._wrote = False
        return found

    def needs_quiet_step(self) -> bool:
        return self._side_writes() or any(s.pending or s.adopt for s in self.shadows.values())

    def _side_writes(self) -> bool:
        """Did guest writes pass a filter that writes another node too (a copy-before-write
        filter's copies, a write-blocking mirror's target writes)?  Looked up once per
        step with writes, on the graph the step left (a quiet step changes no graph)."""
        return self._wrote and any(
            n.write_hook is not None or n.after_write_hook is not None for n in self.graph.nodes
        )

    def check_step(self, index: int) -> None:
        quiet = not self.log.data_may_change and not self._side_writes()
        if not quiet:
            self._new_devices()
        for name, shadow in self.shadows.items():
            if quiet and not shadow.pending and not shadow.adopt:
                continue
            bb = self.graph.backends.get(name)
            if bb is not shadow.backend or bb is None or bb.root is None:
                continue
            chain = self._chain(bb.root)
            if not quiet and not shadow.adopt and not shadow.pending:
                if shadow.agreed == _versions(shadow, chain):
                    continue
            if shadow.adopt:
                self._adopt(shadow, extents.union(shadow.adopt), chain)
                shadow.adopt = []
            if quiet:
                runs = extents.union(shadow.pending)
            else:
                shadow.written = extents.union(shadow.written)
                runs = extents.union(shadow.written, extents.allocated(chain))
            shadow.pending = []
            runs = extents.clip(runs, shadow.nsectors)
            miss = extents.compare(runs, [shadow.content], chain)
            if miss is not None:
                self._lost(index, bb, miss)
                self._adopt(shadow, runs, chain)
            if not quiet:
                shadow.agreed = _versions(shadow, chain)

    def check_end(self) -> None:
        return None

    def _chain(self, root: BlockNode) -> list[Content]:
        return [n.content for n in self.graph.backing_chain(root) if n.content is not None]

    def _adopt(self, shadow: DeviceShadow, runs: Runs, chain: list[Content]) -> None:
        for lo, hi in extents.clip(runs, shadow.nsectors):
            now = read_through(chain, lo, hi)
            now[now == 0] = ZERO_STAMP
            shadow.content.write_stamps(lo, now)
        shadow.written = extents.union(shadow.written, runs)

    def _lost(self, index: int, bb: BlockBackend, miss: Mismatch) -> None:
        self.report(
            index,
            f"device '{bb.name}' lost guest data {self._context()}: {miss.where()}: the guest "
            f"last wrote {extents.describe(self.state.stamps, miss.expected)} there, the device "
            f"now reads {extents.describe(self.state.stamps, miss.actual)}",
            device=bb.name,
            root=bb.root.node_name if bb.root is not None else None,
            **miss.details(),
        )

    def _context(self) -> str:
        """What happened in this step, for the message."""
        ends = [
            f"{ev.data.get('type', 'job')} job '{ev.data.get('device')}' "
            f"{'was cancelled' if ev.name == 'BLOCK_JOB_CANCELLED' else 'ended'}"
            for ev in self.log.events()
            if ev.name in JOB_END_EVENTS
        ]
        if ends:
            return "when " + ", ".join(ends)
        if self.log.commands:
            return f"in {self.log.commands[-1].name}"
        return "while time passed"


def _holds(content: Content, sector: int, stamp: int) -> bool:
    """Does `content` hold `stamp` at `sector`?"""
    return content.stamp_at(sector) == stamp


def _versions(shadow: DeviceShadow, chain: list[Content]) -> tuple[Any, ...]:
    """What a whole comparison of a device depends on: its shadow and the contents of
    its chain, each with its write version (every write bumps it)."""
    return (shadow.content.version, *[(c, c.version) for c in chain])
