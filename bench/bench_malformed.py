"""The malformed-input campaign at scale: at least 1,000,000 hostile inputs, in-process.

Mutated trace steps, headers, sim-only steps, qemu-io command lines and QMP
requests (sim/fuzz/malformed.py), run through the replay path and the
monitor.  Prints inputs tried, tracebacks, hangs (> 10 s), invalid JSON
output and peak memory, then the first failures.  Exit 0 only with no
traceback, hang or invalid output.

    python bench/bench_malformed.py [--inputs N] [--seed S] [--seconds LIMIT]

The target is 0 tracebacks and 0 hangs over 1,000,000 inputs; the ratio
printed is inputs tried against that million.
"""

from __future__ import annotations

import argparse
import sys

from sim.fuzz import malformed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="wall-time cap")
    args = parser.parse_args()

    def progress(stats: malformed.CampaignStats) -> None:
        if stats.batches % 2000 == 0:
            print(
                f"  ... {stats.inputs} inputs, {stats.tracebacks} tracebacks, "
                f"{stats.hangs} hangs, {stats.seconds:.0f} s",
                flush=True,
            )

    stats = malformed.run(args.inputs, args.seconds, args.seed, progress)
    for line in stats.lines():
        print(line)
    print(f"target: 1,000,000 inputs with 0 tracebacks and 0 hangs; "
          f"ratio {stats.inputs / 1_000_000:.2f} of the inputs")  # fmt: skip
    return 0 if stats.ok else 1


if __name__ == "__main__":
    sys.exit(main())
