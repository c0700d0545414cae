"""Starting `blocksim serve` and real QEMU 7.2 as QMP endpoints for the serve tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRIVE = "id=drive0,node-name=fmt0,file-node-name=proto0,format=qcow2,size=64M"


def have_qemu() -> bool:
    return shutil.which("qemu-system-x86_64") is not None and shutil.which("qemu-img") is not None


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    # The socket file appears at bind(), a moment before listen(): wait until a
    # connection is accepted, not until the file exists.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
            finally:
                probe.close()
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.02)
    raise RuntimeError(f"no socket at {path}")


@contextmanager
def blocksim_serve(tmp: Path, *extra: str, drive: str = DRIVE) -> Iterator[Path]:
    """`blocksim serve` in a subprocess on TMP/qmp.sock; yields the socket path."""
    sock = tmp / "qmp.sock"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "sim", "serve", "--socket", str(sock), "--drive", drive, *extra]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp, stderr=subprocess.PIPE)
    try:
        _wait_socket(sock, proc)
        yield sock
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def real_qemu(tmp: Path, *_extra: str, size: str = "64M") -> Iterator[Path]:
    """QEMU 7.2 (`-M none`) with drive0 = fmt0 over proto0 on TMP/drive0.qcow2, QMP on TMP."""
    sock = tmp / "qemu-qmp.sock"
    image = tmp / "drive0.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), size], check=True,
                   capture_output=True)  # fmt: skip
    cmd = [
        "qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg",
        "-drive", f"if=none,id=drive0,node-name=fmt0,file.node-name=proto0,format=qcow2,"
        f"file={image}",
        "-qmp", f"unix:{sock},server=on,wait=off",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_socket(sock, proc)
        yield sock
    finally:
        proc.kill()
        proc.wait()


def raw_session(sock_path: Path, items: list[bytes], timeout: float = 20.0) -> list[list[bytes]]:
    """Send each item followed by `query-version` with id "end" on one raw connection;
    for each item, the lines that came back before the answer with id "end"
    (the greeting is the first entry)."""
    sentinel = b'{"execute": "query-version", "id": "end"}'
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(sock_path))
    buf = b""

    def read_until(pred: object) -> list[bytes]:
        nonlocal buf
        lines: list[bytes] = []
        while True:
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                lines.append(line)
                if pred(line):  # type: ignore[operator]
                    return lines
            chunk = s.recv(65536)
            if not chunk:
                return lines
            buf += chunk

    try:
        out = [read_until(lambda line: True)]
        for item in items:
            s.sendall(item + sentinel)
            out.append(read_until(lambda line: b'"id": "end"' in line)[:-1])
        return out
    finally:
        s.close()
