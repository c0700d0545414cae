"""Block exports and the built-in NBD server (QEMU 7.2 block/export/, blockdev-nbd.c).

An export (`BlockExport`) reads one node through its own unnamed
BlockBackend: the node is in use while it exists (`blockdev-del` refuses
it) and every bitmap it exports is busy.  Exports are listed newest first,
as QEMU keeps them (QLIST_INSERT_HEAD).  `NbdServer` is the listening
socket `nbd-server-start` opened; an NBD export needs it running.

The model only holds the state; who actually listens is a `Listener` that
`blocksim serve` installs.  Without one (a replayed trace) starting the
server always succeeds, like binding a fresh socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sim.model.bitmap import DirtyBitmap
from sim.model.graph import BlockBackend, BlockGraph, BlockNode


class Listener(Protocol):
    """The socket side of the NBD server (installed by the serving layer)."""

    def start(self, addr: dict[str, Any]) -> None:
        """Open the listening socket; raise QMPError with QEMU's text on failure."""

    def stop(self) -> None:
        """Close the listening socket and every client connection."""

    def disconnect(self, export_id: str) -> None:
        """Drop the clients of one export (block-export-del mode=hard)."""


@dataclass(eq=False)
class BlockExport:
    """A QEMU BlockExport of type nbd: a node read through an unnamed BlockBackend
    (`blk`), which graph changes (snapshot, mirror pivot, commit) move like any parent."""

    id: str
    type: str
    blk: BlockBackend
    name: str
    description: str | None
    writable: bool
    bitmaps: list[DirtyBitmap] = field(default_factory=list)
    allocation_depth: bool = False
    shutting_down: bool = False
    clients: int = 0  # open NBD connections (kept by the serving layer)

    @property
    def node(self) -> BlockNode:
        assert self.blk.root is not None
        return self.blk.root

    def query_entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "node-name": self.node.node_name,
            "shutting-down": self.shutting_down,
        }


@dataclass
class NbdServer:
    """The NBD server `nbd-server-start` opened (address as given)."""

    addr: dict[str, Any]
    max_connections: int = 0


class ExportTable:
    """Every block export of the process, newest first, and the NBD server."""

    def __init__(self) -> None:
        self.exports: list[BlockExport] = []
        self.server: NbdServer | None = None
        self.listener: Listener | None = None

    def find(self, export_id: str) -> BlockExport | None:
        for exp in self.exports:
            if exp.id == export_id:
                return exp
        return None

    def find_nbd_name(self, name: str) -> BlockExport | None:
        for exp in self.exports:
            if exp.type == "nbd" and exp.name == name and not exp.shutting_down:
                return exp
        return None

    def uses_node(self, node: BlockNode) -> bool:
        return any(exp.node is node for exp in self.exports)

    def add(self, graph: BlockGraph, exp: BlockExport) -> None:
        for bm in exp.bitmaps:
            bm.export_hold += 1
        self.exports.insert(0, exp)
        graph.export_backends.append(exp.blk)

    def remove(self, graph: BlockGraph, exp: BlockExport) -> None:
        for bm in exp.bitmaps:
            bm.export_hold -= 1
        if exp in self.exports:
            self.exports.remove(exp)
        if exp.blk in graph.export_backends:
            graph.export_backends.remove(exp.blk)
