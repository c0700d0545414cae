"""The checkers are not vacuous: deliberately broken models (mutants) are caught.

Each mutant breaks one rule of the model by monkeypatching it (skip marking a
bitmap, forget the successor merge, copy after the guest write instead of
before, drop a backing link on commit, skip a job state, ...).  Every
scenario of the corpus (scenarios/, recursively) is replayed with all
checkers on the healthy model once, then under each mutant; a mutant is
*killed* by a checker when that checker reports a violation the healthy run
did not.  Scenarios written for the checkers (scenarios/checkers/) go first;
the rest of the corpus is only searched for mutants nothing has killed yet.
The kill table is printed (run pytest with -s to see it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from sim.check import CHECKERS, make_checkers
from sim.model import bitmap_ops, io, jobs
from sim.model.bitmap import DirtyBitmap
from sim.model.cbw import CopyBeforeWrite
from sim.model.content import read_through, sector_span
from sim.model.job_backup import BackupKind
from sim.model.job_commit import CommitKind
from sim.model.job_graph import chain_contents
from sim.model.job_mirror import MirrorKind
from sim.model.job_stream import StreamKind
from sim.replay import replay
from sim.trace import Trace, load_trace
from tests.helpers import SCENARIOS

Apply = Callable[[pytest.MonkeyPatch], None]


@dataclass(frozen=True)
class Mutant:
    """A deliberate break of the model (monkeypatched in) that a checker must catch."""

    name: str
    rule: str  # what it breaks
    apply: Apply


# -- the mutants ----------------------------------------------------------------------------


def _skip_marking(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(DirtyBitmap, "record_write", lambda self, offset, length: None)


def _forget_successor_merge(mp: pytest.MonkeyPatch) -> None:
    original = BackupKind._sync_bitmap

    def sync_bitmap(self: BackupKind, success: bool) -> None:
        keeps_name = (success or self.bitmap_mode == "always") and self.bitmap_mode != "never"
        if not keeps_name and self.successor is not None:
            self.successor.bits.setall(0)  # the reclaim then merges nothing back
        original(self, success)

    mp.setattr(BackupKind, "_sync_bitmap", sync_bitmap)


def _copy_after_write(mp: pytest.MonkeyPatch) -> None:
    original = io.guest_write

    def guest_write(
        graph: Any, bb: Any, root: Any, offset: int, length: int, stamp: int, **kw: Any
    ) -> io.IOResult:
        hooked = [(n, n.write_hook) for n in graph.nodes if n.write_hook is not None]
        for node, _ in hooked:
            node.write_hook = None
        try:
            result = original(graph, bb, root, offset, length, stamp, **kw)
        finally:
            for node, hook in hooked:
                node.write_hook = hook
        if result.ok:
            for node, hook in hooked:  # the "copy before write" now copies the new data
                hook(node, offset, length)
        return result

    mp.setattr(io, "guest_write", guest_write)


def _no_copy_before_write(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(BackupKind, "before_write", lambda self, node, offset, length: None)


def _commit_drops_backing(mp: pytest.MonkeyPatch) -> None:
    original = CommitKind.prepare

    def prepare(self: CommitKind) -> None:
        overlays = [p for p, role in self.graph.parents(self.filter) if role == "backing"]
        original(self)
        for p in overlays:
            self.graph.set_backing(p, None)

    mp.setattr(CommitKind, "prepare", prepare)


def _mirror_does_not_copy(mp: pytest.MonkeyPatch) -> None:
    def copy_chunk(self: MirrorKind, offset: int, length: int) -> None:
        self.dirty.bits[offset // self.dirty.granularity] = 0
        self.job.offset += length
        self.update_len()

    mp.setattr(MirrorKind, "copy_chunk", copy_chunk)


def _stream_does_not_copy(mp: pytest.MonkeyPatch) -> None:
    def copy_chunk(self: StreamKind, offset: int, length: int) -> None:
        self.cursor = offset + length
        self.job.offset += length

    mp.setattr(StreamKind, "copy_chunk", copy_chunk)


def _job_skips_waiting(mp: pytest.MonkeyPatch) -> None:
    # a model whose state table has no waiting either: the edge running -> pending is taken
    # instead of raising SimulatorBug, so only a checker can see the skip
    def set_status(self: jobs.Job, status: str) -> None:
        status = jobs.JobStatus(status)
        if status is jobs.JobStatus.WAITING:
            return
        self.status = status
        self.emit("JOB_STATUS_CHANGE", {"status": status.value, "id": self.id})

    mp.setattr(jobs.Job, "set_status", set_status)


def _complete_before_ready(mp: pytest.MonkeyPatch) -> None:
    mp.setitem(jobs.JOB_VERBS, "complete", frozenset({"running", "paused", "ready", "standby"}))


def _remove_keeps_bitmap(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(bitmap_ops, "release_bitmap", lambda owner, bm: None)


def _enable_disables(mp: pytest.MonkeyPatch) -> None:
    original = bitmap_ops.set_enabled

    def set_enabled(graph: Any, policy: Any, node: str, name: str, enabled: bool) -> Any:
        return original(graph, policy, node, name, False)

    mp.setattr(bitmap_ops, "set_enabled", set_enabled)


def _snapshot_reads_source(mp: pytest.MonkeyPatch) -> None:
    def snapshot_stamps(self: CopyBeforeWrite, offset: int, length: int) -> Any:
        first, end = sector_span(offset, length)
        return read_through(chain_contents(self.graph, self.source), first, end)

    mp.setattr(CopyBeforeWrite, "snapshot_stamps", snapshot_stamps)


MUTANTS = [
    Mutant("skip-bitmap-marking", "DirtyBitmap.record_write marks nothing", _skip_marking),
    Mutant(
        "forget-successor-merge",
        "a reclaimed backup bitmap loses its successor's bits",
        _forget_successor_merge,
    ),
    Mutant(
        "copy-after-write",
        "copy-before-write copies after the guest write landed",
        _copy_after_write,
    ),
    Mutant(
        "no-copy-before-write",
        "the backup filter copies nothing before a guest write",
        _no_copy_before_write,
    ),
    Mutant(
        "commit-drops-backing",
        "commit leaves the overlay with no backing at all",
        _commit_drops_backing,
    ),
    Mutant(
        "mirror-does-not-copy",
        "mirror (and active commit) clear dirty bits without copying",
        _mirror_does_not_copy,
    ),
    Mutant(
        "stream-does-not-copy",
        "stream drops the backing without pulling its data up",
        _stream_does_not_copy,
    ),
    Mutant(
        "job-skips-waiting", "a finished job goes on without the waiting state", _job_skips_waiting
    ),
    Mutant(
        "complete-before-ready",
        "JobVerbTable lets complete through before READY",
        _complete_before_ready,
    ),
    Mutant(
        "remove-keeps-bitmap",
        "block-dirty-bitmap-remove leaves the bitmap listed",
        _remove_keeps_bitmap,
    ),
    Mutant("enable-disables", "block-dirty-bitmap-enable disables the bitmap", _enable_disables),
    Mutant(
        "snapshot-reads-source",
        "snapshot-access reads the source where copy-before-write kept the old data",
        _snapshot_reads_source,
    ),
]


# -- running the corpus -----------------------------------------------------------------------


@cache
def _corpus() -> list[Path]:
    own = sorted((SCENARIOS / "checkers").glob("*.jsonl"))
    known = set(own)
    rest = sorted(p for p in SCENARIOS.rglob("*.jsonl") if p not in known)
    # the large differential corpus (scenarios/differential) is searched last
    last = SCENARIOS / "differential"
    first = [p for p in rest if last not in p.parents]
    return own + first + [p for p in rest if last in p.parents]


@cache
def _trace(path: Path) -> Trace:
    return load_trace(path)


def _violations(path: Path) -> set[tuple[str, int, str]]:
    result = replay(_trace(path), checkers=make_checkers(None))
    return {(v["invariant"], v["step"], v["message"]) for v in result.final["violations"]}


@cache
def _healthy(path: Path) -> frozenset[tuple[str, int, str]]:
    return frozenset(_violations(path))


# Mutants of tests/mutant_catalog.py that only a scenario deep in the corpus kills: where
# `_kills(first_only=True)` looks first (a search of hundreds of replays otherwise).  A
# scenario that no longer kills its mutant only costs the search its usual length.
KILLED_BY = {
    "txn-merge-survives-abort": "qemu-7.2-recorded/rec-0241.jsonl",
    "txn-remove-releases-early": "qemu-7.2-recorded/rec-0060.jsonl",
    "cancel-concluded-accepted": "qemu-7.2-recorded/rec-0086.jsonl",
    "drain-skips-jobs": "known-differences/differential/response-blockdev-snapshot-3030d8c8.jsonl",
    "drain-skips-ready-jobs": (
        "known-differences/differential/response-blockdev-snapshot-3030d8c8.jsonl"
    ),
    "merge-first-source-only": "iotests/iotest-236-bitmap-merges.jsonl",
    "force-cancel-ignored": "iotests/iotest-257-bitmap-always-simulated.jsonl",
    "mirror-misses-mid-job-writes": "engine/mir-ready-pivot.jsonl",
}


def _kills(mutant: Mutant, first_only: bool = False) -> dict[str, str]:
    """invariant -> first scenario where the mutant makes it report something new
    (`first_only`: up to the first scenario that kills it, `KILLED_BY`'s first)."""
    kills: dict[str, str] = {}
    own = SCENARIOS / "checkers"
    corpus = list(_corpus())
    hint = SCENARIOS / KILLED_BY.get(mutant.name, "")
    if first_only and hint in corpus:
        corpus = [hint, *(p for p in corpus if p != hint)]
    for path in corpus:
        if kills and (first_only or own not in path.parents):
            break  # the rest of the corpus only for mutants nothing killed yet
        with pytest.MonkeyPatch.context() as mp:
            mutant.apply(mp)
            seen = _violations(path)
        for invariant, _, _ in sorted(seen - _healthy(path)):
            kills.setdefault(invariant, str(path.relative_to(SCENARIOS)))
    return kills


@cache
def _table() -> dict[str, dict[str, str]]:
    return {m.name: _kills(m) for m in MUTANTS}


def _print_table(table: dict[str, dict[str, str]]) -> None:
    short = {name: "".join(w[0] for w in name.split("-")).upper() for name in CHECKERS}
    print("\nmutant kill table (X = the checker reports a violation the healthy model does not)")
    print("  " + ", ".join(f"{s} = {n}" for n, s in short.items()))
    width = max(len(m.name) for m in MUTANTS)
    print(
        f"  {'mutant':<{width}}  "
        + " ".join(f"{s:>4}" for s in short.values())
        + "  first scenario"
    )
    for m in MUTANTS:
        kills = table[m.name]
        cells = " ".join(f"{'X' if n in kills else '.':>4}" for n in CHECKERS)
        first = next(iter(kills.values()), "NOT KILLED")
        print(f"  {m.name:<{width}}  {cells}  {first}")


def test_every_mutant_is_killed() -> None:
    table = _table()
    _print_table(table)
    survivors = [m.name for m in MUTANTS if not table[m.name]]
    assert not survivors, f"mutants no checker catches: {survivors}"


def test_every_new_mutant_is_killed() -> None:
    """The mutants of tests/mutant_catalog.py too: the corpus has a trace for each."""
    from tests.mutant_catalog import NEW_MUTANTS

    survivors = [m.name for m in NEW_MUTANTS if not _kills(m, first_only=True)]
    assert not survivors, f"mutants no checker catches: {survivors}"


def test_there_are_enough_mutants() -> None:
    assert len(MUTANTS) >= 6
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize(
    ("mutant", "invariant"),
    [
        ("skip-bitmap-marking", "bitmap-soundness"),
        ("forget-successor-merge", "bitmap-soundness"),
        ("copy-after-write", "backup-point-in-time"),
        ("commit-drops-backing", "no-lost-guest-data"),
        ("mirror-does-not-copy", "mirror-and-commit-consistency"),
        ("job-skips-waiting", "job-state-legality"),
        ("complete-before-ready", "job-state-legality"),
        ("remove-keeps-bitmap", "bitmap-addressability"),
    ],
)
def test_the_checker_meant_for_it_kills_it(mutant: str, invariant: str) -> None:
    assert invariant in _table()[mutant], _table()[mutant]
