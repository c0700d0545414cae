"""Graph surgery and data copying shared by the job kinds.

`replace_node` is block.c's bdrv_replace_node: every parent of `old` (nodes
and BlockBackends) is redirected to `new`.  Filters are inserted and dropped
with it, the way mirror_top, commit_top, copy-before-write and copy-on-read
are in QEMU 7.2.  `copy_range` moves stamps (data identity) from what a read
through a chain sees into a node, marking that node's bitmaps as a job write
through a BlockBackend on it would.
"""

from __future__ import annotations

from bitarray import bitarray

from sim.model.content import (
    FIRST_DATA_STAMP,
    SECTOR_SHIFT,
    ZERO_STAMP,
    Content,
    Extent,
    chain_extents,
    sector_span,
)
from sim.model.graph import BlockGraph, BlockNode
from sim.model.host_file import mark_protocol_writes
from sim.model.io import write_host_bytes
from sim.model.qcow2_host import Qcow2Content


def replace_node(graph: BlockGraph, old: BlockNode, new: BlockNode) -> None:
    """Point every parent of `old` (except `new` itself) at `new`."""
    roots = graph.roots_of(old)
    graph.redirect(graph.parents(old), roots, new)


def insert_filter(
    graph: BlockGraph,
    below: BlockNode,
    driver: str,
    name: str | None,
    target: BlockNode | None = None,
) -> BlockNode:
    """Create a filter node above `below` (with its `target` child, if any, attached
    first, as bdrv_cbw_append opens it) and make it take `below`'s place."""
    flt = graph.new_node(driver, below.size_bytes, name)
    flt.implicit = name is None and driver != "copy-before-write"
    flt.target = target
    # bdrv_replace_node keeps `below`'s open flags: a file child read-only together
    # with its format parent stays read-only under the filter, where reopening that
    # parent no longer reaches it (bdrv_reopen_queue follows inherits_from children)
    if not below.read_only and graph.is_read_only(below) and below.inherits_from is not None:
        below.read_only = below.ro_from_parent = True
    replace_node(graph, below, flt)
    if driver in ("mirror_top", "commit_top"):
        flt.backing = below
    else:
        flt.file = below
    graph.links_changed()
    return flt


def drop_filter(graph: BlockGraph, flt: BlockNode) -> None:
    """Remove a filter: its parents go back to its child; the filter is deleted."""
    child = flt.filtered_child()
    if child is not None:
        replace_node(graph, flt, child)
        if child.ro_from_parent:
            # back under its read-only parent: the parent's reopens reach it again
            child.read_only = child.ro_from_parent = False
            if not graph.is_read_only(child):
                child.read_only = child.ro_from_parent = True
    flt.file = flt.backing = flt.target = None
    flt.write_hook = flt.after_write_hook = None
    graph.remove_node(flt)
    graph.links_changed()


def chain_contents(
    graph: BlockGraph, top: BlockNode, stop: BlockNode | None = None
) -> list[Content]:
    """Contents of the data nodes from `top` down to (excluding) `stop`."""
    out: list[Content] = []
    for n in graph.backing_chain(top):
        if n is stop:
            break
        if n.content is not None:
            out.append(n.content)
    return out


def chain_nodes(
    graph: BlockGraph, top: BlockNode, stop: BlockNode | None = None
) -> list[BlockNode]:
    """The data nodes from `top` down to (excluding) `stop`."""
    out: list[BlockNode] = []
    for n in graph.backing_chain(top):
        if n is stop:
            break
        out.append(n)
    return out


def fully_allocated(nodes: list[BlockNode]) -> bool:
    """A raw node passes block-status to its file: file-posix answers DATA or ZERO
    everywhere (holes read as zeroes), so bdrv_is_allocated_above sees all of it
    allocated; null-co answers neither (unless `read-zeroes`), so nothing is."""
    return any(n.driver == "raw" and not _null_below(n) for n in nodes)


def _null_below(raw: BlockNode) -> bool:
    """null_co_block_status: OFFSET_VALID only, ZERO with read-zeroes."""
    file = raw.file
    return file is not None and file.driver == "null-co" and not file.read_zeroes


def allocation_mask(nodes: list[BlockNode], size_bytes: int, cluster: int) -> bitarray:
    """A bit per `cluster` bytes: allocated in any of `nodes` (bdrv_is_allocated_above).

    qcow2 answers block-status per cluster of its own (a 4 KiB write allocates the
    whole 64 KiB cluster), so each node's allocation is rounded out to its cluster
    size before it is mapped onto `cluster` (a mirror granularity below the
    cluster size still sees whole clusters dirty)."""
    mask = bitarray(-(-size_bytes // cluster), endian="little")
    if fully_allocated(nodes):
        mask.setall(1)
        return mask
    mask.setall(0)
    for node in nodes:
        if node.content is None:
            continue
        own = node.cluster_size if node.driver == "qcow2" else 1 << SECTOR_SHIFT
        _mark_allocated(mask, node.content, cluster, own)
    return mask


def set_bits_from_mask(bits: bitarray, mask: bitarray) -> None:
    """bits |= mask (a mask longer than `bits` is cut to its length)."""
    bits |= mask[: len(bits)] if len(mask) > len(bits) else mask


def _mark_allocated(mask: bitarray, content: Content, cluster: int, own: int) -> None:
    """Set the bits (one per `cluster` bytes) of every run allocated in `content`,
    each run first rounded out to `own` bytes; one slice assignment a run."""
    per = max(cluster >> SECTOR_SHIFT, 1)
    unit = max(own >> SECTOR_SHIFT, 1)
    for first, end in content.allocated_sectors():
        first = first // unit * unit
        end = -(-end // unit) * unit
        mask[first // per : (end - 1) // per + 1] = 1


def copy_range(
    graph: BlockGraph,
    contents: list[Content],
    dst: BlockNode,
    offset: int,
    length: int,
    *,
    mark: bool = True,
    write_zeroes: bool = False,
) -> None:
    """Copy what a read of [offset, offset+length) through `contents` sees into `dst`.

    With `write_zeroes`, what reads as unallocated is written as zeroes (block-copy
    writes zero clusters, which leaves them allocated in the target)."""
    length = min(length, dst.size_bytes - offset)
    if length <= 0:
        return
    first, end = sector_span(offset, length)
    runs = chain_extents(contents, first, end)
    if write_zeroes:
        runs = _fill_gaps(runs, first, min(end, contents[0].nsectors) if contents else end)
    # through filters above the data node (a throttle node as a backup's or
    # copy-before-write's target): the data lands below, each node's bitmaps see it
    nodes = [dst]
    below = dst.filtered_child() if dst.is_filter else None
    while below is not None:
        nodes.append(below)
        below = below.filtered_child() if below.is_filter else None
    data = nodes[-1]
    content = data.content
    proto = data.file
    if (
        isinstance(content, Qcow2Content)
        and proto is not None
        and (proto.bitmaps or proto.is_format)
        and runs
    ):
        # the protocol node's bitmaps see the writes qcow2 makes to its file; a format
        # node as its file (a snapshot of its protocol node) takes them as its data
        content.collect_host_writes(True)
        content.write_extents(runs)
        host_writes = content.collect_host_writes(False)
        if not proto.is_format:
            mark_protocol_writes(graph, proto, host_writes)
        elif (top := max(stamp for _a, _b, stamp in runs)) >= FIRST_DATA_STAMP:
            write_host_bytes(graph, proto, host_writes, top)
    elif content is not None and runs:
        content.write_extents(runs)
    if mark:
        for node in nodes:
            for bm in node.bitmaps:
                bm.record_write(offset, length)


def _fill_gaps(runs: list[Extent], first: int, end: int) -> list[Extent]:
    """`runs` with the sectors between them (and up to `end`) as zero extents."""
    out: list[Extent] = []
    cur = first
    for lo, hi, s in runs:
        if lo > cur:
            out.append((cur, lo, ZERO_STAMP))
        out.append((lo, hi, s))
        cur = hi
    if cur < end:
        out.append((cur, end, ZERO_STAMP))
    return out


def allocated_runs(
    contents: list[Content], offset: int, length: int, cluster: int
) -> list[tuple[int, int]]:
    """(offset, length) runs of whole clusters in a range allocated in any of `contents`
    (what bdrv_is_allocated_above reports for qcow2, cluster by cluster)."""
    first_c = offset // cluster
    end_c = -(-(offset + length) // cluster)
    per = max(cluster >> SECTOR_SHIFT, 1)
    clusters: list[tuple[int, int]] = []  # [first, end) cluster runs, merged
    for content in contents:
        for lo, hi, _ in content.extents(first_c * per, end_c * per):
            a, b = lo // per, (hi - 1) // per + 1
            clusters.append((a, b))
    clusters.sort()
    runs: list[tuple[int, int]] = []
    cur_a = cur_b = -1
    for a, b in clusters:
        if a <= cur_b:
            cur_b = max(cur_b, b)
            continue
        if cur_b >= 0:
            runs.append(_clip_bytes(cur_a, cur_b, cluster, offset, length))
        cur_a, cur_b = a, b
    if cur_b >= 0:
        runs.append(_clip_bytes(cur_a, cur_b, cluster, offset, length))
    return runs


def _clip_bytes(a: int, b: int, cluster: int, offset: int, length: int) -> tuple[int, int]:
    lo = max(a * cluster, offset)
    hi = min(b * cluster, offset + length)
    return lo, hi - lo


def allocation_run(nodes: list[BlockNode], offset: int, max_bytes: int) -> tuple[bool, int]:
    """bdrv_is_allocated_above over `nodes` (top first, the last included) from `offset`,
    at most `max_bytes`: whether the run there is allocated in one of them, and its
    length.  The first node allocated at `offset` answers its own run; each node above
    it, unallocated there, limits the run to its unallocated run
    (bdrv_co_common_block_status_above)."""
    if fully_allocated(nodes):
        return True, max_bytes
    kind, n = _chain_status(nodes, offset, max_bytes)
    return kind != UNALLOCATED_RUN, n


def data_run(nodes: list[BlockNode], offset: int, max_bytes: int) -> tuple[bool, int]:
    """bdrv_block_status_above over the chain `nodes` (top first, down to its end) from
    `offset`, at most `max_bytes`: whether the run there reads as data (else as
    zeroes: zero clusters, or nothing allocated down to the end of the chain), and its
    length.  A node other than qcow2 (a raw image) answers for itself: data where it
    holds data, zeroes elsewhere."""
    kind, n = _chain_status(nodes, offset, max_bytes)
    return kind == DATA_RUN, n


UNALLOCATED_RUN, ZERO_RUN, DATA_RUN = 0, 1, 2


def _chain_status(nodes: list[BlockNode], offset: int, max_bytes: int) -> tuple[int, int]:
    """The first node (top down) that has `offset` allocated answers its run; the ones
    above it limit the run to their unallocated runs."""
    limit = max_bytes
    for node in nodes:
        if node.content is None:
            continue
        kind, n = _status_run(node.content, offset, limit)
        if kind != UNALLOCATED_RUN:
            return kind, n
        limit = min(limit, n)
    return UNALLOCATED_RUN, limit


def _status_run(content: Content, offset: int, max_bytes: int) -> tuple[int, int]:
    """One node's block status at `offset` (at most `max_bytes`): unallocated, zeroes
    or data, and for how long.  qcow2 answers per cluster (qcow2_get_host_offset): a
    run of clusters of one kind, data clusters only while their host clusters follow
    each other in the file; other nodes per sector, all of it allocated (data where
    they hold data).  Cost grows with the extents in the run."""
    end = offset + max_bytes
    if not isinstance(content, Qcow2Content):
        first, stop = sector_span(offset, max_bytes)
        stop = min(stop, content.nsectors)
        segments: list[tuple[int, bool]] = []  # (end, data) from `first` on, holes: zeroes
        pos = first
        for lo, hi, stamp in content.extents(first, stop):
            if lo > pos:
                segments.append((lo, False))
            segments.append((hi, stamp >= FIRST_DATA_STAMP))
            pos = hi
        segments.append((max(stop, pos), False))
        data = segments[0][1]
        cover = stop
        for seg_end, seg_data in segments:
            if seg_data != data:
                break
            cover = seg_end
        n = min(cover << SECTOR_SHIFT, end) - offset
        return (DATA_RUN if data else ZERO_RUN), n if n > 0 else max_bytes
    cb = content.cluster_bytes
    per = cb >> SECTOR_SHIFT
    first_c, end_c = offset // cb, -(-end // cb)
    host = content.host

    def kind(c: int) -> tuple[int, int]:
        h = host.stamp_at(c)
        if h:
            return DATA_RUN, h  # equal for clusters contiguous in the file
        return (ZERO_RUN, 0) if content.extents(c * per, (c + 1) * per) else (UNALLOCATED_RUN, 0)

    edges: set[int] = set()
    for a, b, _ in host.extents(first_c, end_c):
        edges.update((a, b))
    for lo, hi, _ in content.extents(first_c * per, end_c * per):
        edges.update((lo // per, -(-hi // per)))
    start = kind(first_c)
    stop_c = end_c
    for c in sorted(e for e in edges if first_c < e < end_c):
        if kind(c) != start:
            stop_c = c
            break
    return start[0], min(stop_c * cb, end) - offset
