"""query-* commands and the final-state snapshot a replay prints.

Output shapes follow QEMU 7.2 (qapi/block-core.json BlockDeviceInfo,
BlockDirtyInfo, BlockInfo; qapi/job.json JobInfo).  Lists are in QEMU's
orders: nodes newest first, bitmaps newest first, jobs newest first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.model.bitmap import DirtyBitmap
from sim.model.graph import BlockBackend, BlockGraph, BlockNode
from sim.qmp.dispatch import command

if TYPE_CHECKING:
    from sim.engine.machine import Machine

QEMU_VERSION = {
    "qemu": {"micro": 22, "minor": 2, "major": 7},
    "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
}


def dirty_info(bm: DirtyBitmap) -> dict[str, Any]:
    """BlockDirtyInfo as query-block / query-named-block-nodes print it."""
    info: dict[str, Any] = {}
    if bm.name is not None:
        info["name"] = bm.name
    info.update(
        {
            "recording": bm.recording,
            "persistent": bm.persistent,
            "busy": bm.busy,
            "count": bm.count_bytes(),
            "granularity": bm.granularity,
        }
    )
    if bm.inconsistent:
        info["inconsistent"] = True
    return info


def final_bitmap(bm: DirtyBitmap) -> dict[str, Any]:
    """A bitmap in the final-state shape of the trace spec (with sha256)."""
    out: dict[str, Any] = {
        "name": bm.name,
        "granularity": bm.granularity,
        "count": bm.count_bytes(),
        "recording": bm.recording,
        "busy": bm.busy,
        "persistent": bm.persistent,
        "sha256": bm.sha256() if bm.name is not None else None,
    }
    if bm.inconsistent:
        out["inconsistent"] = True
    return out


def shown_root(bb: BlockBackend) -> BlockNode | None:
    """The node query-block shows as `inserted`: implicit job filters skipped."""
    node = bb.root
    while node is not None and node.implicit:
        node = node.filtered_child()
    return node


def _image_info(graph: BlockGraph, node: BlockNode) -> dict[str, Any]:
    info: dict[str, Any] = {
        "virtual-size": node.size_bytes,
        "filename": node.image.filename if node.image else node.node_name,
        "format": node.driver,
        "dirty-flag": False,
    }
    if node.driver == "qcow2":
        info["cluster-size"] = node.cluster_size
    chain = graph.backing_chain(node)
    if len(chain) > 1 and chain[1].image is not None:
        info["backing-filename"] = chain[1].image.filename
        info["full-backing-filename"] = chain[1].image.filename
    return info


def device_info(graph: BlockGraph, node: BlockNode) -> dict[str, Any]:
    """BlockDeviceInfo for one node."""
    chain = graph.backing_chain(node)
    info: dict[str, Any] = {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": _image_info(graph, node),
        "iops_wr": 0,
        "ro": node.read_only,
        "node-name": node.node_name,
        "backing_file_depth": len(chain) - 1,
        "drv": node.driver,
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": node.image.filename if node.image else node.node_name,
    }
    if len(chain) > 1 and chain[1].image is not None:
        info["backing_file"] = chain[1].image.filename
    if node.bitmaps:
        info["dirty-bitmaps"] = [dirty_info(b) for b in node.bitmaps]
    return info


@command("query-version")
def _query_version(m: Machine, a: dict[str, Any]) -> dict[str, Any]:
    return QEMU_VERSION


@command("query-named-block-nodes")
def _query_named_block_nodes(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    graph = m.state.graph
    return [device_info(graph, n) for n in reversed(graph.nodes)]


@command("query-block")
def _query_block(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    graph = m.state.graph
    out = []
    for bb in graph.backends.values():
        entry: dict[str, Any] = {
            "io-status": "ok",
            "device": bb.name,
            "locked": False,
            "removable": True,
            "type": "unknown",
        }
        node = shown_root(bb)
        if node is not None:
            entry["inserted"] = device_info(graph, node)
            if bb.bitmaps:
                entry["inserted"].setdefault("dirty-bitmaps", [])
                entry["inserted"]["dirty-bitmaps"] = [dirty_info(b) for b in bb.bitmaps] + entry[
                    "inserted"
                ]["dirty-bitmaps"]
        else:
            entry["tray_open"] = False
        out.append(entry)
    return out


@command("query-jobs")
def _query_jobs(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    return [j.query_jobs_entry() for j in reversed(m.state.jobs)]


@command("query-block-jobs")
def _query_block_jobs(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    return [j.query_block_jobs_entry() for j in reversed(m.state.jobs)]


@command("qmp_capabilities")
def _qmp_capabilities(m: Machine, a: dict[str, Any]) -> None:
    from sim.errors import QMPError

    # A trace runs after negotiation, as on the real monitor.
    raise QMPError(
        "Capabilities negotiation is already complete, command ignored", "CommandNotFound"
    )


def final_state(m: Machine) -> dict[str, Any]:
    """The `final` object of the trace spec (violations and events added by the caller)."""
    graph = m.state.graph
    nodes = []
    for n in reversed(graph.nodes):
        nodes.append(
            {
                "node-name": n.node_name,
                "driver": n.driver,
                "backing": n.backing.node_name if n.backing is not None else None,
                "file": n.file.node_name if n.file is not None else None,
                "dirty-bitmaps": [final_bitmap(b) for b in n.bitmaps],
            }
        )
    backends = []
    for bb in graph.backends.values():
        root = shown_root(bb)
        entry: dict[str, Any] = {
            "device": bb.name,
            "node-name": root.node_name if root is not None else None,
        }
        if bb.bitmaps:
            entry["dirty-bitmaps"] = [final_bitmap(b) for b in bb.bitmaps]
        backends.append(entry)
    jobs = [j.query_jobs_entry() for j in reversed(m.state.jobs)]
    return {"nodes": nodes, "backends": backends, "jobs": jobs}
