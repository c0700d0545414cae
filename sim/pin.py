"""Pinning: write a trace back with the simulator's own answers as expectations.

The simulator's counterpart of `sim.oracle.record` (which pins real QEMU's):
every execute/wait step gets the response it produced as `expect`, and the
final state becomes `final-expect`.  Comments, blank lines and the header are
kept as they were.  Used to turn a fuzz failure or a hand-written sim-only
scenario into a regression scenario.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sim.replay import ReplayResult, replay
from sim.trace import dumps, parse_lines


def pinned_lines(lines: list[str], result: ReplayResult) -> list[str]:
    """The trace's lines with expectations replaced by the replay's answers."""
    by_line = {o.line: o for o in result.steps}
    out: list[str] = []
    header_seen = False
    for number, text in enumerate(lines, start=1):
        stripped = text.strip()
        if not stripped or stripped.startswith("//"):
            out.append(text)
            continue
        if not header_seen:
            header_seen = True
            out.append(text)
            continue
        obj: Any = json.loads(stripped)
        if isinstance(obj, dict) and "final-expect" in obj:
            continue
        outcome = by_line.get(number)
        if outcome is not None and isinstance(obj, dict) and outcome.error is None:
            if "execute" in obj or "wait" in obj:
                obj["expect"] = {k: v for k, v in outcome.response.items() if k != "id"}
        out.append(dumps(obj))
    out.append(dumps({"final-expect": result.final}))
    return out


def pin_trace(path: str | Path, out: str | Path, policy: str | None = None) -> ReplayResult:
    """Replay `path` on the simulator and write the pinned trace to `out`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    result = replay(parse_lines(lines, str(path)), policy=policy)
    Path(out).write_text("\n".join(pinned_lines(lines, result)) + "\n", encoding="utf-8")
    return result
