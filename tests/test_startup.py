"""What a `blocksim replay` process loads: only what its traces need.

numpy (sim.lazy) and simpy's package metadata (sim.engine) cost a large part
of a short replay's start-up; these tests fail when a common path starts
loading them again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Traces whose steps once built numpy arrays: qemu-io reads with a pattern and a
# block-stream (str-stream), mirror start (rec-0002), bitmap merges across
# granularities (bm-merge-basic), a bitmap backup at another granularity (rec-0049)
# and a sync=top backup (rec-0032).
SMALL_TRACES = [
    "scenarios/qemu-7.2/str-stream.jsonl",
    "scenarios/qemu-7.2-recorded/rec-0002.jsonl",
    "scenarios/qemu-7.2/bm-merge-basic.jsonl",
    "scenarios/qemu-7.2-recorded/rec-0049.jsonl",
    "scenarios/qemu-7.2-recorded/rec-0032.jsonl",
]

PROBE = """
import json, sys
from sim.replay import replay
from sim.trace import load_trace
passed = [replay(load_trace(p)).ok for p in sys.argv[1:]]
loaded = sorted(m for m in sys.modules if m.startswith(("numpy.", "importlib.metadata", "email")))
import simpy
print(json.dumps({"passed": passed, "loaded": loaded, "version": simpy.__version__,
                  "env": simpy.Environment.__module__}))
"""


def _probe(code: str, *args: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter (this checkout first on the path); its JSON line."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_small_replays_load_neither_numpy_nor_package_metadata() -> None:
    got = _probe(PROBE, *SMALL_TRACES)
    assert got["passed"] == [True] * len(SMALL_TRACES)
    assert got["loaded"] == []
    # the rest of simpy's package still loads on demand
    assert got["version"].count(".") >= 1
    assert got["env"] == "simpy.core"


FALLBACK_PROBE = """
import json, sys
import sim.engine as engine
del sys.modules["simpy"]
engine._SIMPY_EXPORTS["simpy.no_such_submodule"] = ("Environment",)
engine._install_simpy()
import simpy
print(json.dumps({"version": simpy.__version__, "env": simpy.Environment.__module__,
                  "metadata": "importlib.metadata" in sys.modules}))
"""


def test_another_simpy_layout_falls_back_to_its_own_init() -> None:
    got = _probe(FALLBACK_PROBE)
    # simpy's own __init__ ran: it read the version from the package metadata
    assert got["metadata"] is True
    assert got["env"] == "simpy.core"
    assert got["version"].count(".") >= 1
