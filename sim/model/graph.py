"""The block graph: BlockBackends, nodes (BlockDriverStates) and their children.

Theory of operation.  A `BlockGraph` owns every node and backend.  Nodes are
kept in node-name assignment order (QEMU's `all_bdrv_states`, whose reverse
is the `query-named-block-nodes` order).  A backend points at its root node;
name lookup follows QEMU 7.2's `bdrv_lookup_bs()`: a backend name first (its
*current* root, job filters included), then a node-name.  Backends and nodes
share one namespace.  Images (files that `qemu-img`/`drive-backup` created)
outlive the nodes opened on them, so `mode: existing` and image diffs work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.model.bitmap import DirtyBitmap
from sim.model.blockstats import AcctStats
from sim.model.content import Content, new_content
from sim.model.qcow2_host import Qcow2Content, flush_metadata, new_qcow2_content

if TYPE_CHECKING:
    from sim.model.cbw import CopyBeforeWrite
    from sim.model.jobs import Job

FORMAT_DRIVERS = ("qcow2", "raw")
FILTER_DRIVERS = (
    "copy-before-write",
    "mirror_top",
    "commit_top",
    "copy-on-read",
    "blkdebug",
    "throttle",
)
QCOW2_CLUSTER = 65536
BACKING_ALLOWED_OPS = frozenset({"commit-target", "stream", "backup-source", "backup-target"})
_NODE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,31}\Z")  # id_wellformed, < 32 chars


def id_wellformed(name: str) -> bool:
    """QEMU util/id.c: a letter, then letters, digits, '-', '.', '_'."""
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", name) is not None


MAX_BACKING_NAME_BYTES = 1023  # qcow2_change_backing_file: a longer name is -EINVAL
# Image file names in a trace are bare; QEMU, run by blocksim's oracle, sees each as an
# absolute path in its scratch folder /tmp/blocksim-qemu-<10 hex digits>/: 30 bytes more
SCRATCH_PREFIX_BYTES = len("/tmp/blocksim-qemu-0123456789/")
_RELATIVE_FILENAME = re.compile(r'"filename": "(?!/)')


def qemu_name_bytes(name: str) -> int:
    """The length of a file name as QEMU sees it: a bare name, and every bare
    `filename` inside a json:{...} name, carries the scratch folder's path."""
    size = len(name.encode())
    if name.startswith("json:"):
        return size + SCRATCH_PREFIX_BYTES * len(_RELATIVE_FILENAME.findall(name))
    if name.startswith("/") or "://" in name:
        return size
    return size + SCRATCH_PREFIX_BYTES


def backing_name_fits(name: str) -> bool:
    """qcow2_change_backing_file: a qcow2 header holds a backing file name of at most
    1023 bytes."""
    return qemu_name_bytes(name) <= MAX_BACKING_NAME_BYTES


def backing_name_error(name: str, fmt: str | None) -> QMPError:
    """qcow2_co_create's error when the header cannot take its backing file name (a
    missing format prints as glibc prints a null string)."""
    shown = "(null)" if fmt is None else fmt
    return QMPError(
        f"Could not assign backing file '{name}' with format '{shown}': Invalid argument"
    )


@dataclass(eq=False, slots=True)
class Image:
    """An image file in the scratch folder: what outlives a node opened on it."""

    filename: str
    format: str
    size_bytes: int
    content: Content
    backing_file: str | None = None
    backing_format: str | None = (
        None  # the header's backing format ("": the header names none; None: the named image's)
    )
    cluster_size: int = QCOW2_CLUSTER  # qcow2 only
    # persistent dirty bitmaps in the qcow2 bitmap directory, as stored when the last
    # writable node on the image closed (qcow2_store_persistent_dirty_bitmaps)
    bitmaps: list[DirtyBitmap] = field(default_factory=list)
    # sector runs whose L2 entries never reached this file (a snapshot of the protocol
    # node left its format node's dirty tables to be written into the overlay): a
    # reader of the file finds them unallocated
    unlinked: list[tuple[int, int]] = field(default_factory=list)
    # a format node above wrote its own image's host bytes into this one (data clusters,
    # tables): blocksim keeps them as guest writes carrying the data's stamp
    holds_host_bytes: bool = False


@dataclass(eq=False, slots=True)
class BlockNode:
    """A BlockDriverState: one node of the graph, named or auto-named (#blockNNN)."""

    node_name: str
    driver: str
    size_bytes: int
    auto_named: bool = False
    file: BlockNode | None = None
    backing: BlockNode | None = None
    target: BlockNode | None = None  # copy-before-write's target child
    content: Content | None = None
    image: Image | None = None
    bitmaps: list[DirtyBitmap] = field(default_factory=list)  # newest first
    read_only: bool = False
    monitor_owned: bool = False
    job_refs: int = 0  # jobs holding it as a job node (block_job_add_bdrv references it)
    implicit: bool = False  # an unnamed job filter that query-block skips
    # bs->inherits_from: the parent that opened this node as its child (a -drive's or
    # an inline blockdev-add `file`); reopening that parent reopens this node too
    inherits_from: BlockNode | None = None
    # read-only because a filter went between it and its read-only inherits_from
    # parent (the flag it had there stays; a reopen of that parent no longer reaches it)
    ro_from_parent: bool = False
    cluster_size: int = QCOW2_CLUSTER
    backing_parent_label: str = ""  # the P of "node is used as backing hd of 'P'"
    discard_unmap: bool = False
    # op blockers, oldest first: (reason, ops still allowed); QEMU reports the newest
    blockers: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    write_hook: object | None = None  # a job's before-write callback (copy-before-write)
    # a job's after-write callback, given the stamp (write-blocking mirror's target write)
    after_write_hook: object | None = None
    write_threshold: int = 0  # block-set-write-threshold; 0 = off
    # a copy-on-read filter added by blockdev-add: guest reads through it populate
    # the node below (`cor_bottom`: the lowest node copied from, None = all)
    cor_active: bool = False
    cor_bottom: BlockNode | None = None
    # a throttle filter's group (sim.model.throttle.ThrottleGroup), shared by its members
    throttle_group: Any = None
    # query-blockstats: the end of the highest write that reached the node; a protocol
    # node a format driver wrote metadata to reports at least its file's length
    wr_highest_offset: int = 0
    host_written: bool = False
    # raw `offset` / `size` as given (a window when offset is not 0 or size is given):
    # the guest sees [raw_offset, raw_offset + size) of its file
    raw_options: dict[str, int] = field(default_factory=dict)
    raw_offset: int = 0
    # raw over the file of a non-raw image: the disk is that image's host bytes (its
    # format, "" otherwise); blocksim keeps guest contents, so I/O through it is refused
    host_bytes_of: str = ""
    # null-co: `size` given in its options (null_refresh_filename then names it
    # json:{...}, whatever the size)
    size_option: bool = False
    read_zeroes: bool = False  # null-co's read-zeroes: block status reports zeroes
    # a blkdebug node's strong options, flattened as QEMU's QDict holds them
    # ("inject-error.0.event": ...): what its json: filename shows
    blkdebug_options: dict[str, Any] = field(default_factory=dict)

    @property
    def raw_window(self) -> bool:
        """raw_open: a raw node with an offset or a size has a data child, not a
        filtered one (it unshares resize on its file and cannot be resized itself)."""
        return bool(self.raw_offset) or "size" in self.raw_options

    cbw: CopyBeforeWrite | None = None  # a copy-before-write filter's state (sim/model/cbw.py)

    @property
    def is_filter(self) -> bool:
        return self.driver in FILTER_DRIVERS

    @property
    def is_format(self) -> bool:
        return self.driver in FORMAT_DRIVERS

    def filtered_child(self) -> BlockNode | None:
        """The child a filter passes I/O to (`file` or `backing`, as in QEMU)."""
        if self.driver in ("mirror_top", "commit_top"):
            return self.backing
        if self.driver in ("copy-before-write", "copy-on-read", "blkdebug", "throttle"):
            return self.file
        return None

    def children(self) -> Iterator[BlockNode]:
        for child in (self.file, self.backing, self.target):
            if child is not None:
                yield child

    def find_bitmap(self, name: str) -> DirtyBitmap | None:
        for bm in self.bitmaps:
            if bm.name == name:
                return bm
        return None

    def default_granularity(self) -> int:
        """QEMU: the format's cluster size clamped to [4 KiB, 64 KiB]; 64 KiB if none."""
        if self.driver == "qcow2":
            return min(max(self.cluster_size, 4096), 65536)
        return 65536


@dataclass(eq=False, slots=True)
class BlockBackend:
    """A named BlockBackend (a `-drive id=`, a 'device' in QMP)."""

    name: str
    root: BlockNode | None
    bitmaps: list[DirtyBitmap] = field(default_factory=list)  # bb-attached policy only
    discard_unmap: bool = False
    stats: AcctStats = field(default_factory=AcctStats)  # what query-blockstats shows
    # a -drive without a device takes write only when qemu-io first writes through it
    # (qemuio_command adds the permission and never drops it; recorded on QEMU 7.2)
    took_write: bool = False


class BlockGraph:
    """All nodes, backends and images of one simulated QEMU process."""

    def __init__(self) -> None:
        self.nodes: list[BlockNode] = []
        self._by_name: dict[str, BlockNode] = {}
        self.backends: dict[str, BlockBackend] = {}
        # unnamed BlockBackends of block exports: parents that graph changes move too
        self.export_backends: list[BlockBackend] = []
        self.images: dict[str, Image] = {}
        self._auto_counter = 100
        # where the graph reports what real QEMU would crash on (BlockState: its warnings)
        self.warn: Callable[[str], None] = lambda message: None
        # where the graph's own events go (BLOCK_WRITE_THRESHOLD); BlockState connects it
        self.emit: Callable[[str, dict[str, Any]], None] = lambda name, data: None
        # called after a child link changes (`links_changed`)
        self.link_observers: list[Callable[[], None]] = []
        # when each parent link was attached (`stamp_links`): QEMU's bs->parents order
        self.link_stamps: dict[tuple[object, str, BlockNode], int] = {}
        self._next_stamp = 0

    # -- names -------------------------------------------------------------------------
    def auto_name(self) -> str:
        self._auto_counter += 1
        return f"#block{self._auto_counter}"

    def node(self, name: str) -> BlockNode | None:
        return self._by_name.get(name)

    def add_node(self, node: BlockNode) -> BlockNode:
        self.nodes.append(node)
        self._by_name[node.node_name] = node
        return node

    def remove_node(self, node: BlockNode) -> None:
        if self._by_name.get(node.node_name) is node:
            del self._by_name[node.node_name]
            self.nodes.remove(node)

    def new_node(
        self, driver: str, size_bytes: int, name: str | None = None, **kw: Any
    ) -> BlockNode:
        """A new node, named `name` or auto-named (#blockNNN), registered last."""
        auto = name is None
        content = kw.get("content")
        if driver == "qcow2" and isinstance(content, Qcow2Content):
            content.layout.opened()  # qcow2_open
        node = BlockNode(
            name if name is not None else self.auto_name(),
            driver,
            size_bytes,
            auto_named=auto,
            **kw,
        )
        return self.add_node(node)

    # -- lookup (bdrv_lookup_bs) --------------------------------------------------------
    def lookup_bs(self, name: str) -> BlockNode | None:
        """Backend name first (its current root), then node-name."""
        bb = self.backends.get(name)
        if bb is not None and bb.root is not None:
            return bb.root
        return self._by_name.get(name)

    def lookup_device_or_node(self, device: str | None, node_name: str | None) -> BlockNode:
        """bdrv_lookup_bs(device, node_name) with separate arguments."""
        if device is not None:
            bb = self.backends.get(device)
            if bb is not None and bb.root is not None:
                return bb.root
        if node_name is not None:
            node = self._by_name.get(node_name)
            if node is not None:
                return node
        raise QMPError(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")

    def lookup_or_fail(self, name: str) -> BlockNode:
        node = self.lookup_bs(name)
        if node is None:
            raise QMPError(f"Cannot find device='{name}' nor node-name='{name}'")
        return node

    def backend_of_root(self, node: BlockNode) -> BlockBackend | None:
        for bb in self.backends.values():
            if bb.root is node:
                return bb
        return None

    def display_name(self, node: BlockNode) -> str:
        """bdrv_get_device_or_node_name: the backend's name if the node is a root."""
        bb = self.backend_of_root(node)
        return bb.name if bb is not None else node.node_name

    # -- structure -----------------------------------------------------------------------
    def parents(self, node: BlockNode) -> list[tuple[BlockNode, str]]:
        out: list[tuple[BlockNode, str]] = []
        for p in self.nodes:
            if p.file is node:
                out.append((p, "file"))
            if p.backing is node:
                out.append((p, "backing"))
            if p.target is node:
                out.append((p, "target"))
        return out

    def redirect(
        self,
        links: list[tuple[BlockNode, str]],
        roots: list[BlockBackend],
        to: BlockNode,
        skip: BlockNode | None = None,
    ) -> None:
        """Point child links (parent, role) and backend roots at `to` (bdrv_replace_node's
        core); links from `skip`, and from any parent `to` reaches through its own
        children, are left alone (should_update_child: no loops, e.g. a backup target
        whose backing is the source keeps it when the filter goes above the source)."""
        below_to = {id(n) for n in self.subtree(to)}
        for parent, role in links:
            if parent is skip or id(parent) in below_to:
                continue
            if role == "backing":
                self.set_backing(parent, to)
            else:
                setattr(parent, role, to)
        for bb in roots:
            bb.root = to

    def roots_of(self, node: BlockNode) -> list[BlockBackend]:
        """Every BlockBackend whose root is `node`: named ones, then export ones."""
        named = [bb for bb in self.backends.values() if bb.root is node]
        return named + [bb for bb in self.export_backends if bb.root is node]

    def subtree(self, node: BlockNode) -> list[BlockNode]:
        """`node` and every node below it through any child link."""
        out: list[BlockNode] = []
        seen: set[int] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            out.append(n)
            stack.extend(n.children())
        return out

    def has_users(self, node: BlockNode) -> bool:
        return bool(self.parents(node)) or bool(self.roots_of(node))

    def data_node(self, node: BlockNode) -> BlockNode:
        """Skip filters downwards to the node whose content a write lands on."""
        while node.is_filter:
            child = node.filtered_child()
            if child is None:
                break
            node = child
        return node

    def backing_chain(self, node: BlockNode) -> list[BlockNode]:
        """The data nodes a read through `node` consults, top first (filters skipped)."""
        chain: list[BlockNode] = []
        cur: BlockNode | None = self.data_node(node)
        while cur is not None:
            chain.append(cur)
            nxt = cur.backing
            cur = self.data_node(nxt) if nxt is not None else None
        return chain

    def overlay_of(self, node: BlockNode) -> BlockNode | None:
        """The node whose backing child is `node` (skipping commit_top filters)."""
        for p in self.nodes:
            if p.backing is node:
                if p.driver == "commit_top":
                    return self.overlay_of(p)
                return p
        return None

    def delete_unreferenced(self, node: BlockNode) -> list[BlockNode]:
        """Delete `node` and, recursively, children nobody else uses (bdrv_unref)."""
        deleted: list[BlockNode] = []
        stack = [node]
        while stack:
            n = stack.pop()
            if n.monitor_owned or self.has_users(n) or self.node(n.node_name) is not n:
                continue
            if n.job_refs:  # a job still references it: deleted when the job lets go
                continue
            for bm in n.bitmaps:
                if bm.export_hold:
                    self.warn(
                        f"real QEMU 7.2 aborts (bdrv_release_dirty_bitmap_locked: assertion "
                        f"!bdrv_dirty_bitmap_busy) when node '{n.node_name}', which holds "
                        f"the exported bitmap '{bm.name}', is deleted; blocksim deletes it"
                    )
            self.remove_node(n)
            if n.cbw is not None:
                n.cbw.close()
            store_bitmaps(n)
            deleted.append(n)
            kids = list(n.children())
            self.set_backing(n, None)
            n.file = n.target = None
            stack.extend(reversed(kids))
        return deleted

    def reopen_rw(self, node: BlockNode) -> bool:
        """bdrv_reopen_set_read_only(node, false): its persistent bitmaps become writable
        again (qcow2_reopen_bitmaps_rw marks them in-use in the header).  Returns the
        previous read-only state."""
        was = node.read_only
        node.read_only = False
        for bm in node.bitmaps:
            if bm.persistent:
                bm.readonly = False
        return was

    def reopen_ro(self, node: BlockNode) -> None:
        """bdrv_reopen_set_read_only(node, true): its caches are flushed, persistent
        bitmaps are stored and readonly."""
        flush_metadata(node)
        node.read_only = True
        for bm in node.bitmaps:
            if bm.persistent:
                bm.readonly = bm.stored = True

    def is_read_only(self, node: BlockNode) -> bool:
        """bdrv_is_read_only: a file child follows the format parent that opened it
        (bdrv_reopen_queue reopens only children whose inherits_from is the node
        reopened: not a node referenced by name, nor one bdrv_append put under it); the
        commit_top filter is opened without BDRV_O_RDWR (block/commit.c)."""
        if node.read_only or node.driver == "commit_top":
            return True
        parent = node.inherits_from
        return (
            parent is not None
            and parent.read_only
            and parent.is_format
            and any(p is parent and role == "file" for p, role in self.parents(node))
        )

    def op_blocker(self, node: BlockNode, op: str) -> str | None:
        """The reason `op` is blocked on `node` (bdrv_op_is_blocked), newest blocker first."""
        for reason, allowed in reversed(node.blockers):
            if op not in allowed:
                return reason
        return None

    def check_op(self, node: BlockNode, op: str) -> None:
        reason = self.op_blocker(node, op)
        if reason is not None:
            raise QMPError(f"Node '{self.display_name(node)}' is busy: {reason}")

    def set_backing(self, parent: BlockNode, child: BlockNode | None) -> None:
        """Attach/detach a backing child, with QEMU's backing op blocker on the child."""
        old = parent.backing
        if old is not None and parent.backing_parent_label:
            reason = f"node is used as backing hd of '{parent.backing_parent_label}'"
            # this parent's blocker only: another overlay may have put one with the
            # same text (both named after the device they were the root of)
            for index, blocker in enumerate(old.blockers):
                if blocker[0] == reason:
                    del old.blockers[index]
                    break
        parent.backing = child
        if child is not None and not parent.is_filter:
            parent.backing_parent_label = self.display_name(parent)
            reason = f"node is used as backing hd of '{parent.backing_parent_label}'"
            child.blockers.append((reason, BACKING_ALLOWED_OPS))
        else:
            parent.backing_parent_label = ""

    def stamp_links(self, others: Iterable[tuple[object, str, BlockNode]] = ()) -> None:
        """Give every child link attached since the last call, then each of `others`
        (parent, role, child) not stamped yet (a job's child_job links), the next attach
        stamp: QEMU puts a new parent link at the head of its child's parents list
        (bdrv_replace_child_noperm), so a walk over a node's parents goes newest stamp
        first.  A link moved to another child is a new link.  Links attached between two
        calls are stamped in node creation order; links gone are forgotten (node links
        only: a job's stay until its object goes)."""
        stamps = self.link_stamps
        present: set[tuple[object, str, BlockNode]] = set()
        for parent in self.nodes:
            for role in ("file", "backing", "target"):
                child = getattr(parent, role)
                if child is not None:
                    link: tuple[object, str, BlockNode] = (parent, role, child)
                    present.add(link)
                    if link not in stamps:
                        stamps[link] = self._next_stamp
                        self._next_stamp += 1
        for gone in [k for k in stamps if k[1] != "job" and k not in present]:
            del stamps[gone]
        for other in others:
            if other not in stamps:
                stamps[other] = self._next_stamp
                self._next_stamp += 1

    def links_changed(self) -> None:
        """Child links were attached, moved or detached (a whole graph change: a filter
        inserted or dropped, a snapshot's overlay appended or taken back, a reopen
        committed): the new links are stamped (`stamp_links`), then every observer
        follows it, the open drained sections (sim/model/drain.py:
        bdrv_replace_child_noperm drains a parent attached to a drained child)."""
        self.stamp_links()
        for observe in list(self.link_observers):
            observe()

    # -- images --------------------------------------------------------------------------
    def create_image(
        self,
        filename: str,
        fmt: str,
        size_bytes: int,
        backing_file: str | None = None,
        backing_format: str | None = None,
    ) -> Image:
        """bdrv_img_create: a new, empty image (replacing any file of that name, unless
        a node has it open: raw_co_create cannot take its write lock).

        A qcow2 image whose backing file name does not fit its header fails, and the
        file is gone."""
        if backing_file is not None and backing_file == filename:
            raise QMPError(
                "Error: Trying to create an image with the same filename as the backing file"
            )
        if not filename:  # raw_co_create: open("") fails
            raise QMPError("Could not create '': No such file or directory")
        if filename in self.images:
            from sim.model.image_create import check_file_lock

            check_file_lock(self, self.images[filename])
        content = (
            new_qcow2_content(size_bytes, QCOW2_CLUSTER)
            if fmt == "qcow2"
            else new_content(size_bytes)
        )
        if fmt == "qcow2" and backing_file is not None and not backing_name_fits(backing_file):
            # qcow2_co_create_opts deletes the file it made when qcow2_co_create fails
            self.images.pop(filename, None)
            raise backing_name_error(backing_file, backing_format)
        image = Image(filename, fmt, size_bytes, content, backing_file)
        self.images[filename] = image
        return image

    def existing_image(self, filename: str) -> Image:
        """The image file the `file` driver opens (raw_open_common): an empty name is
        refused before anything is opened, a missing file is ENOENT."""
        if not filename:
            raise QMPError("The 'file' block driver requires a file name")
        image = self.images.get(filename)
        if image is None:
            raise QMPError(f"Could not open '{filename}': No such file or directory")
        return image

    def check_image_lock(
        self,
        image: Image,
        read_only: bool = False,
        jobs: Sequence[Job] = (),
    ) -> None:
        """file-posix image locking (raw_check_lock_bytes) when a format node opens `image`.

        Every format node already on the image holds its `file` child's locks: it
        never shares write or resize (metadata), and shares consistent read only when
        all its own parents do (a mirror target's BlockBackend does not).  The
        opener wants consistent read, and write unless read-only: a permission
        another holder unshares fails first, in permission order (`consistent
        read`, then `write`); then a read-only opener, which itself unshares
        write, fails on a holder that writes (`shared "write"`).  A raw opener takes
        nothing (it passes its parents' permissions through) and is never checked."""
        from sim.model.perms import CONSISTENT_READ, cumulative

        holders = [n for n in self.nodes if n.image is image and n.is_format]
        if not holders:
            return
        if any(not cumulative(self, n, jobs)[1] & CONSISTENT_READ for n in holders):
            raise QMPError('Failed to get "consistent read" lock')
        if not read_only:
            raise QMPError('Failed to get "write" lock')
        if any(not n.read_only for n in holders):
            raise QMPError('Failed to get shared "write" lock')

    def check_reopen_rw_lock(self, node: BlockNode) -> None:
        """file-posix image locking when `node` is reopened read-write: its file child
        takes write, which every other qcow2 node on the same image unshares (its
        metadata child never shares write)."""
        if node.read_only and node.image is not None:
            image = node.image
            if any(n is not node and n.image is image and n.driver == "qcow2" for n in self.nodes):
                raise QMPError('Failed to get "write" lock')

    def check_reopen_rw_perms(self, node: BlockNode) -> None:
        """bdrv_reopen_set_read_only(node, false) reopens `node` and the children that
        inherit from it; below a filter on its file child (a backup's copy-before-write)
        the data node keeps its own read-only flag, and the write permission the now
        writable format node passes down through the filter is refused
        (bdrv_node_refresh_perm)."""
        child = node.file
        if not node.read_only or child is None or not child.is_filter:
            return
        while child is not None and child.is_filter and child.driver != "commit_top":
            child = child.filtered_child()
        if child is not None and not child.is_filter and self.is_read_only(child):
            raise QMPError("Block node is read-only")

    def open_image(
        self,
        image: Image,
        node_name: str | None,
        file_node_name: str | None,
        *,
        discard_unmap: bool = False,
    ) -> BlockNode:
        """Open a format node over a protocol node on an image (like -drive / snapshot)."""
        proto = self.new_node("file", image.size_bytes, file_node_name, image=image)
        fmt = self.new_node(
            image.format,
            image.size_bytes,
            node_name,
            file=proto,
            content=image.content,
            image=image,
            discard_unmap=discard_unmap,
            cluster_size=image.cluster_size,
        )
        proto.inherits_from = fmt
        return fmt


def store_bitmaps(node: BlockNode) -> None:
    """qcow2_close of a writable node: its persistent bitmaps (names, granularity, bits,
    the `auto` flag = enabled) replace the image's bitmap directory."""
    if node.driver != "qcow2" or node.image is None or node.read_only:
        return
    live = {
        bm.name: _copy_bitmap(bm, readonly=False)
        for bm in node.bitmaps
        if bm.persistent and bm.name is not None and not bm.freed
    }
    # the directory keeps the entries it had (updated) and appends new ones in the
    # order the node lists them
    old = [live.pop(bm.name) for bm in node.image.bitmaps if bm.name in live]
    node.image.bitmaps = old + list(live.values())


def load_bitmaps(node: BlockNode) -> None:
    """qcow2_load_dirty_bitmaps on open: every bitmap of the image's directory becomes a
    persistent bitmap of the node (read-only on a read-only node); a writable node marks
    them in-use in the header at once."""
    if node.driver != "qcow2" or node.image is None or not node.image.bitmaps:
        return
    # each loaded bitmap is put at the head of the node's list: directory order reversed
    loaded = [_copy_bitmap(bm, readonly=node.read_only) for bm in node.image.bitmaps]
    node.bitmaps = loaded[::-1] + node.bitmaps


def _copy_bitmap(bm: DirtyBitmap, readonly: bool) -> DirtyBitmap:
    out = DirtyBitmap(bm.name, bm.granularity, bm.size_bytes, enabled=bm.enabled, persistent=True)
    out.bits = bm.bits.copy()
    out.readonly = readonly
    out.stored = True
    return out


def has_descendant(top: BlockNode, node: BlockNode) -> bool:
    """Whether `node` is somewhere below `top` through any child (bdrv_recurse_has_child,
    without `top` itself)."""
    stack = list(top.children())
    seen: set[int] = set()  # ids, for membership only (never iterated)
    while stack:
        n = stack.pop()
        if n is node:
            return True
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.extend(n.children())
    return False
