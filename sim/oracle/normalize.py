"""Normal forms shared by the real-QEMU runner and the simulator's replay.

Theory of operation: a run on real QEMU and a replay on the simulator must be
comparable byte for byte where QEMU is deterministic, and nowhere else.  Three
things of QEMU's output are not: the scratch folder the runner made (cut out of
every string, leaving bare file names), the node names QEMU invents
(``#block123``, written ``#auto``, see `bdrv_assign_node_name` in QEMU 7.2
``block.c``), and event timestamps (dropped).  Everything else is kept exactly,
key order included, so a recorded trace can be written back unchanged.

All functions here are pure: they take JSON values and return new ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sim.compare import differences as differences
from sim.compare import first_difference as first_difference

AUTO = "#auto"
"""How an invented node name is written in traces (trace-format.md)."""

_INVENTED = re.compile(r"#block\d+")
FINAL_KEYS = ("nodes", "backends", "jobs", "violations", "events")
NODE_KEYS = ("node-name", "driver", "backing", "file", "dirty-bitmaps")
BITMAP_KEYS = ("name", "granularity", "count", "recording", "busy", "persistent", "sha256")


def is_invented(name: object) -> bool:
    """True for a node name QEMU made up (``#blockNNN``) or its written form ``#auto``."""
    return isinstance(name, str) and (name == AUTO or _INVENTED.fullmatch(name) is not None)


def names_equal(a: object, b: object) -> bool:
    """Node-name equality where any invented name equals any other (and ``#auto``)."""
    return a == b or (is_invented(a) and is_invented(b))


def scrub(value: Any, scratch_dirs: Sequence[str] = ()) -> Any:
    """Return `value` with every string cut back to bare file names and ``#auto`` names.

    `scratch_dirs` are absolute folder paths (without a trailing slash) to cut
    out wherever they occur, e.g. ``/tmp/x/ov0.qcow2`` -> ``ov0.qcow2``, also
    inside ``json:{...}`` file names.  Dict key order is kept.
    """
    prefixes = tuple(d.rstrip("/") + "/" for d in scratch_dirs if d)
    return _scrub(value, prefixes)


def _scrub(value: Any, prefixes: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for prefix in prefixes:
            value = value.replace(prefix, "")
        return _INVENTED.sub(AUTO, value)
    if isinstance(value, Mapping):
        return {k: _scrub(v, prefixes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, prefixes) for v in value]
    return value


def normalize_response(
    reply: Mapping[str, Any], scratch_dirs: Sequence[str] = ()
) -> dict[str, Any]:
    """A QMP reply as traces record it: ``{"return": ...}`` or ``{"error": {class, desc}}``.

    The transport `id` is dropped; errors keep only `class` and `desc`.
    """
    if "error" in reply:
        err = reply["error"]
        out: dict[str, Any] = {"error": {"class": err.get("class"), "desc": err.get("desc")}}
    else:
        out = {"return": reply.get("return")}
    return dict(scrub(out, scratch_dirs))


def normalize_event(msg: Mapping[str, Any], scratch_dirs: Sequence[str] = ()) -> dict[str, Any]:
    """An event as traces record it: ``{"event", "data"}`` without the timestamp."""
    return {"event": msg["event"], "data": scrub(msg.get("data", {}), scratch_dirs)}


def event_matches(event: Mapping[str, Any], name: str, data: Mapping[str, Any]) -> bool:
    """The `wait` filter: same name, and `data` holds every given key with an equal value."""
    if event.get("event") != name:
        return False
    have = event.get("data", {})
    return all(k in have and have[k] == v for k, v in data.items())


# --- the final state -------------------------------------------------------------------


def build_final_state(
    named_nodes: Iterable[Mapping[str, Any]],
    graph: Mapping[str, Any],
    blocks: Iterable[Mapping[str, Any]],
    jobs: list[Any],
    sha256: Mapping[tuple[str, str], str | None],
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ``final-expect`` STATE from the raw returns of QEMU's queries.

    `named_nodes` is ``query-named-block-nodes {"flat": true}``, `graph` is
    ``x-debug-query-block-graph`` (QEMU 7.2 shows `backing`/`file` children only
    there), `blocks` is ``query-block``, `jobs` is ``query-jobs``, `sha256` maps
    (node-name, bitmap name) to ``x-debug-block-dirty-bitmap-sha256``.  Names
    are left raw; pass the result through `scrub`.
    """
    children = _graph_children(graph)
    nodes = []
    for info in named_nodes:
        node_name = info["node-name"]
        kids = children.get(node_name, {})
        bitmaps = [_bitmap(node_name, b, sha256) for b in info.get("dirty-bitmaps", [])]
        nodes.append(
            {
                "node-name": node_name,
                "driver": info.get("drv"),
                "backing": kids.get("backing"),
                "file": kids.get("file"),
                "dirty-bitmaps": bitmaps,
            }
        )
    backends = [
        {"device": b["device"], "node-name": b.get("inserted", {}).get("node-name")} for b in blocks
    ]
    return {"nodes": nodes, "backends": backends, "jobs": jobs, "violations": [], "events": events}


def _graph_children(graph: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """node-name -> {"backing": child node-name, "file": child node-name}."""
    names = {n["id"]: n["name"] for n in graph.get("nodes", []) if n.get("type") == "block-driver"}
    out: dict[str, dict[str, str]] = {}
    for edge in graph.get("edges", []):
        role = edge.get("name")
        if role in ("backing", "file") and edge["parent"] in names and edge["child"] in names:
            out.setdefault(names[edge["parent"]], {})[role] = names[edge["child"]]
    return out


def _bitmap(
    node_name: str, info: Mapping[str, Any], sha256: Mapping[tuple[str, str], str | None]
) -> dict[str, Any]:
    # Internal bitmaps (a backup's successor, a mirror's dirty bitmap) have no
    # name in query-named-block-nodes and cannot be hashed by name.
    name = info.get("name")
    return {
        "name": name,
        "granularity": info.get("granularity"),
        "count": info.get("count"),
        "recording": info.get("recording"),
        "busy": info.get("busy"),
        "persistent": info.get("persistent"),
        "sha256": sha256.get((node_name, name)) if name is not None else None,
    }


def normalize_final(state: Mapping[str, Any]) -> dict[str, Any]:
    """A final state in canonical form, whoever produced it (QEMU or the simulator).

    Keys in the order of ``final-expect`` lines (nodes, backends, jobs,
    violations, events; extra keys after them), node and bitmap keys in
    recorded order, invented node names as ``#auto``.  `events` is kept only
    if present.
    """
    out: dict[str, Any] = {}
    for key in FINAL_KEYS:
        if key in state:
            out[key] = state[key]
    if "nodes" in out:
        out["nodes"] = [_ordered_node(n) for n in out["nodes"]]
    for key, value in state.items():
        out.setdefault(key, value)
    return dict(scrub(out))


def _ordered_node(node: Mapping[str, Any]) -> dict[str, Any]:
    out = _ordered(node, NODE_KEYS)
    if isinstance(out.get("dirty-bitmaps"), list):
        out["dirty-bitmaps"] = [_ordered(b, BITMAP_KEYS) for b in out["dirty-bitmaps"]]
    return out


def _ordered(obj: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {k: obj[k] for k in keys if k in obj}
    out.update((k, v) for k, v in obj.items() if k not in out)
    return out


# --- comparison ------------------------------------------------------------------------
# `first_difference` and `differences` live in sim.compare (one home for the
# simulator's replay and the oracle); re-exported here for the oracle's users.


def matches(expected: Any, actual: Any) -> bool:
    """True when `actual` equals `expected` up to invented node names (see `first_difference`)."""
    return first_difference(expected, actual) is None
