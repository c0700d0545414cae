"""Invariant checkers: read-only observers that turn a run into a verdict.

One module per invariant:

| name | invariant |
|---|---|
| `bitmap-addressability` | a bitmap created at (A, N) stays reachable there, as the same bitmap, until removed or A goes away; no removed bitmap stays listed |
| `bitmap-soundness` | every byte the guest wrote through what a bitmap tracks, while it recorded and since it was added or cleared, is marked |
| `backup-point-in-time` | a completed backup holds the source as it was at the job's start on the promised clusters; full + incrementals restore the disk |
| `mirror-and-commit-consistency` | after a mirror pivots or a commit/stream ends, every device reads what it read just before |
| `no-lost-guest-data` | a device reads what the guest last wrote through it, across graph changes, job ends, cancels, failures |
| `graph-well-formed` | no cycles, no dangling children or roots, unique names, one child per filter, nothing a job uses deleted, no stray busy bitmap |
| `job-state-legality` | job states follow JobSTT, events come in QEMU's order, verbs follow JobVerbTable and mean what they say (a drain pauses every active job, a force-cancelled job ends cancelled) |
| `transaction-atomicity` | a failed transaction (or one-action transaction, or bitmap command) leaves graph, named bitmaps and live jobs as they were |
| `bitmap-precision` | a bitmap marks what guest writes through its node and merges into it dirtied, and nothing that no write, merge or job could have dirtied |

`CHECKERS` maps each name to its checker class; `make_checkers(names)` builds
fresh instances for one replay (a checker watches one Machine).
"""

from __future__ import annotations

from sim.check.addressability import BitmapAddressability
from sim.check.atomicity import TransactionAtomicity
from sim.check.base import Checker, Violation
from sim.check.consistency import MirrorCommitConsistency
from sim.check.graph import GraphWellFormed
from sim.check.job_states import JobStateLegality
from sim.check.lost_data import NoLostGuestData
from sim.check.observe import SharedLog
from sim.check.point_in_time import BackupPointInTime
from sim.check.precision import BitmapPrecision
from sim.check.soundness import BitmapSoundness

CHECKERS: dict[str, type[Checker]] = {
    cls.name: cls
    for cls in (
        BitmapAddressability,
        BitmapSoundness,
        BackupPointInTime,
        MirrorCommitConsistency,
        NoLostGuestData,
        GraphWellFormed,
        JobStateLegality,
        TransactionAtomicity,
        BitmapPrecision,
    )
}


def make_checkers(names: list[str] | None = None) -> list[Checker]:
    """Fresh checkers for `names` (None = every checker), in the order given.

    Raises ValueError naming the unknown names and listing the known ones."""
    if names is None:
        names = list(CHECKERS)
    unknown = [n for n in names if n not in CHECKERS]
    if unknown:
        raise ValueError(
            f"unknown invariant(s) {', '.join(repr(n) for n in unknown)}; "
            f"known: {', '.join(CHECKERS)}"
        )
    checkers = [CHECKERS[n]() for n in names]
    shared = SharedLog()  # one StepLog for them all
    for checker in checkers:
        checker.shared = shared
    return checkers


__all__ = ["CHECKERS", "Checker", "Violation", "make_checkers"]
