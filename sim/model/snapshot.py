"""External snapshots: blockdev-snapshot-sync and blockdev-snapshot.

Follows blockdev.c `external_snapshot_prepare` and block.c `bdrv_append`
(QEMU 7.2): the overlay gets the old node as its backing child, then takes
the old node's place in every parent (the BlockBackend root included).  At
the transaction's commit (`external_snapshot_commit`) the old node is reopened
read-only, which makes its persistent bitmaps readonly: the other actions of
the transaction still see it writable.  Where its bitmaps go is the placement
policy's call (`on_append`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from sim.errors import QMPError
from sim.model import perms
from sim.model.bitmap_ops import Undo
from sim.model.content import SECTOR_SHIFT, Content
from sim.model.graph import BlockGraph, BlockNode, has_descendant, id_wellformed
from sim.model.host_file import protocol_length
from sim.model.jobs import Job
from sim.model.policy import PlacementPolicy
from sim.model.qcow2_host import Qcow2Content, flush_metadata

NODE_NAME_MAX = 31  # sizeof(bs->node_name) - 1


class Appended(NamedTuple):
    """A snapshot action's prepared bdrv_append: `undo` for the transaction's abort,
    `commit` for external_snapshot_commit (the old node's read-only reopen)."""

    overlay: BlockNode
    undo: Undo
    commit: Callable[[], None]


def check_new_node_name(graph: BlockGraph, name: str) -> None:
    """bdrv_assign_node_name's checks, in its order."""
    if not id_wellformed(name):
        raise QMPError(f"Invalid node-name: '{name}'")
    if name in graph.backends:
        raise QMPError(f"node-name={name} is conflicting with a device id")
    if graph.node(name) is not None:
        raise QMPError(f"Duplicate nodes with node-name='{name}'")
    if len(name) > NODE_NAME_MAX:
        raise QMPError("Node name too long")


def snapshot_sync(
    graph: BlockGraph,
    policy: PlacementPolicy,
    device: str | None,
    node_name: str | None,
    snapshot_file: str,
    snapshot_node_name: str | None,
    fmt: str = "qcow2",
    mode: str = "absolute-paths",
    on_lookup: Callable[[BlockNode], None] | None = None,
    filename_of: Callable[[BlockNode], str] | None = None,
) -> Appended:
    """blockdev-snapshot-sync: create (or open) an overlay image and append it.

    `filename_of` gives a node's bs->filename (bdrv_refresh_filename: json:{...}
    when its file name cannot say how to open it), which bdrv_img_create writes
    into the new overlay's header as its backing file; without it, the image's
    file name."""
    old = graph.lookup_device_or_node(device, node_name)
    if on_lookup is not None:
        on_lookup(old)
    graph.check_op(old, "external-snapshot")
    _flush_old(graph, old)
    if node_name is not None and snapshot_node_name is None:
        raise QMPError("New overlay node-name missing")
    if snapshot_node_name is not None and graph.lookup_bs(snapshot_node_name) is not None:
        raise QMPError("New overlay node-name already in use")
    if mode != "existing":
        if fmt not in ("qcow2", "raw"):
            raise QMPError(f"Unknown file format '{fmt}'")
        if fmt == "raw":
            raise QMPError("Backing file not supported for file format 'raw'")
        backing_file = (
            filename_of(old)
            if filename_of is not None and old.driver != "file"
            else _image_name(graph, old)  # a protocol node: the file it opened
        )
        image = graph.create_image(
            snapshot_file, fmt, _length(graph, old), backing_file, old.driver
        )
        image.backing_format = old.driver  # the old node's driver: `file` for a protocol node
    else:
        image = graph.existing_image(snapshot_file)
    if snapshot_node_name is not None:
        # bdrv_open_common names the node before the format driver opens its file
        # (where the image's lock is taken)
        check_new_node_name(graph, snapshot_node_name)
    if mode == "existing":
        graph.check_image_lock(image)
    if image.format != "qcow2":
        raise QMPError("The overlay does not support backing images")
    overlay = graph.open_image(image, snapshot_node_name, None)
    # external_snapshot_prepare opens the overlay with the old node's open flags
    overlay.read_only = graph.is_read_only(old)
    try:
        appended = append(graph, policy, overlay, old)
    except QMPError:
        _close_overlay(graph, overlay)
        raise

    def undo_all() -> None:
        appended.undo()
        _close_overlay(graph, overlay)

    return appended._replace(undo=undo_all)


def _flush_old(graph: BlockGraph, old: BlockNode) -> None:
    """external_snapshot_prepare flushes a writable old node before it looks at the
    overlay (whatever fails after, the metadata stays written back)."""
    if not graph.is_read_only(old):
        flush_metadata(graph.data_node(old))


def blockdev_snapshot(
    graph: BlockGraph,
    policy: PlacementPolicy,
    node: str,
    overlay_name: str,
    on_lookup: Callable[[BlockNode], None] | None = None,
    jobs: Sequence[Job] = (),
) -> Appended:
    """blockdev-snapshot: append an existing (blockdev-add) node as the overlay (`jobs`:
    the live jobs, whose edges count in the overlay's permissions)."""
    old = graph.lookup_or_fail(node)
    if on_lookup is not None:
        on_lookup(old)
    graph.check_op(old, "external-snapshot")
    _flush_old(graph, old)
    overlay = graph.lookup_or_fail(overlay_name)
    # a user that reads it expects a valid image already (a mirror target, which only
    # writes, may get a backing); QEMU 7.2 checks no op blocker on the overlay
    if perms.cumulative(graph, overlay, jobs)[0] & perms.CONSISTENT_READ:
        raise QMPError("The overlay is already in use")
    if overlay.is_filter:
        raise QMPError("Filters cannot be used as overlays")
    if overlay.backing is not None:
        raise QMPError("The overlay already has a backing image")
    if overlay.driver != "qcow2":
        raise QMPError("The overlay does not support backing images")
    return append(graph, policy, overlay, old, jobs)


def append(
    graph: BlockGraph,
    policy: PlacementPolicy,
    new: BlockNode,
    old: BlockNode,
    jobs: Sequence[Job] = (),
) -> Appended:
    """bdrv_append(new, old): new backs onto old and replaces it in all its parents."""
    if new is old or has_descendant(old, new):
        raise QMPError(
            f"Making '{old.node_name}' a backing child of '{new.node_name}' would create a cycle"
        )
    parents = [(p, role) for p, role in graph.parents(old)]
    roots = graph.roots_of(old)
    saved_lists = (list(old.bitmaps), list(new.bitmaps))
    saved_ro = old.read_only
    saved_readonly = [(bm, bm.readonly, bm.stored) for bm in old.bitmaps]
    frozen = _freeze_image_files(parents, old)
    graph.set_backing(new, old)
    graph.redirect(parents, roots, new, skip=new)
    graph.links_changed()
    # replacing the child re-labels the backing blocker with the new parent's name
    policy.on_append(graph, old, new)

    def commit() -> None:
        # the old node is reopened read-only, which flushes it; the reopen fails
        # (silently: external_snapshot_commit passes no error) while a parent still
        # writes to it, e.g. an overlay put onto its own file node
        if perms.cumulative(graph, old, jobs)[0] & (perms.WRITE | perms.WRITE_UNCHANGED):
            return
        flush_metadata(old)
        old.read_only = True
        for bm in old.bitmaps:
            if bm.persistent:
                bm.readonly = True  # qcow2_reopen_bitmaps_ro stores them, marks them readonly
                bm.stored = True

    def undo() -> None:
        for fmt in frozen:
            assert fmt.image is not None and fmt.content is not None
            fmt.image.content = fmt.content  # nothing was written in between
            fmt.image.unlinked = []
        graph.redirect(parents, roots, old, skip=new)
        graph.set_backing(new, None)
        graph.links_changed()
        old.read_only = saved_ro
        old.bitmaps, new.bitmaps = list(saved_lists[0]), list(saved_lists[1])
        for bm, ro, stored in saved_readonly:
            bm.readonly, bm.stored = ro, stored

    return Appended(new, undo, commit)


def _close_overlay(graph: BlockGraph, overlay: BlockNode) -> None:
    graph.delete_unreferenced(overlay)


def _length(graph: BlockGraph, node: BlockNode) -> int:
    """bdrv_getlength of the node an overlay is created on: a protocol node under a
    format node is as long as its host file (the qcow2 file, not the guest disk),
    rounded up to whole sectors."""
    length = protocol_length(graph, node)
    return node.size_bytes if length is None else length


def _image_name(graph: BlockGraph, node: BlockNode) -> str | None:
    """The file name a new overlay's header gives its backing: the node's image, or for
    a protocol node the image its format parent opened on it."""
    if node.image is not None:
        return node.image.filename
    if node.driver == "file":
        for parent, role in graph.parents(node):
            if role == "file" and parent.image is not None:
                return parent.image.filename
    return None


def _freeze_image_files(
    parents: Sequence[tuple[BlockNode, str]], old: BlockNode
) -> list[BlockNode]:
    """A snapshot of a protocol node puts the overlay between it and its format
    parents: from now on a format node's writes go into the overlay's file (as host
    bytes of its image), and its own image file keeps what it held at the snapshot.
    The format node keeps its contents; its image gets a copy of them.  Returns the
    format nodes whose image was given a copy."""
    frozen = []
    for parent, role in parents:
        image, content = parent.image, parent.content
        if (
            role == "file"
            and parent.is_format
            and not old.is_format
            and image is not None
            and content is not None
            and image.content is content
        ):
            image.content = content.clone()
            image.unlinked = _unlinked_sectors(content)
            frozen.append(parent)
    return frozen


def _unlinked_sectors(content: Content) -> list[tuple[int, int]]:
    """The sector runs of a qcow2 node's clusters whose L2 entries are only in its
    dirty cache (empty when not followed: `Qcow2Cache.unlinked`)."""
    if not isinstance(content, Qcow2Content):
        return []
    runs = content.layout.cache.unlinked() or []
    per = content.cluster_bytes >> SECTOR_SHIFT
    return [(a * per, min(b * per, content.nsectors)) for a, b in runs]
