"""Fault injection: the sim-only `fault` step and the I/O paths it can hit.

Theory of operation.  A fault is what a blkdebug `inject-error` rule does in
QEMU's iotests, attached to an existing node: the next `count` requests of
kind `op` (read or write) that reach that node and overlap
[offset, offset+length) fail with `errno`, then the fault is spent.  Who
asked does not matter: guest I/O (qemu-io over HMP, workloads), copy-before-
write copies done on behalf of a guest write, and job chunks all walk the
same paths:

- a write entering at node N passes N's filters, lands on the data node and
  goes on to that node's `file` (protocol) node (`sim.model.io.write_path`);
- a read passes the filters, then each data node of the backing chain it
  still needs data from, each with its `file` node (`read_path`).

Offsets are guest offsets on every node, protocol nodes included (the
approximation sim.model.io makes for bitmaps).  A blkdebug node on a path
decides for itself with its rules and state (`Blkdebug`, below); QEMU matches
their `sector` against host offsets.  When a guest write fails at
node F, every node above F and F itself still mark their dirty bitmaps:
QEMU 7.2's bdrv_co_write_req_finish runs whatever the request's result.
The data does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.model import qcow2_meta
from sim.model.content import UNALLOCATED, Content, sector_span
from sim.model.graph import BlockBackend, BlockGraph, BlockNode
from sim.model.io import cow_plan, write_path
from sim.model.job_flow import STRERROR
from sim.model.qcow2_host import Qcow2Content, Qcow2Layout

if TYPE_CHECKING:
    from sim.engine.machine import Machine

FAULT_KEYS = ("node", "op", "errno", "offset", "length", "count")
MAX_COUNT = 1 << 31


@dataclass(slots=True)
class Fault:
    """One armed fault: fails the next `remaining` matching requests."""

    node: BlockNode
    op: str  # "read" | "write"
    errno: str  # "EIO" | "ENOSPC"
    offset: int
    length: int  # bytes; the fault covers [offset, offset + length)
    remaining: int
    line: int = 0
    hits: int = 0
    # blkdebug's `immediately`: the request fails before it yields; otherwise (and for
    # the sim-only fault) it fails in a later main-loop iteration
    immediately: bool = False

    def matches(self, node: BlockNode, op: str, offset: int, length: int) -> bool:
        return (
            node is self.node
            and op == self.op
            and offset < self.offset + self.length
            and self.offset < offset + length
        )


class FaultTable:
    """The armed faults of one machine, in the order the trace added them, and the
    blkdebug nodes whose rules decide for themselves (`Blkdebug`)."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.blkdebug: dict[BlockNode, Blkdebug] = {}
        # the qcow2 nodes over blkdebug nodes, with their images' layouts (whose
        # metadata caches the blkdebug events read), since their first request
        self.qcow2: dict[BlockNode, Qcow2Layout] = {}
        # the pieces of the last failed write through a qcow2 node over blkdebug that
        # landed all the same (qcow2's tasks run in parallel): (node, offset, length)
        self.landed: list[tuple[BlockNode, int, int]] = []

    def __bool__(self) -> bool:
        return bool(self.faults) or bool(self.blkdebug)

    def add(self, fault: Fault) -> None:
        self.faults.append(fault)

    def take(
        self,
        nodes: list[BlockNode],
        op: str,
        offset: int,
        length: int,
        above: BlockNode | None = None,
    ) -> tuple[BlockNode, Fault] | None:
        """The first node along `nodes` with a matching fault; spends one count of it.

        `op` is read, write, write-zeroes or flush (the sim-only faults see a zero
        write as a write).  A blkdebug node on the way sees the request as QEMU's
        does, after the events of the node above it (the one before it in `nodes`,
        or `above` for the first)."""
        fault_op = "write" if op == "write-zeroes" else op
        for i, node in enumerate(nodes):
            debug = self.blkdebug.get(node) if self.blkdebug else None
            if debug is not None:
                parent = nodes[i - 1] if i else above
                if parent is not None and isinstance(parent.content, Qcow2Content):
                    landed: list[tuple[int, int]] = []
                    steps = self.qcow2_steps(parent, op, offset, length, landed)
                    rule = self._run(node, debug, parent, steps) if steps is not None else None
                    if rule is not None:
                        self.landed = [(parent, off, n) for off, n in landed]
                else:
                    rule = debug.request(op, offset, length, parent.driver if parent else None)
                if rule is not None:
                    fault = Fault(node, fault_op, rule.errno, offset, max(length, 1), 0)
                    fault.immediately = rule.immediately
                    return node, fault
            for fault in self.faults:
                if fault.matches(node, fault_op, offset, length):
                    fault.remaining -= 1
                    fault.hits += 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                    return node, fault
        return None

    def block_status(self, nodes: list[BlockNode], offset: int, length: int) -> None:
        """Block status of [offset, offset + length) through `nodes` (a read path)
        before a backup task reads it (block_copy_block_status): a qcow2 node over a
        blkdebug node may load L2 tables there; a failure is not reported (the task
        copies the range as data)."""
        for i, node in enumerate(nodes):
            debug = self.blkdebug.get(node) if i else None
            parent = nodes[i - 1]
            if debug is not None and isinstance(parent.content, Qcow2Content):
                if 0 <= offset and offset + length <= parent.content.size_bytes:
                    layout = self._layout(parent)
                    steps = qcow2_meta.status_steps(layout, parent.content, offset, length)
                    self._run(node, debug, parent, steps)

    def allocation_failure(self, nodes: list[BlockNode], size: int) -> BlkdebugRule | None:
        """bdrv_is_allocated_above over the whole disk through the data nodes `nodes` (top
        first): the L2 tables a qcow2 node over a blkdebug node loads for it; the rule
        a failed load fails by (the caller fails with it), else None."""
        for node in nodes:
            file = node.file
            debug = self.blkdebug.get(file) if file is not None else None
            if debug is None or not isinstance(node.content, Qcow2Content):
                continue
            assert file is not None
            layout = self._layout(node)
            steps = qcow2_meta.status_steps(layout, node.content, 0, min(size, node.size_bytes))
            rule = self._run(file, debug, node, steps)
            if rule is not None:
                return rule
        return None

    def close(self, node: BlockNode, file: BlockNode | None) -> None:
        """bdrv_close of qcow2 node `node` over blkdebug node `file`: its caches are written
        back through the rules; the changes of L2 tables that never reach the file are
        lost from the image (QEMU's image keeps what those tables mapped before), and a
        region whose L1 entry on disk points at another region's table since a failed
        l2_allocate maps that table once opened again."""
        layout = self.qcow2.pop(node, None)
        debug = self.blkdebug.get(file) if file is not None else None
        if layout is None or debug is None or not isinstance(node.content, Qcow2Content):
            return
        debug.run(qcow2_meta.close_steps(layout))
        content = node.content
        for first, end, extents, _keeps in layout.cache.lost_changes():
            content.write_sectors(first, end, UNALLOCATED)
            for a, b, stamp in extents:
                content.write_sectors(a, b, stamp)
        for region, other in layout.stale_tables():  # an L1 entry the file kept
            content.share_table(region, other)

    def reopen(self, node: BlockNode) -> None:
        """bdrv_reopen_prepare of qcow2 node `node` over a blkdebug node: it is flushed
        through the rules (QMPError "Error flushing drive" when that fails), and
        qcow2_update_options_commit gives it new, empty caches."""
        layout = self.qcow2.get(node)
        debug = self.blkdebug.get(node.file) if node.file is not None else None
        if layout is None or debug is None:
            return
        assert node.file is not None
        rule = self._run(node.file, debug, node, qcow2_meta.flush_steps(layout))
        if rule is not None:
            raise QMPError(f"Error flushing drive: {STRERROR[rule.errno]}")
        layout.cache.renew()

    def _run(
        self, file: BlockNode, debug: Blkdebug, node: BlockNode, steps: qcow2_meta.Steps
    ) -> BlkdebugRule | None:
        """`steps` of qcow2 node `node` run through blkdebug node `file`; the writes they
        make to the image file (metadata written back, new clusters) mark `file`'s dirty
        bitmaps, failed or not (bdrv_co_write_req_finish)."""
        layout = node.content.layout if isinstance(node.content, Qcow2Content) else None
        if layout is None or not file.bitmaps or layout.host_writes is not None:
            return debug.run(steps)
        layout.collect_host_writes(True)
        rule = debug.run(steps)
        for offset, length in layout.collect_host_writes(False):
            for bm in file.bitmaps:
                bm.record_write(offset, length)
        return rule

    def _layout(self, node: BlockNode) -> Qcow2Layout:
        """The layout of qcow2 node `node`'s image; at its first request over blkdebug
        its caches are as qcow2_open made them (empty and clean)."""
        assert isinstance(node.content, Qcow2Content)
        layout = node.content.layout
        if self.qcow2.get(node) is not layout:
            self.qcow2[node] = layout
            layout.cache.open()
        return layout

    def qcow2_steps(
        self,
        node: BlockNode,
        op: str,
        offset: int,
        length: int,
        landed: list[tuple[int, int]] | None = None,
    ) -> qcow2_meta.Steps | None:
        """What qcow2 node `node` raises and asks of its file for this request
        (sim.model.qcow2_meta), with the node's caches as they stand."""
        layout = self._layout(node)
        if op == "flush":
            return qcow2_meta.flush_steps(layout)
        chain: list[Content] = []
        cur: BlockNode | None = node
        while cur is not None:
            while cur is not None and cur.is_filter:
                cur = cur.filtered_child()
            if cur is None or cur.content is None:
                break
            chain.append(cur.content)
            cur = cur.backing
        if length <= 0 or offset < 0 or offset + length > chain[0].size_bytes:
            return None
        if op == "read":
            return qcow2_meta.read_steps(layout, chain, offset, length)
        if op == "write-zeroes":
            return qcow2_meta.zero_steps(layout, chain, offset, length, landed)
        return qcow2_meta.write_steps(layout, chain, offset, length, landed)


# -- blkdebug ------------------------------------------------------------------------------
# block/blkdebug.c of QEMU 7.2.  A blkdebug node has a state (1 at open) and rules per
# event.  When an event is raised on it, the event's rules for the current state (or
# any state: `state` 0 or absent) run: inject-error rules become the active rules
# (replacing the ones an earlier event activated), set-state rules pick the next
# state.  Every request that then reaches the blkdebug node fails with the first
# active rule matching its type (`iotype`, default: every type but block-status) and
# offset (`sector`: the request covers that sector's first byte), which `once`
# removes.  Events come from the node above (a raw node: read_aio before reading,
# write_aio before writing, flush_to_os and flush_to_disk on a flush; a qcow2 node:
# those and its metadata events, with its metadata requests between them, see
# sim.model.qcow2_meta) and from the block layer on every write reaching the
# blkdebug node (pwritev or pwritev_zero before it, pwritev_done after it).  A flush
# reaches it only when it was written since its last flush (bdrv_co_flush's
# write_gen).  Offsets are the guest's (QEMU's are host offsets: the same under raw,
# not under qcow2); a qcow2 metadata request matches only rules without `sector`.
# Not modelled, refused: the events of other drivers and of qcow2 paths blocksim
# does not take (compression, internal snapshots, L1 growth, refcount-table
# growth), `sector` on a qcow2 metadata event, `config` files, errno other than EIO
# and ENOSPC, iotypes discard and block-status.

BLKDEBUG_EVENTS = {"read": ("read_aio",), "write": ("write_aio",),
                   "flush": ("flush_to_os", "flush_to_disk")}  # fmt: skip
_WRITE_EVENTS = ("pwritev", "pwritev_zero", "pwritev_done")
_MODELLED_EVENTS = ("read_aio", "write_aio", "flush_to_os", "flush_to_disk",
                    *_WRITE_EVENTS, *qcow2_meta.QCOW2_EVENTS)  # fmt: skip
_IOTYPES = ("read", "write", "write-zeroes", "flush")
_DEFAULT_IOTYPES = frozenset({"read", "write", "write-zeroes", "discard", "flush"})
_ERRNOS = {5: "EIO", 28: "ENOSPC"}
ERRNO_CODES = {name: code for code, name in _ERRNOS.items()}
_SECTOR = 512


@dataclass(eq=False, slots=True)
class BlkdebugRule:
    """One inject-error or set-state rule (blkdebug's BlkdebugRule)."""

    event: str
    action: str  # "inject-error" | "set-state"
    state: int  # 0: in any state
    errno: str = "EIO"
    offset: int = -1  # the injected sector's first byte; -1: any request
    iotypes: frozenset[str] = _DEFAULT_IOTYPES
    once: bool = False
    new_state: int = 0
    immediately: bool = False


class Blkdebug:
    """A blkdebug node's rules, state and active rules (BDRVBlkdebugState)."""

    def __init__(self, rules: list[BlkdebugRule]) -> None:
        self.state = 1
        self.rules: dict[str, list[BlkdebugRule]] = {}
        for rule in rules:  # QLIST_INSERT_HEAD: the newest rule of an event comes first
            self.rules.setdefault(rule.event, []).insert(0, rule)
        self.active: list[BlkdebugRule] = []
        self.unflushed = False  # written since its last flush (write_gen != flushed_gen)

    def event(self, name: str) -> None:
        """blkdebug_debug_event: run the event's rules for the current state."""
        new_state = self.state
        injected = False
        for rule in self.rules.get(name, ()):
            if rule.state and rule.state != self.state:
                continue
            if rule.action == "inject-error":
                if not injected:
                    self.active = []
                    injected = True
                self.active.insert(0, rule)
            else:
                new_state = rule.new_state
        self.state = new_state

    def request(self, op: str, offset: int, length: int, parent: str | None) -> BlkdebugRule | None:
        """A request of type `op` from a node of driver `parent` (None: qemu-io or a job
        on the blkdebug node itself): the parent's events, then the request; the rule
        it fails by, or None.  raw passes a zero write on without an event."""
        if parent is not None and op != "write-zeroes":
            for name in BLKDEBUG_EVENTS.get(op, ()):
                self.event(name)
        return self.check(op, offset, length)

    def run(self, steps: qcow2_meta.Steps) -> BlkdebugRule | None:
        """Events and requests from a qcow2 node above, in order, until a request
        fails (a TRY request's failure is sent back and the steps go on): the rule
        the first failure was by, or None."""
        failure: BlkdebugRule | None = None
        try:
            step = next(steps)
            while True:
                if step[0] == "event":
                    self.event(step[1])
                    step = next(steps)
                    continue
                deferred = len(step) > 4 and step[4] == qcow2_meta.ASYNC
                rule = self.check(step[0], step[1], step[2], deferred)
                if rule is not None and len(step) < 4:
                    steps.close()
                    return rule
                if step[3:4] != (qcow2_meta.OPTIONAL,):
                    failure = failure or rule
                step = steps.send(
                    0
                    if rule is None
                    else qcow2_meta.FAILED_AT_ONCE
                    if rule.immediately
                    else qcow2_meta.FAILED
                )
        except StopIteration:
            return failure

    def check(
        self, op: str, offset: int, length: int, deferred: bool = False
    ) -> BlkdebugRule | None:
        """A request reaching the blkdebug node: bdrv_aligned_pwritev's events around
        a write, bdrv_co_flush's skip of a flush with nothing written since the last
        one, then rule_check.  `offset` -1: a metadata request (no `sector` matches).
        `deferred`: a write whose caller raises pwritev_done itself when it completes
        (a qcow2 task's; not when the write fails `immediately`: it never yields)."""
        if op == "flush":
            if not self.unflushed:
                return None
            rule = self._match(op, offset, length)
            if rule is None:
                self.unflushed = False
            return rule
        if op in ("write", "write-zeroes"):
            self.event("pwritev" if op == "write" else "pwritev_zero")
            rule = self._match(op, offset, length)
            self.unflushed = True
            if not deferred or (rule is not None and rule.immediately):
                self.event("pwritev_done")
            return rule
        rule = self._match(op, offset, length)
        if op == "discard":
            self.unflushed = True  # bdrv_co_write_req_finish
        return rule

    def _match(self, op: str, offset: int, length: int) -> BlkdebugRule | None:
        """rule_check: the first active rule matching the request; `once` removes it."""
        for rule in self.active:
            where = rule.offset
            if (
                where == -1 or (offset >= 0 and length and offset <= where < offset + length)
            ) and op in rule.iotypes:
                if rule.once:
                    self.active.remove(rule)
                    self.rules[rule.event].remove(rule)
                return rule
        return None


def blkdebug_rules(options: dict[str, Any]) -> Blkdebug:
    """The rules of a blkdebug node's options (read_config: inject-error rules, then
    set-state rules); QMPError for what blocksim does not model (the node is then not
    created)."""
    if "config" in options:
        raise QMPError("blocksim does not model blkdebug 'config' files")
    rules = []
    for kind in ("inject-error", "set-state"):
        for spec in options.get(kind, []):
            event = spec["event"]
            if event not in _MODELLED_EVENTS:
                raise QMPError(
                    f"blocksim does not model blkdebug event '{event}' "
                    f"(modelled: {', '.join(_MODELLED_EVENTS)})"
                )
            if "sector" in spec and event in qcow2_meta.QCOW2_EVENTS:
                raise QMPError(
                    f"blocksim does not model blkdebug 'sector' on event '{event}' "
                    "(host offsets of qcow2 metadata)"
                )
            if kind == "set-state":
                rules.append(
                    BlkdebugRule(event, kind, spec.get("state", 0), new_state=spec["new_state"])
                )
                continue
            iotypes = _DEFAULT_IOTYPES
            if "iotype" in spec:
                if spec["iotype"] not in _IOTYPES:
                    raise QMPError(f"blocksim does not model blkdebug iotype '{spec['iotype']}'")
                iotypes = frozenset({spec["iotype"]})
            errno = _ERRNOS.get(spec.get("errno", 5))
            if errno is None:
                raise QMPError(
                    f"blocksim does not model blkdebug errno {spec['errno']} (modelled: 5, 28)"
                )
            sector = spec.get("sector", -1)
            rules.append(
                BlkdebugRule(
                    event, kind, spec.get("state", 0), errno,
                    -1 if sector == -1 else sector * _SECTOR, iotypes, spec.get("once", False),
                    immediately=spec.get("immediately", False),
                )
            )  # fmt: skip
    return Blkdebug(rules)


# -- paths ---------------------------------------------------------------------------------


def read_path(
    graph: BlockGraph,
    node: BlockNode,
    offset: int,
    length: int,
    stop: BlockNode | None = None,
    allocated_only: bool = False,
) -> list[BlockNode]:
    """The nodes a read entering at `node` reaches, top down, down to `stop` (excluded).

    With `allocated_only` (commit, stream: QEMU copies only what is allocated
    above the base), a read that finds nothing allocated reaches nothing."""
    path = []
    cur: BlockNode | None = node
    while cur is not None and cur.is_filter:
        path.append(cur)
        cur = cur.filtered_child()
    first, end = sector_span(offset, length)
    unfilled: Any = None
    found = False
    for data in graph.backing_chain(node):
        if data is stop:
            break
        path.append(data)
        if data.content is None:
            continue
        hit = _allocated_in(data.content, first, end)
        if bool(hit.any()):
            found = True
            if data.file is not None:
                path.append(data.file)
        elif data.file is not None and data.file.driver == "blkdebug":
            # raw reads its file whatever it holds; qcow2 may load an L2 table
            path.append(data.file)
        unfilled = ~hit if unfilled is None else unfilled & ~hit
        if not bool(unfilled.any()):
            break
    if allocated_only and not found:
        return []
    return path


def _allocated_in(content: Content, first: int, end: int) -> Any:
    """Which sectors of [first, end) a node holds itself, as booleans; a node shorter
    than the range (a protocol node as long as its host file under a larger overlay)
    holds nothing past its end, where a read goes on below it or returns zeroes."""
    import numpy as np

    hit = np.zeros(max(end - first, 0), dtype=bool)
    own = content.read(first, end)
    hit[: own.size] = own != 0
    return hit


# -- guest I/O -----------------------------------------------------------------------------


def guest_error(
    m: Machine, bb: BlockBackend | None, root: BlockNode, op: str, offset: int, length: int
) -> str | None:
    """The strerror a guest request would fail with because of a fault, else None.

    A failing write marks the dirty bitmaps of the nodes it reached (see the
    module docstring).  Copy-before-write copies a write triggers are checked
    too: with QEMU 7.2's default on-cbw-error=break-guest-write a failed copy
    fails the guest write at the filter."""
    if not m.faults:
        return None
    m.faults.landed = []
    graph = m.state.graph
    if op == "flush":
        hit = m.faults.take(write_path(graph, root), "flush", 0, 0)
        return STRERROR[hit[1].errno] if hit is not None else None
    if length <= 0 or offset < 0 or offset + length > root.size_bytes:
        return None
    if op == "read":
        hit = m.faults.take(read_path(graph, root, offset, length), "read", offset, length)
        return STRERROR[hit[1].errno] if hit is not None else None
    path = write_path(graph, root)
    failed_at: BlockNode | None = None
    errno = ""
    for i, node in enumerate(path):
        for src, dst, runs in cbw_runs(m, node, offset, length):
            for off, n in runs:
                hit = m.faults.take(read_path(graph, src, off, n), "read", off, n) or m.faults.take(
                    write_path(graph, dst), "write", off, n
                )
                if hit is None:
                    continue
                if node.cbw is not None and node.cbw.on_cbw_error == "break-snapshot":
                    # the snapshot breaks, the guest write goes on (cbw_do_copy_before_write)
                    node.cbw.snapshot_error = ERRNO_CODES[hit[1].errno]
                else:
                    failed_at, errno = node, hit[1].errno
                break
            if failed_at is not None:
                break
        if failed_at is not None:
            break
        hit = m.faults.take([node], op, offset, length, path[i - 1] if i else None)
        if hit is not None:
            failed_at, errno = node, hit[1].errno
            break
    if failed_at is None:
        return None
    mark_failed_write(bb, path[: path.index(failed_at) + 1], offset, length)
    return STRERROR[errno]


def write_landed(m: Machine, stamp: int) -> None:
    """The pieces of a failed guest write that landed in the image all the same
    (`FaultTable.landed`) get its data."""
    for node, offset, length in m.faults.landed:
        if node.content is not None:
            cow, below = cow_plan(m.state.graph, node, [offset], length, stamp)
            node.content.write(offset, length, stamp)
            if cow:  # each piece linked copied the rest of its new clusters first
                assert isinstance(node.content, Qcow2Content)
                node.content.copy_on_write(cow, below, [offset], length)
    m.faults.landed = []


def mark_failed_write(
    bb: BlockBackend | None, nodes: list[BlockNode], offset: int, length: int
) -> None:
    if bb is not None:
        for bm in bb.bitmaps:
            bm.record_write(offset, length)
    for node in nodes:
        for bm in node.bitmaps:
            bm.record_write(offset, length)


def cbw_runs(
    m: Machine, node: BlockNode, offset: int, length: int
) -> list[tuple[BlockNode, BlockNode, list[tuple[int, int]]]]:
    """What a write through `node` would copy before writing: when `node` is a
    copy-before-write filter (a backup job's or one added by blockdev-add) whose
    snapshot is not broken, (source, target, [(offset, length)...])."""
    cbw = node.cbw if node.driver == "copy-before-write" else None
    if cbw is None or cbw.snapshot_error:
        return []
    runs = uncopied_runs(cbw, offset, length)
    return [(cbw.source, cbw.target, runs)] if runs else []


def uncopied_runs(kind: Any, offset: int, length: int) -> list[tuple[int, int]]:
    """Runs of not-yet-copied job clusters a write of [offset, offset+length) touches."""
    cluster = kind.cluster
    bits = kind.copy_map.bits
    first = offset // cluster
    last = (offset + length - 1) // cluster
    if not bits.count(1, first, last + 1):
        return []
    size = kind.source.size_bytes
    runs: list[tuple[int, int]] = []
    for i in range(first, last + 1):
        if not bits[i]:
            continue
        off = i * cluster
        n = min(cluster, size - off)
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((off, n))
    return runs
