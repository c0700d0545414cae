"""query-* commands and the final-state snapshot a replay prints.

Output shapes follow QEMU 7.2: block/qapi.c `bdrv_block_device_info` (BlockDeviceInfo),
`bdrv_query_image_info` (ImageInfo), `bdrv_query_info` (BlockInfo) and
qapi/block-core.json BlockDirtyInfo; qapi/job.json JobInfo.  Lists are in QEMU's
orders: nodes newest first, bitmaps newest first, jobs newest first.

Theory of operation.  Most of a BlockDeviceInfo is fixed for the drives a trace
can make (no throttling, writeback cache, no encryption).  What varies:

* the `image` chain.  Without `flat`, `backing-image` nests the image info of
  `bdrv_filter_or_cow_child()`: a qcow2 node's backing child, a filter's filtered
  child (copy-before-write and copy-on-read: `file`; mirror_top and commit_top:
  `backing`).  `backing_file_depth` counts those levels, so it is 0 with `flat`.
  query-block skips implicit filters (unnamed mirror_top, commit_top,
  copy-on-read) below every level, query-named-block-nodes does not.
* `backing_file` / `backing-filename*`: the backing file named in the image
  header (`bs->backing_file`), which only blockdev-snapshot-sync and job
  targets created with a backing write; a filter has none.
* sizes read back from the host file: `virtual-size` of a `file` node is the
  file length rounded up to 512 bytes (`bdrv_getlength` counts sectors) and
  `actual-size` is `st_blocks * 512`.  `sim.model.host_file` derives both from what QEMU
  writes; see its docstring for the layout and its limits.
* `format-specific` of qcow2, whose `bitmaps` list the persistent bitmaps stored
  in the image header: they are written when the node is reopened read-only
  (a snapshot on top of it), `qcow2_store_persistent_dirty_bitmaps`.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sim.errors import QMPError
from sim.model import drain, perms
from sim.model.bitmap import DirtyBitmap
from sim.model.graph import BlockBackend, BlockGraph, BlockNode, Image
from sim.model.host_file import host_file, stored_bitmaps
from sim.model.job_backup import BackupKind
from sim.model.job_stream import StreamKind
from sim.qmp.cmd_blockdev import NULL_CO_DEFAULT_SIZE
from sim.qmp.dispatch import command, command_table
from sim.qmp.schema import BOOL, members, qdict_order

if TYPE_CHECKING:
    from sim.engine.machine import Machine

QEMU_VERSION = {
    "qemu": {"micro": 22, "minor": 2, "major": 7},
    "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
}


# -- BlockDeviceInfo and ImageInfo ---------------------------------------------------------

_FIXED_DEVICE_INFO: dict[str, Any] = {
    "iops_rd": 0,
    "detect_zeroes": "off",
    "iops_wr": 0,
    "iops": 0,
    "bps_wr": 0,
    "write_threshold": 0,
    "encrypted": False,
    "bps": 0,
    "bps_rd": 0,
}
_QCOW2_SPECIFIC: dict[str, Any] = {
    "compat": "1.1",
    "compression-type": "zlib",
    "lazy-refcounts": False,
    "refcount-bits": 16,
    "corrupt": False,
    "extended-l2": False,
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
    return skip_implicit(node) if node is not None else None


def skip_implicit(node: BlockNode) -> BlockNode:
    """bdrv_skip_implicit_filters."""
    while node.implicit:
        child = node.filtered_child()
        if child is None:
            break
        node = child
    return node


def filter_or_cow_child(node: BlockNode) -> BlockNode | None:
    """bdrv_filter_or_cow_bs: a filter's filtered child, a qcow2 node's backing child."""
    if node.is_filter:
        return node.filtered_child()
    return node.backing if node.driver == "qcow2" else None


def _unfiltered(node: BlockNode) -> BlockNode:
    """bdrv_skip_filters: the first node below `node` that is not a filter."""
    while node.is_filter and node.filtered_child() is not None:
        child = node.filtered_child()
        assert child is not None
        node = child
    return node


def node_image(graph: BlockGraph, node: BlockNode) -> Image | None:
    """The image file under a node: its own (a protocol node opened with its format
    node links the image), or its format parent's."""
    if node.image is not None:
        return node.image
    for parent, role in graph.parents(node):
        if role == "file" and parent.is_format and parent.image is not None:
            return parent.image
    return None


_T = TypeVar("_T")
_names = threading.local()  # `memo`: per-node answers of the outermost name computation


def _once_per_name(
    fn: Callable[[BlockGraph, BlockNode], _T],
) -> Callable[[BlockGraph, BlockNode], _T]:
    """Answer `fn` once per node while one file name is worked out: node_filename,
    _open_options and _backing_overridden call each other down the backing chain, and
    the graph does not change meanwhile (without this, json:{...} names of a deep chain
    cost exponential time)."""

    @functools.wraps(fn)
    def once(graph: BlockGraph, node: BlockNode) -> _T:
        memo: dict[tuple[str, int], Any] | None = getattr(_names, "memo", None)
        outermost = memo is None
        if memo is None:
            memo = _names.memo = {}
        try:
            key = (fn.__name__, id(node))
            if key not in memo:
                memo[key] = fn(graph, node)
            value: _T = memo[key]
            return value
        finally:
            if outermost:
                _names.memo = None

    return once


@_once_per_name
def node_filename(graph: BlockGraph, node: BlockNode) -> str:
    """bs->filename, as block.c bdrv_refresh_filename makes it.

    An image node shows its file; an implicit filter, or one with its own
    refresh_filename (mirror_top, commit_top, copy-before-write), its child's;
    a named copy-on-read filter has neither and shows its options as json.
    """
    if node.driver == "copy-on-read" and not node.implicit and node.file is not None:
        options = {"driver": node.driver, "file": _open_options(graph, node.file)}
        return "json:" + json.dumps(options, sort_keys=True)
    if node.driver in ("throttle", "blkdebug") and node.file is not None:
        return "json:" + _qdict_json(_open_options(graph, node))
    if node.is_format and node.file is not None and node.file.driver == "blkdebug":
        return "json:" + _qdict_json(_open_options(graph, node))
    if node.is_format and node.file is not None and node.file.is_filter:
        # bdrv_refresh_filename takes a format node's name from its file child only
        # when that child is a protocol node: a filter there (a stream's copy-on-read
        # filter, a backup's copy-before-write filter on the protocol node) makes it json
        return "json:" + json.dumps(_open_options(graph, node), sort_keys=True)
    if node.driver == "snapshot-access" and node.file is not None:
        return node_filename(graph, node.file)  # snapshot_access_refresh_filename
    node = _unfiltered(node)
    if node.raw_options and node.file is not None:  # raw's strong options: offset, size
        return "json:" + _qdict_json(_open_options(graph, node))
    if _over_format(node):
        # a format node over another format node: opening its file name would not
        # give this tree (bdrv_refresh_filename takes a child's name only from a
        # protocol node)
        return "json:" + json.dumps(_open_options(graph, node), sort_keys=True)
    image = node_image(graph, node)
    if image is not None:
        if _backing_overridden(graph, node):
            return "json:" + json.dumps(_open_options(graph, node), sort_keys=True)
        return image.filename
    if node.driver == "null-co":
        return _null_co_filename(node)
    if node.driver == "raw" and node.file is not None:
        # raw adds nothing to its child's name, unless that is json or the node has its
        # own strong options (offset, size): then its own options
        below = node_filename(graph, node.file)
        if not below.startswith("json:"):
            return below
        return "json:" + json.dumps(_open_options(graph, node), sort_keys=True)
    return node.node_name


def _over_format(node: BlockNode) -> bool:
    """A format node whose file child is a format node too (a snapshot of its protocol
    node put a qcow2 overlay there): its bs->filename is json:{...}."""
    return node.is_format and node.file is not None and _unfiltered(node.file).is_format


@_once_per_name
def _backing_overridden(graph: BlockGraph, node: BlockNode) -> bool:
    """bdrv_backing_overridden: a qcow2 node whose backing child is not the file its
    header names (or that has none while the header names one), e.g. an overlay put on
    a node by blockdev-snapshot, or added with `backing: null`.  Its file name cannot
    say how to open it, so bdrv_refresh_filename makes it json:{...}."""
    memo = _names.memo  # answers for nodes further down, from this same computation
    chain: list[BlockNode] = []  # the qcow2 image nodes down to the first one answered
    cur: BlockNode | None = node
    while cur is not None and cur.driver == "qcow2" and cur.image is not None:
        if cur is not node and ("_backing_overridden", id(cur)) in memo:
            break
        chain.append(cur)
        cur = _unfiltered(cur.backing) if cur.backing is not None else None
        if len(chain) > len(graph.nodes):  # a cycle (a broken graph): stop
            break
    overridden = False
    for n in reversed(chain):  # bottom-up: each name below is answered already
        header = n.image.backing_file if n.image is not None else None
        if n.backing is None:
            overridden = header is not None
        else:
            # the name a snapshot would write for the backing child (json:{...} when
            # that child is overridden itself or sits over a format node or a filter)
            name = node_filename(graph, _unfiltered(n.backing))
            overridden = not _same_backing_name(header, name)
        memo["_backing_overridden", id(n)] = overridden
    return overridden


def _same_backing_name(header: str | None, name: str) -> bool:
    """The header's backing name still says how the backing child was opened: the same
    name, or the same json:{...} options in another key order (bs->auto_backing_file
    is the name of the backing the header opened, written by QEMU with sorted keys)."""
    if header == name:
        return True
    if header is None or not (header.startswith("json:") and name.startswith("json:")):
        return False
    try:
        return bool(json.loads(header[5:]) == json.loads(name[5:]))
    except ValueError:
        return False


@_once_per_name
def _open_options(graph: BlockGraph, node: BlockNode) -> dict[str, Any]:
    """bs->full_open_options: the driver, its strong options, its file child and, when
    overridden, its backing child."""
    if node.driver == "file":
        return {"driver": "file", "filename": node_filename(graph, node)}
    below = node.filtered_child() if node.implicit else None
    if below is not None:  # an implicit node copies everything from its one child
        return _open_options(graph, below)
    if node.driver == "copy-before-write" and node.file is not None and node.target is not None:
        return {
            "driver": node.driver,
            "file": _open_options(graph, node.file),
            "target": _open_options(graph, node.target),
        }
    if node.is_format and node.file is not None:
        options: dict[str, Any] = {"driver": node.driver, "file": _open_options(graph, node.file)}
        options.update(node.raw_options)
        if _backing_overridden(graph, node):
            below = _unfiltered(node.backing) if node.backing is not None else None
            options["backing"] = _open_options(graph, below) if below is not None else None
        return options
    if node.driver == "null-co" and _null_co_has_options(node):
        return {"driver": "null-co", "size": node.size_bytes}
    if node.driver == "blkdebug" and node.file is not None:
        # QEMU copies these options once more than the other drivers' (within a QDict
        # bucket the newest key comes first): inserted here in the reverse order
        opts: dict[str, Any] = {"driver": "blkdebug", "image": _open_options(graph, node.file)}
        opts.update(reversed(node.blkdebug_options.items()))
        return opts
    if node.driver == "throttle" and node.file is not None:
        return {
            "throttle-group": node.throttle_group.name,
            "driver": "throttle",
            "file": _open_options(graph, node.file),
        }
    return {"driver": node.driver}


def _qdict_json(value: Any) -> str:
    """What qobject_to_json writes for a QDict: members in QDict iteration order."""
    if isinstance(value, dict):
        inner = ", ".join(
            f"{json.dumps(k)}: {_qdict_json(value[k])}" for k in qdict_order(list(value))
        )
        return "{" + inner + "}"
    return json.dumps(value)


def _null_co_has_options(node: BlockNode) -> bool:
    """An option null_refresh_filename does not ignore: `size`, given or not default."""
    return node.size_option or node.size_bytes != NULL_CO_DEFAULT_SIZE


def _null_co_filename(node: BlockNode) -> str:
    """null_refresh_filename: `null-co://` with no option but its defaults, else json
    (the simulator keeps only `size`)."""
    if not _null_co_has_options(node):
        return "null-co://"
    return "json:" + json.dumps({"driver": "null-co", "size": node.size_bytes}, sort_keys=True)


def image_info(graph: BlockGraph, node: BlockNode) -> dict[str, Any]:
    """ImageInfo of one node, without `backing-image` (bdrv_query_image_info)."""
    info: dict[str, Any] = {
        "virtual-size": _virtual_size(graph, node),
        "filename": node_filename(graph, node),
        "format": node.driver,
    }
    info.update(_get_info(node))
    actual = allocated_file_size(graph, node)
    if actual is not None:
        info["actual-size"] = actual
    if node.driver == "qcow2":
        info["format-specific"] = {"type": "qcow2", "data": _qcow2_specific(node)}
    backing_file = _header_backing_file(graph, node)
    if backing_file is not None:
        info["backing-filename"] = backing_file[0]
        info["full-backing-filename"] = backing_file[0]
        if backing_file[1] is not None:
            info["backing-filename-format"] = backing_file[1]
    return info


def _virtual_size(graph: BlockGraph, node: BlockNode) -> int:
    # a filter is as long as its child (a copy-on-read filter a stream put on a
    # protocol node is as long as the host file); a protocol node (blkdebug passes its
    # file's length on) is as long as its file, as is raw over a qcow2 image's file
    # (the disk is the host bytes)
    child = node.filtered_child() if node.is_filter and node.driver != "blkdebug" else None
    if child is not None:
        return _virtual_size(graph, child)
    protocol = node.driver in ("file", "blkdebug") or node.host_bytes_of
    image = node_image(graph, node) if protocol else None
    if image is not None:
        length = host_file(graph, image).length_bytes
        return -(-length // 512) * 512  # bdrv_getlength: whole sectors
    return node.size_bytes


def _get_info(node: BlockNode) -> dict[str, Any]:
    """What bdrv_get_info adds: `cluster-size` (qcow2) and `dirty-flag`; filters pass
    the call to their child, null-co has no such callback."""
    node = _unfiltered(node)
    if node.driver == "raw" and node.file is not None:
        below = _unfiltered(node.file)
        if node.image is None or below.is_format:
            node = below  # raw_get_info asks its child
    if node.driver in ("null-co", "snapshot-access"):  # no bdrv_get_info
        return {}
    if node.driver == "qcow2":
        return {"cluster-size": node.cluster_size, "dirty-flag": False}
    return {"dirty-flag": False}


def allocated_file_size(graph: BlockGraph, node: BlockNode) -> int | None:
    """bdrv_get_allocated_file_size: a filter's child's, a format node's file's, 0 for
    null-co; None (no `actual-size`) when there is no host file to ask (blkdebug has
    no such callback, so neither it nor a format node over it has one)."""
    if node.driver == "blkdebug" or (node.file is not None and node.file.driver == "blkdebug"):
        return None
    node = _unfiltered(node)
    if node.driver == "snapshot-access" and node.file is not None:
        node = _unfiltered(node.file)  # bdrv_sum_allocated_file_size: its data child's
    if node.driver == "raw" and node.file is not None and node.file.driver == "null-co":
        node = node.file  # raw over a null-co: its child's
    if node.driver == "null-co":
        return 0
    if node.driver == "qcow2" and _over_format(node):
        # no callback of its own: bdrv_sum_allocated_file_size asks its file child, the
        # overlay a snapshot of its protocol node put there
        assert node.file is not None
        return allocated_file_size(graph, node.file)
    if node.driver == "file" or (node.is_format and node.file is not None):
        image = node_image(graph, node)
        return host_file(graph, image).allocated_bytes if image is not None else None
    return None


def _qcow2_specific(node: BlockNode) -> dict[str, Any]:
    data = dict(_QCOW2_SPECIFIC)
    stored = stored_bitmaps(node)
    if stored:
        # qcow2_get_bitmap_info_list reads the directory: store order, newest first
        in_use = [] if node.read_only else ["in-use"]
        data["bitmaps"] = [
            {
                "flags": in_use + (["auto"] if bm.enabled else []),
                "name": bm.name,
                "granularity": bm.granularity,
            }
            for bm in stored
        ]
    return data


def _header_backing_file(graph: BlockGraph, node: BlockNode) -> tuple[str, str | None] | None:
    """(file name, format) of the backing file a qcow2 node names (`bs->backing_file`).

    It is the image header's (`Image.backing_file`): a snapshot writes it into
    the new overlay, commit and stream rewrite it (bdrv_change_backing_file);
    blockdev-snapshot and `backing` given to blockdev-add do not, so the header
    may name another file than the backing child (see `_backing_overridden`).  A
    header written with no backing format (blockdev-create without `backing-fmt`,
    `Image.backing_format` "") shows none.
    """
    if node.driver != "qcow2":
        return None
    if node.image is None or node.image.backing_file is None:
        if node.image is not None or node.backing is None:
            return None
        below = _unfiltered(node.backing)
        return node_filename(graph, below), below.driver
    if node.image.backing_format is not None:
        return node.image.backing_file, node.image.backing_format or None
    named = graph.images.get(node.image.backing_file)
    return node.image.backing_file, named.format if named is not None else "qcow2"


def device_info(
    graph: BlockGraph,
    node: BlockNode,
    *,
    flat: bool = False,
    skip_implicit_filters: bool = False,
    detect_zeroes_unmap: bool = False,
) -> dict[str, Any]:
    """BlockDeviceInfo for one node (bdrv_block_device_info).

    Without `flat`, `image` nests the whole filter-or-COW chain below the node
    and `backing_file_depth` counts its levels; query-block passes
    `skip_implicit_filters` (it has a BlockBackend).  `detect_zeroes_unmap`
    marks a node opened with detect-zeroes=unmap (a drive-backup target).
    """
    image = image_info(graph, node)
    depth, level, below = 0, image, node
    while not flat:
        child = filter_or_cow_child(below)
        if child is None:
            break
        if skip_implicit_filters:
            child = skip_implicit(child)
        depth += 1
        level["backing-image"] = image_info(graph, child)
        level, below = level["backing-image"], child
    info: dict[str, Any] = dict(_FIXED_DEVICE_INFO)
    if detect_zeroes_unmap:
        info["detect_zeroes"] = "unmap"
    info.update(
        {
            "image": image,
            "ro": graph.is_read_only(node),
            "node-name": node.node_name,
            "backing_file_depth": depth,
            "drv": node.driver,
            "cache": {"no-flush": False, "direct": False, "writeback": True},
            "file": node_filename(graph, node),
        }
    )
    if node.driver == "qcow2" and node.backing is not None:
        # bdrv_block_device_info names the backing child's file, whatever the header says
        info["backing_file"] = node_filename(graph, node.backing)
    if node.write_threshold:
        info["write_threshold"] = node.write_threshold
    if node.bitmaps:
        info["dirty-bitmaps"] = [dirty_info(b) for b in node.bitmaps]
    return info


def drive_backup_targets(m: Machine) -> list[BlockNode]:
    """Targets drive-backup opened itself: blockdev.c drive_backup_prepare opens
    them with discard=unmap and detect-zeroes=unmap."""
    return [
        j.kind.target
        for j in m.state.jobs
        if isinstance(j.kind, BackupKind) and j.kind.close_target
    ]


def block_info(
    graph: BlockGraph, bb: BlockBackend, unmap_nodes: Sequence[BlockNode] = ()
) -> dict[str, Any]:
    """BlockInfo of one BlockBackend (bdrv_query_info).

    `-drive if=none` attaches no device: no `qdev`, no `tray_open`, and no
    `io-status` (blk_iostatus_is_enabled needs a device model).
    """
    entry: dict[str, Any] = {
        "device": bb.name,
        "locked": False,
        "removable": True,
        "type": "unknown",
    }
    node = shown_root(bb)
    if node is not None:
        unmap = any(n is node for n in unmap_nodes)
        inserted = device_info(graph, node, skip_implicit_filters=True, detect_zeroes_unmap=unmap)
        if bb.bitmaps:  # the bb-attached policy's bitmaps come first
            own = inserted.get("dirty-bitmaps", [])
            inserted["dirty-bitmaps"] = [dirty_info(b) for b in bb.bitmaps] + own
        entry["inserted"] = inserted
    return entry


@command("query-version")
def _query_version(m: Machine, a: dict[str, Any]) -> dict[str, Any]:
    return QEMU_VERSION


@command("query-named-block-nodes")
def _query_named_block_nodes(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    graph = m.state.graph
    if any(isinstance(j.kind, StreamKind) and j.status == "concluded" for j in m.state.jobs):
        m.state.warnings.append(
            "real QEMU 7.2 crashes on query-named-block-nodes while a stream job waits "
            "in concluded (auto-dismiss: false); blocksim answers"
        )
    flat = bool(a.get("flat", False))
    unmap = drive_backup_targets(m)
    return [
        device_info(graph, n, flat=flat, detect_zeroes_unmap=any(n is t for t in unmap))
        for n in reversed(graph.nodes)
    ]


@command("query-block")
def _query_block(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    graph = m.state.graph
    unmap = drive_backup_targets(m)
    return [block_info(graph, bb, unmap) for bb in graph.backends.values()]


@command("query-jobs")
def _query_jobs(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    return [j.query_jobs_entry() for j in reversed(m.state.jobs)]


@command("query-block-jobs")
def _query_block_jobs(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    held = drain.held_jobs(m.state)
    return [
        j.query_block_jobs_entry(drained=any(h is j for h in held))
        for j in reversed(m.state.jobs)
        if j.is_block_job
    ]


@command("query-commands")
def _query_commands(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    # qmp_query_commands lists the command table; blocksim's table is its own
    return [{"name": cmd.name} for cmd in command_table()]


@command("x-debug-query-block-graph")
def _query_block_graph(m: Machine, a: dict[str, Any]) -> dict[str, Any]:
    graph = perms.block_graph(m.state)
    return {"edges": graph["edges"], "nodes": graph["nodes"]}


@command("qmp_capabilities")
def _qmp_capabilities(m: Machine, a: dict[str, Any]) -> None:
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
                # blkdebug names its child `image`, not `file`, in the graph QEMU shows
                "file": n.file.node_name if n.file is not None and n.driver != "blkdebug" else None,
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


# -- query-blockstats ----------------------------------------------------------------------

_STAT_COUNTERS = (
    "rd_bytes", "wr_bytes", "unmap_bytes", "rd_operations", "wr_operations",
    "flush_operations", "unmap_operations", "rd_total_time_ns", "wr_total_time_ns",
    "flush_total_time_ns", "unmap_total_time_ns", "wr_highest_offset", "rd_merged",
    "wr_merged", "unmap_merged", "failed_rd_operations", "failed_wr_operations",
    "failed_flush_operations", "failed_unmap_operations", "invalid_rd_operations",
    "invalid_wr_operations", "invalid_flush_operations", "invalid_unmap_operations",
)  # fmt: skip
_ACCT_PREFIX = {"read": "rd", "write": "wr", "flush": "flush", "unmap": "unmap"}


def _wr_highest_offset(graph: BlockGraph, node: BlockNode) -> int:
    """bs->wr_highest_offset; a protocol node a qcow2 node wrote to: its file's length
    (QEMU appends new clusters and metadata at the end of the file)."""
    highest = node.wr_highest_offset
    if node.host_written:
        image = node_image(graph, node)
        if image is not None:
            highest = max(highest, host_file(graph, image).length_bytes)
    return highest


def _primary_child(node: BlockNode) -> BlockNode | None:
    """bdrv_primary_child, or else the first data or filtered child."""
    if node.is_filter:
        return node.filtered_child()
    return node.file


def _node_stats(graph: BlockGraph, node: BlockNode | None, blk_level: bool) -> dict[str, Any]:
    """bdrv_query_bds_stats: a node's BlockStats (only wr_highest_offset is the node's
    own), with its primary child as `parent` and, at BlockBackend level, its filtered or
    COW child as `backing`."""
    stats: dict[str, Any] = dict.fromkeys(_STAT_COUNTERS, 0)
    stats.update(timed_stats=[], account_invalid=False, account_failed=False)
    out: dict[str, Any] = {"stats": stats}
    if node is None:
        return out
    if blk_level:
        node = skip_implicit(node)
    out["node-name"] = node.node_name
    stats["wr_highest_offset"] = _wr_highest_offset(graph, node)
    if node.driver == "file":
        # file-posix's discard counters; blocksim does not count discards there
        out["driver-specific"] = {
            "driver": "file", "discard-nb-ok": 0, "discard-nb-failed": 0, "discard-bytes-ok": 0,
        }  # fmt: skip
    child = _primary_child(node)
    if child is not None:
        out["parent"] = _node_stats(graph, child, blk_level)
    # at BlockBackend level a filter's filtered child is shown as `backing` too
    below = filter_or_cow_child(node) if blk_level else None
    if below is not None:
        out["backing"] = _node_stats(graph, below, blk_level)
    return out


def _blk_stats(stats: dict[str, Any], bb: BlockBackend, now_ns: int) -> None:
    """bdrv_query_blk_stats: the BlockBackend's accounting over the node's counters."""
    acct = bb.stats
    for kind, prefix in _ACCT_PREFIX.items():
        if kind in ("read", "write", "unmap"):
            stats[f"{prefix}_bytes"] = acct.nr_bytes[kind]
        stats[f"{prefix}_operations"] = acct.nr_ops[kind]
        stats[f"failed_{prefix}_operations"] = acct.failed_ops[kind]
        stats[f"{prefix}_total_time_ns"] = acct.total_time_ns[kind]
    if acct.last_access_ns > 0:
        stats["idle_time_ns"] = now_ns - acct.last_access_ns
    stats["account_invalid"] = acct.account_invalid
    stats["account_failed"] = acct.account_failed


@command("query-blockstats", members(("*query-nodes", BOOL)))
def _query_blockstats(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    graph = m.state.graph
    if a.get("query-nodes", False):
        return [_node_stats(graph, n, False) for n in graph.nodes]
    out = []
    for bb in graph.backends.values():
        entry = _node_stats(graph, bb.root, True)
        _blk_stats(entry["stats"], bb, m.now_ns)
        out.append({"device": bb.name, **entry})
    return out
