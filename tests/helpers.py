"""Shared test helpers: one step-runner for inline traces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sim.replay import ReplayResult, replay
from sim.trace import parse_lines

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"

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


def io(cmd: str, device: str = "drive0") -> dict[str, Any]:
    return qmp("human-monitor-command", **{"command-line": f'qemu-io {device} "{cmd}"'})


def responses(result: ReplayResult) -> list[dict[str, Any]]:
    return [o.response for o in result.steps]
