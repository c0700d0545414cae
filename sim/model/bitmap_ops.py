"""The block-dirty-bitmap-* operations, with QEMU 7.2's checks in QEMU's order.

Source: block/monitor/bitmap-qmp-cmds.c and block/dirty-bitmap.c (QEMU 7.2);
the order of checks and every message were verified on the 7.2 binary.
Each mutating operation returns an `Undo` so `transaction`
can roll back (blockdev.c `*_abort` callbacks).
"""

from __future__ import annotations

from collections.abc import Callable

from sim.errors import QMPError
from sim.model.bitmap import (
    MAX_NAME_BYTES,
    MAX_TOTAL_BITS,
    DirtyBitmap,
    check_bits,
    valid_granularity,
)
from sim.model.graph import BlockBackend, BlockGraph, BlockNode
from sim.model.host_file import protocol_length
from sim.model.policy import Owner, PlacementPolicy

Undo = Callable[[], None]

# bdrv_dirty_bitmap_check flags
BUSY, READONLY, INCONSISTENT = 1, 2, 4
DEFAULT_CHECKS = BUSY | READONLY | INCONSISTENT
ALLOW_RO = BUSY | INCONSISTENT


def check_bitmap(bm: DirtyBitmap, flags: int) -> None:
    """bdrv_dirty_bitmap_check: busy, then readonly, then inconsistent."""
    name = bm.name or ""
    if flags & BUSY and bm.busy:
        raise QMPError(
            f"Bitmap '{name}' is currently in use by another operation and cannot be used"
        )
    if flags & READONLY and bm.readonly:
        raise QMPError(f"Bitmap '{name}' is readonly and cannot be modified")
    if flags & INCONSISTENT and bm.inconsistent:
        raise QMPError(f"Bitmap '{name}' is inconsistent and cannot be used")


def owner_size(owner: Owner, graph: BlockGraph | None = None) -> int:
    """bdrv_getlength of what a new bitmap covers: a protocol node under a format node
    is as long as its host file (whole sectors), not the guest disk."""
    if isinstance(owner, BlockBackend):
        return owner.root.size_bytes if owner.root is not None else 0
    length = protocol_length(graph, owner) if graph is not None else None
    return owner.size_bytes if length is None else length


def owner_label(graph: BlockGraph, owner: Owner) -> str:
    if isinstance(owner, BlockBackend):
        return owner.name
    return graph.display_name(owner)


def search(
    graph: BlockGraph, policy: PlacementPolicy, node: str, name: str
) -> tuple[list[Owner], Owner | None, DirtyBitmap | None]:
    """block_dirty_bitmap_lookup's search, without its errors: the owners the policy
    searches for `node` in their order (the device itself first under bb-attached, then
    its root), and the first of them listing a bitmap `name` with that bitmap.  Raises
    only the policy's own refusal (node-only refuses device names)."""
    owners = policy.owners_for_lookup(graph, node)
    for owner in owners:
        for bm in owner.bitmaps:
            if bm.name == name:
                return owners, owner, bm
    return owners, None, None


def lookup(
    graph: BlockGraph, policy: PlacementPolicy, node: str, name: str
) -> tuple[Owner, DirtyBitmap]:
    """block_dirty_bitmap_lookup: `Node 'X' not found`, `Dirty bitmap 'N' not found`."""
    owners, owner, bm = search(graph, policy, node, name)
    if not owners:
        raise QMPError(f"Node '{node}' not found")
    if owner is None or bm is None:
        raise QMPError(f"Dirty bitmap '{name}' not found")
    return owner, bm


def merge_source(
    graph: BlockGraph, policy: PlacementPolicy, owner: Owner, src: str | dict[str, str]
) -> DirtyBitmap:
    """Where block_dirty_bitmap_merge finds one source: a bare name on the owner the
    target was found on (bdrv_find_dirty_bitmap(bs, name), never the device's other
    owners: under bb-attached a target on the root takes a bare source from the root,
    even when the device itself lists a bitmap of that name), a {node, name} pair by
    block_dirty_bitmap_lookup."""
    if isinstance(src, str):
        found = next((b for b in owner.bitmaps if b.name == src), None)
        if found is None:
            raise QMPError(f"Dirty bitmap '{src}' not found")
        return found
    return lookup(graph, policy, src["node"], src["name"])[1]


def merge_operands(
    graph: BlockGraph,
    policy: PlacementPolicy,
    node: str,
    target: str,
    sources: list[str | dict[str, str]],
) -> tuple[DirtyBitmap | None, list[DirtyBitmap | None]]:
    """What a block-dirty-bitmap-merge names as the graph stands, without its errors
    (for readers of the model): its target and each source as `merge` finds them, None
    for one not found."""
    try:
        owner, dst = lookup(graph, policy, node, target)
    except QMPError:
        return None, [None] * len(sources)
    found: list[DirtyBitmap | None] = []
    for src in sources:
        try:
            found.append(merge_source(graph, policy, owner, src))
        except (QMPError, KeyError, TypeError):
            found.append(None)
    return dst, found


SMALL_BITMAP_BITS = 1 << 16


def add(
    graph: BlockGraph,
    policy: PlacementPolicy,
    node: str,
    name: str,
    granularity: int | None = None,
    persistent: bool = False,
    disabled: bool = False,
) -> tuple[Owner, DirtyBitmap, Undo]:
    """qmp_block_dirty_bitmap_add; the new bitmap goes to the head of the list."""
    if name == "":
        raise QMPError("Bitmap name cannot be empty")
    owner = policy.owner_for_add(graph, node)
    if owner is None:
        raise QMPError(f"Cannot find device='{node}' nor node-name='{node}'")
    if granularity is not None:
        if not valid_granularity(granularity):
            raise QMPError("Granularity must be power of 2 and at least 512")
    else:
        granularity = _default_granularity(graph, owner)
    if persistent:
        _check_persistent(graph, owner, name)
    if any(bm.name == name for bm in owner.bitmaps):
        raise QMPError(f"Bitmap already exists: {name}")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise QMPError(f"Bitmap name too long: {name}")
    nbits = check_bits(owner_size(owner, graph), granularity)
    # small bitmaps cannot reach the total (the trace's step limit bounds their
    # number), so only a large one pays for counting what is held
    held = 0
    if nbits > SMALL_BITMAP_BITS:
        held = sum(b.nbits for n in graph.nodes for b in n.bitmaps)
        held += sum(b.nbits for bb in graph.backends.values() for b in bb.bitmaps)
    if held + nbits > MAX_TOTAL_BITS:
        raise QMPError(
            f"blocksim limit: bitmap '{name}' needs {nbits} bits and the machine's bitmaps "
            f"already hold {held}; together they may hold at most {MAX_TOTAL_BITS} (2^33)"
        )
    bm = DirtyBitmap(
        name, granularity, owner_size(owner, graph), enabled=not disabled, persistent=persistent
    )
    owner.bitmaps.insert(0, bm)

    def undo() -> None:
        if bm in owner.bitmaps:
            owner.bitmaps.remove(bm)

    return owner, bm, undo


def _default_granularity(graph: BlockGraph, owner: Owner) -> int:
    if isinstance(owner, BlockBackend):
        return graph.data_node(owner.root).default_granularity() if owner.root else 65536
    return owner.default_granularity()


def _check_persistent(graph: BlockGraph, owner: Owner, name: str) -> None:
    node = owner.root if isinstance(owner, BlockBackend) else owner
    label = owner_label(graph, owner)
    if node is None or node.driver != "qcow2":
        raise QMPError(f"Can't store persistent bitmaps to {label}: Operation not supported")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise QMPError(
            f"Can't make bitmap '{name}' persistent in '{label}': "
            f"Name length exceeds maximum ({MAX_NAME_BYTES} characters)"
        )


def remove(
    graph: BlockGraph, policy: PlacementPolicy, node: str, name: str, *, release: bool = True
) -> tuple[DirtyBitmap, Undo]:
    """block_dirty_bitmap_remove; with release=False (transaction prepare) it is held busy."""
    owner, bm = lookup(graph, policy, node, name)
    check_bitmap(bm, BUSY | READONLY)
    if release:
        release_bitmap(owner, bm)
        return bm, _noop
    bm.txn_hold = True

    def undo() -> None:
        bm.txn_hold = False

    return bm, undo


def release_bitmap(owner: Owner, bm: DirtyBitmap) -> None:
    """bdrv_release_dirty_bitmap, including the qemu-2.5 stale list-head bug (A1)."""
    stale = bm.stale_head
    if isinstance(stale, BlockNode) and owner.bitmaps and owner.bitmaps[0] is bm:
        # QLIST_REMOVE through a back-link that points into the old node's head:
        # the old node's head gets the rest of the list, the new top keeps the
        # freed element.
        stale.bitmaps = owner.bitmaps[1:]
        bm.freed = True
        bm.stale_head = None
        return
    if bm in owner.bitmaps:
        owner.bitmaps.remove(bm)


def clear(graph: BlockGraph, policy: PlacementPolicy, node: str, name: str) -> Undo:
    _, bm = lookup(graph, policy, node, name)
    check_bitmap(bm, DEFAULT_CHECKS)
    saved = bm.copy_bits()
    bm.clear()
    return lambda: bm.restore_bits(saved)


def set_enabled(
    graph: BlockGraph, policy: PlacementPolicy, node: str, name: str, enabled: bool
) -> Undo:
    _, bm = lookup(graph, policy, node, name)
    check_bitmap(bm, ALLOW_RO)
    before = bm.enabled
    bm.enabled = enabled

    def undo() -> None:
        bm.enabled = before

    return undo


def merge(
    graph: BlockGraph,
    policy: PlacementPolicy,
    node: str,
    target: str,
    sources: list[str | dict[str, str]],
) -> Undo:
    """block_dirty_bitmap_merge: target |= each source; target unchanged on error."""
    owner, dst = lookup(graph, policy, node, target)
    acc = DirtyBitmap(None, dst.granularity, dst.size_bytes)
    for src_ref in sources:
        src = merge_source(graph, policy, owner, src_ref)
        # bdrv_merge_dirty_bitmap(dst, src): the target's checks, the source's, sizes
        check_bitmap(dst, DEFAULT_CHECKS)
        check_bitmap(src, ALLOW_RO)
        if src.size_bytes != acc.size_bytes:
            raise QMPError(
                f"Bitmaps are of different sizes (destination size is {acc.size_bytes}, "
                f"source size is {src.size_bytes}) and can't be merged"
            )
        acc.merge_from(src)
    # each source is looked up before it is merged, so a missing source can be reported
    # before the target's state (rec-0353, rec-0296, rec-0247 recorded on QEMU 7.2)
    check_bitmap(dst, DEFAULT_CHECKS)
    saved = dst.copy_bits()
    dst.merge_from(acc)
    return lambda: dst.restore_bits(saved)


def sha256(graph: BlockGraph, policy: PlacementPolicy, node: str, name: str) -> str:
    """x-debug-block-dirty-bitmap-sha256: no state checks at all."""
    _, bm = lookup(graph, policy, node, name)
    return bm.sha256()


def _noop() -> None:
    return None
