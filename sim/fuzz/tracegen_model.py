"""What `tracegen` believes exists inside the QEMU it writes a trace for.

A small, deliberately conservative model of QEMU 7.2's block layer: drives
(BlockBackends), nodes with their `backing`/`file` children, the dirty bitmaps
on each node, the filter a held job puts on top of a drive, and the ids of jobs
that still exist.  It is not a simulator: it only has to know *whether* a
command will succeed, so that the generator can write mostly-valid commands,
a controlled share of certainly-invalid ones, and -- what matters for
recording -- never wait for a job event that QEMU will not send.

Where QEMU's behaviour is not known for sure (the read-only flag of a
persistent bitmap after a node was reopened, say), the model says so
(`readonly is None`) and the generator keeps away from the case.

Every collection here is a list or an insertion-ordered dict, never an
iterated set, so a seed always gives the same trace.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

KiB = 1024
MiB = 1024 * KiB
DEFAULT_GRANULARITY = 64 * KiB  # qcow2 default cluster size, also raw/file nodes
MAX_BITMAP_NAME = 1023
BITMAP_NAMES = ("b0", "b1", "b2", "b3", "inc", "full", "snap-bm", "x y")
GOOD_GRANULARITIES = (512, 4096, 16384, 65536, 131072, 1048576, 2097152)
BAD_GRANULARITIES = (0, 256, 1000, 196608, 4294967295)

Step = dict[str, Any]


def execute(command: str, args: dict[str, Any] | None = None) -> Step:
    """A QMP command step."""
    step: Step = {"execute": command}
    if args is not None:
        step["arguments"] = args
    return step


def wait_for(event: str, **data: Any) -> Step:
    """A wait step: the first unconsumed `event` whose data holds `data`."""
    return {"wait": {"event": event, "data": data}}


@dataclass(eq=False)
class Bitmap:
    """A named dirty bitmap; `readonly is None` means "unknown, do not modify"."""

    name: str
    granularity: int
    persistent: bool = False
    enabled: bool = True
    busy: bool = False
    readonly: bool | None = False


@dataclass(eq=False)
class Node:
    """A block node; `name` None is a name QEMU invents (`#blockNNN`), not addressable."""

    name: str | None
    driver: str  # qcow2, raw, file, or a filter driver
    size: int
    backing: Node | None = None
    file: Node | None = None
    bitmaps: list[Bitmap] = field(default_factory=list)  # newest first, as QEMU lists them
    owned: bool = False  # created by blockdev-add (survives leaving a drive's chain)
    writable: bool = False  # a backing node left open read-write (its file is locked)

    def bitmap(self, name: str) -> Bitmap | None:
        return next((b for b in self.bitmaps if b.name == name), None)

    def writable_below(self) -> bool:
        """A backing node under this one is open read-write: drive-backup sync=top, which
        opens the backing chain a second time, fails to lock it."""
        node = self.backing
        while node is not None:
            if node.writable:
                return True
            node = node.backing
        return False

    @property
    def can_persist(self) -> bool:
        return self.driver == "qcow2"

    @property
    def is_filter(self) -> bool:
        return self.driver not in ("qcow2", "raw", "file")


@dataclass(eq=False)
class Drive:
    """A BlockBackend `-drive if=none,id=...`; `filter` is a held job's filter above the root."""

    id: str
    size: int
    format: str
    root: Node
    filter: Node | None = None

    def chain(self) -> list[Node]:
        """Root first, then each backing node down to the base."""
        out: list[Node] = []
        node: Node | None = self.root
        while node is not None:
            out.append(node)
            node = node.backing
        return out


@dataclass
class Machine:
    """Drives, monitor-owned nodes, and jobs that exist (id -> status)."""

    drives: list[Drive]
    owned: list[Node] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)

    # --- lookups ------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """Every node in the graph (no job filters), each once, in a fixed order."""
        out: list[Node] = []
        seen: list[int] = []
        stack = [d.root for d in self.drives] + list(self.owned)
        while stack:
            node = stack.pop(0)
            if id(node) in seen:
                continue
            seen.append(id(node))
            out.append(node)
            stack.extend(n for n in (node.file, node.backing) if n is not None)
        return out

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes() if n.name == name), None)

    def drive(self, drive_id: str) -> Drive | None:
        return next((d for d in self.drives if d.id == drive_id), None)

    def resolve(self, name: str) -> Node | None:
        """`bdrv_lookup_bs`: a drive id means whatever sits on top of it now."""
        drive = self.drive(name)
        if drive is not None:
            return drive.filter or drive.root
        return self.node(name)

    def drive_of(self, node: Node) -> Drive | None:
        return next((d for d in self.drives if node in d.chain()), None)

    def overlay_of(self, node: Node) -> Node | None:
        return next((n for n in self.nodes() if n.backing is node), None)

    def is_backing(self, node: Node) -> bool:
        return self.overlay_of(node) is not None

    def name_taken(self, name: str) -> bool:
        return self.drive(name) is not None or self.node(name) is not None

    def refs(self, node: Node) -> list[str]:
        """The names a command can use to reach `node` now."""
        out = [d.id for d in self.drives if self.resolve(d.id) is node]
        if node.name is not None:
            out.append(node.name)
        return out

    def copy(self) -> Machine:
        return copy.deepcopy(self)

    # --- bitmap commands: return True (QEMU accepts), False (refuses), None (unknown) ----

    def add_bitmap(
        self,
        node_ref: str,
        name: str,
        granularity: int | None = None,
        persistent: bool = False,
        disabled: bool = False,
    ) -> bool | None:
        if name == "":
            return False
        node = self.resolve(node_ref)
        if node is None:
            return False
        if granularity is not None and (granularity < 512 or granularity & (granularity - 1)):
            return False
        if granularity is not None and granularity > 1 << 31:
            return False
        if persistent and not node.can_persist:
            return False
        if node.bitmap(name) is not None or len(name.encode()) > MAX_BITMAP_NAME:
            return False
        # A persistent bitmap created on a read-only node: whether QEMU treats it
        # as read-only later is not known, so the generator will not modify it.
        readonly = None if persistent and self.is_backing(node) else False
        bitmap = Bitmap(name, granularity or DEFAULT_GRANULARITY, persistent, not disabled)
        bitmap.readonly = readonly
        node.bitmaps.insert(0, bitmap)
        return True

    def bitmap_op(
        self, op: str, node_ref: str, name: str, txn: list[Bitmap] | None = None
    ) -> bool | None:
        """remove / clear / enable / disable.  `txn` collects removals of a transaction."""
        node = self.resolve(node_ref)
        bitmap = node.bitmap(name) if node is not None else None
        if bitmap is None or bitmap.busy:
            return False
        if op in ("remove", "clear"):
            if bitmap.readonly is None:
                return None
            if bitmap.readonly:
                return False
        if op == "remove":
            if txn is None:
                node.bitmaps.remove(bitmap)  # type: ignore[union-attr]
            else:
                bitmap.busy = True  # held until the transaction ends
                txn.append(bitmap)
        elif op in ("enable", "disable"):
            bitmap.enabled = op == "enable"
        return True

    def merge(self, node_ref: str, target: str, sources: list[object]) -> bool | None:
        node = self.resolve(node_ref)
        bitmap = node.bitmap(target) if node is not None else None
        if node is None or bitmap is None or bitmap.busy:
            return False
        if bitmap.readonly is None:
            return None
        if bitmap.readonly:
            return False
        for src in sources:
            src_node: Node | None = node
            if isinstance(src, str):
                src_name = src
            else:
                assert isinstance(src, dict)
                src_node, src_name = self.resolve(src["node"]), src["name"]
            if src_node is None:
                return False
            found = src_node.bitmap(src_name)
            if found is None or found.busy or src_node.size != node.size:
                return False
        return True

    def finish_txn(self, removed: list[Bitmap]) -> None:
        for bitmap in removed:
            for node in self.nodes() + [d.filter for d in self.drives if d.filter]:
                if bitmap in node.bitmaps:
                    node.bitmaps.remove(bitmap)

    # --- graph changes ------------------------------------------------------------------

    def snapshot(self, drive: Drive, overlay_name: str | None) -> Node:
        """blockdev-snapshot-sync: a new qcow2 overlay becomes the drive's root."""
        old = drive.root
        overlay = Node(overlay_name, "qcow2", drive.size, backing=old)
        overlay.file = Node(None, "file", drive.size)
        for bitmap in old.bitmaps:
            if bitmap.persistent:
                bitmap.readonly = True  # the old root is reopened read-only
        drive.root = overlay
        return overlay

    def reopened(self, node: Node) -> None:
        """`node` was reopened read-write and back: its persistent bitmaps' flags are unknown."""
        for bitmap in node.bitmaps:
            if bitmap.persistent:
                bitmap.readonly = None
