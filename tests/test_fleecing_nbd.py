"""Fleecing exports read by real NBD clients: blocksim serve against QEMU 7.2.

Two pull-mode graphs, each exported over NBD after the guest overwrote data:
QEMU 7.x's copy-before-write filter + snapshot-access node (blockdev-add),
and libvirt's scratch image filled by blockdev-backup sync=none.  nbdcopy
must read the disk as it was at the fleecing instant, byte for byte what
QEMU serves; nbdinfo must show the same exported bitmap.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from tests.serve_helpers import blocksim_serve, have_qemu, real_qemu

pytestmark = [
    pytest.mark.skipif(shutil.which("nbdcopy") is None, reason="needs libnbd-bin"),
    pytest.mark.skipif(not have_qemu(), reason="needs qemu-system-x86_64 7.2"),
]

BEFORE = ["write -P 0x5d 0 64k", "write -P 0xd5 1M 64k", "write -P 0xdc 32M 64k"]
AFTER = ["write -P 0xab 0 64k", "write -P 0xad 0xf8000 64k", "write -P 0xea 0x3fe0000 64k"]


async def _hmp(c: QMPClient, line: str) -> None:
    await c.execute("human-monitor-command", {"command-line": line})


async def _create(c: QMPClient, job: str, options: dict[str, Any]) -> None:
    await c.execute("blockdev-create", {"job-id": job, "options": options})
    for _ in range(600):
        jobs = await c.execute("query-jobs")
        assert isinstance(jobs, list)
        if any(j["id"] == job and j["status"] == "concluded" for j in jobs):
            break
        await asyncio.sleep(0.05)
    await c.execute("job-dismiss", {"id": job})


async def _image(c: QMPClient, name: str, backing: str | None = None) -> None:
    await _create(c, f"c-{name}-file", {"driver": "file", "filename": f"{name}.img", "size": 0})
    await c.execute("blockdev-add", {"driver": "file", "node-name": f"{name}-file",
                                     "filename": f"{name}.img"})  # fmt: skip
    opts: dict[str, Any] = {"driver": "qcow2", "file": f"{name}-file", "size": 64 << 20}
    if backing is not None:
        opts.update({"backing-file": "drive0.qcow2", "backing-fmt": "qcow2"})
    await _create(c, f"c-{name}", opts)
    args: dict[str, Any] = {"driver": "qcow2", "node-name": name, "file": f"{name}-file"}
    if backing is not None:
        args["backing"] = backing
    await c.execute("blockdev-add", args)


async def _cbw_flow(sock: Path, nbd_sock: Path) -> None:
    """image-fleecing's cbw + snapshot-access graph, with a bitmap on the source."""
    c = QMPClient("fleece")
    await c.connect(str(sock))
    for cmd in BEFORE:
        await _hmp(c, f'qemu-io fmt0 "{cmd}"')
    await c.execute("block-dirty-bitmap-add", {"node": "fmt0", "name": "b0"})
    await _hmp(c, 'qemu-io fmt0 "write -P 0x61 2M 64k"')
    await _image(c, "temp")
    await c.execute("blockdev-add", {"driver": "copy-before-write", "node-name": "fl-cbw",
                                     "file": "fmt0", "target": "temp"})  # fmt: skip
    await c.execute("blockdev-add", {"driver": "snapshot-access", "node-name": "fl-access",
                                     "file": "fl-cbw"})  # fmt: skip
    for cmd in AFTER:
        await _hmp(c, f'qemu-io fl-cbw "{cmd}"')
    await c.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(nbd_sock)}}})
    await c.execute("block-export-add", {"type": "nbd", "id": "e0", "node-name": "fl-access",
                                         "name": "exp", "bitmaps": [{"node": "fmt0", "name": "b0"}]})  # fmt: skip
    await c.disconnect()


async def _libvirt_flow(sock: Path, nbd_sock: Path) -> None:
    """libvirt's pull-mode backup: scratch qcow2 backed by the disk, sync=none, export."""
    c = QMPClient("pull")
    await c.connect(str(sock))
    for cmd in BEFORE:
        await _hmp(c, f'qemu-io drive0 "{cmd}"')
    await c.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(nbd_sock)}}})
    await _image(c, "scratch", backing="fmt0")
    await c.execute("blockdev-backup", {"device": "fmt0", "job-id": "b", "target": "scratch",
                                        "sync": "none", "auto-dismiss": False})  # fmt: skip
    for cmd in AFTER:
        await _hmp(c, f'qemu-io drive0 "{cmd}"')
    await c.execute("block-export-add", {"type": "nbd", "id": "e0", "node-name": "scratch",
                                         "name": "exp"})  # fmt: skip
    await c.disconnect()


def _read(nbd_sock: Path, bitmap: str | None) -> dict[str, Any]:
    uri = f"nbd+unix:///exp?socket={nbd_sock}"
    copy = nbd_sock.parent / "copy.raw"
    subprocess.run(["nbdcopy", uri, str(copy)], check=True, timeout=120)
    out: dict[str, Any] = {"data": copy.read_bytes()}
    alloc = subprocess.run(["nbdinfo", "--map", uri], capture_output=True, text=True, timeout=60)
    out["alloc"] = alloc.stdout
    if bitmap is not None:
        proc = subprocess.run(["nbdinfo", f"--map=qemu:dirty-bitmap:{bitmap}", uri],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        out["dirty"] = proc.stdout
    return out


def _both(tmp_path: Path, flow: Any, bitmap: str | None) -> tuple[dict[str, Any], ...]:
    results = []
    for name, starter in (("qemu", real_qemu), ("sim", blocksim_serve)):
        folder = tmp_path / name
        folder.mkdir()
        with starter(folder, "--pace", "realtime") as sock:  # blockdev-create jobs run
            asyncio.run(flow(sock, folder / "nbd.sock"))
            results.append(_read(folder / "nbd.sock", bitmap))
    return tuple(results)


def _point_in_time(data: bytes) -> None:
    """The fleecing instant: BEFORE's patterns, none of AFTER's."""
    assert data[0] == 0x5D and data[(1 << 20) + 5] == 0xD5 and data[32 << 20] == 0xDC
    assert data[0xF8000] == 0 and data[0x3FE0000] == 0


def test_cbw_snapshot_access_export_reads_the_fleecing_instant(tmp_path: Path) -> None:
    qemu, sim = _both(tmp_path, _cbw_flow, "b0")
    _point_in_time(qemu["data"])
    assert qemu["data"] == sim["data"]
    assert qemu["alloc"] == sim["alloc"]
    assert "dirty" in qemu["dirty"] and qemu["dirty"] == sim["dirty"]


def test_libvirt_pull_backup_export_reads_the_fleecing_instant(tmp_path: Path) -> None:
    qemu, sim = _both(tmp_path, _libvirt_flow, None)
    _point_in_time(qemu["data"])
    assert qemu["data"] == sim["data"]
    assert qemu["alloc"] == sim["alloc"]
