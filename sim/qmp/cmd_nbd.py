"""The NBD server and block exports over QMP (qapi/block-export.json, QEMU 7.2).

`nbd-server-start`/`nbd-server-stop` (blockdev-nbd.c) and `block-export-add`
(type nbd), `block-export-del` and `query-block-exports`
(block/export/export.c, nbd/server.c), with QEMU 7.2's checks in QEMU's order
and its messages, verified on the 7.2 binary:

- block-export-add: the id must be well formed (``Invalid block export
  id``) and free; the node is looked up by node-name only; an `iothread`
  cannot exist under ``-M none``; then the NBD server must run, the export
  name (default: the node-name) and description are at most 4096 bytes and
  the name unused; the export unshares `resize`, so a node that a qcow2
  node uses as its `file` child cannot be exported; each bitmap is looked up
  (a bare name on the node, then down its filter/backing chain; a
  ``{"node", "name"}`` pair anywhere), an enabled bitmap found by bare name
  on a writable node refuses a read-only export, and a busy or inconsistent
  bitmap refuses any; only then are all of them made busy;
- block-export-del: ``Export 'X' is not found``; an export with NBD clients
  connected refuses mode `safe`; deleting emits BLOCK_EXPORT_DELETED;
- nbd-server-stop deletes every NBD export, oldest first, each with its
  event, then closes the socket.

Other export types (vhost-user-blk, fuse, vduse-blk) are refused as not
modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.model import bitmap_ops
from sim.model.bitmap import DirtyBitmap
from sim.model.exports import BlockExport, NbdServer
from sim.model.graph import BlockBackend, BlockNode, id_wellformed
from sim.qmp.dispatch import command
from sim.qmp.schema import (
    BOOL,
    INT,
    STR,
    UINT32,
    Alternate,
    Enum,
    List,
    Struct,
    Union,
    members,
)

if TYPE_CHECKING:
    from sim.engine.machine import Machine

NBD_MAX_STRING_SIZE = 4096

_INET = members(
    ("host", STR), ("port", STR), ("*numeric", BOOL), ("*to", UINT32), ("*ipv4", BOOL),
    ("*ipv6", BOOL), ("*keep-alive", BOOL), ("*mptcp", BOOL),
)  # fmt: skip
_UNIX = members(("path", STR), ("*abstract", BOOL), ("*tight", BOOL))
_VSOCK = members(("cid", STR), ("port", STR))
_FD = members(("str", STR))
_ADDR_TYPE = Enum("SocketAddressType", ("inet", "unix", "vsock", "fd"))
SOCKET_ADDRESS_LEGACY = Union(
    "SocketAddressLegacy",
    members(("type", _ADDR_TYPE)),
    "type",
    {
        "inet": members(("data", Struct("InetSocketAddressWrapper", _INET))),
        "unix": members(("data", Struct("UnixSocketAddressWrapper", _UNIX))),
        "vsock": members(("data", Struct("VsockSocketAddressWrapper", _VSOCK))),
        "fd": members(("data", Struct("StringWrapper", _FD))),
    },
)
_BITMAP_OR_STR = Alternate(
    "BlockDirtyBitmapOrStr",
    object_branch=Struct("BlockDirtyBitmap", members(("node", STR), ("name", STR))),
    string_branch=STR,
)
_EXPORT_TYPE = Enum("BlockExportType", ("nbd", "vhost-user-blk", "fuse", "vduse-blk"))
BLOCK_EXPORT_OPTIONS = Union(
    "BlockExportOptions",
    members(
        ("type", _EXPORT_TYPE), ("id", STR), ("*fixed-iothread", BOOL), ("*iothread", STR),
        ("node-name", STR), ("*writable", BOOL), ("*writethrough", BOOL),
    ),
    "type",
    {
        "nbd": members(
            ("*name", STR), ("*description", STR), ("*bitmaps", List(_BITMAP_OR_STR)),
            ("*allocation-depth", BOOL),
        ),
        "vhost-user-blk": None,
        "fuse": None,
        "vduse-blk": None,
    },
)  # fmt: skip


@command(
    "nbd-server-start",
    members(
        ("addr", SOCKET_ADDRESS_LEGACY), ("*tls-creds", STR), ("*tls-authz", STR),
        ("*max-connections", UINT32),
    ),
)  # fmt: skip
def _nbd_server_start(m: Machine, a: dict[str, Any]) -> None:
    table = m.state.exports
    if table.server is not None:
        raise QMPError("NBD server already running")
    addr = a["addr"]
    kind = addr["type"]
    if kind == "fd":
        raise QMPError(f"File descriptor named '{addr['data']['str']}' has not been found")
    if kind == "vsock":
        raise QMPError("Failed to bind socket: Cannot assign requested address")
    if table.listener is not None:
        table.listener.start(addr)
    if "tls-creds" in a:
        if table.listener is not None:
            table.listener.stop()
        raise QMPError(f"No TLS credentials with id '{a['tls-creds']}'")
    table.server = NbdServer(addr, a.get("max-connections", 0))


@command("nbd-server-stop", members())
def _nbd_server_stop(m: Machine, a: dict[str, Any]) -> None:
    table = m.state.exports
    if table.server is None:
        raise QMPError("NBD server not running")
    for exp in reversed([e for e in table.exports if e.type == "nbd"]):
        _delete(m, exp)
    if table.listener is not None:
        table.listener.stop()
    table.server = None


@command("block-export-add", BLOCK_EXPORT_OPTIONS)
def _block_export_add(m: Machine, a: dict[str, Any]) -> None:
    table = m.state.exports
    graph = m.state.graph
    export_id = a["id"]
    if not id_wellformed(export_id):
        raise QMPError("Invalid block export id")
    if table.find(export_id) is not None:
        raise QMPError(f"Block export id '{export_id}' is already in use")
    node = graph.lookup_device_or_node(None, a["node-name"])
    if "iothread" in a:
        raise QMPError(f'iothread "{a["iothread"]}" not found')
    writable = bool(a.get("writable", False))
    if table.server is None:
        raise QMPError("NBD server not running")
    name = a.get("name", a["node-name"])
    if len(name.encode()) > NBD_MAX_STRING_SIZE:
        raise QMPError(f"export name '{name}' too long")
    description = a.get("description")
    if description is not None and len(description.encode()) > NBD_MAX_STRING_SIZE:
        raise QMPError(f"description '{description}' too long")
    if table.find_nbd_name(name) is not None:
        raise QMPError(f"NBD server already has export named '{name}'")
    _check_resize_unshared(m, node)
    found = [_export_bitmap(m, node, spec, writable) for spec in a.get("bitmaps", [])]
    blk = BlockBackend("", node)
    table.add(
        graph,
        BlockExport(
            export_id, "nbd", blk, name, description, writable, found,
            bool(a.get("allocation-depth", False)),
        ),
    )  # fmt: skip


def _check_resize_unshared(m: Machine, node: BlockNode) -> None:
    """The export unshares `resize`; a qcow2 parent needs it on its file child."""
    graph = m.state.graph
    for parent, role in graph.parents(node):
        if role == "file" and parent.driver == "qcow2" and not parent.read_only:
            raise QMPError(
                f"Permission conflict on node '{node.node_name}': permissions 'resize' are "
                f"both required by node '{parent.node_name}' (uses node '{node.node_name}' "
                "as 'file' child) and unshared by an unnamed block device (uses node "
                f"'{node.node_name}' as 'root' child)."
            )


def _export_bitmap(m: Machine, node: BlockNode, spec: Any, writable: bool) -> DirtyBitmap:
    state = m.state
    if isinstance(spec, str):
        holder: BlockNode | None = node
        bm = None
        while holder is not None:
            bm = holder.find_bitmap(spec)
            if bm is not None:
                break
            holder = holder.filtered_child() if holder.is_filter else holder.backing
        if bm is None or holder is None:
            raise QMPError(f"Bitmap '{spec}' is not found")
        if not writable and not holder.read_only and bm.enabled:
            raise QMPError(f"Enabled bitmap '{spec}' incompatible with readonly export")
    else:
        _, bm = bitmap_ops.lookup(state.graph, state.policy, spec["node"], spec["name"])
    bitmap_ops.check_bitmap(bm, bitmap_ops.ALLOW_RO)
    return bm


@command(
    "block-export-del",
    members(("id", STR), ("*mode", Enum("BlockExportRemoveMode", ("safe", "hard")))),
)
def _block_export_del(m: Machine, a: dict[str, Any]) -> None:
    table = m.state.exports
    exp = table.find(a["id"])
    if exp is None:
        raise QMPError(f"Export '{a['id']}' is not found")
    if exp.shutting_down:
        raise QMPError(f"Export '{a['id']}' is already shutting down")
    if a.get("mode", "safe") == "safe" and exp.clients > 0:
        raise QMPError(f"export '{exp.id}' still in use")
    _delete(m, exp)


def _delete(m: Machine, exp: BlockExport) -> None:
    table = m.state.exports
    exp.shutting_down = True
    if exp.clients and table.listener is not None:
        table.listener.disconnect(exp.id)
    table.remove(m.state.graph, exp)
    m.emit("BLOCK_EXPORT_DELETED", {"id": exp.id})


@command("query-block-exports", members())
def _query_block_exports(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    return [exp.query_entry() for exp in m.state.exports.exports]


__all__ = ["BLOCK_EXPORT_OPTIONS", "INT", "SOCKET_ADDRESS_LEGACY"]
