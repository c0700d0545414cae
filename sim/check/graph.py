"""graph-well-formed.

After every step that could change the graph: names are unique and the name
index agrees with the node list; every child and every backend root is a node
of the graph (nothing deleted is still reachable); there is no cycle; a filter
has exactly one filtered child; every node a live job uses is still in the
graph; every bitmap list holds each bitmap once and no bitmap is in two lists;
a bitmap is busy only while a job or a block export holds it (and every exported
bitmap is busy, every export's node in the graph), and a job's internal bitmaps go
away with the job.  On every guest write: a write that reaches the source of a
copy-before-write filter must have passed through that filter.

A problem is reported when it appears, and again only after it was gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.check.observe import StepChecker, label, listed_bitmaps, live_jobs
from sim.model.bitmap import DirtyBitmap
from sim.model.graph import BlockBackend, BlockNode
from sim.model.io import write_path

if TYPE_CHECKING:
    from sim.engine.view import MachineView

# which child slot a filter passes I/O to, and the data slot it must leave empty
FILTER_SLOTS = {
    "mirror_top": ("backing", "file"),
    "commit_top": ("backing", "file"),
    "copy-on-read": ("file", "backing"),
    "copy-before-write": ("file", "backing"),
    "throttle": ("file", "backing"),
}


class GraphWellFormed(StepChecker):
    """The block graph has no cycle, no dangling child or root, unique names, filters with
    exactly one filtered child, nothing a job uses deleted, and no bitmap left busy (or
    left behind) once no job or export holds it."""

    name = "graph-well-formed"

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self.active: set[str] = set()
        self.bypass: list[tuple[str, dict[str, Any]]] = []
        self.filters: list[BlockNode] = []  # copy-before-write filters (only commands add one)
        machine.state.write_observers.append(self._on_write)

    def _on_write(
        self, bb: BlockBackend | None, root: BlockNode, offset: int, length: int, stamp: int
    ) -> None:
        if not self.filters:
            return
        path = write_path(self.graph, root)
        for flt in self.filters:
            if flt.file is None:
                continue
            if any(n is flt.file for n in path) and not any(n is flt for n in path):
                who = f"device '{bb.name}'" if bb is not None else f"node '{root.node_name}'"
                self.bypass.append(
                    (
                        f"a guest write through {who} at offset {offset} ({length} bytes) reached "
                        f"node '{flt.file.node_name}' without passing its copy-before-write filter "
                        f"'{flt.node_name}'",
                        {
                            "node": flt.file.node_name,
                            "filter": flt.node_name,
                            "offset": offset,
                            "length": length,
                        },
                    )
                )

    quiet_work = True

    def needs_quiet_step(self) -> bool:
        return bool(self.bypass)

    def check_step(self, index: int) -> None:
        for message, details in self.bypass:
            self.report(index, message, **details)
        self.bypass = []
        if self.log.quiet:
            return
        self.filters = [n for n in self.graph.nodes if n.driver == "copy-before-write"]
        problems: dict[str, tuple[str, dict[str, Any]]] = {}
        self._names(problems)
        self._links(problems)
        self._cycles(problems)
        self._filters(problems)
        self._jobs(problems)
        self._bitmaps(problems)
        for key, (message, details) in problems.items():
            if key not in self.active:
                self.report(index, message, **details)
        self.active = set(problems)

    def check_end(self) -> None:
        return None

    # -- the rules -------------------------------------------------------------------------
    def _names(self, out: dict[str, tuple[str, dict[str, Any]]]) -> None:
        seen: set[str] = set()
        for node in self.graph.nodes:
            name = node.node_name
            if name in seen:
                out[f"dup:{name}"] = (f"two nodes are named '{name}'", {"node": name})
            seen.add(name)
            if self.graph.node(name) is not node:
                out[f"index:{name}"] = (
                    f"node '{name}' is in the node list but the name "
                    f"index finds another node (or none)",
                    {"node": name},
                )
            if name in self.graph.backends:
                out[f"clash:{name}"] = (f"node name '{name}' is also a device name", {"node": name})

    def _in_graph(self, node: BlockNode) -> bool:
        return self.graph.node(node.node_name) is node

    def _links(self, out: dict[str, tuple[str, dict[str, Any]]]) -> None:
        for node in self.graph.nodes:
            for role in ("file", "backing", "target"):
                child = getattr(node, role)
                if child is not None and not self._in_graph(child):
                    out[f"child:{node.node_name}:{role}"] = (
                        f"node '{node.node_name}' has {role} child '{child.node_name}', which "
                        f"is no longer in the graph (deleted)",
                        {"node": node.node_name, "role": role, "child": child.node_name},
                    )
        for bb in self.graph.backends.values():
            if bb.root is not None and not self._in_graph(bb.root):
                out[f"root:{bb.name}"] = (
                    f"device '{bb.name}' has root '{bb.root.node_name}', which is no longer in "
                    f"the graph (deleted)",
                    {"device": bb.name, "root": bb.root.node_name},
                )

    def _cycles(self, out: dict[str, tuple[str, dict[str, Any]]]) -> None:
        state: dict[int, int] = {}  # id(node) -> 1 visiting, 2 done
        for start in self.graph.nodes:
            if state.get(id(start)):
                continue
            stack: list[tuple[BlockNode, list[BlockNode]]] = [(start, list(start.children()))]
            state[id(start)] = 1
            while stack:
                node, todo = stack[-1]
                if not todo:
                    state[id(node)] = 2
                    stack.pop()
                    continue
                child = todo.pop()
                mark = state.get(id(child), 0)
                if mark == 1:
                    cycle = [n.node_name for n, _ in stack]
                    out[f"cycle:{child.node_name}"] = (
                        f"the graph has a cycle through node '{child.node_name}' "
                        f"({' -> '.join(cycle + [child.node_name])})",
                        {"nodes": cycle + [child.node_name]},
                    )
                elif mark == 0:
                    state[id(child)] = 1
                    stack.append((child, list(child.children())))

    def _filters(self, out: dict[str, tuple[str, dict[str, Any]]]) -> None:
        for node in self.graph.nodes:
            slots = FILTER_SLOTS.get(node.driver)
            if slots is None:
                continue
            used, empty = slots
            if getattr(node, used) is None or getattr(node, empty) is not None:
                children = [r for r in ("file", "backing") if getattr(node, r) is not None]
                out[f"filter:{node.node_name}"] = (
                    f"{node.driver} filter '{node.node_name}' must have exactly one filtered "
                    f"child (its {used}); it has {children or 'none'}",
                    {"node": node.node_name, "driver": node.driver, "children": children},
                )

    def _jobs(self, out: dict[str, tuple[str, dict[str, Any]]]) -> None:
        for job in live_jobs(self.state.jobs):
            if job.status == "aborting":
                continue
            for attr, node in _job_nodes(job.kind):
                if not self._in_graph(node):
                    out[f"job:{job.id}:{attr}:{node.node_name}"] = (
                        f"{job.type} job '{job.id}' ({job.status}) still uses node "
                        f"'{node.node_name}' (its {attr}), which is no longer in the graph",
                        {"job": job.id, "node": node.node_name, "role": attr},
                    )

    def _bitmaps(self, out: dict[str, tuple[str, dict[str, Any]]]) -> None:
        held: list[DirtyBitmap] = []  # every bitmap a live job or a block export refers to
        for job in live_jobs(self.state.jobs):
            held.extend(_job_bitmaps(job.kind))
        for node in self.graph.nodes:  # a copy-before-write filter's own three bitmaps
            if node.cbw is not None:
                held.extend((node.cbw.copy_map, node.cbw.access_map, node.cbw.done_map))
        for exp in self.state.exports.exports:
            held.extend(exp.bitmaps)
            for bm in exp.bitmaps:
                if not bm.busy:
                    out[f"export:{exp.id}:{id(bm)}"] = (
                        f"bitmap '{bm.name}' is exported by '{exp.id}' but not busy",
                        {"export": exp.id, "name": bm.name},
                    )
            if not any(n is exp.node for n in self.graph.nodes):
                out[f"export-node:{exp.id}"] = (
                    f"block export '{exp.id}' serves node '{exp.node.node_name}', which is "
                    "no longer in the graph",
                    {"export": exp.id, "node": exp.node.node_name},
                )
        where: dict[int, str] = {}
        for owner, bm in listed_bitmaps(self.graph):
            here = label(owner)
            name = f"'{bm.name}'" if bm.name is not None else "(internal)"
            if id(bm) in where:
                out[f"twice:{id(bm)}:{here}"] = (
                    f"bitmap {name} is listed on {where[id(bm)]} and again on {here}: the "
                    f"bitmap lists are corrupt",
                    {"name": bm.name, "owners": [where[id(bm)], here]},
                )
                continue
            where[id(bm)] = here
            is_held = any(bm is h for h in held) or bm.export_hold > 0  # an export holds it
            if bm.busy and not is_held:
                why = (
                    "frozen with a successor"
                    if bm.successor is not None
                    else "exported"
                    if bm.export_hold
                    else "held by a transaction"
                )
                out[f"busy:{id(bm)}"] = (
                    f"bitmap {name} on {here} is busy ({why}) but no job holds it",
                    {"name": bm.name, "owner": here},
                )
            elif bm.name is None and not is_held:
                out[f"leak:{id(bm)}"] = (
                    f"an internal (anonymous) bitmap is left on {here} with no job using it",
                    {"owner": here, "granularity": bm.granularity},
                )


def _job_nodes(kind: Any) -> list[tuple[str, BlockNode]]:
    """(role, node) for every node a job kind refers to by attribute."""
    out: list[tuple[str, BlockNode]] = []
    for attr, value in sorted(vars(kind).items()):
        if isinstance(value, BlockNode):
            out.append((attr, value))
        elif attr == "nodes" and isinstance(value, list):
            out.extend(("blocked node", n) for n in value if isinstance(n, BlockNode))
    return out


def _job_bitmaps(kind: Any) -> list[DirtyBitmap]:
    out: list[DirtyBitmap] = []
    for value in vars(kind).values():
        if isinstance(value, DirtyBitmap):
            out.append(value)
            if value.successor is not None:
                out.append(value.successor)
    return out
