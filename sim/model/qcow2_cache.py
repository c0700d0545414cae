"""qcow2's metadata caches (block/qcow2-cache.c of QEMU 7.2): the one model of which
L2 tables and refcount block an open qcow2 node holds, which of them are dirty, and
what a dirty L2 table's changes replaced.

Two readers decide from it what reaches the image file.  `Qcow2Layout`
(sim.model.qcow2_host) marks tables and the refcount block dirty as writes change
them and writes them back at a flush or an L2 allocation, at host offsets a dirty
bitmap on the protocol node sees.  sim.model.qcow2_meta turns the same state into
the blkdebug events and requests of a qcow2 node over a blkdebug node (l2_load when
a table is not cached, l2_update per dirty table at a flush, the refcount block read
at the first allocation), writing tables back one by one through the layout so a
failed write-back leaves its table dirty.

The caches belong to the open node (qcow2_cache_create in qcow2_update_options_prepare,
at open and at every reopen); blocksim keeps them with the image's layout, which one
writable node at a time can hold (file locking).  The L2 cache covers the whole image
(QEMU 7.2's default covers 256 GiB of guest with 64 KiB clusters), so a table once
loaded or allocated stays cached; the refcount cache holds the first refcount block.
"""

from __future__ import annotations

from sim.model.content import Extent

# (first sector, end sector, extents before, host cluster kept): an L2 change not yet
# in the file; with the host cluster kept (a zero flag on an allocated cluster) a
# later write into the cluster lands in the file in place and stays
Undo = tuple[int, int, list[Extent], bool]

LINKED_RUNS = 4096  # cluster runs `Qcow2Cache.linked` follows between write-backs


class Qcow2Cache:
    """The L2 table cache and the refcount block cache of an open qcow2 node
    (BDRVQcow2State's l2_table_cache and refcount_block_cache): tables cached, tables
    dirty in the order they became dirty, the refcount block cached / dirty, the L2
    cache's dependency on the refcount cache and the other way round after a cluster
    was freed (qcow2_cache_set_dependency), the node's
    write generation since its last flush, and per dirty table the undo records of its
    changes (lost from the image when the table never reaches the file)."""

    __slots__ = (
        "l2_cached",
        "l2_depends",
        "l2_dirty",
        "linked",
        "linked_runs",
        "refblock_cached",
        "refblock_depends",
        "refblock_dirty",
        "undo",
        "written",
    )

    def __init__(self) -> None:
        self.open()

    def open(self) -> None:
        """qcow2_open: new caches, empty and clean."""
        self.l2_cached: set[int] = set()  # L2 regions whose table is cached
        self.l2_dirty: dict[int, None] = {}  # dirty L2 regions, oldest first
        self.refblock_cached = False
        self.refblock_dirty = False
        self.l2_depends = False  # the L2 cache depends on the refcount cache
        self.refblock_depends = False  # the refcount cache depends on the L2 cache (a free)
        self.written = False  # written since its last flush (write_gen != flushed_gen)
        # per dirty L2 table: what its changed entries mapped before, oldest first
        self.undo: dict[int, list[Undo]] = {}
        # per region, the (first, end cluster) runs given host clusters since its table
        # was last written back, the first LINKED_RUNS of them in all; None past that
        self.linked: dict[int, list[tuple[int, int]]] | None = {}
        self.linked_runs = 0

    def copy(self) -> Qcow2Cache:
        """The caches of a copy of the image (what is dirty; nothing cached)."""
        other = Qcow2Cache()
        if self.linked is not None:
            other.linked = {region: list(runs) for region, runs in self.linked.items()}
        else:
            other.linked = None
        other.linked_runs = self.linked_runs
        other.l2_dirty = dict(self.l2_dirty)
        other.refblock_dirty = self.refblock_dirty
        return other

    def renew(self) -> None:
        """qcow2_update_options_commit at a reopen: new, empty caches (the node was
        flushed before, so nothing dirty is dropped that was not written)."""
        self.l2_cached.clear()
        self.refblock_cached = False

    def dirty_table(self, region: int) -> None:
        """An L2 entry of `region`'s table changed in the cache."""
        self.l2_dirty[region] = None

    def table_written(self, region: int) -> None:
        """`region`'s table reached the file: clean, its changes are kept."""
        self.l2_dirty.pop(region, None)
        self.undo.pop(region, None)
        if self.linked:
            self.linked_runs -= len(self.linked.pop(region, ()))

    def link(self, region: int, first: int, end: int) -> None:
        """Clusters [first, end) of `region` got host clusters: their L2 entries are in
        the cache only until the table is written back."""
        if self.linked is None:
            return
        if self.linked_runs >= LINKED_RUNS:
            self.linked = None  # too many to follow: `unlinked` cannot answer
            return
        self.linked.setdefault(region, []).append((first, end))
        self.linked_runs += 1

    def unlinked(self) -> list[tuple[int, int]] | None:
        """The cluster runs given host clusters whose L2 entries never reached the file
        (their table is still dirty): what a reader of the file finds unallocated.
        None when there were too many to follow."""
        if self.linked is None:
            return None
        return sorted(run for region in self.l2_dirty for run in self.linked.get(region, ()))

    def written_back(self) -> None:
        """Every dirty table and the refcount block reached the file."""
        self.l2_dirty.clear()
        self.undo.clear()
        self.linked = {}
        self.linked_runs = 0
        self.refblock_dirty = False

    def lost_changes(self) -> list[Undo]:
        """What the dirty L2 tables mapped before their changes, newest first: a node
        closed with them dirty leaves the image as it was before those changes."""
        out: list[Undo] = []
        for region in self.l2_dirty:
            out.extend(reversed(self.undo.get(region, [])))
        return out
