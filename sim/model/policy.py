"""Bitmap-placement policies: where a dirty bitmap lives when the graph changes.

The question of the 2016 qemu-block thread ("Dirty bitmaps and COR in
bdrv_move_feature_fields()").  A policy is a frozen object the model consults
at three points: which owner a `block-dirty-bitmap-add` lands on, which owners
a bitmap lookup searches, and what happens to bitmaps when a node is put on
top of another (`bdrv_append`: snapshots).  Nothing else in the model asks
which policy is active.

| policy        | add by device            | lookup by device          | on snapshot            |
|---------------|--------------------------|---------------------------|------------------------|
| `qemu-7.2`    | device's current root    | device's current root     | bitmaps stay           |
| `qemu-2.5`    | as 7.2                   | as 7.2                    | list moved to new top, |
|               |                          |                           | stale list head (A1)   |
| `bb-attached` | the BlockBackend itself  | backend, then its root    | backend bitmaps follow |
| `node-only`   | refused                  | refused                   | bitmaps stay           |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sim.errors import QMPError
from sim.model.graph import BlockBackend, BlockGraph, BlockNode

Owner = BlockNode | BlockBackend


class PlacementPolicy(Protocol):
    """Where a dirty bitmap lives and how it is found: the node (or BlockBackend) that
    block-dirty-bitmap-add puts it on, what a bitmap command's `node` argument
    resolves to, what bdrv_append (a snapshot putting a node on top) does with the
    bitmaps, and which bitmaps a job sees on its node."""

    @property
    def name(self) -> str: ...

    @property
    def permissions(self) -> bool: ...

    def owner_for_add(self, graph: BlockGraph, name: str) -> Owner | None: ...

    def owners_for_lookup(self, graph: BlockGraph, name: str) -> list[Owner]: ...

    def on_append(self, graph: BlockGraph, old_top: BlockNode, new_top: BlockNode) -> None: ...

    def owners_for_job(self, graph: BlockGraph, name: str, node: BlockNode) -> list[Owner]: ...


@dataclass(frozen=True)
class Qemu72Policy:
    """QEMU >= 2.6: bitmaps are node objects; a device name is an alias for its root."""

    name: str = "qemu-7.2"
    # BdrvChild permissions (sim.model.perms) refuse users that conflict, as since
    # QEMU 2.10; False models the older QEMU where any writer could bypass a job
    permissions: bool = True

    def owner_for_add(self, graph: BlockGraph, name: str) -> Owner | None:
        return graph.lookup_bs(name)

    def owners_for_lookup(self, graph: BlockGraph, name: str) -> list[Owner]:
        node = graph.lookup_bs(name)
        return [node] if node is not None else []

    def on_append(self, graph: BlockGraph, old_top: BlockNode, new_top: BlockNode) -> None:
        return None

    def owners_for_job(self, graph: BlockGraph, name: str, node: BlockNode) -> list[Owner]:
        """Where a job started on `name` (resolved to `node`) looks for its bitmap."""
        return [node]


@dataclass(frozen=True)
class Qemu25Policy(Qemu72Policy):
    """QEMU 2.5: bdrv_append() moved the bitmap list to the new top by copying the
    QLIST_HEAD by value, leaving the first bitmap's back-link in the old node (bug A1).

    Modelled as: the list moves; the first bitmap keeps a `stale_head` reference to
    the old node.  Removing that bitmap later writes the rest of the list into the
    old node's head and leaves the freed bitmap listed on the new top.
    It also predates BdrvChild permissions: a qemu-io write by node name into a
    job's source or target is carried out.
    """

    name: str = "qemu-2.5"
    permissions: bool = False  # QEMU 2.5 had op blockers only: side writes went through

    def on_append(self, graph: BlockGraph, old_top: BlockNode, new_top: BlockNode) -> None:
        if not old_top.bitmaps:
            return
        new_top.bitmaps = old_top.bitmaps + new_top.bitmaps
        old_top.bitmaps[0].stale_head = old_top
        old_top.bitmaps = []


@dataclass(frozen=True)
class BBAttachedPolicy(Qemu72Policy):
    """Proposal: a bitmap added by device name belongs to the BlockBackend and sees
    every write through it, whatever the graph below looks like."""

    name: str = "bb-attached"

    def owner_for_add(self, graph: BlockGraph, name: str) -> Owner | None:
        bb = graph.backends.get(name)
        if bb is not None:
            return bb
        return graph.lookup_bs(name)

    def owners_for_job(self, graph: BlockGraph, name: str, node: BlockNode) -> list[Owner]:
        bb = graph.backends.get(name)
        return [bb, node] if bb is not None else [node]

    def owners_for_lookup(self, graph: BlockGraph, name: str) -> list[Owner]:
        bb = graph.backends.get(name)
        owners: list[Owner] = [bb] if bb is not None else []
        node = graph.lookup_bs(name)
        if node is not None:
            owners.append(node)
        return owners


@dataclass(frozen=True)
class NodeOnlyPolicy(Qemu72Policy):
    """Proposal: bitmaps are addressed by node-name only; device names are refused."""

    name: str = "node-only"

    def _refuse(self, graph: BlockGraph, name: str) -> None:
        if name in graph.backends:
            raise QMPError(
                f"'{name}' is a device name; under policy node-only dirty bitmaps are "
                "addressed by node-name only"
            )

    def owner_for_add(self, graph: BlockGraph, name: str) -> Owner | None:
        self._refuse(graph, name)
        return graph.node(name)

    def owners_for_lookup(self, graph: BlockGraph, name: str) -> list[Owner]:
        self._refuse(graph, name)
        node = graph.node(name)
        return [node] if node is not None else []


POLICIES: dict[str, PlacementPolicy] = {
    p.name: p for p in (Qemu72Policy(), Qemu25Policy(), BBAttachedPolicy(), NodeOnlyPolicy())
}


def get_policy(name: str) -> PlacementPolicy:
    try:
        return POLICIES[name]
    except KeyError:
        raise QMPError(f"unknown policy {name!r}; one of {sorted(POLICIES)}") from None
