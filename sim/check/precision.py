"""bitmap-precision: a reference model of every bitmap's contents.

For every bitmap a user added (see bitmaps.py) the checker keeps two
bitarrays at the bitmap's granularity, mirroring every operation QEMU 7.2
defines on bitmap contents:

- `lo`, the chunks the bitmap must mark, and `hi`, the chunks it may mark
  (`lo` <= `hi`);
- add: both empty (a new bitmap is clean); clear: both emptied.  A clear or
  merge names its bitmaps as QEMU looked them up when its action ran: as the
  graph stood before the command, unless an earlier action of its
  transaction (a snapshot's overlay, a backup's filter) moved the device name;
- a guest write that passes the node (or, bb-attached, the device) the bitmap
  is listed on while it records (as the user's add/enable/disable left it):
  both set (bdrv_co_write_req_finish -> bdrv_set_dirty);
- merge: the target's `lo` and `hi` take the sources' (hbitmap_merge, across
  granularities);
- a job writing into a node (mirror and backup into their target, commit into
  its base, stream's copy-on-read only into the protocol node below its
  node): every chunk of that node's bitmaps may be marked (`hi` full), since
  what a job copies depends on timing; copy-on-read itself marks nothing
  (bdrv_co_do_copy_on_readv writes below the dirty-bitmap layer);
- a bitmap on the protocol node under a qcow2 node sees qcow2's writes to its
  file at host offsets, data clusters and metadata (written back at flushes
  too): the checker does not model the image's layout, so any chunk may be
  marked (`hi` full) and guest writes do not oblige one (`lo`);
- a backup freezing the bitmap: its contents at the end depend on the job's
  outcome and bitmap-mode, so `lo` empties and `hi` fills until the next clear;
- an armed fault (a sim-only `fault` step or a blkdebug rule): a failed guest
  write still marks the nodes it reached (bdrv_co_write_req_finish marks
  failed writes too), which the checker does not see, so `hi` fills for every
  bitmap from then on, quiet steps (qemu-io, queries) included.

The bitmap's actual bits (with its successor's while frozen) must lie
between `lo` and `hi` after every step that could change them and at the end:
a bit beyond `hi` is a chunk QEMU promises is clean, a bit of `lo` missing is
a chunk QEMU promises is dirty.  A bitmap whose size changed (block_resize)
has its reference truncated or grown clean the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

from bitarray import bitarray

from sim.check.bitmaps import BitmapRegistry, Tracked
from sim.check.extents import byte_ranges
from sim.check.observe import Command, Owner, StepChecker, label, owner_of
from sim.model import bitmap_ops
from sim.model.bitmap import DirtyBitmap, bits_at_granularity
from sim.model.graph import BlockBackend, BlockNode
from sim.model.io import write_shifts
from sim.model.job_stream import StreamKind

if TYPE_CHECKING:
    from sim.engine.view import MachineView
    from sim.model.jobs import Job

ENDED = ("concluded", "null")


@dataclass(eq=False)
class Ref:
    """The reference contents of one bitmap: what it must and what it may mark."""

    lo: bitarray
    hi: bitarray
    shift: int
    frozen: bool = False

    def mark(self, offset: int, length: int) -> None:
        a, b = offset >> self.shift, ((offset + length - 1) >> self.shift) + 1
        self.lo[a:b] = 1
        self.hi[a:b] = 1

    def reset(self) -> None:
        self.lo.setall(0)
        self.hi.setall(0)


# commands whose actions name bitmaps the checker follows (`_named`)
NAMING_COMMANDS = frozenset({"transaction", "block-dirty-bitmap-clear", "block-dirty-bitmap-merge"})
# transaction actions after which a device name may reach another node (a snapshot's
# overlay, a backup's copy-before-write filter, put in place when the action prepares)
GRAPH_ACTIONS = frozenset(
    {"blockdev-snapshot-sync", "blockdev-snapshot", "drive-backup", "blockdev-backup"}
)


Named = list[DirtyBitmap | None]  # a clear's bitmap; a merge's target, then its sources


def _resize(ref: Ref, nbits: int) -> None:
    """block_resize truncated the bitmap (bdrv_dirty_bitmap_truncate): bits past a
    shrink are gone from what it must and may hold, a growth is clean."""
    for arr in (ref.lo, ref.hi):
        if nbits < len(arr):
            del arr[nbits:]
        else:
            arr.extend(_bits(nbits - len(arr)))


def _bits(n: int, value: int = 0) -> bitarray:
    out = bitarray(n, endian="little")
    out.setall(value)
    return out


def _convert(bits: bitarray, source: DirtyBitmap, granularity: int) -> bitarray:
    """`bits` (at source's granularity) at another granularity, as hbitmap_merge maps it."""
    if source.granularity == granularity:
        return bits
    tmp = DirtyBitmap(None, source.granularity, source.size_bytes)
    tmp.bits = bits
    return bits_at_granularity(tmp, granularity)


def job_write_nodes(job: Job) -> list[BlockNode]:
    """The nodes whose bitmaps a job's own writes mark in QEMU 7.2."""
    kind = job.kind
    target = kind.writes_to()
    if target is None:
        return []
    if isinstance(kind, StreamKind):
        return [target.file] if target.file is not None else []
    nodes = [target]
    if target.file is not None:
        nodes.append(target.file)
    return nodes


class BitmapPrecision(StepChecker):
    """Every bitmap marks exactly what QEMU 7.2's bitmap operations promise: all chunks that
    guest writes through its node and merges into it dirtied, and no chunk that no write,
    merge or job could have dirtied."""

    name = "bitmap-precision"
    quiet_work = True

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.bitmaps = BitmapRegistry(machine, self.log)
        self.refs: dict[Tracked, Ref] = {}
        self.owners: list[tuple[Tracked, Owner | None]] = []
        self.writers: list[tuple[Job, list[BlockNode]]] = []
        self.faulted = False
        # the bitmaps each action of a clear or merge (or of a transaction holding one)
        # named just before the command ran, by the id of the command's arguments
        self._named_before: dict[int, list[Named]] = {}
        machine.state.write_observers.append(self._on_write)
        machine.before_command_observers.append(self._on_before)
        machine.command_observers.append(self._on_command)

    # -- what happens between steps --------------------------------------------------------
    def _on_write(
        self, bb: BlockBackend | None, root: BlockNode, offset: int, length: int, stamp: int
    ) -> None:
        if not self.owners or length <= 0:
            return
        path: list[tuple[BlockNode, int]] | None = None
        for entry, owner in self.owners:
            if owner is None or not entry.enabled or entry.bitmap.inconsistent:
                continue
            at = offset
            if isinstance(owner, BlockBackend):
                if owner is not bb:
                    continue
            else:
                if path is None:
                    path = write_shifts(self.graph, root)
                shift = next((s for n, s in path if n is owner), None)
                if shift is None:
                    continue
                at += shift  # below a raw window the write lands at its offset + ours
            ref = self.refs.get(entry)
            if ref is not None:
                if isinstance(owner, BlockNode) and self._host_marked(owner):
                    ref.hi.setall(1)
                else:
                    ref.mark(at, length)

    def _host_marked(self, node: BlockNode) -> bool:
        """A qcow2 node writes `node` as its file: at host offsets, metadata included."""
        return any(p.driver == "qcow2" and role == "file" for p, role in self.graph.parents(node))

    def _on_before(self, request: Any) -> None:
        """What each bitmap a clear or merge names is before the command changes the
        graph: a transaction's later actions (a backup's filter, a snapshot's overlay)
        may move a device name away from the node its earlier actions found it on."""
        if not isinstance(request, dict) or request.get("execute") not in NAMING_COMMANDS:
            return
        args = request.get("arguments")
        if type(args) is not dict:
            return
        actions = Command(str(request["execute"]), args, {}).actions()
        self._named_before[id(args)] = [self._named(kind, data) for kind, data in actions]

    def _named(self, kind: str, data: dict[str, Any]) -> Named:
        """The bitmaps a clear or merge action names as the graph stands, found as the
        model finds them (block_dirty_bitmap_lookup; a merge's bare source names on the
        target's own owner)."""
        node = str(data.get("node"))
        if kind == "block-dirty-bitmap-clear":
            return [self.bitmaps.lookup(node, str(data.get("name")))[1]]
        if kind != "block-dirty-bitmap-merge":
            return []
        sources = data.get("bitmaps")
        dst, srcs = bitmap_ops.merge_operands(
            self.graph,
            self.state.policy,
            node,
            str(data.get("target")),
            list(sources) if isinstance(sources, list) else [],
        )
        return [dst, *srcs]

    def _on_command(self, request: Any, response: dict[str, Any]) -> None:
        known = {id(j) for j, _ in self.writers}
        for job in self.state.jobs:
            if id(job) not in known and job.status not in ENDED:
                self.writers.append((job, job_write_nodes(job)))

    # -- steps -----------------------------------------------------------------------------
    def needs_quiet_step(self) -> bool:
        if self.machine.faults:
            return True
        return any(c.name == "x-debug-block-dirty-bitmap-sha256" for c in self.log.commands)

    def check_step(self, index: int) -> None:
        if self.machine.faults:
            self.faulted = True
        if self.log.quiet:
            if self.faulted:  # a qemu-io write a fault failed is a quiet step too
                for opened in self.refs.values():
                    opened.hi.setall(1)
            self._check_all(index)
            return
        reg = self.bitmaps
        reg.update()
        for entry in reg.added:
            n = len(entry.bitmap.bits)
            owner = owner_of(self.graph, entry.bitmap)
            host = isinstance(owner, BlockNode) and self._host_marked(owner)
            hi = _bits(n, 1 if host else 0)
            self.refs[entry] = Ref(_bits(n), hi, entry.bitmap.granularity.bit_length() - 1)
        self._commands()
        for entry, _frozen, took_over in reg.follow_successors():
            ref = self.refs.get(entry)
            if ref is None:
                continue
            if took_over and not ref.frozen:
                # frozen and released within this step: contents open, as after a freeze
                ref.lo.setall(0)
                ref.hi.setall(1)
            ref.frozen = False
        live = set(reg.entries.values())
        for entry in [e for e in self.refs if e not in live]:
            del self.refs[entry]
        self._jobs(index)
        self._check_all(index)
        reg.end_step()
        self.owners = [(e, owner_of(self.graph, e.bitmap)) for e in self.refs]

    def check_end(self) -> None:
        self._check_all(self.step)

    def _commands(self) -> None:
        """Clears and merges of this step's successful commands, in action order, each
        naming the bitmaps QEMU found: as the graph was before the command unless an
        earlier action of its transaction changed what a name reaches (then as the
        command left it); a bitmap not there before (added by an earlier action) as the
        command left it."""
        named_before, self._named_before = self._named_before, {}
        for cmd in self.log.commands:
            if not cmd.ok:
                continue
            before: list[Named] | None = named_before.get(id(cmd.arguments))
            for i, (kind, data) in enumerate(cmd.actions()):
                if kind in GRAPH_ACTIONS:
                    before = None
                if kind not in ("block-dirty-bitmap-clear", "block-dirty-bitmap-merge"):
                    continue
                now = self._named(kind, data)
                then = before[i] if before is not None and i < len(before) else []
                named = [t if t is not None else n for t, n in zip_longest(then, now)]
                if kind == "block-dirty-bitmap-clear":
                    ref = next((r for e, r in self.refs.items() if e.bitmap is named[0]), None)
                    if ref is not None:
                        ref.reset()
                else:
                    self._merge(named)

    def _merge(self, named: Named) -> None:
        """target |= each source, in the references (`named`: target, then sources)."""
        dst, sources = named[0], named[1:]
        ref = next((r for e, r in self.refs.items() if e.bitmap is dst), None)
        if dst is None or ref is None:
            return
        for src in sources:
            src_entry = next((e for e in self.refs if e.bitmap is src), None)
            if src is None or src_entry is None or src.size_bytes != dst.size_bytes:
                ref.hi.setall(1)  # a source the checker does not follow
                continue
            have = self.refs[src_entry]
            lo, hi = (
                _convert(have.lo, src, dst.granularity),
                _convert(have.hi, src, dst.granularity),
            )
            if src is not dst:
                ref.lo |= lo
                ref.hi |= hi

    def _jobs(self, index: int) -> None:
        """Jobs write where they write; frozen bitmaps and faults make contents open."""
        touched = [n for _, nodes in self.writers for n in nodes]
        self.writers = [(j, n) for j, n in self.writers if j.status not in ENDED]
        for entry, ref in self.refs.items():
            if self.faulted:
                ref.hi.setall(1)
            owner = owner_of(self.graph, entry.bitmap)
            if owner is not None and any(owner is n for n in touched):
                ref.hi.setall(1)
            if isinstance(owner, BlockNode) and self._host_marked(owner):
                ref.hi.setall(1)
            if entry.bitmap.successor is not None and not ref.frozen:
                # the step that froze it (a backup's start, often in the transaction that
                # also added and merged into it, as libvirt's backup-begin does) left its
                # own bits as they were: checked before they become open
                self._check(entry, ref, index)
                ref.frozen = True
                ref.lo.setall(0)
                ref.hi.setall(1)

    def _check_all(self, index: int) -> None:
        for entry, ref in self.refs.items():
            self._check(entry, ref, index)

    def _check(self, entry: Tracked, ref: Ref, index: int) -> None:
        bm = entry.bitmap
        bits = bm.bits
        if len(bits) != len(ref.lo):
            _resize(ref, len(bits))
            grown_owner = owner_of(self.graph, bm)
            if isinstance(grown_owner, BlockNode) and self._host_marked(grown_owner):
                ref.hi.setall(1)  # grown with the file qcow2 writes
        succ = bm.successor
        if succ is not None and len(succ.bits) == len(bits):
            bits = bits | succ.bits
        extra = bits & ~ref.hi
        missing = ref.lo & ~bits
        if not (extra.any() or missing.any()):
            return
        g = bm.granularity
        owner = owner_of(self.graph, bm)
        where = f" on {label(owner)}" if owner is not None else ""
        if extra.any():
            ranges = byte_ranges(extra, g, bm.size_bytes)
            self.report(
                index,
                f"{entry.describe()}{where} marks {extra.count() * g} byte(s) that no guest "
                f"write through it, merge into it or job writing to its node dirtied, first "
                f"at offset {ranges[0][0]}",
                address=entry.address,
                name=entry.name,
                extra_bytes=extra.count() * g,
                ranges=ranges,
            )
            ref.hi |= extra
        if missing.any():
            ranges = byte_ranges(missing, g, bm.size_bytes)
            self.report(
                index,
                f"{entry.describe()}{where} lacks {missing.count() * g} byte(s) that guest "
                f"writes through it or merges into it dirtied, first at offset {ranges[0][0]}",
                address=entry.address,
                name=entry.name,
                missing_bytes=missing.count() * g,
                ranges=ranges,
            )
            ref.lo &= bits
