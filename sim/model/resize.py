"""block_resize: growing or shrinking a node (block/io.c bdrv_co_truncate, QEMU 7.2).

The node's content is truncated or grown (growth reads as unallocated), the
image file follows, every dirty bitmap on the node is truncated with it
(bdrv_dirty_bitmap_truncate: dropped bits past a shrink, clean bits in the
growth, nothing marked dirty), and parents that take their length from the
node (filters above it, a BlockBackend and its bitmaps) see the new length.
"""

from __future__ import annotations

from sim.model.graph import BlockGraph, BlockNode


def truncate(graph: BlockGraph, node: BlockNode, size_bytes: int) -> None:
    """Resize `node` to `size_bytes` (a multiple of 512)."""
    node.size_bytes = size_bytes
    image = node.image
    # the image's guest view follows when the node reads it in its own format: a qcow2
    # node on a qcow2 image, a raw or file node on a raw file (a raw or file node over a
    # qcow2 file changes only the host file, which the model does not lay out)
    own_view = image is not None and (
        node.driver == image.format or (node.driver == "file" and image.format == "raw")
    )
    if node.content is not None and (image is None or own_view):
        node.content.resize(size_bytes)
    if image is not None and own_view:
        image.size_bytes = size_bytes
        if node.content is not image.content:
            image.content.resize(size_bytes)
    for bm in node.bitmaps:
        bm.resize(size_bytes)
    _propagate_up(graph, node, size_bytes)


def _propagate_up(graph: BlockGraph, node: BlockNode, size_bytes: int) -> None:
    """bdrv_parent_cb_resize: filters above pass the new length on, up to the roots."""
    stack = [node]
    while stack:
        n = stack.pop()
        for bb in graph.backends.values():
            if bb.root is n:
                for bm in bb.bitmaps:
                    bm.resize(size_bytes)
        for parent, role in graph.parents(n):
            if parent.driver == "raw" and role == "file" and "size" not in parent.raw_options:
                # raw_getlength: the file's length less the offset (bitmaps stay as they are)
                parent.size_bytes = max(size_bytes - parent.raw_offset, 0)
                if parent.raw_offset and parent.content is not None:
                    parent.content.resize(parent.size_bytes)
                stack.append(parent)
                continue
            if parent.is_filter and parent.filtered_child() is n:
                parent.size_bytes = size_bytes
                for bm in parent.bitmaps:
                    bm.resize(size_bytes)
                stack.append(parent)
