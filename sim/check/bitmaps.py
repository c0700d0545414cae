"""The bitmaps users created, at the address they created them, followed over time.

A `BitmapRegistry` watches successful QMP commands.  A `block-dirty-bitmap-add`
(alone or as a transaction action) at address (A, N) creates a `Tracked`
entry holding the DirtyBitmap object that appeared, found by comparing the
bitmaps listed before and after the command (inside a transaction a later
action may already have changed what A resolves to, so a lookup after the
fact would be wrong).  A remove untracks the bitmap that vanished (or that the
model flags as freed); a clear is reported to the owner of the registry.

A backup freezes a bitmap with an anonymous successor; at the end the
successor either takes over the name (abdicate) or is merged back (reclaim).
`follow_successors()` re-points an entry at its successor when it took over,
so "the same bitmap" survives a backup (the successor is the bitmap QEMU keeps).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.check.observe import Command, Owner, StepLog, label, listed_bitmaps, owner_of, owners
from sim.errors import QMPError
from sim.model import bitmap_ops
from sim.model.bitmap import DirtyBitmap
from sim.model.graph import BlockBackend, BlockNode

if TYPE_CHECKING:
    from sim.engine.view import MachineView


@dataclass(eq=False)
class Tracked:
    """A bitmap created by a successful add at (address, name)."""

    address: str
    name: str
    by_device: bool  # the address was a device (BlockBackend) name
    backend: BlockBackend | None  # the device, for a device address
    node: BlockNode | None  # the node, for a node address
    bitmap: DirtyBitmap  # the object; its successor after an abdication
    step: int  # created at
    where: str  # the owner it was last seen on, as `label()` writes it
    enabled: bool = True  # as the user's commands left it (add, enable, disable)
    successor: DirtyBitmap | None = None  # while a backup has it frozen
    broken: tuple[str, ...] | None = None  # the addressability problem last reported

    @property
    def thing(self) -> str:
        """What it tracks: `device 'drive0'` or `node 'fmt0'`."""
        return f"device '{self.address}'" if self.by_device else f"node '{self.address}'"

    def describe(self) -> str:
        return f"bitmap '{self.name}' created at '{self.address}' (step {self.step})"

    def address_gone(self, machine: MachineView) -> bool:
        """A itself went away (the device, or the node that had that name)."""
        graph = machine.state.graph
        if self.by_device:
            bb = graph.backends.get(self.address)
            return bb is not self.backend or bb is None or bb.root is None
        return graph.node(self.address) is not self.node


class BitmapRegistry:
    """Tracked bitmaps by (address, name), fed by each step's commands (`update()`)."""

    def __init__(self, machine: MachineView, log: StepLog) -> None:
        self.machine = machine
        self.graph = machine.state.graph
        self.entries: dict[tuple[str, str], Tracked] = {}
        self.added: list[Tracked] = []  # entries created since the last end_step
        self.cleared: list[DirtyBitmap] = []  # bitmaps a clear emptied since the last end_step
        self.removed: list[tuple[DirtyBitmap, str, int]] = []  # (bitmap, name, step)
        self.log = log
        self._listed = self._listed_now()
        self._lists_before = self._lists_now()
        self._roots_before = self._roots_now()

    # -- commands ------------------------------------------------------------------------
    def _listed_now(self) -> list[DirtyBitmap]:
        return [bm for _, bm in listed_bitmaps(self.graph)]

    def _lists_now(self) -> list[tuple[Owner, list[DirtyBitmap]]]:
        return [(o, list(o.bitmaps)) for o in owners(self.graph)]

    def _roots_now(self) -> dict[str, BlockNode | None]:
        return {name: bb.root for name, bb in self.graph.backends.items()}

    def _resolved_before(self, address: str, name: str) -> DirtyBitmap | None:
        """What (address, name) found before this step's command: the device itself (its
        own bitmaps, bb-attached) then its root as they were, or the node of that name,
        searched in the bitmap lists of then.  Every policy's lookup is one of these."""
        bb = self.graph.backends.get(address)
        places: list[Owner | None]
        if bb is not None:
            places = [bb, self._roots_before.get(address)]
        else:
            places = [self.graph.node(address)]
        for place in places:
            for was, bitmaps in self._lists_before:
                if place is not None and was is place:
                    for bm in bitmaps:
                        if bm.name == name:
                            return bm
        return None

    def _resolve(self, address: str, name: str, moved: bool) -> DirtyBitmap | None:
        """The bitmap an action at (address, name) worked on: as the graph was before the
        command, unless an earlier action of the same transaction changed the graph."""
        if moved:
            return self.lookup(address, name)[1]
        return self._resolved_before(address, name)

    def update(self) -> None:
        """Take in this step's successful commands.  QMP commands run with no time passing
        and the checkers look right after each step, so the lists noted at the end of the
        last step are the lists before the command."""
        for cmd in self.log.commands:
            if cmd.ok and (cmd.name == "transaction" or cmd.name.startswith("block-dirty-bitmap-")):
                self._command(cmd)
            elif cmd.name == "transaction" and not cmd.ok:
                self._failed_enable(cmd)

    def _failed_enable(self, cmd: Command) -> None:
        """A transaction that failed at a block-dirty-bitmap-enable action whose bitmap
        check failed (busy, read-only, inconsistent: the error names the bitmap) leaves
        that bitmap disabled: the action's abort disables it, since its prepare had not
        yet noted that the bitmap was enabled.  Every other action's abort restores what
        it found, so a bitmap such an action named that is still enabled was not it."""
        desc = str((cmd.response.get("error") or {}).get("desc", ""))
        for kind, data in cmd.actions():
            name = str(data.get("name"))
            if kind != "block-dirty-bitmap-enable" or not desc.startswith(f"Bitmap '{name}' is "):
                continue
            bm = self.lookup(str(data.get("node")), name)[1]
            if bm is None or bm.enabled:
                continue
            for entry in self.entries.values():
                if entry.bitmap is bm:
                    entry.enabled = False

    def _command(self, cmd: Command) -> None:
        actions = cmd.actions()
        if not any(kind.startswith("block-dirty-bitmap-") for kind, _ in actions):
            return
        now = self._listed_now()
        now_set = set(now)
        before = set(self._listed)
        new = [bm for bm in now if bm not in before]
        vanished = [bm for bm in self._listed if bm not in now_set]
        adds = [d for k, d in actions if k == "block-dirty-bitmap-add"]
        # the last add at an address gets what the address resolves to now; earlier ones
        # (a later action moved the address) get the other new bitmaps of that name
        picks: list[DirtyBitmap | None] = []
        for data in reversed(adds):
            picks.append(self._pick(str(data.get("node")), str(data.get("name")), new))
        made: dict[tuple[str, str], DirtyBitmap] = {}  # by the adds of this command
        for data, pick in zip(adds, reversed(picks), strict=True):
            if pick is not None:
                address, name = str(data.get("node")), str(data.get("name"))
                made[(address, name)] = pick
                self._track_add(address, name, pick, enabled=not data.get("disabled", False))
        moved = False  # an earlier action changed the graph (snapshot, backup filter)
        for kind, data in actions:
            if not kind.startswith("block-dirty-bitmap-"):
                moved = True
                continue
            address, name = str(data.get("node")), str(data.get("name"))
            bm = made.get((address, name)) or self._resolve(address, name, moved)
            if kind == "block-dirty-bitmap-remove":
                if bm is not None and bm not in vanished:
                    vanished.append(bm)
                self._untrack_removed(name, vanished, now)
            elif kind == "block-dirty-bitmap-clear" and bm is not None:
                self.cleared.append(bm)
            elif kind in ("block-dirty-bitmap-enable", "block-dirty-bitmap-disable"):
                for entry in self.entries.values():
                    if bm is not None and entry.bitmap is bm:
                        entry.enabled = kind == "block-dirty-bitmap-enable"
        self._listed = now

    def _pick(self, address: str, name: str, new: list[DirtyBitmap]) -> DirtyBitmap | None:
        """Claim, from the bitmaps this command created, the one an add at (address, name)
        made."""
        candidates = [bm for bm in new if bm.name == name]
        if not candidates:
            return None
        resolved = self.lookup(address, name)[1]
        pick = next((bm for bm in candidates if bm is resolved), candidates[0])
        new.remove(pick)
        return pick

    def _track_add(self, address: str, name: str, pick: DirtyBitmap, enabled: bool) -> None:
        backend = self.graph.backends.get(address)
        node = None if backend is not None else self.graph.node(address)
        owner = owner_of(self.graph, pick)
        entry = Tracked(
            address,
            name,
            backend is not None,
            backend,
            node,
            pick,
            self.step,
            label(owner) if owner is not None else "nowhere",
            enabled,
        )
        self.entries[(address, name)] = entry
        self.added.append(entry)

    def _untrack_removed(
        self, name: str, vanished: list[DirtyBitmap], now: list[DirtyBitmap]
    ) -> None:
        gone: list[DirtyBitmap] = []
        for bm in [b for b in vanished if b.name == name] + [b for b in now if b.freed]:
            if (
                bm.name == name
                and all(bm is not g for g in gone)
                and all(bm is not r for r, _, _ in self.removed)
            ):
                gone.append(bm)
        for bm in gone:
            self.removed.append((bm, name, self.step))
            for key, entry in list(self.entries.items()):
                if entry.bitmap is bm or entry.successor is bm:
                    del self.entries[key]

    # -- queries -------------------------------------------------------------------------
    def lookup(self, address: str, name: str) -> tuple[list[Owner], DirtyBitmap | None]:
        """What block_dirty_bitmap_lookup finds at (address, name) under the policy now."""
        state = self.machine.state
        try:
            found, _, bm = bitmap_ops.search(self.graph, state.policy, address, name)
        except QMPError:
            return [], None
        return found, bm

    def follow_successors(self) -> Iterator[tuple[Tracked, DirtyBitmap, bool]]:
        """Entries whose backup just ended: (entry, the frozen bitmap, abdicated?).

        An abdicated entry now holds the successor, which carries the name.  A backup
        that froze and released the bitmap within one step (one with nothing to copy
        ends with the command that started it) is followed through `abdicated_to`."""
        for entry in list(self.entries.values()):
            succ = entry.bitmap.successor
            if succ is not None:
                entry.successor = succ
                continue
            if entry.successor is None:
                heir = entry.bitmap.abdicated_to
                if heir is None or owner_of(self.graph, entry.bitmap) is not None:
                    continue
                while heir.abdicated_to is not None and heir.successor is None:
                    heir = heir.abdicated_to
                entry.successor = heir
            frozen, succ = entry.bitmap, entry.successor
            entry.successor = None
            took_over = succ.name == entry.name and owner_of(self.graph, succ) is not None
            if took_over:
                entry.bitmap = succ
            yield entry, frozen, took_over

    @property
    def step(self) -> int:
        """The step being looked at."""
        return self.log.index

    def end_step(self) -> None:
        """Forget this step's adds/clears/removes and note the bitmap lists as they are.

        Not needed after a quiet step (guest I/O, queries): the lists cannot have changed."""
        self.added, self.cleared, self.removed = [], [], []
        # the same lists for every registry of the checkers built together: taken once
        self._listed, self._lists_before, self._roots_before = self.log.once(
            "bitmap lists", self._snapshot
        )

    def _snapshot(
        self,
    ) -> tuple[
        list[DirtyBitmap], list[tuple[Owner, list[DirtyBitmap]]], dict[str, BlockNode | None]
    ]:
        """The listed bitmaps, every owner's list (copied) and the devices' roots, now.
        Nothing changes them once taken: a command's update takes new lists."""
        return self._listed_now(), self._lists_now(), self._roots_now()
