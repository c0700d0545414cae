"""A small NBD server for the block exports of a served simulator (asyncio).

Speaks the fixed newstyle handshake with the options real clients use
(NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_EXPORT_NAME, NBD_OPT_LIST,
NBD_OPT_STRUCTURED_REPLY, NBD_OPT_LIST_META_CONTEXT,
NBD_OPT_SET_META_CONTEXT, NBD_OPT_ABORT; anything else, TLS included, is
answered NBD_REP_ERR_UNSUP), then serves read-only transmission: READ,
BLOCK_STATUS, FLUSH, CACHE and DISC; writes are refused with EPERM.

Data is what the model holds: each 512-byte sector reads as the pattern byte
of the write stamp a guest read would see through the export's node.  Meta
contexts: `base:allocation` (qcow2 clusters holding data are DATA, the rest
reads as zeroes and is reported HOLE|ZERO, as QEMU's block-status reports a
qcow2 image; a raw node at 4 KiB file blocks) and `qemu:dirty-bitmap:NAME`
for every exported bitmap (flag 1 = dirty, at the bitmap's granularity).
Exports are looked up in the model at every request, so what a client
reads follows the simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from bitarray.util import intervals

from sim.errors import QMPError
from sim.model.content import chain_extents
from sim.model.io import NO_ACCESS, read_stamps, snapshot_read_error

if TYPE_CHECKING:
    import numpy as np

    from sim.model.cbw import CopyBeforeWrite
    from sim.model.content import Content
    from sim.model.exports import BlockExport
    from sim.model.graph import BlockNode
    from sim.serve.host import SimHost
else:
    from sim.lazy import numpy as np

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = 2**31 + 1, 2**31 + 3, 2**31 + 6
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3
TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_DF = 1, 2, 4, 128
TF_CAN_MULTI_CONN, TF_SEND_CACHE = 256, 1024
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
CMD_FLAG_REQ_ONE = 8
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_BLOCK_STATUS = 0, 1, 5
REPLY_TYPE_ERROR = 2**15 + 1
EPERM, EIO, EINVAL, ENOSPC, ENOTSUP = 1, 5, 22, 28, 95
MAX_OPTION = 1 << 20
MAX_READ = 32 << 20
MAX_EXTENTS = 1 << 16
RAW_BLOCK = 4096


class NbdListener:
    """The NBD side of `blocksim serve`: the model's `Listener` for nbd-server-start."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self._server: asyncio.base_events.Server | None = None
        self._conns: dict[asyncio.StreamWriter, str | None] = {}  # writer -> export id
        self._pending: asyncio.Task[Any] | None = None
        self._path: str | None = None
        self.bound: Any = None

    # -- the model's Listener protocol -------------------------------------------------
    def start(self, addr: dict[str, Any]) -> None:
        data = addr["data"]
        try:
            if addr["type"] == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(data["path"])
                self._path = data["path"]
            else:
                host = data["host"]
                if host not in ("127.0.0.1", "localhost", "::1"):
                    raise QMPError(f"blocksim serve: NBD only on loopback, not on {host!r}")
                family = socket.AF_INET6 if host == "::1" else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, int(data["port"])))
            sock.listen(16)
            sock.setblocking(False)
        except OSError as exc:
            where = f" to {data['path']}" if addr["type"] == "unix" else ""
            raise QMPError(f"Failed to bind socket{where}: {exc.strerror}") from None
        except ValueError:
            raise QMPError(f"Failed to parse port '{data.get('port')}'") from None
        self.bound = sock.getsockname()
        loop = asyncio.get_event_loop()
        if addr["type"] == "unix":
            coro = asyncio.start_unix_server(self._client, sock=sock)
        else:
            coro = asyncio.start_server(self._client, sock=sock)
        self._pending = loop.create_task(coro)
        self._pending.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._server = task.result()

    def stop(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            self._path = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._conns):
            with contextlib.suppress(Exception):
                writer.close()

    def disconnect(self, export_id: str) -> None:
        for writer, exp_id in list(self._conns.items()):
            if exp_id == export_id:
                with contextlib.suppress(Exception):
                    writer.close()

    # -- one client ----------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns[writer] = None
        exp: BlockExport | None = None
        try:
            conn = _Connection(self.host, reader, writer)
            exp = await conn.handshake()
            if exp is not None:
                self._conns[writer] = exp.id
                exp.clients += 1
                await conn.transmission(exp)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if exp is not None:
                exp.clients -= 1
            self._conns.pop(writer, None)
            with contextlib.suppress(Exception):
                writer.close()


class _Connection:
    def __init__(
        self, host: SimHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.host = host
        self.reader = reader
        self.writer = writer
        self.structured = False
        self.contexts: list[str] = []  # selected meta contexts; id = index

    def exports(self) -> Any:
        return self.host.machine.state.exports

    def _find(self, name: str) -> BlockExport | None:
        return self.exports().find_nbd_name(name) if self.exports().server else None

    async def handshake(self) -> BlockExport | None:
        w = self.writer
        w.write(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", await self.reader.readexactly(4))
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        while True:
            magic, opt, length = struct.unpack(">QII", await self.reader.readexactly(16))
            if magic != IHAVEOPT or length > MAX_OPTION:
                return None
            data = await self.reader.readexactly(length)
            if opt == OPT_ABORT:
                self._reply(opt, REP_ACK)
                await w.drain()
                return None
            if opt == OPT_EXPORT_NAME:
                exp = self._find(data.decode("utf-8", "replace"))
                if exp is None:
                    return None
                w.write(struct.pack(">QH", exp.node.size_bytes, self._tflags(exp)))
                if not no_zeroes:
                    w.write(bytes(124))
                return exp
            if opt in (OPT_GO, OPT_INFO):
                exp = self._go_info(opt, data)
                if exp is not None and opt == OPT_GO:
                    await w.drain()
                    return exp
            elif opt == OPT_LIST:
                for e in self.exports().exports if self.exports().server else []:
                    name = e.name.encode()
                    self._reply(opt, REP_SERVER, struct.pack(">I", len(name)) + name)
                self._reply(opt, REP_ACK)
            elif opt == OPT_STRUCTURED_REPLY:
                self.structured = True
                self._reply(opt, REP_ACK)
            elif opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
                self._meta(opt, data)
            else:
                self._reply(opt, REP_ERR_UNSUP)
            await w.drain()

    def _reply(self, opt: int, rtype: int, payload: bytes = b"") -> None:
        self.writer.write(struct.pack(">QIII", REPLY_MAGIC, opt, rtype, len(payload)) + payload)

    def _tflags(self, exp: BlockExport) -> int:
        flags = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_DF | TF_SEND_CACHE | TF_CAN_MULTI_CONN
        return flags | TF_READ_ONLY

    def _go_info(self, opt: int, data: bytes) -> BlockExport | None:
        try:
            (nlen,) = struct.unpack_from(">I", data, 0)
            name = data[4 : 4 + nlen].decode("utf-8", "replace")
            (nreq,) = struct.unpack_from(">H", data, 4 + nlen)
            reqs = struct.unpack_from(f">{nreq}H", data, 6 + nlen)
        except struct.error:
            self._reply(opt, REP_ERR_INVALID)
            return None
        exp = self._find(name)
        if exp is None:
            self._reply(opt, REP_ERR_UNKNOWN, f"export '{name}' not present".encode())
            return None
        if INFO_NAME in reqs:
            self._reply(opt, REP_INFO, struct.pack(">H", INFO_NAME) + exp.name.encode())
        if INFO_DESCRIPTION in reqs and exp.description:
            desc = exp.description.encode()
            self._reply(opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + desc)
        self._reply(opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, MAX_READ))
        info = struct.pack(">HQH", INFO_EXPORT, exp.node.size_bytes, self._tflags(exp))
        self._reply(opt, REP_INFO, info)
        self._reply(opt, REP_ACK)
        return exp

    def _meta(self, opt: int, data: bytes) -> None:
        try:
            (nlen,) = struct.unpack_from(">I", data, 0)
            name = data[4 : 4 + nlen].decode("utf-8", "replace")
            (nq,) = struct.unpack_from(">I", data, 4 + nlen)
            pos = 8 + nlen
            queries = []
            for _ in range(nq):
                (qlen,) = struct.unpack_from(">I", data, pos)
                queries.append(data[pos + 4 : pos + 4 + qlen].decode("utf-8", "replace"))
                pos += 4 + qlen
        except struct.error:
            self._reply(opt, REP_ERR_INVALID)
            return
        exp = self._find(name)
        if exp is None:
            self._reply(opt, REP_ERR_UNKNOWN)
            return
        available = ["base:allocation"] + [f"qemu:dirty-bitmap:{b.name}" for b in exp.bitmaps]
        if not queries and opt == OPT_LIST_META_CONTEXT:
            chosen = available
        else:
            chosen = [c for c in available if any(_matches(q, c) for q in queries)]
        if opt == OPT_SET_META_CONTEXT:
            self.contexts = chosen
        for i, ctx in enumerate(chosen):
            self._reply(opt, REP_META_CONTEXT, struct.pack(">I", i) + ctx.encode())
        self._reply(opt, REP_ACK)

    # -- transmission --------------------------------------------------------------------
    async def transmission(self, exp: BlockExport) -> None:
        while True:
            head = await self.reader.readexactly(28)
            magic, flags, cmd, handle, offset, length = struct.unpack(">IHHQQI", head)
            if magic != REQUEST_MAGIC:
                return
            if cmd == CMD_WRITE:
                await self.reader.readexactly(length)
            if cmd == CMD_DISC:
                return
            if exp.shutting_down or exp not in self.exports().exports:
                return
            size = exp.node.size_bytes
            if cmd in (CMD_READ, CMD_BLOCK_STATUS, CMD_CACHE) and (
                offset + length > size or (cmd == CMD_READ and length > MAX_READ)
            ):
                self._error(handle, EINVAL)
            elif cmd == CMD_READ:
                self._read(handle, exp, offset, length)
            elif cmd == CMD_BLOCK_STATUS:
                self._block_status(handle, exp, offset, length, bool(flags & CMD_FLAG_REQ_ONE))
            elif cmd in (CMD_FLUSH, CMD_CACHE):
                self._simple(handle, 0)
            elif cmd in (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES):
                self._error(handle, EPERM)
            else:
                self._error(handle, EINVAL)
            await self.writer.drain()

    def _simple(self, handle: int, error: int, payload: bytes = b"") -> None:
        self.writer.write(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle) + payload)

    def _chunk(self, handle: int, rtype: int, payload: bytes, done: bool = True) -> None:
        flags = REPLY_FLAG_DONE if done else 0
        head = struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, flags, rtype, handle, len(payload))
        self.writer.write(head + payload)

    def _error(self, handle: int, errno: int) -> None:
        if self.structured:
            self._chunk(handle, REPLY_TYPE_ERROR, struct.pack(">IH", errno, 0))
        else:
            self._simple(handle, errno)

    def _read(self, handle: int, exp: BlockExport, offset: int, length: int) -> None:
        refused = snapshot_read_error(self.host.machine.state.graph, exp.node, offset, length)
        if refused is not None:  # system_errno_to_nbd_errno: EACCES is EINVAL, ENOTSUP its own
            self._error(handle, EINVAL if refused is NO_ACCESS else ENOTSUP)
            return
        data = read_bytes(self.host, exp, offset, length)
        if self.structured:
            self._chunk(handle, REPLY_TYPE_OFFSET_DATA, struct.pack(">Q", offset) + data)
        else:
            self._simple(handle, 0, data)

    def _block_status(
        self, handle: int, exp: BlockExport, offset: int, length: int, one: bool
    ) -> None:
        if not self.structured or not self.contexts:
            self._error(handle, EINVAL)
            return
        for i, ctx in enumerate(self.contexts):
            extents = context_extents(exp, ctx, offset, length)
            if one:
                extents = extents[:1]
            payload = struct.pack(">I", i) + b"".join(
                struct.pack(">II", n, f) for n, f in extents[:MAX_EXTENTS]
            )
            self._chunk(handle, REPLY_TYPE_BLOCK_STATUS, payload, i == len(self.contexts) - 1)


def _matches(query: str, context: str) -> bool:
    if query in ("base:", "qemu:", "qemu:dirty-bitmap:"):
        return context.startswith(query)
    return query == context


def read_bytes(host: SimHost, exp: BlockExport, offset: int, length: int) -> bytes:
    """The bytes a read of the export sees: each sector's stamp pattern."""
    if length == 0:
        return b""
    state = host.machine.state
    stamps = read_stamps(state.graph, exp.node, offset, length)
    patterns = state.stamps.patterns_of(stamps).astype(np.uint8)
    data = np.repeat(patterns, 512).tobytes()
    skip = offset % 512
    return data[skip : skip + length]


def context_extents(exp: BlockExport, ctx: str, offset: int, length: int) -> list[tuple[int, int]]:
    """(length, flags) extents of one meta context over [offset, offset+length)."""
    if ctx == "base:allocation":
        runs = allocation_runs(exp)
    else:
        name = ctx.removeprefix("qemu:dirty-bitmap:")
        bm = next(b for b in exp.bitmaps if b.name == name)
        g = bm.granularity
        runs = [(lo * g, min(hi * g, bm.size_bytes), v) for v, lo, hi in intervals(bm.bits)]
    return _clip(runs, offset, offset + length)


def allocation_runs(exp: BlockExport) -> list[tuple[int, int, int]]:
    """(start, end, flags) over the whole export: 0 where data, 3 (HOLE|ZERO) elsewhere."""
    node = exp.node
    size = node.size_bytes
    if node.driver == "snapshot-access" and node.file is not None and node.file.cbw is not None:
        return _snapshot_runs(node.file.cbw, size)
    granule = node.cluster_size if node.driver == "qcow2" else RAW_BLOCK
    return _chain_runs(_chain_contents(node), size, granule)


def _chain_contents(node: BlockNode) -> list[Content]:
    graph_chain = []
    n: BlockNode | None = node
    while n is not None:
        data = n.filtered_child() if n.is_filter else n
        if data is None:
            break
        graph_chain.append(data)
        n = data.backing
    return [c.content for c in graph_chain if c.content is not None]


def _snapshot_runs(cbw: CopyBeforeWrite, size: int) -> list[tuple[int, int, int]]:
    """cbw_co_snapshot_block_status: a cluster the filter copied answers as the target
    does, any other as the source does."""
    src = _chain_runs(_chain_contents(cbw.source), size, cbw.source.cluster_size)
    # block-copy's copy of a cluster the source did not allocate answers as data from
    # the target too (recorded on QEMU 7.2: nbdinfo --map of a snapshot-access export)
    tgt = _chain_runs(_chain_contents(cbw.target), size, cbw.target.cluster_size, data_from=1)
    runs: list[tuple[int, int, int]] = []
    for done, lo, hi in intervals(cbw.done_map.bits):
        a, b = lo * cbw.cluster, min(hi * cbw.cluster, size)
        for start, end, flags in tgt if done else src:
            x, y = max(start, a), min(end, b)
            if x >= y:
                continue
            if runs and runs[-1][2] == flags and runs[-1][1] == x:
                runs[-1] = (runs[-1][0], y, flags)
            else:
                runs.append((x, y, flags))
    return runs


def _chain_runs(
    contents: list[Content], size: int, granule: int, data_from: int = 2
) -> list[tuple[int, int, int]]:
    """Runs of a read through `contents`: data where a stamp is at least `data_from`."""
    runs: list[tuple[int, int, int]] = []
    pos = 0
    for lo, hi, stamp in chain_extents(contents, 0, -(-size // 512)):
        if stamp < data_from:
            continue
        start = (lo * 512) // granule * granule
        end = min(-(-(hi * 512) // granule) * granule, size)
        if runs and runs[-1][2] == 0 and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end), 0)
            pos = runs[-1][1]
            continue
        if start > pos:
            runs.append((pos, start, 3))
        runs.append((max(start, pos), end, 0))
        pos = end
    if pos < size:
        runs.append((pos, size, 3))
    return runs


def _clip(runs: list[tuple[int, int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end, flags in runs:
        a, b = max(start, lo), min(end, hi)
        if a >= b:
            continue
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + b - a, flags)
        else:
            out.append((b - a, flags))
    return out
