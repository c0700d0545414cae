"""bitmap-addressability: a bitmap stays reachable where it was created."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.check.bitmaps import BitmapRegistry, Tracked
from sim.check.observe import StepChecker, label, listed_bitmaps, owner_of

if TYPE_CHECKING:
    from sim.engine.view import MachineView


class BitmapAddressability(StepChecker):
    """Every bitmap created by a successful add at (A, N) stays reachable at (A, N), as
    the same bitmap, until it is removed or A goes away; no removed bitmap stays listed."""

    name = "bitmap-addressability"

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.bitmaps = BitmapRegistry(machine, self.log)

    def check_step(self, index: int) -> None:
        reg = self.bitmaps
        reg.update()
        for _ in reg.follow_successors():
            pass
        for key, entry in list(reg.entries.items()):
            if entry.address_gone(self.machine):
                del reg.entries[key]
            elif not self._reachable(entry, index):
                del reg.entries[key]
        self._removed_still_listed(index)
        reg.end_step()

    def check_end(self) -> None:
        return None

    def _reachable(self, entry: Tracked, index: int) -> bool:
        """Report a broken address once; False when the bitmap no longer exists."""
        found_owners, found = self.bitmaps.lookup(entry.address, entry.name)
        owner = owner_of(self.graph, entry.bitmap)
        if found is entry.bitmap and owner is not None:
            entry.broken = None
            entry.where = label(owner)
            return True
        resolved = label(found_owners[-1]) if found_owners else "nothing"
        if owner is None:
            self.report(
                index,
                f"{entry.describe()} was destroyed without being removed: it was last on "
                f"{entry.where}; '{entry.address}' now resolves to {resolved}",
                address=entry.address,
                name=entry.name,
                last_owner=entry.where,
                resolves_to=resolved,
            )
            return False
        here = label(owner)
        if found is None:
            problem = (
                f"'{entry.address}' now resolves to {resolved}, which has no bitmap '{entry.name}'"
            )
        else:
            other = owner_of(self.graph, found)
            problem = (
                f"('{entry.address}', '{entry.name}') now finds another bitmap, on "
                f"{label(other) if other is not None else resolved}"
            )
        moved = f" (it was on {entry.where})" if here != entry.where else ""
        key = ("missing" if found is None else "other", resolved, here)
        if entry.broken != key:
            self.report(
                index,
                f"{entry.describe()} is no longer reachable at that address: {problem}; the "
                f"bitmap is on {here}{moved}",
                address=entry.address,
                name=entry.name,
                resolves_to=resolved,
                owner=here,
                was_on=entry.where,
            )
            entry.broken = key
        entry.where = here
        return True

    def _removed_still_listed(self, index: int) -> None:
        removed = self.bitmaps.removed
        if not removed:
            return
        for owner, bm in listed_bitmaps(self.graph):
            for gone, name, step in removed:
                if bm is gone:
                    self.report(
                        index,
                        f"bitmap '{name}' removed at step {step} is still listed on {label(owner)}",
                        name=name,
                        removed_at=step,
                        owner=label(owner),
                    )
