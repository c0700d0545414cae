"""Twenty-two more one-rule mutants of the model, of the kinds real QEMU bugs take.

tests/test_mutants.py holds the first eleven (and the Mutant record); these
add four families, each a change one QEMU patch could make:

- *atomicity*: a transaction action whose effect survives the transaction's
  abort (its undo forgotten, or the remove released in prepare);
- *precision*: bitmaps marked where QEMU promises no mark (a disabled bitmap
  recording, one chunk too many, a backing node's bitmaps, copy-on-read
  dirtying the node it fills, a clear that keeps bits) or merges that drop
  bits (a merge reading only its first source, one that replaces its target);
- *verbs and drain*: a drain that does not pause jobs (all, or READY ones), a
  force-cancel that does nothing, cancel accepted on a concluded job;
- *races*: rules that break only when something lands while a job is part
  way through (a guest write the mirror's dirty bitmap misses once copying
  started, copy-before-write that stops after the first chunk, stream
  overwriting what the guest wrote while it ran, a backup's successor that
  misses writes once the job progressed, a READY mirror that no longer copies
  new writes before the pivot).

`ALL_MUTANTS` is the suite tests/test_fuzz_power.py measures the fuzzer by.
"""

from __future__ import annotations

from typing import Any

import pytest

from sim.model import bitmap_ops, io, job_flow, jobs, snapshot
from sim.model.bitmap import DirtyBitmap
from sim.model.job_backup import BackupKind
from sim.model.job_mirror import MirrorKind
from sim.model.job_stream import StreamKind
from sim.qmp import transaction
from tests.test_mutants import MUTANTS, Mutant

MP = pytest.MonkeyPatch


def _noop() -> None:
    return None


# -- atomicity: effects that survive an abort -------------------------------------------------


def _txn_add_survives(mp: MP) -> None:
    original = bitmap_ops.add

    def add(*args: Any, **kwargs: Any) -> Any:
        owner, bm, _undo = original(*args, **kwargs)
        return owner, bm, _noop

    mp.setattr(bitmap_ops, "add", add)


def _undo_dropped(name: str) -> Any:
    def apply(mp: MP) -> None:
        original = getattr(bitmap_ops, name)

        def op(*args: Any, **kwargs: Any) -> Any:
            original(*args, **kwargs)
            return _noop

        mp.setattr(bitmap_ops, name, op)

    return apply


def _txn_snapshot_survives(mp: MP) -> None:
    original = snapshot.snapshot_sync

    def snapshot_sync(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)._replace(undo=_noop)

    mp.setattr(snapshot, "snapshot_sync", snapshot_sync)


def _txn_remove_releases_early(mp: MP) -> None:
    original = bitmap_ops.remove

    def remove(*args: Any, release: bool = True, **kwargs: Any) -> Any:
        bm, _undo = original(*args, release=True, **kwargs)
        return bm, _noop

    mp.setattr(bitmap_ops, "remove", remove)


# -- precision: marks QEMU does not promise, merges that lose bits ------------------------------


def _disabled_records(mp: MP) -> None:
    def record_write(self: DirtyBitmap, offset: int, length: int) -> None:
        target = self.successor or self
        if length > 0:
            shift = target._shift
            target.bits[offset >> shift : ((offset + length - 1) >> shift) + 1] = 1

    mp.setattr(DirtyBitmap, "record_write", record_write)


def _marks_next_chunk(mp: MP) -> None:
    def record_write(self: DirtyBitmap, offset: int, length: int) -> None:
        target = self.successor or self
        if target.enabled and length > 0:
            shift = target._shift
            end = ((offset + length - 1) >> shift) + 2
            target.bits[offset >> shift : min(end, len(target.bits))] = 1

    mp.setattr(DirtyBitmap, "record_write", record_write)


def _marks_backing(mp: MP) -> None:
    original = io.guest_write

    def guest_write(
        graph: Any, bb: Any, root: Any, offset: int, length: int, stamp: int, **kw: Any
    ) -> Any:
        result = original(graph, bb, root, offset, length, stamp, **kw)
        below = graph.data_node(root).backing
        if result.ok and below is not None:
            for bm in below.bitmaps:
                bm.record_write(offset, length)
        return result

    mp.setattr(io, "guest_write", guest_write)


def _stream_cor_dirties(mp: MP) -> None:
    original = StreamKind.copy_chunk

    def copy_chunk(self: StreamKind, offset: int, length: int) -> None:
        original(self, offset, length)
        for bm in self.node.bitmaps:
            bm.record_write(offset, length)

    mp.setattr(StreamKind, "copy_chunk", copy_chunk)


def _clear_keeps_bits(mp: MP) -> None:
    def clear(graph: Any, policy: Any, node: str, name: str) -> Any:
        _, bm = bitmap_ops.lookup(graph, policy, node, name)
        bitmap_ops.check_bitmap(bm, bitmap_ops.DEFAULT_CHECKS)
        return _noop

    mp.setattr(bitmap_ops, "clear", clear)


def _merge_first_source_only(mp: MP) -> None:
    original = bitmap_ops.merge

    def merge(graph: Any, policy: Any, node: str, target: str, sources: list[Any]) -> Any:
        return original(graph, policy, node, target, sources[:1])

    mp.setattr(bitmap_ops, "merge", merge)


def _merge_replaces_target(mp: MP) -> None:
    original = bitmap_ops.merge

    def merge(graph: Any, policy: Any, node: str, target: str, sources: list[Any]) -> Any:
        undo = original(graph, policy, node, target, sources)
        _, dst = bitmap_ops.lookup(graph, policy, node, target)
        acc = DirtyBitmap(None, dst.granularity, dst.size_bytes)
        for src in sources:
            ref = (node, src) if isinstance(src, str) else (src["node"], src["name"])
            acc.merge_from(bitmap_ops.lookup(graph, policy, *ref)[1])
        dst.bits = acc.bits
        return undo

    mp.setattr(bitmap_ops, "merge", merge)


# -- verbs and drain ------------------------------------------------------------------------------


def _drain_skips_jobs(mp: MP) -> None:
    mp.setattr(transaction, "drain_all", lambda m: None)


def _drain_skips_ready(mp: MP) -> None:
    def drain_all(m: Any) -> None:
        active = [j for j in m.state.jobs if j.user_paused == 0 and j.status == "running"]
        for job in active:
            job.set_status("paused")
        for job in active:
            job.set_status("running")

    mp.setattr(transaction, "drain_all", drain_all)


def _force_cancel_ignored(mp: MP) -> None:
    original = job_flow.cancel

    def cancel(state: Any, job: jobs.Job, force: bool) -> None:
        if force:
            job.check_verb("cancel")
            return
        original(state, job, force)

    mp.setattr(job_flow, "cancel", cancel)


def _cancel_concluded(mp: MP) -> None:
    mp.setitem(jobs.JOB_VERBS, "cancel", jobs.JOB_VERBS["cancel"] | {"concluded"})


# -- races: wrong only when something lands mid-job ---------------------------------------------


def _mid_job(job: jobs.Job) -> bool:
    return job.status == "running" and 0 < job.offset < job.len


def _mirror_misses_mid_job_writes(mp: MP) -> None:
    original = io.guest_write

    def guest_write(
        graph: Any, bb: Any, root: Any, offset: int, length: int, stamp: int, **kw: Any
    ) -> Any:
        hidden = []
        for node in graph.nodes:
            hook = node.write_hook
            kind = getattr(hook, "__self__", None)
            if isinstance(kind, MirrorKind) and _mid_job(kind.job):
                hidden.append((kind.source, kind.dirty))
                kind.source.bitmaps.remove(kind.dirty)
        try:
            return original(graph, bb, root, offset, length, stamp, **kw)
        finally:
            for source, dirty in hidden:
                source.bitmaps.insert(0, dirty)

    mp.setattr(io, "guest_write", guest_write)


def _cbw_stops_mid_job(mp: MP) -> None:
    original = BackupKind.before_write

    def before_write(self: BackupKind, node: Any, offset: int, length: int) -> None:
        if self.job.offset == 0:
            original(self, node, offset, length)

    mp.setattr(BackupKind, "before_write", before_write)


def _stream_overwrites_mid_job_writes(mp: MP) -> None:
    original_fill = StreamKind._fill
    original_next = StreamKind.next_chunk

    def next_chunk(self: StreamKind) -> Any:
        from sim.model.job_graph import allocation_run, chain_nodes
        from sim.model.job_stream import STREAM_CHUNK

        if self.job.offset == 0 or self.node.backing is None:  # the first run honours it
            return original_next(self)
        size = self.node.size_bytes
        below = chain_nodes(self.graph, self.node.backing, self.base)
        while self.cursor < size:  # what the node holds no longer counts
            copy, n = allocation_run(below, self.cursor, min(STREAM_CHUNK, size - self.cursor))
            if copy:
                return self.cursor, n
            self.cursor += n
            self.job.offset += n
        return None

    def fill(self: StreamKind, offset: int, length: int) -> Any:
        from sim.model.content import chain_extents, sector_span
        from sim.model.job_graph import chain_contents

        if self.job.offset == 0:  # the first chunk honours what the node holds
            return original_fill(self, offset, length)
        below = self.node.backing
        if below is None or self.node.content is None:
            return []
        first, end = sector_span(offset, length)
        return chain_extents(chain_contents(self.graph, below, self.base), first, end)

    mp.setattr(StreamKind, "next_chunk", next_chunk)
    mp.setattr(StreamKind, "_fill", fill)


def _successor_misses_mid_job_writes(mp: MP) -> None:
    original = io.guest_write

    def guest_write(
        graph: Any, bb: Any, root: Any, offset: int, length: int, stamp: int, **kw: Any
    ) -> Any:
        muted = []
        for node in graph.nodes:
            kind = getattr(node.write_hook, "__self__", None)
            succ = getattr(getattr(kind, "bitmap", None), "successor", None)
            if isinstance(kind, BackupKind) and succ is not None and _mid_job(kind.job):
                if succ.enabled:
                    succ.enabled = False
                    muted.append(succ)
        try:
            return original(graph, bb, root, offset, length, stamp, **kw)
        finally:
            for succ in muted:
                succ.enabled = True

    mp.setattr(io, "guest_write", guest_write)


def _ready_mirror_stops_copying(mp: MP) -> None:
    original = MirrorKind.next_chunk

    def next_chunk(self: MirrorKind) -> Any:
        if self.job.status in ("ready", "standby"):
            return None
        return original(self)

    mp.setattr(MirrorKind, "next_chunk", next_chunk)


NEW_MUTANTS = [
    Mutant("txn-add-survives-abort", "an aborted transaction keeps a bitmap it added", _txn_add_survives),
    Mutant("txn-clear-survives-abort", "an aborted transaction keeps a clear", _undo_dropped("clear")),
    Mutant("txn-enable-survives-abort", "an aborted transaction keeps an enable/disable", _undo_dropped("set_enabled")),
    Mutant("txn-merge-survives-abort", "an aborted transaction keeps a merge", _undo_dropped("merge")),
    Mutant("txn-snapshot-survives-abort", "an aborted transaction keeps its snapshot overlay", _txn_snapshot_survives),
    Mutant("txn-remove-releases-early", "a transaction's remove frees the bitmap in prepare", _txn_remove_releases_early),
    Mutant("disabled-bitmap-records", "a disabled bitmap still records writes", _disabled_records),
    Mutant("write-marks-next-chunk", "a write also marks the chunk after its end", _marks_next_chunk),
    Mutant("write-marks-backing-bitmaps", "a write marks the bitmaps of the node's backing too", _marks_backing),
    Mutant("stream-cor-dirties-top", "stream's copy-on-read dirties the bitmaps of the node it fills", _stream_cor_dirties),
    Mutant("clear-keeps-bits", "block-dirty-bitmap-clear clears nothing", _clear_keeps_bits),
    Mutant("merge-first-source-only", "a merge reads only its first source", _merge_first_source_only),
    Mutant("merge-replaces-target", "a merge overwrites its target instead of OR-ing into it", _merge_replaces_target),
    Mutant("drain-skips-jobs", "a transaction's drain pauses no job", _drain_skips_jobs),
    Mutant("drain-skips-ready-jobs", "a transaction's drain leaves READY jobs running", _drain_skips_ready),
    Mutant("force-cancel-ignored", "a force-cancel is accepted and does nothing", _force_cancel_ignored),
    Mutant("cancel-concluded-accepted", "JobVerbTable lets cancel through on a concluded job", _cancel_concluded),
    Mutant("mirror-misses-mid-job-writes", "a mirror that started copying misses guest writes", _mirror_misses_mid_job_writes),
    Mutant("cbw-stops-mid-job", "copy-before-write stops once the backup copied its first chunk", _cbw_stops_mid_job),
    Mutant("stream-overwrites-mid-job-writes", "stream overwrites what the guest wrote while it ran", _stream_overwrites_mid_job_writes),
    Mutant("successor-misses-mid-job-writes", "a backup's successor misses writes once the job progressed", _successor_misses_mid_job_writes),
    Mutant("ready-mirror-stops-copying", "a READY mirror no longer copies new writes before the pivot", _ready_mirror_stops_copying),
]  # fmt: skip

ALL_MUTANTS = MUTANTS + NEW_MUTANTS
