"""Shared test helpers: one step-runner for inline traces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import IO, Any

import pytest

from sim.replay import ReplayResult, replay
from sim.trace import parse_lines

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"

HAVE_QEMU = shutil.which("qemu-system-x86_64") is not None and shutil.which("qemu-img") is not None
needs_qemu = pytest.mark.skipif(
    not HAVE_QEMU, reason="qemu-system-x86_64 / qemu-img (QEMU 7.2) not on PATH"
)

DRIVE0 = {
    "id": "drive0",
    "node-name": "fmt0",
    "file-node-name": "proto0",
    "format": "qcow2",
    "size": 64 << 20,
}


def header(
    policy: str = "qemu-7.2", drives: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    h = {"trace": 1, "name": "inline", "drives": drives or [DRIVE0], "policy": policy, "seed": 0}
    h.update(extra)
    return h


def run_steps(
    steps: list[Any],
    policy: str = "qemu-7.2",
    checkers: list[Any] | None = None,
    **header_extra: Any,
) -> ReplayResult:
    """Replay a header plus `steps` (dicts become JSON lines, strings are used raw)."""
    lines = [json.dumps(header(policy, **header_extra))]
    lines += [s if isinstance(s, str) else json.dumps(s) for s in steps]
    return replay(parse_lines(lines), checkers=checkers)


def qmp(command: str, **arguments: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"execute": command}
    if arguments:
        step["arguments"] = arguments
    return step


def snapshot_sync(
    file: str, node: str | None = None, device: str = "drive0", **arguments: Any
) -> dict[str, Any]:
    """A blockdev-snapshot-sync step: an overlay `file` over `device`, named `node`."""
    arguments["snapshot-file"] = file
    if node is not None:
        arguments["snapshot-node-name"] = node
    return qmp("blockdev-snapshot-sync", device=device, **arguments)


def io(cmd: str, device: str = "drive0") -> dict[str, Any]:
    return qmp("human-monitor-command", **{"command-line": f'qemu-io {device} "{cmd}"'})


def responses(result: ReplayResult) -> list[dict[str, Any]]:
    return [o.response for o in result.steps]


def qmp_exchange(stream: IO[bytes], name: str, arguments: Any = None) -> Any:
    """Send one QMP command over a live QEMU's monitor socket (as a file); its reply,
    the events before it skipped."""
    msg: dict[str, Any] = {"execute": name}
    if arguments is not None:
        msg["arguments"] = arguments
    stream.write(json.dumps(msg).encode() + b"\n")
    stream.flush()
    while True:
        reply = json.loads(stream.readline())
        if "event" not in reply:
            return reply
