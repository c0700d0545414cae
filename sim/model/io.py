"""Guest I/O through the graph: where a write lands and which bitmaps see it.

`write` and `discard` are the one path every guest request takes (qemu-io and
the engine's workloads alike): they carry the request out and then tell the
state's observers, `write_observers` for every write, zero-write (stamp
ZERO_STAMP) and discard that zeroed data, `discard_observers` for every
discard, so checkers never reconstruct I/O from qemu-io's text.

A write enters at a BlockBackend's root (or a node named directly, as
`qemu-io fmt0 ...` does) and walks down through filters to the data node,
like bdrv_co_pwritev: every node it passes marks its own dirty bitmaps
(bdrv_co_write_req_finish -> bdrv_set_dirty), a filter's `write_hook` runs
first (copy-before-write copies the old data out), the data node stores
the stamp, then the `after_write_hook` of every filter passed runs (a
write-blocking mirror writes the same data to its target).  Bitmaps on the
protocol (`file`) node under a qcow2 node are marked where qcow2 writes its
file: data clusters at their host offsets and the metadata it writes (see
sim/model/qcow2_host.py); under raw, at guest offsets.  Write thresholds are
checked on the same nodes (the protocol node's at guest offsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import TYPE_CHECKING

from sim.model.bitmap import DirtyBitmap
from sim.model.content import (
    SECTOR,
    SECTOR_SHIFT,
    UNALLOCATED,
    ZERO_STAMP,
    Content,
    StampTable,
    chain_extents,
    read_through,
    sector_span,
)
from sim.model.graph import BlockBackend, BlockGraph, BlockNode
from sim.model.host_file import grow_protocol_bitmaps
from sim.model.qcow2_host import Qcow2Content
from sim.model.state import BlockState

if TYPE_CHECKING:
    import numpy as np
else:
    from sim.lazy import numpy as np


@dataclass(frozen=True, slots=True)
class IOResult:
    """What qemu-io would report: ok, or the errno text it prints."""

    ok: bool
    error: str = ""


IO_ERROR = IOResult(False, "Input/output error")
NOT_SUPPORTED = IOResult(False, "Operation not supported")
NO_ACCESS = IOResult(False, "Permission denied")
OK = IOResult(True)
PATTERN_MISMATCH = IOResult(False, "pattern")


def snapshot_read_error(
    graph: BlockGraph, root: BlockNode, offset: int, length: int
) -> IOResult | None:
    """A read through a snapshot-access node (block/snapshot-access.c): ENOTSUP when
    its child has no snapshot API (is not copy-before-write), EACCES where the
    point-in-time view is not readable (cbw_snapshot_read_lock); None otherwise."""
    node = graph.data_node(root)
    if node.driver != "snapshot-access":
        return None
    cbw = node.file.cbw if node.file is not None else None
    if cbw is None:
        return NOT_SUPPORTED
    return None if cbw.accessible(offset, length) else NO_ACCESS


def write_path(graph: BlockGraph, root: BlockNode) -> list[BlockNode]:
    """The nodes a guest write entering at `root` passes, as bdrv_co_pwritev goes:
    down through filters to the data node, whose protocol child gets the write
    too.  `guest_write` walks exactly this path (inline: it is the hot loop);
    faults and checkers ask for it here."""
    path: list[BlockNode] = []
    node: BlockNode | None = root
    while node is not None and node not in path:
        path.append(node)
        if node.is_filter or raw_over_format(node):
            node = node.filtered_child() if node.is_filter else node.file
            continue
        if node.file is not None:
            path.append(node.file)
        break
    return path


def write_shifts(graph: BlockGraph, root: BlockNode) -> list[tuple[BlockNode, int]]:
    """`write_path` with what a write's offset becomes at each node: raw adds its
    `offset` below it (on its file, or on the format node it is over)."""
    path: list[tuple[BlockNode, int]] = []
    seen: list[BlockNode] = []
    node: BlockNode | None = root
    shift = 0
    while node is not None and node not in seen:
        seen.append(node)
        path.append((node, shift))
        if node.is_filter:
            node = node.filtered_child()
            continue
        if raw_over_format(node):
            shift += node.raw_offset
            node = node.file
            continue
        if node.file is not None:
            path.append((node.file, shift + node.raw_offset))
        break
    return path


def landing(graph: BlockGraph, root: BlockNode) -> tuple[BlockNode, int]:
    """The data node whose content a write entering at `root` changes, and what the
    write's offset is there (filters skipped, raw over a format node shifted)."""
    shift = 0
    node = graph.data_node(root)
    while raw_over_format(node):
        shift += node.raw_offset
        assert node.file is not None
        node = graph.data_node(node.file)
    return node, shift


def raw_over_format(node: BlockNode) -> bool:
    """A raw node whose file child is a format node (raw over qcow2): a request on it
    goes on to that node, at its offset plus raw's `offset` (raw_co_pwritev)."""
    return node.driver == "raw" and node.file is not None and node.file.is_format


def guest_write(
    graph: BlockGraph,
    bb: BlockBackend | None,
    root: BlockNode,
    offset: int,
    length: int,
    stamp: int,
    is_discard: bool = False,
    unmap: bool = False,
) -> IOResult:
    """Write `length` bytes at `offset` through `root`; stamp ZERO_STAMP for `-z`
    (and for a discard that unmaps, `is_discard`: it does not move the nodes'
    `wr_highest_offset`).  A zero write with `unmap` (BDRV_REQ_MAY_UNMAP, qemu-io's
    `-z -u`) frees the host clusters of the qcow2 clusters it covers whole, whatever
    the discard option (zero_in_l2_slice: the L2 entry keeps the zero flag only, the
    freed cluster's discard reaches the file only with discard=unmap)."""
    if offset < 0 or length < 0 or offset + length > root.size_bytes:
        return IO_ERROR
    if length == 0:
        return OK
    if graph.data_node(root).driver == "snapshot-access":
        return NOT_SUPPORTED  # snapshot_access_co_pwritev_part, _pwrite_zeroes
    end = offset + length
    if bb is not None:
        for bm in bb.bitmaps:
            bm.record_write(offset, length)
    node: BlockNode | None = root
    after: list[BlockNode] = []
    while node is not None:
        if not is_discard and end > node.wr_highest_offset:
            node.wr_highest_offset = end
        if node.write_threshold:
            check_write_threshold(graph, node, offset, length)
        for bm in node.bitmaps:
            bm.record_write(offset, length)
        if node.write_hook is not None and node.write_hook(node, offset, length) is False:  # type: ignore[operator]
            return IO_ERROR  # copy-before-write could not copy (break-guest-write)
        if node.after_write_hook is not None:
            after.append(node)
        if node.is_filter:
            node = node.filtered_child()
            continue
        if raw_over_format(node):
            assert node.file is not None
            offset += node.raw_offset  # raw over a format node lands in it, shifted
            end = offset + length
            node = node.file
            continue
        proto = node.file
        content = node.content
        cow, below = cow_plan(graph, node, [offset], length, stamp)
        # qcow2 writes its file at host offsets (data clusters and metadata): the
        # protocol node's bitmaps see those; the model's other formats, guest offsets
        host_writes: list[tuple[int, int]] | None = None
        if (
            isinstance(content, Qcow2Content)
            and proto is not None
            and (proto.bitmaps or proto.is_format)
        ):
            content.collect_host_writes(True)  # made at once, not logged
            content.write_sectors(
                offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT, stamp
            )
            if cow:
                content.copy_on_write(cow, below, [offset], length)
                cow = []
            if is_discard or (unmap and stamp == ZERO_STAMP):
                content.discard(offset, length, passthrough=is_discard or _unmaps(bb, node))
            host_writes = content.collect_host_writes(False)
        elif content is not None:
            content.write(offset, length, stamp)
            if (is_discard or (unmap and stamp == ZERO_STAMP)) and isinstance(
                content, Qcow2Content
            ):
                content.discard(offset, length, passthrough=is_discard or _unmaps(bb, node))
        if cow:
            assert isinstance(content, Qcow2Content)
            content.copy_on_write(cow, below, [offset], length)
        if proto is not None:
            if not is_discard:
                note_protocol_write(graph, node, proto, end)
            host = offset + node.raw_offset  # raw writes its file at its offset
            if proto.write_threshold:
                check_write_threshold(graph, proto, host, length)
            if proto.is_format and host_writes is not None:
                write_host_bytes(graph, proto, host_writes, stamp)
            else:
                for bm in proto.bitmaps:
                    if host_writes is None:
                        bm.record_write(host, length)
                        continue
                    for host_offset, host_length in host_writes:
                        bm.record_write(host_offset, host_length)
        break
    for flt in after:
        flt.after_write_hook(flt, offset, length, stamp)  # type: ignore[operator]
    return OK


def write_host_bytes(
    graph: BlockGraph, into: BlockNode, writes: list[tuple[int, int]], stamp: int
) -> None:
    """A qcow2 node whose file child `into` is a format node (the overlay a snapshot of
    its protocol node put there) writes its image's host bytes into it: data clusters,
    L2 tables, refcount block and L1 entries, each a write of `into` at its host
    offset (carrying the guest write's stamp: the data clusters hold it, the tables'
    bytes are not modelled).  A write past `into`'s end grows the node and its dirty
    bitmaps (bdrv_co_write_req_prepare / _finish); its image's header keeps its size."""
    if into.image is not None and writes:
        into.image.holds_host_bytes = True
    for offset, length in writes:
        end = -(-(offset + length) // SECTOR) * SECTOR
        if end > into.size_bytes:
            into.size_bytes = end
            if into.content is not None:  # shared with its image, whose header keeps its size
                into.content.resize(end)
            for bm in into.bitmaps:
                bm.resize(end)
        guest_write(graph, None, into, offset, length, stamp)


def cow_plan(
    graph: BlockGraph, node: BlockNode, offsets: list[int], length: int, stamp: int
) -> tuple[list[int], list[Content]]:
    """Writes of `length` bytes at `offsets` into qcow2 node `node` (asked before they
    are made): the clusters they allocate and cover in part, whose rest QEMU copies
    from the backing file (`Qcow2Content.cow_clusters`), and the backing chain's
    contents (top first), for `Qcow2Content.copy_on_write` after them.  A zero write
    (ZERO_STAMP) covering a new cluster in part does the same: qcow2_co_pwrite_zeroes
    makes the whole cluster a zero cluster when its rest reads as zeroes, else the
    block layer writes the zeroes as data (a new cluster, copy-on-write).  Nothing
    when there is no backing file, or for a discard."""
    content = node.content
    if (
        stamp == UNALLOCATED
        or node.backing is None
        or not isinstance(content, Qcow2Content)
        or length <= 0
    ):
        return [], []
    cb = content.cluster_bytes
    if length % cb == 0 and all(o % cb == 0 for o in offsets):
        return [], []
    clusters: list[int] = []
    for offset in offsets:
        clusters += content.cow_clusters(offset, length)
    if not clusters:
        return [], []
    below = [n.content for n in graph.backing_chain(node)[1:] if n.content is not None]
    if not below:
        return [], []
    return clusters, below


def note_protocol_write(graph: BlockGraph, data: BlockNode, proto: BlockNode, end: int) -> None:
    """A write on `data` (its contents already written) reached its protocol child:
    raw writes at the same offsets (shifted by its `offset`), qcow2 somewhere in its
    file (data and metadata).  A qcow2 write that grows the host file grows the
    protocol node, whose dirty bitmaps follow (bdrv_co_write_req_finish truncates them
    to the node's new length)."""
    if data.driver == "qcow2":
        proto.host_written = True
        grow_protocol_bitmaps(graph, proto)
    elif end + data.raw_offset > proto.wr_highest_offset:
        proto.wr_highest_offset = end + data.raw_offset


def note_job_write(graph: BlockGraph, target: BlockNode, offset: int, length: int) -> None:
    """A job chunk written to `target`: the nodes on its write path see the request."""
    end = offset + length
    for node in write_path(graph, target):
        if node.file is not None and not node.is_filter:
            note_protocol_write(graph, node, node.file, end)
            if end > node.wr_highest_offset:
                node.wr_highest_offset = end
            break
        if end > node.wr_highest_offset:
            node.wr_highest_offset = end


def check_write_threshold(graph: BlockGraph, node: BlockNode, offset: int, length: int) -> None:
    """block/write-threshold.c: a write request ending past the node's threshold
    emits BLOCK_WRITE_THRESHOLD once and switches the threshold off."""
    threshold = node.write_threshold
    end = offset + length
    if threshold and end > threshold:
        node.write_threshold = 0
        graph.emit(
            "BLOCK_WRITE_THRESHOLD",
            {"node-name": node.node_name, "amount-exceeded": end - threshold,
             "write-threshold": threshold},
        )  # fmt: skip


def _unmaps(bb: BlockBackend | None, node: BlockNode) -> bool:
    """Discards reach the node's file (BDRV_O_UNMAP: discard=unmap)."""
    return bb.discard_unmap if bb is not None else node.discard_unmap


def guest_discard(
    graph: BlockGraph, bb: BlockBackend | None, root: BlockNode, offset: int, length: int
) -> IOResult:
    """discard: a no-op with discard=ignore (QEMU's -drive default)."""
    if offset < 0 or length < 0 or offset + length > root.size_bytes:
        return IO_ERROR
    data = graph.data_node(root)
    unmap = bb.discard_unmap if bb is not None else data.discard_unmap
    if data.driver == "snapshot-access":
        if unmap and length and data.file is not None and data.file.cbw is not None:
            data.file.cbw.discard_snapshot(offset, length)  # snapshot_access_co_pdiscard
        return OK
    if unmap and length:
        return guest_write(graph, bb, root, offset, length, ZERO_STAMP, is_discard=True)
    return OK


def write(
    state: BlockState,
    bb: BlockBackend | None,
    root: BlockNode,
    offset: int,
    length: int,
    stamp: int,
    unmap: bool = False,
) -> IOResult:
    """A guest write (or zero-write: `stamp` ZERO_STAMP, `unmap`: BDRV_REQ_MAY_UNMAP)
    through `root`, then the write observers.  `bb` is the BlockBackend it came through
    (None: a node name)."""
    res = guest_write(state.graph, bb, root, offset, length, stamp, unmap=unmap)
    if res.ok:
        for observer in state.write_observers:
            observer(bb, root, offset, length, stamp)
    return res


def write_batch(
    state: BlockState,
    bb: BlockBackend | None,
    root: BlockNode,
    offsets: list[int],
    length: int,
    stamps: list[int],
) -> list[IOResult]:
    """Guest writes of `length` bytes at `offsets` with `stamps`, issued at one instant
    with nothing in between (a burst of requests): the same states and observer calls
    as `write` one by one, in order.

    When the path has no filter hook (copy-before-write, a write-blocking mirror) and
    no write threshold, the path is walked once: every dirty bitmap gets the bits of
    the whole batch at once (one bitarray index assignment), `wr_highest_offset`
    the batch's highest end, the data node's content the writes in their order; the
    write observers are then told of each write, in order (what they record does not
    depend on the writes that follow in the same instant)."""
    graph = state.graph
    path = write_path(graph, root)
    data: BlockNode | None = None
    hooked = False  # a filter hook or a write threshold on the path
    for n in path:
        if n.write_hook or n.after_write_hook or n.write_threshold:
            hooked = True
        if data is None and not n.is_filter:
            data = n
    lowest, highest = min(offsets, default=-1), max(offsets, default=0)
    end = highest + length
    if (
        data is None
        or hooked
        or length <= 0
        or lowest < 0
        or end > root.size_bytes
        or data.driver == "snapshot-access"
        or (
            data.file is not None
            and (data.file.bitmaps or data.file.is_format)
            and data.driver == "qcow2"
        )
        or raw_over_format(data)  # the write lands below, shifted (`landing`)
        or data.raw_offset  # a raw window: its file sees the write at its offset
    ):
        return [write(state, bb, root, o, length, s) for o, s in zip(offsets, stamps, strict=True)]
    bitmaps = list(bb.bitmaps) if bb is not None else []
    for node in path:
        bitmaps += node.bitmaps
        if node is not data.file and end > node.wr_highest_offset:
            node.wr_highest_offset = end  # the filters' and the data node's
    _mark_batch(bitmaps, offsets, length, highest)
    cow, below = cow_plan(graph, data, offsets, length, min(stamps, default=UNALLOCATED))
    if data.content is not None:
        data.content.write_many(offsets, length, stamps, (lowest, highest))
    if cow:
        assert isinstance(data.content, Qcow2Content)
        data.content.copy_on_write(cow, below, offsets, length)
    if data.file is not None:
        note_protocol_write(graph, data, data.file, end)
    observers = state.write_observers
    if observers:
        for offset, stamp in zip(offsets, stamps, strict=True):
            for observer in observers:
                observer(bb, root, offset, length, stamp)
    return [OK] * len(offsets)


def _mark_batch(bitmaps: list[DirtyBitmap], offsets: list[int], length: int, highest: int) -> None:
    """`record_write` for every write of a batch (`highest`: its highest offset) on
    each bitmap: the granules of the batch are worked out once per granularity; then
    one index assignment per bitmap when each write falls in one granule, else a
    slice per write."""
    tail = length - 1
    aligned: bool | None = None  # every offset is a multiple of `length`
    granules: dict[int, tuple[list[int], list[int] | None, int]] = {}
    for bm in bitmaps:
        target = bm.successor or bm
        if not target.enabled:
            continue
        shift = target._shift
        found = granules.get(shift)
        if found is None:
            heads = [o >> shift for o in offsets]
            if aligned is None:
                aligned = gcd(*offsets) % length == 0
            if aligned and (1 << shift) % length == 0:
                tails = None  # a write at a multiple of its length stays in its granule
            else:
                tails = [(o + tail) >> shift for o in offsets]
                if tails == heads:
                    tails = None
            found = granules[shift] = (heads, tails, highest >> shift)
        firsts, lasts, top = found
        bits = target.bits
        if lasts is None:  # one granule each
            nbits = len(bits)
            if top >= nbits:  # a protocol node's bitmap, marked at guest offsets
                bits[[f for f in firsts if f < nbits]] = 1
            else:
                bits[firsts] = 1
        else:
            for f, last in zip(firsts, lasts, strict=True):
                bits[f : last + 1] = 1


def discard(
    state: BlockState, bb: BlockBackend | None, root: BlockNode, offset: int, length: int
) -> IOResult:
    """A guest discard through `root`, then the observers: the write observers when
    it zeroed data (discard=unmap), the discard observers always."""
    graph = state.graph
    res = guest_discard(graph, bb, root, offset, length)
    if not res.ok:
        return res
    data = graph.data_node(root)
    unmap = bb.discard_unmap if bb is not None else data.discard_unmap
    zeroed = unmap and length > 0 and data.driver != "snapshot-access"
    if zeroed:
        for observer in state.write_observers:
            observer(bb, root, offset, length, ZERO_STAMP)
    for d_observer in state.discard_observers:
        d_observer(bb, root, offset, length, zeroed)
    return res


def copy_on_read(graph: BlockGraph, root: BlockNode, offset: int, length: int) -> None:
    """A read through a blockdev-added copy-on-read filter (block/io.c
    bdrv_co_do_copy_on_readv, QEMU 7.2): every cluster of the node below that it does
    not allocate gets what the read sees there (zeroes included, unless `bottom`
    limits the copy to data from `bottom` and above).  The copy is written below the
    node's own bitmaps (bdrv_driver_pwritev, no bdrv_co_write_req_finish): they stay
    clean.  QEMU marks the protocol node's bitmaps at the host offsets the format
    writes; the model leaves them (not modelled for copy-on-read)."""
    node: BlockNode | None = root
    while node is not None and node.is_filter:
        if node.driver == "copy-on-read" and node.cor_active and node.file is not None:
            _copy_up(graph, graph.data_node(node.file), node.cor_bottom, offset, length)
        node = node.filtered_child()


def _copy_up(
    graph: BlockGraph, top: BlockNode, bottom: BlockNode | None, offset: int, length: int
) -> None:
    if top.content is None or length <= 0:
        return
    cluster = top.cluster_size
    start = offset // cluster * cluster
    end = min(-(-(offset + length) // cluster) * cluster, top.size_bytes)
    first, last = sector_span(start, end - start)
    below: list[Content] = []
    for n in graph.backing_chain(top)[1:]:
        if n.content is not None:
            below.append(n.content)
        if n is bottom:
            break
    own = top.content.read(first, last)
    seen = read_through(below, first, last)
    fill = np.where(own == 0, seen, 0)
    if bottom is None:
        fill = np.where((own == 0) & (seen == 0), ZERO_STAMP, fill)
    if not bool(fill.any()):
        return
    top.content.write_stamps(first, fill.astype(own.dtype, copy=False))


def read_stamps(graph: BlockGraph, root: BlockNode, offset: int, length: int) -> np.ndarray:
    """Per-sector stamps a guest read of [offset, offset+length) sees."""
    data = graph.data_node(root)
    if data.driver == "snapshot-access":
        if data.file is not None and data.file.cbw is not None:
            return data.file.cbw.snapshot_stamps(offset, length)
    first, end = sector_span(offset, length)
    chain = [n.content for n in graph.backing_chain(root) if n.content is not None]
    return read_through(chain, first, end)


def guest_read(
    graph: BlockGraph,
    root: BlockNode,
    offset: int,
    length: int,
    pattern: int | None,
    stamps: StampTable,
) -> IOResult:
    """A read; with a pattern, IOResult.ok is False when verification fails."""
    if offset < 0 or length < 0 or offset + length > root.size_bytes:
        return IO_ERROR
    refused = snapshot_read_error(graph, root, offset, length)
    if refused is not None:
        return refused
    if pattern is None or length == 0:
        return OK
    if graph.data_node(root).driver == "snapshot-access":
        seen = read_stamps(graph, root, offset, length)
        return OK if bool((stamps.patterns_of(seen) == pattern).all()) else PATTERN_MISMATCH
    return OK if _reads_pattern(graph, root, offset, length, pattern, stamps) else PATTERN_MISMATCH


def _reads_pattern(
    graph: BlockGraph, root: BlockNode, offset: int, length: int, pattern: int, stamps: StampTable
) -> bool:
    """Every sector a read of [offset, offset+length) sees (as `read_stamps` does) holds
    `pattern`: one look at each extent the read meets, not one at each sector."""
    first, end = sector_span(offset, length)
    chain = [n.content for n in graph.backing_chain(root) if n.content is not None]
    if chain:
        end = min(end, chain[0].nsectors)
    holes_ok = stamps.pattern(UNALLOCATED) == pattern  # unallocated sectors read zeroes
    covered = first
    for lo, hi, stamp in chain_extents(chain, first, end):
        if (lo > covered and not holes_ok) or stamps.pattern(stamp) != pattern:
            return False
        covered = hi
    return covered >= end or holes_ok


def sectors(length: int) -> int:
    return -(-length // SECTOR)
