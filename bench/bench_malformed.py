"""The malformed-input campaign at scale: at least 1,000,000 hostile inputs, in-process.

Mutated trace steps, headers, sim-only steps, qemu-io command lines and QMP
requests (sim/fuzz/malformed.py), run through the replay path and the
monitor.  Prints inputs tried, tracebacks, hangs (> 10 s), invalid JSON
output and peak memory, then the first failures.  Exit 0 only with no
traceback, hang or invalid output.

    python bench/bench_malformed.py [--inputs N] [--seed S] [--seconds LIMIT] [--json FILE]

The target is 0 tracebacks and 0 hangs over 1,000,000 inputs; the ratio
printed is inputs tried against that million.  `--json FILE` also writes the
printed lines, the figures, the CPU time and the load averages before and
after the run (bench/results/malformed.json is what README.md's output block
is rendered from: scripts/readme_numbers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sim.fuzz import malformed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="wall-time cap")
    parser.add_argument("--json", default=None, help="also write the figures as JSON to FILE")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    cpu0 = time.process_time()

    def progress(stats: malformed.CampaignStats) -> None:
        if stats.batches % 2000 == 0:
            print(
                f"  ... {stats.inputs} inputs, {stats.tracebacks} tracebacks, "
                f"{stats.hangs} hangs, {stats.seconds:.0f} s",
                flush=True,
            )

    stats = malformed.run(args.inputs, args.seconds, args.seed, progress)
    cpu = time.process_time() - cpu0
    for line in stats.lines():
        print(line)
    if args.json:
        command = f"python bench/bench_malformed.py --inputs {args.inputs} --seed {args.seed}"
        if args.seconds is not None:
            command += f" --seconds {args.seconds:g}"
        doc = {
            "command": command,
            "inputs_asked": args.inputs,
            "seed": args.seed,
            "inputs": stats.inputs,
            "by_surface": dict(sorted(stats.by_surface.items())),
            "tracebacks": stats.tracebacks,
            "hangs": stats.hangs,
            "invalid_output": stats.invalid_output,
            "peak_rss_mib": round(stats.peak_rss_mib),
            "wall_s": round(stats.seconds, 1),
            "cpu_s": round(cpu),
            "output": stats.lines(),
            "load_before": round(load_before, 1),
            "load_after": round(os.getloadavg()[0], 1),
            "cores": os.cpu_count(),
            "ok": stats.ok,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"target: 1,000,000 inputs with 0 tracebacks and 0 hangs; "
          f"ratio {stats.inputs / 1_000_000:.2f} of the inputs")  # fmt: skip
    return 0 if stats.ok else 1


if __name__ == "__main__":
    sys.exit(main())
