"""An iotest-124-like incremental backup flow, written only against `qemu.qmp`.

It knows nothing of blocksim: it runs unchanged against real QEMU 7.2 and
against `blocksim serve --pace realtime` (both started with drive0 = fmt0
over proto0 and their working folder as cwd) and prints one JSON object: every
command's answer and every event (without timestamps), in order.

Flow: a bitmap and a full backup in one transaction, guest writes, an
incremental backup, a snapshot in the middle (the bitmap stays on the old
node: by device name it is gone, by node-name it still works), more writes,
an incremental backup of the old node, the bitmap's hash, an NBD export of
the old node with its bitmap, then the export removed.

Usage: python incremental_backup.py QMP_SOCKET NBD_SOCKET
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient


def hmp_write(pattern: int, offset: str, length: str) -> tuple[str, dict[str, Any]]:
    line = f'qemu-io drive0 "write -P {pattern:#x} {offset} {length}"'
    return "human-monitor-command", {"command-line": line}


async def main(qmp_socket: str, nbd_socket: str) -> dict[str, Any]:
    client = QMPClient("incremental-backup")
    await client.connect(qmp_socket)
    listener = EventListener()
    client.register_listener(listener)
    log: list[Any] = []
    events: list[dict[str, Any]] = []

    async def run(cmd: str, args: dict[str, Any] | None = None) -> Any:
        try:
            result = await client.execute(cmd, args or {})
            log.append([cmd, {"return": result}])
            return result
        except ExecuteError as exc:
            log.append([cmd, {"error": exc.error.error.desc}])
            return None

    async def wait_job(job_id: str) -> None:
        while True:
            ev = await asyncio.wait_for(listener.get(), 60)
            events.append({"event": ev["event"], "data": ev.get("data", {})})
            if ev["event"] == "JOB_STATUS_CHANGE" and ev["data"] == {
                "status": "null",
                "id": job_id,
            }:
                return

    async def node_bitmaps() -> None:
        nodes = await run("query-named-block-nodes")
        log[-1] = [
            "query-named-block-nodes",
            sorted(
                [n["node-name"], [{k: b[k] for k in sorted(b)} for b in n.get("dirty-bitmaps", [])]]
                for n in nodes  # type: ignore[union-attr]
            ),
        ]

    await run(*hmp_write(0x11, "0", "64k"))
    await run(*hmp_write(0x12, "1M", "128k"))
    await run(
        "transaction",
        {
            "actions": [
                {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "b0"}},
                {
                    "type": "drive-backup",
                    "data": {"device": "drive0", "sync": "full", "target": "full.qcow2",
                             "format": "qcow2", "job-id": "full"},
                },
            ]
        },
    )  # fmt: skip
    await wait_job("full")
    await run(*hmp_write(0x21, "64k", "64k"))
    await run(*hmp_write(0x22, "4M", "4k"))
    await node_bitmaps()
    await run(
        "drive-backup",
        {"device": "drive0", "sync": "incremental", "bitmap": "b0", "target": "inc0.qcow2",
         "format": "qcow2", "job-id": "inc0"},
    )  # fmt: skip
    await wait_job("inc0")
    await run(*hmp_write(0x23, "5M", "64k"))
    await run(*hmp_write(0x24, "6M", "512"))
    await run(
        "blockdev-snapshot-sync",
        {"device": "drive0", "snapshot-file": "snap.qcow2", "snapshot-node-name": "snap0",
         "format": "qcow2"},
    )  # fmt: skip
    await run(*hmp_write(0x31, "2M", "64k"))
    await run(
        "drive-backup",
        {"device": "drive0", "sync": "incremental", "bitmap": "b0", "target": "inc1.qcow2",
         "format": "qcow2", "job-id": "inc1"},
    )  # fmt: skip
    await run("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    await node_bitmaps()
    await run("x-debug-block-dirty-bitmap-sha256", {"node": "fmt0", "name": "b0"})
    # pull mode: export the old node with its bitmap and read the dirty extents over NBD
    await run("nbd-server-start", {"addr": {"type": "unix", "data": {"path": nbd_socket}}})
    await run(
        "block-export-add",
        {"type": "nbd", "id": "e0", "node-name": "fmt0", "name": "base",
         "bitmaps": [{"node": "fmt0", "name": "b0"}]},
    )  # fmt: skip
    await run("block-dirty-bitmap-clear", {"node": "fmt0", "name": "b0"})
    await run("query-block-exports")
    await node_bitmaps()
    uri = f"nbd+unix:///base?socket={nbd_socket}"
    for ctx in ("qemu:dirty-bitmap:b0", "base:allocation"):
        proc = await asyncio.create_subprocess_exec(
            "nbdinfo", f"--map={ctx}", uri, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        log.append(["nbdinfo --map=" + ctx, out.decode()])
    await run("block-export-del", {"id": "e0"})
    ev = await asyncio.wait_for(listener.get(), 60)
    events.append({"event": ev["event"], "data": ev.get("data", {})})
    await run("nbd-server-stop")
    await run(
        "drive-backup",
        {"device": "fmt0", "sync": "incremental", "bitmap": "b0", "target": "inc1.qcow2",
         "format": "qcow2", "job-id": "inc1"},
    )  # fmt: skip
    await wait_job("inc1")
    await node_bitmaps()
    await run("query-jobs")
    await client.disconnect()
    return {"answers": log, "events": events}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2])), indent=1))
