"""Commands that change an open image: block_resize, change-backing-file and
block-set-write-threshold (qapi/block-core.json, blockdev.c, QEMU 7.2).

Checks run in blockdev.c's order; the messages were recorded on QEMU 7.2
(scenarios/blockapi/).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.model.graph import BlockGraph, BlockNode, backing_name_fits
from sim.model.resize import truncate
from sim.qmp.cmd_job import root_bs
from sim.qmp.dispatch import command
from sim.qmp.schema import INT, STR, UINT64, members

if TYPE_CHECKING:
    from sim.engine.machine import Machine

SECTOR = 512


def _resize_conflict(graph: BlockGraph, node: BlockNode) -> None:
    """blk_new_with_bs(node, RESIZE, ALL): a format parent unshares resize on its file
    (a raw node only when it is a window: otherwise its file is a filtered child); a
    raw window passes the resize on to its own file, where the other windows and
    format parents unshare it."""
    if node.driver == "raw" and node.raw_window and node.file is not None:
        file = node.file
        for parent, role in reversed(graph.parents(file)):  # QEMU: newest parent first
            if parent is not node and role == "file" and _unshares_resize(parent):
                raise QMPError(
                    f"Permission conflict on node '{file.node_name}': permissions 'resize' "
                    f"are both required by node '{node.node_name}' (uses node "
                    f"'{file.node_name}' as 'file' child) and unshared by node "
                    f"'{parent.node_name}' (uses node '{file.node_name}' as 'file' child)."
                )
        return
    for parent, role in graph.parents(node):
        if role == "file" and _unshares_resize(parent):
            raise QMPError(
                f"Permission conflict on node '{node.node_name}': permissions 'resize' are "
                f"both required by an unnamed block device (uses node '{node.node_name}' as "
                f"'root' child) and unshared by node '{parent.node_name}' (uses node "
                f"'{node.node_name}' as 'file' child)."
            )


def _unshares_resize(parent: BlockNode) -> bool:
    return parent.is_format and (parent.driver != "raw" or parent.raw_window)


@command("block_resize", members(("*device", STR), ("*node-name", STR), ("size", INT)))
def _block_resize(m: Machine, a: dict[str, Any]) -> None:
    g = m.state.graph
    device = a.get("device")
    node = g.lookup_device_or_node(device, a.get("node-name"))
    size = a["size"]
    if size < 0:
        raise QMPError("Parameter 'size' expects a >0 size")
    if g.op_blocker(node, "resize") is not None:
        raise QMPError(f"Device '{device if device is not None else '(null)'}' is in use")
    _resize_conflict(g, node)
    if node.driver == "null-co":
        raise QMPError("Image format driver does not support resize")
    if node.driver == "raw" and "size" in node.raw_options:
        raise QMPError("Cannot resize fixed-size raw disks")  # raw_co_truncate
    if node.driver == "raw" and node.raw_offset:
        raise QMPError("blocksim does not model resizing a raw node with an offset")
    if node.is_filter:
        raise QMPError(f"blocksim does not model resizing a '{node.driver}' node")
    if node.read_only:
        raise QMPError("Image is read-only")  # bdrv_co_truncate
    if node.driver == "qcow2" and size % SECTOR:
        raise QMPError(f"The new size must be a multiple of {SECTOR}")  # qcow2_co_truncate
    truncate(g, node, size)


@command(
    "change-backing-file",
    members(("device", STR), ("image-node-name", STR), ("backing-file", STR)),
)
def _change_backing_file(m: Machine, a: dict[str, Any]) -> None:
    g = m.state.graph
    root = root_bs(m, a["device"])
    name = a["image-node-name"]
    image_node = g.node(name)
    if image_node is None:
        raise QMPError(f"Cannot find device='' nor node-name='{name}'")
    if image_node.backing is None:
        raise QMPError("not allowing backing file change on an image without a backing file")
    reason = g.op_blocker(root, "change")
    if reason is not None:
        raise QMPError(f"Node '{g.display_name(root)}' is busy: {reason}")
    if image_node not in g.backing_chain(root) and image_node is not root:
        raise QMPError(f"'{a['device']}' and image file are not in the same chain")
    read_only = image_node.read_only
    if read_only:  # reopened read-write to write the header, then back
        g.reopen_rw(image_node)
    name = a["backing-file"]
    fits = image_node.driver != "qcow2" or backing_name_fits(name)
    if image_node.image is not None and fits:
        image_node.image.backing_file = name
        image_node.image.backing_format = None  # named after the image it names
    if read_only:  # restored whether or not the header took the name
        g.reopen_ro(image_node)
    if not fits:
        raise QMPError(f"Could not change backing file to '{name}': Invalid argument")


@command("block-set-write-threshold", members(("node-name", STR), ("write-threshold", UINT64)))
def _block_set_write_threshold(m: Machine, a: dict[str, Any]) -> None:
    node = m.state.graph.node(a["node-name"])
    if node is None:
        raise QMPError(f"Device '{a['node-name']}' not found")
    node.write_threshold = a["write-threshold"]
