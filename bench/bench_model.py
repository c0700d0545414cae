"""Model benchmarks: the fuzzer's inner loop must stay cheap.

1. 1,000,000 random 4 KiB guest writes on a 1 TiB disk with four recording
   bitmaps, through the model API workloads use (`sim.model.io.guest_write`).
   Targets: >= 200,000 writes/s, < 1 GiB peak memory (RSS growth).
2. Trace replay of `qemu-io` write steps through the whole stack (trace
   parsing excluded: steps are pre-parsed).  Target: >= 50,000 steps/s.
3. The same replay with every invariant checker on.  Target: the
   checkers cost at most a 2x slowdown.
4. 20,000 random 512-aligned (so cluster-unaligned) 4 KiB guest writes into
   a qcow2 overlay (64 KiB clusters) of a 1 GiB disk, then one read: each
   write allocates a cluster it covers in part, whose rest QEMU copies from
   the backing file (perform_cow).  Two backing files: data in every 8th MiB,
   and data everywhere.  Next to it, the same writes into a qcow2 image
   without a backing file: the write path without copy-on-write, what these
   writes cost before it was modelled.  Target: the overlay's writes take at
   most 3x that.

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


def overlay_offsets(n: int) -> list[int]:
    rng = np.random.default_rng(7)
    return (rng.integers(0, ((1 << 30) - 4096) // 512, size=n) * 512).tolist()


def bench_overlay_writes(n: int, backing: str | None) -> float:
    """Seconds for `n` unaligned 4 KiB writes into a 1 GiB qcow2 drive and one read:
    an overlay whose backing file holds data in every 8th MiB ("sparse") or in every
    MiB ("full"), or (None) an image without a backing file."""
    from sim.model.snapshot import snapshot_sync

    state = BlockState("qemu-7.2")
    bb = state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 30)
    root = bb.root
    if backing is not None:
        step = (8 if backing == "sparse" else 1) << 20
        for off in range(0, 1 << 30, step):
            io.write(state, bb, root, off, 1 << 20, state.new_stamp(3))
        snapshot_sync(state.graph, state.policy, "drive0", None, "ov.qcow2", "ov")
        root = bb.root
    content = root.content
    assert content is not None
    content.stamp_at(0)
    offsets = overlay_offsets(n)
    write, new_stamp = io.write, state.new_stamp
    t0 = time.perf_counter()
    for off in offsets:
        write(state, bb, root, off, 4096, new_stamp(5))
    content.stamp_at(0)  # the first read splices the write log in
    return time.perf_counter() - t0


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
    n_cow = 4_000 if quick else 20_000
    plain = min(bench_overlay_writes(n_cow, None) for _ in range(3))
    print(
        f"unaligned 4 KiB writes into a qcow2 image, {n_cow:,}: "
        f"no backing file (no copy-on-write) {plain:.3f} s"
    )
    for backing in ("sparse", "full"):
        cow = min(bench_overlay_writes(n_cow, backing) for _ in range(3))
        verdict = "ok" if cow <= 3 * plain else "MISSED"
        print(
            f"  into an overlay, {backing} backing file: {cow:.3f} s, "
            f"{cow / plain:.1f}x the writes without copy-on-write (target <= 3x)  {verdict}"
        )


if __name__ == "__main__":
    main()
