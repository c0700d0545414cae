"""BdrvChild permissions: what each user of a node takes and what it lets others take.

Theory of operation.  In QEMU 7.2 every edge into a node (a BdrvChild) has a
`perm` (what its parent uses: consistent read, write, write unchanged,
resize) and a `shared` mask (what it lets every other parent use).  A new
user is refused when one existing parent does not share a permission the
new one requires (block.c: bdrv_parent_perms_conflict / bdrv_a_allow_b),
with the message `conflict_message` builds.  The parents of a node are:

- the BlockBackend of a drive (`-drive` without a device: consistent read, and write
  from the first qemu-io write through it on; shares all);
- the node's parent nodes, whose child permissions follow from the parent's
  own cumulative permissions through its driver's child_perm
  (`child_perms`: qcow2's `file` child never shares write or resize,
  because of its metadata; a `backing` child shares write only when every
  user of the overlay does; filters pass everything through; the backup
  filter (copy-before-write) unshares write on its source and takes write
  on its target);
- the children a running job holds (block_job_add_bdrv: `main node`,
  `source`, `target`, `intermediate node`, `base`, `active node`) and the
  BlockBackends it opens (a mirror's target: write, shares only write
  unchanged; a commit's base: shares consistent read and write unchanged; a
  stream's, on its filter: consistent read, shares all but resize).

`parents(state, node)` lists them newest first, as QEMU's parent list is
ordered (a new parent is inserted at the head), which decides which user a
conflict message names.  Job edges exist from the job's creation until it
concludes (block_job_remove_all_bdrv runs in its prepare/abort).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.model.job_backup import BackupKind
from sim.model.job_commit import CommitKind
from sim.model.job_mirror import MirrorKind
from sim.model.job_stream import StreamKind

if TYPE_CHECKING:
    from sim.model.graph import BlockGraph, BlockNode
    from sim.model.jobs import Job
    from sim.model.state import BlockState

CONSISTENT_READ = 0x1
WRITE = 0x2
WRITE_UNCHANGED = 0x4
RESIZE = 0x8
ALL = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE
PASSTHROUGH = ALL  # DEFAULT_PERM_PASSTHROUGH: every permission is passed through a filter
NAMES = (
    (CONSISTENT_READ, "consistent read"),
    (WRITE, "write"),
    (WRITE_UNCHANGED, "write unchanged"),
    (RESIZE, "resize"),
)
UNNAMED_BLOCK_DEVICE = "an unnamed block device"
LIVE_JOB_STATUSES = frozenset(
    {"created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting"}
)


@dataclass(frozen=True, slots=True)
class Parent:
    """One BdrvChild pointing at a node: who holds it (QEMU's description), its name and
    its permissions."""

    desc: str  # "node 'fmt0'", "block device 'drive0'", "mirror job 'm'", ...
    child: str  # the BdrvChild's name: file, backing, root, main node, target, ...
    perm: int
    shared: int


QEMU_IO_BACKEND = Parent(UNNAMED_BLOCK_DEVICE, "root", 0, ALL)  # hmp_qemu_io's blk_new(0, ALL)


def perm_names(mask: int) -> str:
    """bdrv_perm_names: the set permissions, comma separated."""
    return ", ".join(name for bit, name in NAMES if mask & bit)


def conflict_message(node: str, missing: int, requirer: Parent, unsharer: Parent) -> str:
    """QEMU's bdrv_a_allow_b refusal."""
    return (
        f"Permission conflict on node '{node}': permissions '{perm_names(missing)}' are both "
        f"required by {requirer.desc} (uses node '{node}' as '{requirer.child}' child) and "
        f"unshared by {unsharer.desc} (uses node '{node}' as '{unsharer.child}' child)"
    )


def new_user_conflict(state: BlockState, node: BlockNode, perm: int) -> str | None:
    """The refusal when an unnamed BlockBackend (qemu-io on a node name) takes `perm` on
    `node`, sharing everything; None when every parent shares it."""
    requirer = Parent(UNNAMED_BLOCK_DEVICE, "root", perm, ALL)
    for parent in parents(state, node):
        missing = perm & ~parent.shared
        if missing:
            return conflict_message(node.node_name, missing, requirer, parent)
    return None


# --- the parents of a node -----------------------------------------------------------------


def parents(state: BlockState, node: BlockNode) -> list[Parent]:
    """Every BdrvChild pointing at `node`, newest first (see the module docstring)."""
    return _Perms(state.graph, state.jobs).parents(node)


def edges_below(
    state: BlockState, top: BlockNode, extra: Parent | None = None
) -> dict[int, list[Parent]]:
    """The parents of `top` and of every node below it (with `extra`, a parent that
    is not a graph object, such as a BlockBackend, added at the head of `top`'s)."""
    ev = _Perms(state.graph, state.jobs, {id(top): [extra]} if extra is not None else None)
    return {id(n): ev.parents(n) for n in state.graph.subtree(top)}


def refresh_conflict(
    state: BlockState,
    top: BlockNode,
    before: dict[int, list[Parent]],
    extra: Parent | None = None,
) -> str | None:
    """bdrv_list_refresh_perms after a graph change at `top` (a child attached, a parent
    added): QEMU's refusal for the first pair of parents of a node at or below `top`
    where one requires what the other does not share, counting only pairs in which
    a parent is new or changed since `before` (`edges_below` taken before the change);
    then, for the same node, bdrv_node_refresh_perm's: write permissions never work
    with a read-only node."""
    after = edges_below(state, top, extra)
    for node in state.graph.subtree(top):
        old = set(before.get(id(node), []))
        # an edge the change attached (bdrv_replace_child_noperm) is inserted at the
        # head of the node's parent list; edges that were there keep their order
        held = {(p.desc, p.child) for p in old}
        plist = sorted(after[id(node)], key=lambda p: (p.desc, p.child) in held)
        for i, a in enumerate(plist):
            for j, b in enumerate(plist):
                missing = b.perm & ~a.shared
                if i == j or not missing or (a in old and b in old):
                    continue
                return conflict_message(node.node_name, missing, b, a) + "."
        if node.read_only and any(p.perm & (WRITE | WRITE_UNCHANGED) for p in plist):
            return "Block node is read-only"
    return None


def cumulative(graph: BlockGraph, node: BlockNode, jobs: Sequence[Job] = ()) -> tuple[int, int]:
    """bdrv_get_cumulative_perm: (OR of the parents' perm, AND of their shared), over
    the graph's edges and those `jobs` hold."""
    return _Perms(graph, jobs).cumulative(node)


class _Perms:
    """One evaluation over the current graph (memoized per node; no cycles in a sane graph)."""

    def __init__(
        self,
        graph: BlockGraph,
        jobs: Sequence[Job],
        extra: dict[int, list[Parent]] | None = None,
    ) -> None:
        self.graph = graph
        self.jobs = jobs
        self.extra = extra or {}
        self.memo: dict[int, tuple[int, int]] = {}
        self.active = [j for j in jobs if j.status in LIVE_JOB_STATUSES]
        self._parents: dict[int, list[Parent]] = {}
        self._links: dict[int, list[tuple[BlockNode, str]]] | None = None

    def _links_to(self, node: BlockNode) -> list[tuple[BlockNode, str]]:
        """(parent node, role) of every graph edge to `node`, a later node's first (its
        links are newer); the edges of the whole graph are indexed once."""
        if self._links is None:
            links: dict[int, list[tuple[BlockNode, str]]] = {}
            for p in reversed(self.graph.nodes):
                for role in ("target", "backing", "file"):
                    child = getattr(p, role)
                    if child is not None:
                        links.setdefault(id(child), []).append((p, role))
            self._links = links
        return self._links.get(id(node), [])

    def parents(self, node: BlockNode) -> list[Parent]:
        cached = self._parents.get(id(node))
        if cached is not None:
            return cached
        out: list[Parent] = list(self.extra.get(id(node), ()))
        for job in reversed(self.active):  # newest job first
            out.extend(job_edges(job, node))
        g = self.graph
        for p, role in self._links_to(node):
            perm, shared = self.child_perm(p, role)
            out.append(Parent(f"node '{p.node_name}'", role, perm, shared))
        for bb in g.backends.values():
            if bb.root is node:
                perm = CONSISTENT_READ | (WRITE if bb.took_write else 0)
                out.append(Parent(f"block device '{bb.name}'", "root", perm, ALL))
        self._parents[id(node)] = out
        return out

    def cumulative(self, node: BlockNode) -> tuple[int, int]:
        key = id(node)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = (0, ALL)  # a cycle (a broken graph) ends here
        perm, shared = 0, ALL
        for parent in self.parents(node):
            perm |= parent.perm
            shared &= parent.shared
        self.memo[key] = (perm, shared)
        return perm, shared

    def child_perm(self, parent: BlockNode, role: str) -> tuple[int, int]:
        perm, shared = self.cumulative(parent)
        return child_perms(self.jobs, parent, role, perm, shared, bool(self.parents(parent)))


def child_perms(
    jobs: Sequence[Job], parent: BlockNode, role: str, perm: int, shared: int, has_parents: bool
) -> tuple[int, int]:
    """The permissions `parent`'s driver takes on its child `role`, given the parent's
    cumulative (`perm`, `shared`): each driver's bdrv_child_perm."""
    driver = parent.driver
    if driver == "copy-before-write":
        if role == "target":
            return WRITE, ALL & ~RESIZE
        perm, shared = _filter(perm, shared)
        if has_parents:
            if perm & WRITE:
                perm |= CONSISTENT_READ
            shared &= ~(WRITE | RESIZE)
        return perm, shared
    if driver == "commit_top":
        return 0, ALL
    if driver == "snapshot-access":
        return 0, ALL  # snapshot_access_child_perm: the snapshot API needs nothing
    if driver == "mirror_top":
        job = _job_of_filter(jobs, parent)
        if job is None:
            return 0, ALL  # the job is stopping: nothing is forwarded
        perm, shared = _filter(perm, shared)
        if isinstance(job.kind, MirrorKind) and job.kind.commit_mode:
            perm &= ~CONSISTENT_READ
            shared |= WRITE
        return perm, shared
    if driver == "copy-on-read":
        perm, shared = _filter(perm, shared)
        return perm | WRITE_UNCHANGED, shared
    if driver == "raw" and parent.raw_window:
        # a data child (bdrv_default_perms_for_storage, then raw_child_perm): nobody else
        # may resize the file; write and resize only if the raw node's users want them
        perm, shared = _filter(perm, shared)
        return perm, shared & ~RESIZE
    if parent.is_filter or driver == "raw":
        return _filter(perm, shared)
    if role == "backing":
        return _cow(perm, shared)
    return _storage(parent, perm, shared)


def _filter(perm: int, shared: int) -> tuple[int, int]:
    """bdrv_filter_default_perms."""
    return perm & PASSTHROUGH, shared & PASSTHROUGH


def _cow(perm: int, shared: int) -> tuple[int, int]:
    """bdrv_default_perms_for_cow: a backing child reads; it lets others write only when
    every user of the overlay does."""
    perm &= CONSISTENT_READ
    out_shared = (WRITE | RESIZE) if shared & WRITE else 0
    return perm, out_shared | CONSISTENT_READ | WRITE_UNCHANGED


def _storage(parent: BlockNode, perm: int, shared: int) -> tuple[int, int]:
    """bdrv_default_perms_for_storage for a format driver's `file` (data and metadata)."""
    perm, shared = _filter(perm, shared)
    if not parent.read_only:
        perm |= WRITE | RESIZE
    perm |= CONSISTENT_READ
    shared &= ~(WRITE | RESIZE)
    if perm & WRITE_UNCHANGED:
        perm |= WRITE
    if perm & WRITE:
        perm |= RESIZE
    return perm, shared


def _job_of_filter(jobs: Sequence[Job], flt: BlockNode) -> Job | None:
    for job in jobs:
        if job.kind.filter is flt and job.status in LIVE_JOB_STATUSES:
            return job
    return None


# --- what each job holds -------------------------------------------------------------------


def job_edges(job: Job, node: BlockNode) -> list[Parent]:
    """The edges `job` holds on `node`, newest first (reverse order of creation)."""
    return [p for n, p in reversed(job_children(job)) if n is node]


def job_children(job: Job) -> list[tuple[BlockNode, Parent]]:
    """Every edge `job` holds, in creation order, with the node it points at: the job's
    own children (block_job_add_bdrv) and the roots of the unnamed BlockBackends it
    opens (`UNNAMED_BLOCK_DEVICE`)."""
    kind = job.kind
    desc = f"{job.type} job '{job.id}'"
    unnamed = UNNAMED_BLOCK_DEVICE
    edges: list[tuple[BlockNode, Parent]] = []
    flt = kind.filter
    if isinstance(kind, BackupKind):
        if flt is not None:
            edges.append((flt, Parent(desc, "main node", 0, ALL)))
        edges.append((kind.target, Parent(desc, "target", 0, ALL)))
    elif isinstance(kind, MirrorKind):
        commit = kind.commit_mode
        if flt is not None:
            main_shared = CONSISTENT_READ | WRITE_UNCHANGED | WRITE
            edges.append((flt, Parent(desc, "main node", CONSISTENT_READ, main_shared)))
        shared = WRITE_UNCHANGED | ((CONSISTENT_READ | WRITE) if commit else 0)
        edges.append((kind.target, Parent(unnamed, "root", WRITE, shared)))
        source_shared = WRITE_UNCHANGED | WRITE | CONSISTENT_READ
        edges.append((kind.source, Parent(desc, "source", 0, source_shared)))
        edges.append((kind.target, Parent(desc, "target", 0, ALL)))
        if commit:
            for n in _between(kind.source, kind.target):
                edges.append((n, Parent(desc, "intermediate node", 0, WRITE_UNCHANGED | WRITE)))
    elif isinstance(kind, CommitKind):
        edges.append((kind.active, Parent(desc, "main node", 0, ALL)))
        for n in [kind.top, *_between(kind.top, kind.base)]:
            edges.append((n, Parent(desc, "intermediate node", 0, WRITE_UNCHANGED | WRITE)))
        if kind.base is not None:
            edges.append((kind.base, Parent(desc, "base", 0, ALL)))
            base_shared = CONSISTENT_READ | WRITE_UNCHANGED
            edges.append((kind.base, Parent(unnamed, "root", CONSISTENT_READ | WRITE, base_shared)))
        edges.append((kind.top, Parent(unnamed, "root", 0, ALL)))
    elif isinstance(kind, StreamKind):
        # stream_start: the job on the filter, the job's BlockBackend on the filter,
        # then "active node" (no resize: the length is cached) and the nodes below
        basic = CONSISTENT_READ | WRITE_UNCHANGED
        if flt is not None:
            edges.append((flt, Parent(desc, "main node", 0, ALL)))
            edges.append((flt, Parent(unnamed, "root", CONSISTENT_READ, basic | WRITE)))
        edges.append((kind.node, Parent(desc, "active node", 0, basic | WRITE)))
        for n in _between(kind.node, kind.base):
            edges.append((n, Parent(desc, "intermediate node", 0, basic)))
    return edges


def _between(top: BlockNode, base: BlockNode | None) -> list[BlockNode]:
    """The nodes strictly below `top` down to (excluding) `base`, following filtered and
    backing children."""
    out: list[BlockNode] = []
    node = top.filtered_child() if top.is_filter else top.backing
    while node is not None and node is not base and len(out) < 256:
        out.append(node)
        node = node.filtered_child() if node.is_filter else node.backing
    return out


def filter_source_conflict(state: BlockState, source: BlockNode) -> str | None:
    """A backup's filter over `source` unshares write on it; through filters the user
    added above a device's root (throttle, copy-on-read) that reaches the root, where
    the device needs write once qemu-io or a workload wrote through it
    (BlockBackend.took_write).  The refusal, or None."""
    chain: list[BlockNode] = []
    node = source
    while node.driver in ("throttle", "copy-on-read") and not node.implicit:
        child = node.filtered_child()
        if child is None:
            return None
        chain.append(node)
        node = child
    if not chain:
        return None
    for bb in state.graph.backends.values():
        if bb.root is node and bb.took_write:
            requirer = Parent(f"block device '{bb.name}'", "root", WRITE, ALL)
            unsharer = Parent(f"node '{chain[-1].node_name}'", "file", 0, 0)
            return conflict_message(node.node_name, WRITE, requirer, unsharer) + "."
    return None


# --- x-debug-query-block-graph -------------------------------------------------------------

# BlockPermission in QAPI order (graph-mod maps to no permission in QEMU 7.2)
QAPI_PERMS = (
    (CONSISTENT_READ, "consistent-read"),
    (WRITE, "write"),
    (WRITE_UNCHANGED, "write-unchanged"),
    (RESIZE, "resize"),
)


def _qapi_perm_list(mask: int) -> list[str]:
    # xdbg_graph_add_edge prepends each permission it finds in QAPI order
    return [name for bit, name in reversed(QAPI_PERMS) if mask & bit]


def child_name(parent: BlockNode, role: str) -> str:
    """The BdrvChild's name of `parent`'s `role` link (blkdebug opens its child as
    `image`; mirror_top and commit_top hold the node they sit on as `backing`)."""
    if role == "file" and parent.driver == "blkdebug":
        return "image"
    return role


def block_graph(state: BlockState) -> dict[str, list[dict[str, Any]]]:
    """bdrv_get_xdbg_block_graph: every BlockBackend, block job and node with the
    BdrvChild edges it holds and their permissions.

    QEMU numbers each object the first time it meets it (a hash table keyed by
    pointer, ids counted from 1): BlockBackends in creation order (the devices, then
    the unnamed ones jobs and exports open) with their root edge, block jobs newest
    first with the children they hold newest first, then the nodes in
    graph_bdrv_states order (the order their names were assigned) with their
    children newest first.  Nodes and edges are prepended to the answer's lists, so
    the answer lists them in reverse order of that walk."""
    graph = state.graph
    ev = _Perms(graph, state.jobs)
    ids: dict[tuple[Any, ...], int] = {}
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []

    def num(key: tuple[Any, ...]) -> int:
        # xdbg_graph_node_num: the next number the first time an object is met
        if key not in ids:
            ids[key] = len(ids) + 1
        return ids[key]

    def add_node(key: tuple[Any, ...], kind: str, name: str) -> None:
        nodes.append({"id": num(key), "type": kind, "name": name})

    def add_edge(
        parent: tuple[Any, ...], child: BlockNode, name: str, perm: int, shared: int
    ) -> None:
        edges.append(
            {
                "parent": num(parent),
                "child": num(("node", id(child))),
                "name": name,
                "perm": _qapi_perm_list(perm),
                "shared-perm": _qapi_perm_list(shared),
            }
        )

    key: tuple[Any, ...]
    for bb in graph.backends.values():
        key = ("device", bb.name)
        add_node(key, "block-backend", bb.name)
        root = bb.root
        if root is not None:
            desc = f"block device '{bb.name}'"
            for p in ev.parents(root):
                if p.desc == desc:
                    add_edge(key, root, "root", p.perm, p.shared)
                    break
    for exp in state.exports.exports[::-1]:  # newest first there
        key = ("export", exp.id)
        add_node(key, "block-backend", "")
        if exp.blk.root is not None:
            # blk_exp_add: consistent read, write when writable; shares everything
            perm = CONSISTENT_READ | (WRITE if exp.writable else 0)
            add_edge(key, exp.blk.root, "root", perm, ALL)
    for job in state.jobs:
        if job.status not in LIVE_JOB_STATUSES:
            continue
        for i, (node, p) in enumerate(job_children(job)):
            if p.desc == UNNAMED_BLOCK_DEVICE:
                key = ("job-backend", job.id, i)
                add_node(key, "block-backend", "")
                add_edge(key, node, "root", p.perm, p.shared)
    for job in reversed(state.jobs):
        if not job.is_block_job:
            continue
        key = ("job", job.id)
        add_node(key, "block-job", job.id)
        if job.status not in LIVE_JOB_STATUSES:
            continue
        for node, p in reversed(job_children(job)):
            if p.desc != UNNAMED_BLOCK_DEVICE:
                add_edge(key, node, p.child, p.perm, p.shared)
    for n in graph.nodes:
        key = ("node", id(n))
        add_node(key, "block-driver", n.node_name)
        for role in ("target", "backing", "file"):
            child = getattr(n, role)
            if child is not None:
                perm, shared = ev.child_perm(n, role)
                add_edge(key, child, child_name(n, role), perm, shared)
    return {"nodes": nodes[::-1], "edges": edges[::-1]}
