"""Host image files: what stat() says about an image QEMU 7.2 wrote.

`host_file` answers `virtual-size` of a `file` node (the file length rounded
up to 512 bytes, `bdrv_getlength` counts sectors) and `actual-size`
(`st_blocks * 512`) in query-block and query-named-block-nodes.

Theory of operation.  The layout is derived from the node's content extents,
never sector by sector.  A qcow2 image's clusters are laid out in QEMU's
allocation order, run by run (a run of clusters inside one extent is one
step per L2 region), by `_HostMap`, which counts blocks and the file length
as it goes and follows ext4's extent tree only until it knows whether the
inode needs an index block (more than `EXT4_INLINE_EXTENTS` extents); from
there on the remaining clusters are counted from the image's cluster summary
(data clusters, allocated clusters per L2 region, part of its
`sim.model.qcow2_host.Qcow2Layout`), not walked: a query costs the few runs
walked.  A raw file's blocks are classified with numpy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.model.bitmap import DirtyBitmap
from sim.model.content import (
    FIRST_DATA_STAMP,
    SECTOR_SHIFT,
    ClusterSummary,
    Content,
    WindowContent,
)
from sim.model.graph import QCOW2_CLUSTER, BlockGraph, BlockNode, Image
from sim.model.qcow2_host import L1_ENTRY_BYTES, QCOW2_CREATE_CLUSTERS, Qcow2Content, Qcow2Layout

if TYPE_CHECKING:
    import numpy as np
else:
    from sim.lazy import numpy as np

FS_BLOCK = 4096  # ext4 block size of the folder the oracle records in
EXT4_INLINE_EXTENTS = 4  # extents the inode holds; a fifth needs an index block
EXT4_MAX_EXTENT_BLOCKS = 32768
BITMAP_TABLE_ENTRY_BYTES = 8
BITMAP_DIR_ENTRY_BYTES = 24  # Qcow2BitmapDirEntry without its name


@dataclass(frozen=True, slots=True)
class HostFile:
    """An image file as stat() sees it: st_size and st_blocks * 512."""

    length_bytes: int
    allocated_bytes: int


class _HostMap:
    """The blocks of one image file, in the order QEMU allocated its clusters.

    Allocations arrive in ascending host order, each a run of file-system
    blocks that is written or not (fallocated and not yet written).  `group`
    tells allocations ext4 made at different times apart (they are not
    assumed to touch on disk); 0 is delayed allocation, placed at writeback.
    `early` runs are in the extent tree at once: what was synced (`qemu-img
    create`, a flush) and fallocate(ZERO_RANGE), which stays one unwritten
    extent until writeback converts the parts written since.  Before
    writeback (not `settled`) only the early runs are extents."""

    def __init__(self, cluster_bytes: int, settled: bool) -> None:
        self.cluster_bytes = cluster_bytes
        self.settled = settled
        self.length_bytes = 0
        self.next_cluster = 0
        self.blocks = 0
        self._groups = 0
        self._done_extents = 0  # extents closed so far
        self._cur_blocks = 0  # blocks in the extent being merged
        self._cur_key: tuple[bool, int] = (False, -1)
        self._cur_end = -1

    def new_group(self) -> int:
        self._groups += 1
        return self._groups

    @property
    def crowded(self) -> bool:
        """The inode needs an index block whatever comes next (extents only grow)."""
        return self._extents() > EXT4_INLINE_EXTENTS

    def _extents(self) -> int:
        w = self._cur_key[0]
        cur = -(-self._cur_blocks // (EXT4_MAX_EXTENT_BLOCKS - (not w)))
        return self._done_extents + cur

    def _run(
        self, first: int, nblocks: int, written: bool, group: int, early: bool, falloc: bool
    ) -> None:
        self.blocks += nblocks
        if not (self.settled or early):
            return
        key = (written and (self.settled or not falloc), group)
        if first == self._cur_end and key == self._cur_key:
            self._cur_blocks += nblocks
        else:
            self._done_extents = self._extents()
            self._cur_blocks, self._cur_key = nblocks, key
        self._cur_end = first + nblocks

    def write(self, nbytes: int, group: int = 0, *, early: bool = False) -> None:
        """New clusters written from their start, `nbytes` long."""
        first = self.next_cluster * self.cluster_bytes
        self.next_cluster += max(-(-nbytes // self.cluster_bytes), 1)
        self._run(
            first // FS_BLOCK, -(-nbytes // FS_BLOCK), True, group, early or group != 0, False
        )
        self.length_bytes = max(self.length_bytes, first + nbytes)

    def write_clusters(self, count: int) -> None:
        """`count` whole data clusters written one after the other (delayed allocation)."""
        if count <= 0:
            return
        first = self.next_cluster * self.cluster_bytes
        per = -(-self.cluster_bytes // FS_BLOCK)
        self.next_cluster += count
        self._run(first // FS_BLOCK, per * count, True, 0, False, False)
        self.length_bytes = max(self.length_bytes, self.next_cluster * self.cluster_bytes)

    def fallocate(self, written: list[bool]) -> None:
        """A new cluster zeroed by fallocate, then written in the blocks marked True."""
        first = self.next_cluster * self.cluster_bytes // FS_BLOCK
        self.next_cluster += 1
        group = self.new_group()
        for i, is_written in enumerate(written):
            self._run(first + i, 1, is_written, group, True, True)
        self.length_bytes = max(self.length_bytes, self.next_cluster * self.cluster_bytes)

    def count_clusters(self, count: int) -> None:
        """`count` more clusters allocated once the extent tree no longer matters."""
        if count <= 0:
            return
        self.next_cluster += count
        self.blocks += count * -(-self.cluster_bytes // FS_BLOCK)
        self.length_bytes = max(self.length_bytes, self.next_cluster * self.cluster_bytes)

    def host_file(self) -> HostFile:
        blocks = self.blocks + (self._extents() > EXT4_INLINE_EXTENTS)  # the index block
        return HostFile(self.length_bytes, blocks * FS_BLOCK)


def host_file(graph: BlockGraph, image: Image) -> HostFile:
    """Length and allocated bytes of an image file, from what QEMU 7.2 wrote to it.

    qcow2: `qemu-img create` (or bdrv_img_create) writes three whole clusters
    (header, refcount table, refcount block) and the L1 table (8 bytes per
    512 MiB of disk) after them.  Clusters are then allocated first fit: for
    each 512 MiB region the guest touches, its L2 table (written whole, then
    flushed by l2_allocate) and its data clusters.  A cluster written whole,
    or partly over a backing file with data there (copy-on-write), is written
    whole; one written partly over zeroes is first zeroed whole with
    fallocate(ZERO_RANGE) (handle_alloc_space); one that only got `write -z`
    is a zero flag.  Stored persistent bitmaps (`stored_bitmaps`) add, newest
    first, their dirty data clusters (whole) and their tables, then the
    directory (qcow2_store_persistent_dirty_bitmaps).
    raw: `qemu-img create` allocates the first 4 KiB (allocate_first_block),
    then each 4 KiB block the guest touches (`write -z`: by fallocate).
    A read-only node was flushed when it was reopened ("settled"), so all its
    extents exist, as do a writable node's after a flush (qemu-io `flush`, a
    snapshot's prepare, a mirror's READY) until its next cluster allocation;
    otherwise only the synced and fallocated ones do.  More than four extents
    take an index block.

    Not exact: clusters are placed in guest-offset order (QEMU: order of first
    write); a cluster zeroed after it held data keeps its host cluster on QEMU;
    bitmaps stored a second time (after a commit made the node writable
    again), discard=unmap and a flush followed by more allocations (which
    extents exist then) are not modelled; ext4 may split what this assumes contiguous,
    which adds the index block on some runs and not on others.
    """
    node = _format_node_of(graph, image)
    stored = stored_bitmaps(node) if node is not None else []
    if stored:  # bitmap contents change without a write: not cached
        return _kept_length(image, node, _host_file(graph, image, node))
    below = [] if node is None else graph.backing_chain(node)[1:]
    key = (
        "host_file",
        image.format,
        image.size_bytes,
        node.cluster_size if node is not None else None,
        _settled(image, node),
        tuple((n.content, n.content.version) for n in below if n.content is not None),
    )
    memo = image.content.derived()
    found = memo.get(key)
    if not isinstance(found, HostFile):
        found = memo[key] = _kept_length(image, node, _host_file(graph, image, node))
    return found


def _kept_length(image: Image, node: BlockNode | None, laid_out: HostFile) -> HostFile:
    """A qcow2 file keeps its length when clusters are freed: at least up to the end
    of the host clusters its layout handed out (`Qcow2Layout.next_host`), holes and
    clusters taken again included; the layout above packs what holds data now."""
    cluster = node.cluster_size if node is not None else QCOW2_CLUSTER
    if image.format != "qcow2":
        return laid_out
    layout = image.content.cluster_summary(cluster)
    if not isinstance(layout, Qcow2Layout) or not layout.next_host:
        return laid_out
    end = layout.data_start + layout.next_host * cluster
    if end <= laid_out.length_bytes:
        return laid_out
    return HostFile(end, laid_out.allocated_bytes)


def protocol_length(graph: BlockGraph, node: BlockNode) -> int | None:
    """bdrv_getlength of a protocol (`file`) node a format node opened its image on:
    file-posix has a variable length, so it is the host file's, in whole sectors (the
    qcow2 file with its metadata, not the guest disk); None for any other node."""
    if node.driver != "file":
        return None
    image = node.image
    for parent, role in graph.parents(node):
        if role == "file" and parent.image is not None:
            image = parent.image
    if image is None:
        return None
    length = host_file(graph, image).length_bytes
    return -(-length >> SECTOR_SHIFT) << SECTOR_SHIFT


def grow_protocol_bitmaps(graph: BlockGraph, proto: BlockNode) -> None:
    """A write past the end of the protocol node `proto` grows it to its file's new
    length, and bdrv_co_write_req_finish truncates its dirty bitmaps to that length."""
    if not proto.bitmaps:
        return
    length = protocol_length(graph, proto)
    if length is not None:
        for bm in proto.bitmaps:
            if length > bm.size_bytes:
                bm.resize(length)


def mark_protocol_writes(
    graph: BlockGraph, proto: BlockNode, writes: list[tuple[int, int]]
) -> None:
    """The image file's writes (host offset, length) reach the protocol node `proto`:
    its dirty bitmaps grow with the file, then see them."""
    grow_protocol_bitmaps(graph, proto)
    for bm in proto.bitmaps:
        for offset, nbytes in writes:
            bm.record_write(offset, nbytes)


def _host_file(graph: BlockGraph, image: Image, node: BlockNode | None) -> HostFile:
    cluster = node.cluster_size if node is not None else QCOW2_CLUSTER
    settled = _settled(image, node)
    if image.format == "raw":
        hmap = _HostMap(cluster, settled)
        _raw_layout(hmap, image)
        return hmap.host_file()
    content = image.content
    if isinstance(content, WindowContent):  # a plain copy has extents to walk
        content = content.clone()
    backing = [] if node is None else graph.backing_chain(node)[1:]
    hmap = _created_qcow2(cluster, settled, image.size_bytes)
    _walk_clusters(hmap, content, content.cluster_summary(cluster), backing)
    if node is not None:
        _store_bitmaps(hmap, stored_bitmaps(node))
    return hmap.host_file()


def _settled(image: Image, node: BlockNode | None) -> bool:
    """Every block written so far is allocated (an extent): the node was reopened
    read-only, or flushed (fdatasync) with no cluster allocated since."""
    if node is None:
        return False
    if node.read_only:
        return True
    content = image.content
    if not isinstance(content, Qcow2Content):
        return False
    layout = content.layout  # the writes logged so far allocated
    return layout.synced_host == layout.next_host


def _created_qcow2(cluster: int, settled: bool, size_bytes: int) -> _HostMap:
    """The file `qemu-img create` leaves: header, refcount table and block, L1 table."""
    hmap = _HostMap(cluster, settled)
    created = hmap.new_group()
    hmap.write(QCOW2_CREATE_CLUSTERS * cluster, created)
    hmap.write(-(-size_bytes // _l2_span(cluster)) * L1_ENTRY_BYTES, created)
    return hmap


def _l2_span(cluster: int) -> int:
    """Guest bytes one L2 table maps."""
    return cluster * (cluster // L1_ENTRY_BYTES)


def _walk_clusters(
    hmap: _HostMap, content: Content, summary: ClusterSummary, backing: list[BlockNode]
) -> None:
    """L2 tables and data clusters in guest order, run by run: the walk stops where
    the extent tree is crowded and counts the rest from the cluster summary's
    totals, so its cost is that of the first few runs (all of them, at most one
    step per extent and L2 region, when the tree never crowds)."""
    per, per_region = summary.per, summary.per_region
    pending = 0  # whole data clusters not yet handed to hmap (they merge)
    region = -1
    regions_seen = data_seen = 0
    for c, end, has_data, whole in _allocated_runs(content, per):
        while c < end:
            if hmap.crowded:
                rest = summary.regions - regions_seen + summary.data - data_seen
                hmap.count_clusters(pending + rest)
                return
            if c // per_region != region:
                region = c // per_region
                regions_seen += 1
                hmap.write_clusters(pending)
                pending = 0
                hmap.write(hmap.cluster_bytes, hmap.new_group())  # the L2 table
            stop = min(end, (region + 1) * per_region)
            if has_data:
                data_seen += stop - c
                if (
                    whole
                    or (whole is None and _written_whole(content, c, per))
                    or _backing_has_data(backing, content, c, per)
                ):
                    pending += stop - c
                else:  # a single cluster: runs of more are whole
                    hmap.write_clusters(pending)
                    pending = 0
                    hmap.fallocate(_written_blocks(content, c, per))
            c = stop
    hmap.write_clusters(pending)


def _allocated_runs(content: Content, per: int) -> Iterator[tuple[int, int, bool, bool | None]]:
    """(first cluster, end cluster, holds data, written whole) of the clusters holding a
    stamp, ascending, lazily: runs inside one extent (whole: True), and clusters an
    extent covers in part, one at a time (whole: None, not looked at)."""
    cur, cur_data = -1, False  # the last cluster an extent reached, not yet yielded
    for lo, hi, v in content.iter_extents():
        data = v >= FIRST_DATA_STAMP
        c0, c1 = lo // per, (hi - 1) // per
        if c0 == cur:
            cur_data = cur_data or data
            if c1 == c0:
                continue
            c0 += 1
        elif lo % per and c0 < c1:  # begins inside a cluster nothing else reached
            if cur >= 0:
                yield cur, cur + 1, cur_data, None
            cur, cur_data = c0, data
            c0 += 1
        if cur >= 0:
            yield cur, cur + 1, cur_data, None
        if c1 > c0:  # clusters c0 .. c1-1 lie inside [lo, hi)
            yield c0, c1, data, True
        cur, cur_data = c1, data
    if cur >= 0:
        yield cur, cur + 1, cur_data, None


def _written_whole(content: Content, index: int, per: int) -> bool:
    """Every sector of the cluster holds a stamp (a partial last cluster never does)."""
    cur, end = index * per, (index + 1) * per
    if end > content.nsectors:
        return False
    for lo, hi, _ in content.extents(cur, end):
        if lo != cur:
            return False
        cur = hi
    return cur == end


def _format_node_of(graph: BlockGraph, image: Image) -> BlockNode | None:
    for node in graph.nodes:
        if node.image is image and node.is_format:
            return node
    return None


def _runs_where(content: Content, data_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """(first, end) sector arrays of the maximal runs of allocated extents (or of
    extents holding data)."""
    starts, stamps = content.arrays()
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1:] = content.nsectors
    mask = stamps >= FIRST_DATA_STAMP if data_only else stamps != 0
    edge = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    first = np.flatnonzero(edge == 1)
    last = np.flatnonzero(edge == -1) - 1
    return starts[first], ends[last]


def _overlaps(lo: np.ndarray, hi: np.ndarray, starts: np.ndarray, per: int) -> np.ndarray:
    """Per unit [start, start+per): does one of the sorted disjoint runs overlap it."""
    if not lo.size:
        return np.zeros(starts.size, dtype=bool)
    j = np.searchsorted(hi, starts, side="right")
    hit: np.ndarray = (j < lo.size) & (lo[np.minimum(j, lo.size - 1)] < starts + per)
    return hit


def _covered_units(lo: np.ndarray, hi: np.ndarray, per: int) -> np.ndarray:
    """Ascending distinct units of `per` sectors that the runs [lo, hi) touch."""
    u0 = lo // per
    u1 = (hi - 1) // per + 1
    lens = u1 - u0
    total = int(lens.sum())
    base = np.repeat(u0 - (np.cumsum(lens) - lens), lens)
    units: np.ndarray = base + np.arange(total, dtype=np.int64)  # non-decreasing
    if units.size > 1:
        units = units[np.concatenate(([True], units[1:] != units[:-1]))]
    return units


def _written_blocks(content: Content, index: int, per: int) -> list[bool]:
    """Per file-system block of a cluster: does it hold a written sector."""
    per_block = FS_BLOCK >> SECTOR_SHIFT
    stamps = content.read(index * per, (index + 1) * per)
    if stamps.size < per:
        stamps = np.concatenate((stamps, np.zeros(per - stamps.size, dtype=stamps.dtype)))
    return [bool(n) for n in (stamps != 0).reshape(-1, per_block).sum(axis=1).tolist()]


def _backing_has_data(backing: list[BlockNode], content: Content, index: int, per: int) -> bool:
    """is_zero_cow() fails: a backing node has data where the write does not reach."""
    if not backing:
        return False
    holes = content.read(index * per, (index + 1) * per) == 0
    for node in backing:
        below_content = node.content
        if below_content is None or index * per >= below_content.nsectors:
            continue
        below = below_content.read(index * per, min((index + 1) * per, below_content.nsectors))
        if (below[holes[: below.size]] >= FIRST_DATA_STAMP).any():
            return True
    return False


def _raw_layout(hmap: _HostMap, image: Image) -> None:
    hmap.length_bytes = image.size_bytes
    per_block = FS_BLOCK >> SECTOR_SHIFT
    created, zeroed = hmap.new_group(), hmap.new_group()
    hmap._run(0, 1, True, created, True, False)
    content = image.content
    lo, hi = _runs_where(content, data_only=False)
    if not lo.size:
        return
    blocks = _covered_units(lo, hi, per_block)
    blocks = blocks[blocks != 0]  # block 0: allocate_first_block
    if not blocks.size:
        return
    d_lo, d_hi = _runs_where(content, data_only=True)
    has_data = _overlaps(d_lo, d_hi, blocks * per_block, per_block)
    # runs of consecutive blocks with one kind: written data, or fallocated zeroes
    cut = np.flatnonzero((np.diff(blocks) != 1) | (has_data[1:] != has_data[:-1])) + 1
    firsts = np.concatenate(([0], cut))
    lengths = np.diff(np.concatenate((firsts, [blocks.size])))
    left = int(blocks.size)
    for a, n, is_data in zip(
        blocks[firsts].tolist(), lengths.tolist(), has_data[firsts].tolist(), strict=True
    ):
        if hmap.crowded:
            hmap.blocks += left  # the rest only adds blocks
            return
        if is_data:
            hmap._run(a, n, True, 0, False, False)
        else:  # write -z: fallocate(ZERO_RANGE)
            hmap._run(a, n, False, zeroed, True, True)
        left -= n


def stored_bitmaps(node: BlockNode) -> list[DirtyBitmap]:
    """Persistent bitmaps written to the node's qcow2 header, newest first.

    QEMU stores them when the node is reopened read-only (the model's
    `DirtyBitmap.stored`, set by sim.model.snapshot.append); a node made writable
    again (a commit base) keeps them there, flagged in-use.
    """
    if node.driver != "qcow2":
        return []
    stored = [b for b in node.bitmaps if b.persistent and b.stored and b.name is not None]
    if node.image is not None and node.image.bitmaps:  # loaded ones: directory order
        order = {bm.name: i for i, bm in enumerate(node.image.bitmaps)}
        stored.sort(key=lambda b: order.get(b.name, -1))
    return stored


def _store_bitmaps(hmap: _HostMap, bitmaps: list[DirtyBitmap]) -> None:
    """Flushed by the reopen, and placed on disk after the guest data it flushed."""
    if not bitmaps:
        return
    cluster = hmap.cluster_bytes
    bits_per_cluster = cluster * 8
    for bm in bitmaps:
        for _ in _dirty_table_clusters(bm, bits_per_cluster):
            hmap.write(cluster, early=True)  # store_bitmap_data writes whole clusters
        table_entries = -(-bm.nbits // bits_per_cluster)
        hmap.write(table_entries * BITMAP_TABLE_ENTRY_BYTES, early=True)
    hmap.write(sum(_dir_entry_bytes(bm) for bm in bitmaps), early=True)


def _dirty_table_clusters(bm: DirtyBitmap, bits_per_cluster: int) -> Iterator[int]:
    """Clusters of the bitmap's on-disk data holding a set bit."""
    bits = bm.bits
    for i in range(-(-len(bits) // bits_per_cluster)):
        if bits.any() and bits[i * bits_per_cluster : (i + 1) * bits_per_cluster].any():
            yield i


def _dir_entry_bytes(bm: DirtyBitmap) -> int:
    name = (bm.name or "").encode()
    return -(-(BITMAP_DIR_ENTRY_BYTES + len(name)) // 8) * 8
