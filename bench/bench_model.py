"""Model benchmarks: the fuzzer's inner loop must stay cheap.

1. 1,000,000 random 4 KiB guest writes on a 1 TiB disk with four recording
   bitmaps, through the model API workloads use (`sim.model.io.guest_write`).
   Targets: >= 200,000 writes/s, < 1 GiB peak memory (RSS growth).
2. Trace replay of `qemu-io` write steps through the whole stack (trace
   parsing excluded: steps are pre-parsed).  Target: >= 50,000 steps/s.
3. The same replay with every invariant checker on.  Target: the
   checkers cost at most a 2x slowdown.

Prints each figure next to its target.  `--quick` runs a tenth of the work.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

from sim.check import make_checkers
from sim.engine.machine import Machine
from sim.model import bitmap_ops, io
from sim.model.state import BlockState
from sim.replay import Replayer
from sim.trace import parse_lines

TIB = 1 << 40


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_writes(n: int) -> tuple[float, float]:
    state = BlockState("qemu-7.2")
    bb = state.add_drive("drive0", "fmt0", "proto0", "qcow2", TIB)
    graph, policy = state.graph, state.policy
    for name in ("b0", "b1", "b2", "b3"):
        bitmap_ops.add(graph, policy, "drive0", name)
    rng = np.random.default_rng(1)
    offsets = (rng.integers(0, TIB // 4096, size=n, dtype=np.int64) * 4096).tolist()
    root = bb.root
    write = io.guest_write
    new_stamp = state.new_stamp
    before = rss_mib()
    t0 = time.perf_counter()
    for off in offsets:
        write(graph, bb, root, off, 4096, new_stamp(5))
    elapsed = time.perf_counter() - t0
    return n / elapsed, rss_mib() - before


def bench_replay_writes(n: int, checkers: bool = False) -> float:
    drive = {
        "id": "drive0",
        "node-name": "fmt0",
        "file-node-name": "proto0",
        "format": "qcow2",
        "size": 1 << 30,
    }
    lines = [json.dumps({"trace": 1, "name": "bench", "drives": [drive], "seed": 0})]
    lines.append(
        json.dumps(
            {"execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0", "name": "b0"}}
        )
    )
    rng = np.random.default_rng(2)
    for off in (rng.integers(0, (1 << 30) // 65536, size=n) * 65536).tolist():
        cmd = f'qemu-io drive0 "write -P 0x5 {off} 64k"'
        lines.append(
            json.dumps({"execute": "human-monitor-command", "arguments": {"command-line": cmd}})
        )
    trace = parse_lines(lines)
    replayer = Replayer(trace, checkers=make_checkers(None) if checkers else None)
    t0 = time.perf_counter()
    for index, step in enumerate(trace.steps, start=1):
        replayer.run_step(index, step)
    elapsed = time.perf_counter() - t0
    assert isinstance(replayer.machine, Machine)
    return len(trace.steps) / elapsed


def main() -> None:
    quick = "--quick" in sys.argv
    n = 100_000 if quick else 1_000_000
    rate, mem = bench_writes(n)
    print(
        f"model writes: {n:,} random 4 KiB writes, 1 TiB disk, 4 bitmaps: "
        f"{rate:,.0f} writes/s (target >= 200,000); RSS growth {mem:,.0f} MiB (target < 1024)"
    )
    n_steps = 20_000 if quick else 100_000
    steps = bench_replay_writes(n_steps)
    print(f"replay: qemu-io write steps: {steps:,.0f} steps/s (target >= 50,000)")
    checked = bench_replay_writes(n_steps, checkers=True)
    print(
        f"replay with all 7 checkers: {checked:,.0f} steps/s; slowdown "
        f"{steps / checked:.2f}x (target <= 2x)"
    )


if __name__ == "__main__":
    main()
