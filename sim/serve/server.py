"""`blocksim serve`: QMP (and NBD) over loopback TCP and unix sockets, with asyncio.

The protocol lives in `sim.serve.session` (no I/O); this module only moves
bytes: it accepts connections on every listening socket, greets, feeds what
a client sends to its session and writes back what the session answers.
Events caused by one client's command reach every other negotiated client at
once.  A client that disconnects, sends garbage or stops reading never stops
the server; `quit` (or SIGINT/SIGTERM) ends it after writing the recorded
trace.  Under realtime pacing a ticker moves simulated time between commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.serve.host import SimHost

READ_CHUNK = 65536
TICK_S = 0.02  # realtime pacing: the longest wall time between two clock syncs


@dataclass
class ServeConfig:
    """Where to listen: a unix socket path and/or loopback TCP ports."""

    socket: str | None = None
    tcp: list[tuple[str, int]] = field(default_factory=list)


class QmpServer:
    """Accepts QMP clients for one SimHost until `quit` or a signal."""

    def __init__(self, host: SimHost, config: ServeConfig) -> None:
        self.host = host
        self.config = config
        self._servers: list[asyncio.base_events.Server] = []
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.addresses: list[str] = []
        self.stopped_by: int | None = None  # the signal that ended the server

    async def start(self) -> None:
        cfg = self.config
        self.host.set_clock(asyncio.get_running_loop().time)
        self.host.serve_nbd()
        if cfg.socket is not None:
            path = Path(cfg.socket)
            if path.exists() and path.is_socket():
                path.unlink()
            server = await asyncio.start_unix_server(self._client, path=str(path))
            self._servers.append(server)
            self.addresses.append(f"unix:{path}")
        for host, port in cfg.tcp:
            server = await asyncio.start_server(self._client, host=host, port=port)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            self.addresses.append(f"tcp:{bound[0]}:{bound[1]}")
        if self.host.pacing.mode == "realtime":
            self._spawn(self._ticker())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ticker(self) -> None:
        while not self._stop.is_set():
            self.host.sync()
            due = self.host.next_due_s()
            await asyncio.sleep(TICK_S if due is None else min(max(due, 0.001), TICK_S))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = self.host.open_session()

        def write_out() -> None:
            if session.outbox and not writer.is_closing():
                writer.write(b"".join(session.outbox))
            session.outbox.clear()

        session.on_output = write_out
        self._writers.add(writer)
        try:
            writer.write(session.greeting())
            while not self._stop.is_set():
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                out = session.feed(data)
                if out and not writer.is_closing():
                    writer.write(b"".join(out))
                await writer.drain()
                if self.host.quit_requested:
                    self._stop.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.host.close_session(session)
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def serve_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await self._stop.wait()
        await self.stop()

    def _on_signal(self, sig: int) -> None:
        self.stopped_by = sig
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self.host.close()
        if self.config.socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.config.socket)


def run_server(host: SimHost, config: ServeConfig, on_ready: object = None) -> int | None:
    """Serve until `quit` or SIGINT/SIGTERM (blocking); the signal that ended it, if any."""

    async def main() -> int | None:
        server = QmpServer(host, config)
        await server.start()
        if callable(on_ready):
            on_ready(server.addresses)
        await server.serve_until_stopped()
        return server.stopped_by

    return asyncio.run(main())
