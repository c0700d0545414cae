"""Oracle benchmark: the same traces on real QEMU 7.2 and on the simulator.

For every trace (default: scenarios/qemu-7.2, recursively) it measures the
wall time of one run on real QEMU (`sim.oracle.qemu_runner.run_trace`: QEMU
start, every step, the final-state queries, quit; no image read-back) and of
a replay on the simulator (`sim.replay.replay`, the best of `--repeat` runs;
trace parsing excluded on both sides).  Prints the totals and their ratio
next to the target: the simulator at least 100x faster.

    python bench/bench_oracle.py [PATH...] [--repeat N] [--verbose]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sim.oracle.diff import check_runnable
from sim.oracle.qemu_runner import OracleError, run_trace
from sim.replay import replay
from sim.trace import Trace, load_trace

TARGET_RATIO = 100.0
DEFAULT_PATHS = [str(Path(__file__).resolve().parent.parent / "scenarios" / "qemu-7.2")]


def traces_in(paths: list[str]) -> list[Trace]:
    """Every runnable trace under `paths` (sim-only traces are left out)."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        files.extend(sorted(p.rglob("*.jsonl")) if p.is_dir() else [p])
    out = []
    for path in files:
        trace = load_trace(path)
        try:
            check_runnable(trace)
        except Exception:  # noqa: BLE001 - sim-only or broken: not comparable
            continue
        out.append(trace)
    return out


def time_qemu(trace: Trace) -> float:
    t0 = time.perf_counter()
    run_trace(trace)
    return time.perf_counter() - t0


def time_sim(trace: Trace, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        replay(trace)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=DEFAULT_PATHS)
    parser.add_argument("--repeat", type=int, default=3, help="simulator runs per trace (best)")
    parser.add_argument("--verbose", action="store_true", help="one line per trace")
    args = parser.parse_args()
    traces = traces_in(args.paths)
    if not traces:
        print("no runnable traces found in", ", ".join(args.paths))
        return 2
    qemu_total = sim_total = 0.0
    worst = (float("inf"), "")
    for trace in traces:
        try:
            q = time_qemu(trace)
        except OracleError as exc:
            print(f"real QEMU unavailable: {exc}")
            return 2
        s = time_sim(trace, args.repeat)
        qemu_total, sim_total = qemu_total + q, sim_total + s
        name = trace.header.name or Path(trace.path).stem
        worst = min(worst, (q / s, name))
        if args.verbose:
            print(f"  {name:40} QEMU {q * 1e3:8.1f} ms  sim {s * 1e3:8.2f} ms  {q / s:8.1f}x")
    ratio = qemu_total / sim_total
    steps = sum(len(t.steps) for t in traces)
    print(f"{len(traces)} traces, {steps} steps")
    print(f"real QEMU 7.2: {qemu_total:8.2f} s  ({qemu_total / len(traces) * 1e3:.1f} ms/trace)")
    print(f"simulator:     {sim_total:8.3f} s  ({sim_total / len(traces) * 1e3:.2f} ms/trace)")
    verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"ratio: simulator {ratio:.1f}x faster (target >= {TARGET_RATIO:.0f}x): {verdict}")
    print(f"slowest relative to QEMU: {worst[1]} ({worst[0]:.1f}x)")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
