"""NBD exports of `blocksim serve` read by real NBD clients, compared with QEMU 7.2."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from tests.serve_helpers import blocksim_serve, have_qemu, real_qemu

pytestmark = pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="needs libnbd-bin")

WRITES = ["write -P 0x5 0 64k", "write -P 0x7 1M 4k", "write -P 0x9 3M 192k"]
LATER = ["write -P 0x3 128k 64k", "write -P 0x4 8M 512"]


async def _flow(sock: Path, nbd_sock: Path) -> None:
    c = QMPClient("nbd")
    await c.connect(str(sock))
    for cmd in WRITES:
        await c.execute("human-monitor-command", {"command-line": f'qemu-io drive0 "{cmd}"'})
    await c.execute("block-dirty-bitmap-add", {"node": "fmt0", "name": "b0"})
    for cmd in LATER:
        await c.execute("human-monitor-command", {"command-line": f'qemu-io drive0 "{cmd}"'})
    await c.execute("block-dirty-bitmap-disable", {"node": "fmt0", "name": "b0"})
    await c.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(nbd_sock)}}})
    await c.execute(
        "block-export-add",
        {"type": "nbd", "id": "e0", "node-name": "fmt0", "name": "exp", "bitmaps": ["b0"]},
    )
    await c.disconnect()


def _nbd(nbd_sock: Path) -> dict[str, Any]:
    uri = f"nbd+unix:///exp?socket={nbd_sock}"
    out = {}
    for key, args in [
        ("dirty", ["nbdinfo", "--map=qemu:dirty-bitmap:b0", uri]),
        ("alloc", ["nbdinfo", "--map", uri]),
        ("contexts", ["nbdinfo", "--list", "--content", uri]),
    ]:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        out[key] = proc.stdout if key != "contexts" else sorted(
            line.strip() for line in proc.stdout.splitlines() if ":" in line and
            ("base:" in line or "qemu:" in line)
        )  # fmt: skip
    copy = nbd_sock.parent / "copy.raw"
    subprocess.run(["nbdcopy", uri, str(copy)], check=True, timeout=60)
    out["data"] = copy.read_bytes()
    return out


@pytest.mark.skipif(not have_qemu(), reason="needs qemu-system-x86_64 7.2")
def test_nbdinfo_and_nbdcopy_read_the_same_from_blocksim_and_qemu(tmp_path: Path) -> None:
    results = []
    for name, starter in (("qemu", real_qemu), ("sim", blocksim_serve)):
        folder = tmp_path / name
        folder.mkdir()
        with starter(folder) as sock:
            asyncio.run(_flow(sock, folder / "nbd.sock"))
            results.append(_nbd(folder / "nbd.sock"))
    qemu, sim = results
    assert "dirty" in qemu["dirty"] and qemu["dirty"] == sim["dirty"]
    assert qemu["alloc"] == sim["alloc"]
    assert qemu["data"] == sim["data"] and qemu["data"][1 << 20] == 0x7
    assert qemu["contexts"] == sim["contexts"]
