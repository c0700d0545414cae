"""Sharded campaigns on Dask: steps/s with 1 and 2 local workers, side by side.

The same campaign (every checker on, every failure muted so that no shrink
or early stop skews the count; 4 shards) runs on a LocalCluster of one worker
process, then of two.  The figure is the speed-up, steps/s with 2 workers over
steps/s with 1; the target is >= 1.7x on a 2-core machine.  Both clusters
are started and warmed up (every worker imports the simulator) before the
clock starts.  The machine's load average is printed before and after each
run: other processes on the same cores lower the speed-up, and the print says
how much of the machine the benchmark had.  `--quick` runs a third of the
examples.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from sim.check import CHECKERS
from sim.cluster import Runner
from sim.fuzz.campaign import CampaignConfig
from sim.fuzz.failures import INTERNAL_ERROR
from sim.fuzz.shards import ShardedCampaign

TARGET = 1.7
SHARDS = 4


def warm_up() -> int:
    import sim.fuzz.shards  # noqa: F401 - what the first shard would import

    return os.getpid()


def cpu_seconds() -> float:
    return time.process_time()


def measure(workers: int, examples: int) -> tuple[float, int, int, float, str]:
    """(seconds, examples, steps, worker CPU seconds, load) of one campaign on `workers`
    local workers."""
    config = CampaignConfig(
        examples=examples,
        steps=25,
        seed=7,
        mute=(*CHECKERS, INTERNAL_ERROR),
        shrink=False,
    )
    with Runner(workers=workers) as runner, tempfile.TemporaryDirectory() as out:
        runner.client.run(warm_up)
        before = os.getloadavg()[0]
        cpu0 = sum(runner.client.run(cpu_seconds).values())
        t0 = time.perf_counter()
        result = ShardedCampaign([config], Path(out), runner, shards=SHARDS).run()
        wall = time.perf_counter() - t0
        cpu = sum(runner.client.run(cpu_seconds).values()) - cpu0
        after = os.getloadavg()[0]
    # the workers' CPU time over wall time: how many cores the campaign actually had
    load = f"load {before:.1f} -> {after:.1f}; the workers had {cpu / wall:.2f} core(s)"
    return wall, result.examples, result.steps, cpu, load


def main() -> None:
    examples = 80 if "--quick" in sys.argv else 240
    cores = os.cpu_count() or 1
    print(f"{cores} cores; load average (1 min) before the benchmark: {os.getloadavg()[0]:.1f}")
    rates, per_cpu = {}, {}
    for workers in (1, 2):
        wall, done, steps, cpu, load = measure(workers, examples)
        rates[workers], per_cpu[workers] = steps / wall, steps / cpu
        print(
            f"{workers} worker(s): {done} examples, {steps:,} steps in {wall:.1f} s = "
            f"{rates[workers]:,.0f} steps/s, {per_cpu[workers]:,.0f} steps per worker "
            f"CPU-second ({load})"
        )
    ratio = rates[2] / rates[1]
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"speed-up with 2 workers: {ratio:.2f}x (target >= {TARGET}x: {verdict} it)")
    # on a busy machine the wall-clock ratio says more about the other processes than
    # about sharding; the work per CPU-second says whether sharding itself costs
    print(
        f"work per worker CPU-second, 2 workers over 1: {per_cpu[2] / per_cpu[1]:.2f} "
        "(1.0: sharding adds no work; the wall-clock speed-up needs 2 free cores)"
    )


if __name__ == "__main__":
    main()
