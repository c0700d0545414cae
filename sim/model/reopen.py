"""blockdev-reopen: changing a node's options in place (block.c, QEMU 7.2).

`qmp_blockdev_reopen` queues every entry (each needs a `node-name` naming an
existing node, `lookup`), then `bdrv_reopen_multiple` prepares all of them
(`prepare`) before it commits any (`commit`): a failing entry changes nothing.  Options left out go back to
their defaults (`read-only` false, `discard` ignore), except that `backing`
must be given whenever the node has a backing child or its image names a
backing file.  A child option that names the current child keeps it;
another node replaces it (`backing` may also be null: detach).  A child no
one references any more is closed (bdrv_unref), its own children with it.

Read-only transitions carry the persistent bitmaps along, as
qcow2_reopen_bitmaps_ro / qcow2_reopen_bitmaps_rw do: going read-only stores
them and makes them readonly; going read-write makes them writable again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim.errors import QMPError
from sim.model.graph import BlockGraph, BlockNode, has_descendant

_KEEP: Any = object()


@dataclass(eq=False, slots=True)
class ReopenEntry:
    """One prepared entry: the node and what it becomes."""

    node: BlockNode
    read_only: bool
    discard_unmap: bool
    backing: BlockNode | None | Any = _KEEP  # _KEEP: unchanged
    file: BlockNode | Any = _KEEP
    file_options: dict[str, Any] | None = None  # an inline reopen of the file child


def _find_ref(graph: BlockGraph, name: str) -> BlockNode:
    node = graph.lookup_bs(name)
    if node is None:
        raise QMPError(f"Cannot find device='' nor node-name='{name}'")
    return node


def lookup(graph: BlockGraph, options: dict[str, Any]) -> BlockNode:
    """The node one entry reopens (qmp_blockdev_reopen, before it drains the node)."""
    if "node-name" not in options:
        raise QMPError("node-name not specified")
    name = options["node-name"]
    node = graph.node(name)
    if node is None:
        raise QMPError(f"Failed to find node with node-name='{name}'")
    return node


def prepare(graph: BlockGraph, node: BlockNode, options: dict[str, Any]) -> ReopenEntry:
    """Check one entry (bdrv_reopen_prepare) against the `node` it reopens."""
    if options["driver"] != node.driver:
        raise QMPError("Cannot change the option 'driver'")
    entry = ReopenEntry(
        node,
        read_only=bool(options.get("read-only", False)),
        discard_unmap=options.get("discard") == "unmap",
    )
    _prepare_backing(graph, node, options, entry)
    _prepare_file(graph, node, options, entry)
    return entry


def _prepare_backing(
    graph: BlockGraph, node: BlockNode, options: dict[str, Any], entry: ReopenEntry
) -> None:
    if node.driver != "qcow2":
        return
    if "backing" not in options:
        named = node.image is not None and node.image.backing_file is not None
        if node.backing is not None or named:
            raise QMPError(f"backing is missing for '{node.node_name}'")
        return
    ref = options["backing"]
    if ref is None:
        entry.backing = None
        return
    if isinstance(ref, dict):
        raise QMPError("blocksim does not model reopening a backing child from inline options")
    new = _find_ref(graph, ref)
    if new is node.backing:
        return
    if new is node or has_descendant(new, node):
        raise QMPError(
            f"Making '{new.node_name}' a backing child of '{node.node_name}' would create a cycle"
        )
    entry.backing = new


def _prepare_file(
    graph: BlockGraph, node: BlockNode, options: dict[str, Any], entry: ReopenEntry
) -> None:
    ref = options.get("file")
    if ref is None:
        return
    if isinstance(ref, dict):
        if ref.get("node-name", node.file.node_name if node.file else None) != (
            node.file.node_name if node.file else None
        ):
            raise QMPError("Cannot change the option 'node-name'")
        entry.file_options = ref
        return
    new = _find_ref(graph, ref)
    if new is node.file:
        return
    for parent, role in graph.parents(new):
        if role == "file" and parent.is_format and parent is not node:
            raise QMPError(
                f"Permission conflict on node '{new.node_name}': permissions 'write, resize' "
                f"are both required by node '{node.node_name}' (uses node '{new.node_name}' "
                f"as 'file' child) and unshared by node '{parent.node_name}' (uses node "
                f"'{new.node_name}' as 'file' child)."
            )
    entry.file = new


def commit(graph: BlockGraph, entries: list[ReopenEntry]) -> None:
    """bdrv_reopen_commit for every entry, then the children nobody holds are closed."""
    dropped: list[BlockNode] = []
    for e in entries:
        node = e.node
        if e.read_only and not node.read_only:
            graph.reopen_ro(node)
        elif not e.read_only and node.read_only:
            graph.reopen_rw(node)
        node.discard_unmap = e.discard_unmap
        if e.backing is not _KEEP and e.backing is not node.backing:
            old = node.backing
            graph.set_backing(node, e.backing)
            if old is not None:
                dropped.append(old)
        if e.file is not _KEEP and e.file is not node.file:
            old_file = node.file
            node.file = e.file
            node.image = e.file.image
            if e.file.image is not None and node.is_format:
                node.content = e.file.image.content
            if old_file is not None:
                dropped.append(old_file)
    for old in dropped:
        graph.delete_unreferenced(old)
    graph.links_changed()
