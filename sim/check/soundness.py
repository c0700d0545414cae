"""bitmap-soundness.

For every tracked bitmap (see bitmaps.py) a shadow bitarray, at the bitmap's
granularity, collects the chunks the guest wrote through the thing the bitmap
tracks (its device, or its node) while the bitmap was recording, since it was
added or last cleared.  The bitmap must mark every shadow chunk whenever
someone relies on it: when a backup freezes it, when it is a merge source,
when its sha256 is read, and at the end of the run.  (Between those moments a
bitmap may lag behind and catch up, as a commit re-dirtying its base does.)

While a backup has the bitmap frozen, a second shadow follows the successor.
If the successor takes over the name (abdicate), the bitmap's history starts
again at the job's start: the shadow becomes the successor's, plus the old
chunks the job did not copy (bitmap-mode `always` after a failure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitarray import bitarray

from sim.check.bitmaps import BitmapRegistry, Tracked
from sim.check.extents import byte_ranges
from sim.check.observe import StepChecker, label, live_jobs, owner_of
from sim.model import bitmap_ops
from sim.model.bitmap import DirtyBitmap, bits_at_granularity
from sim.model.graph import BlockBackend, BlockNode
from sim.model.io import write_shifts
from sim.model.job_backup import BackupKind

if TYPE_CHECKING:
    from sim.engine.view import MachineView


@dataclass(eq=False)
class Shadow:
    """The chunks a tracked bitmap must mark, and those its successor must."""

    bits: bitarray
    shift: int
    succ: bitarray | None = None
    copy_map: DirtyBitmap | None = None  # the freezing backup's copy bitmap

    def mark(self, offset: int, length: int) -> None:
        lo, hi = offset >> self.shift, ((offset + length - 1) >> self.shift) + 1
        self.bits[lo:hi] = 1
        if self.succ is not None:
            self.succ[lo:hi] = 1


def _fit(bits: bitarray, nbits: int) -> bitarray:
    """BITS cut or zero-padded to NBITS.  A bitmap on a protocol node covers its host
    file while the backup job reading that node still copies its guest length, so the
    job's copy map and the bitmap can differ in length (a known model difference)."""
    if len(bits) == nbits:
        return bits
    out = bits[:nbits]
    out.extend(_zeros(nbits - len(out)))
    return out


def _zeros(n: int) -> bitarray:
    bits = bitarray(n, endian="little")
    bits.setall(0)
    return bits


class BitmapSoundness(StepChecker):
    """Every byte the guest wrote through what a bitmap tracks (its device or node), while
    it was recording and since it was added or cleared, is marked dirty in it."""

    name = "bitmap-soundness"

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.bitmaps = BitmapRegistry(machine, self.log)
        self.shadows: dict[Tracked, Shadow] = {}
        self._discarded = False  # a discard happened in this step
        machine.state.write_observers.append(self._on_write)
        machine.state.discard_observers.append(self._on_discard)

    # -- guest writes --------------------------------------------------------------------
    def _on_write(
        self, bb: BlockBackend | None, root: BlockNode, offset: int, length: int, stamp: int
    ) -> None:
        if not self.shadows or length <= 0:
            return
        path: list[tuple[BlockNode, int]] | None = None
        for entry, shadow in self.shadows.items():
            at = offset
            if entry.by_device:
                if bb is not entry.backend:
                    continue
            else:
                if path is None:
                    path = write_shifts(self.graph, root)
                shift = next((s for n, s in path if n is entry.node), None)
                if shift is None:
                    continue
                at += shift  # below a raw window the write lands at its offset + ours
            # recording as the user's commands left it (not the model's flag: a model that
            # forgets an enable must not excuse itself)
            if entry.enabled and not entry.bitmap.inconsistent:
                shadow.mark(at, length)

    def _on_discard(
        self, bb: BlockBackend | None, root: BlockNode, offset: int, length: int, zeroed: bool
    ) -> None:
        # a discard that zeroed data came as a write too; any discard gets its step checked
        self._discarded = True

    # -- steps ---------------------------------------------------------------------------
    quiet_work = True

    def needs_quiet_step(self) -> bool:
        if self._discarded:
            return True
        return any(c.name == "x-debug-block-dirty-bitmap-sha256" for c in self.log.commands)

    def check_step(self, index: int) -> None:
        reg = self.bitmaps
        self._discarded = False
        if self.log.quiet:
            self._uses(index)
            return
        reg.update()
        for entry in reg.added:
            bits = entry.bitmap.bits
            self.shadows[entry] = Shadow(
                _zeros(len(bits)), entry.bitmap.granularity.bit_length() - 1
            )
        for bm in reg.cleared:
            for entry, shadow in self.shadows.items():
                if entry.bitmap is bm:
                    shadow.bits.setall(0)
        self._follow(index)
        for entry in [
            e
            for e in self.shadows
            if e not in reg.entries.values() or owner_of(self.graph, e.bitmap) is None
        ]:
            del self.shadows[entry]
        self._uses(index)
        reg.end_step()

    def check_end(self) -> None:
        for entry, shadow in self.shadows.items():
            self._check(entry, shadow, self.step, "at the end of the run")

    def _follow(self, index: int) -> None:
        """Successors: start a shadow when a backup freezes a bitmap, settle it at the end."""
        for entry, frozen, took_over in self.bitmaps.follow_successors():
            shadow = self.shadows.get(entry)
            if shadow is None:
                continue
            if shadow.succ is None:
                # frozen and released within this step: the backup copied nothing, and
                # the successor that took over recorded nothing
                if took_over:
                    shadow.bits = _zeros(len(entry.bitmap.bits))
                continue
            if took_over:
                kept = shadow.bits
                if shadow.copy_map is not None:
                    kept &= _fit(
                        bits_at_granularity(shadow.copy_map, frozen.granularity), len(kept)
                    )
                else:
                    kept.setall(0)
                shadow.bits = shadow.succ | kept
            shadow.succ = None
            shadow.copy_map = None
        for entry, shadow in self.shadows.items():
            if entry.bitmap.successor is None or shadow.succ is not None:
                continue
            # a backup froze it just now: it must be complete at the job's start
            self._check(entry, shadow, index, "a backup job started from it")
            shadow.succ = _zeros(len(shadow.bits))
            shadow.copy_map = self._copy_map_of(entry.bitmap)

    def _copy_map_of(self, bm: DirtyBitmap) -> DirtyBitmap | None:
        for job in live_jobs(self.state.jobs):
            kind = job.kind
            if isinstance(kind, BackupKind) and kind.bitmap is bm:
                return kind.copy_map
        return None

    def _uses(self, index: int) -> None:
        """Commands that read a bitmap: its sha256, a merge from it."""
        for cmd in self.log.commands:
            if not cmd.ok:
                continue
            for kind, data in cmd.actions():
                if kind == "x-debug-block-dirty-bitmap-sha256":
                    self._check_at(
                        str(data.get("node")), str(data.get("name")), index, "its sha256 was read"
                    )
                elif kind == "block-dirty-bitmap-merge":
                    _, sources = bitmap_ops.merge_operands(
                        self.graph,
                        self.state.policy,
                        str(data.get("node")),
                        str(data.get("target")),
                        list(data.get("bitmaps") or []),
                    )
                    for src in sources:
                        self._check_bitmap(src, index, "a merge read it")

    def _check_at(self, address: str, name: str, index: int, why: str) -> None:
        self._check_bitmap(self.bitmaps.lookup(address, name)[1], index, why)

    def _check_bitmap(self, bm: DirtyBitmap | None, index: int, why: str) -> None:
        if bm is None:
            return
        for entry, shadow in self.shadows.items():
            if entry.bitmap is bm:
                self._check(entry, shadow, index, why)

    def _check(self, entry: Tracked, shadow: Shadow, index: int, why: str) -> None:
        bits = entry.bitmap.bits
        if len(bits) != len(shadow.bits):
            return  # resized: not modelled
        succ = entry.bitmap.successor
        if succ is not None and len(succ.bits) == len(bits):
            bits = bits | succ.bits  # frozen: what it records goes to the successor
        missing = shadow.bits & ~bits
        if not missing.any():
            return
        g = entry.bitmap.granularity
        owner = owner_of(self.graph, entry.bitmap)
        where = f" on {label(owner)}" if owner is not None else ""
        count = missing.count() * g
        ranges = byte_ranges(missing, g, entry.bitmap.size_bytes)
        self.report(
            index,
            f"{entry.describe()}{where} does not mark {count} byte(s) the guest wrote "
            f"through {entry.thing} while it was recording, first at offset {ranges[0][0]}; "
            f"checked because {why}",
            address=entry.address,
            name=entry.name,
            missing_bytes=count,
            ranges=ranges,
        )
        shadow.bits &= bits  # report each missing chunk once
