"""Engine benchmarks: what copy-before-write costs the guest, and how
fast the engine simulates I/O.

1. Simulated guest write latency, p50 and p99, of a 4 KiB uniform random
   write workload on a 1 GiB disk (default device timing), without a job and
   while a `drive-backup sync=full` of the whole disk runs.  Copy-before-write
   must show: the p99 with the backup is at least twice the p99 without.
2. Wall-clock speed: simulated guest I/O operations per second with no job,
   next to bare simpy doing the same number of simpy events (counted on an
   identical run).  Two bare loops: `timeouts` (one process yielding N
   timeouts, the cheapest possible event) and `same shape` (a process per
   request, a Resource slot and a timeout, as the engine does, but no
   model).  The ratio engine / bare-timeouts is the figure; target <= 3.
3. A backup's block-copy pool: a full backup of 512 MiB of data (64 1 MiB
   tasks in flight, each a read and a write on its device) run to its end,
   with analytic device time (a request is one simpy timeout, `Device.served`)
   and with the devices' queue slots and links run as simpy resources (the
   run before analytic device time; `Machine.leaps` off).  Both runs must
   give the same end time; the figure is the ratio of simpy steps and of wall
   time, target >= 2x fewer steps.

Prints each figure next to its target.  `--quick` runs a fifth of the work.
Wall times are the best of five runs, the three loops taking turns.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Generator
from typing import Any

import simpy

from sim.replay import Replayer
from sim.trace import parse_lines

GIB = 1 << 30
DRIVE = {
    "id": "drive0",
    "node-name": "fmt0",
    "file-node-name": "proto0",
    "format": "qcow2",
    "size": GIB,
}


def trace_lines(steps: list[dict[str, Any]], seed: int = 1) -> list[str]:
    header = {"trace": 1, "name": "bench-engine", "drives": [DRIVE], "seed": seed}
    return [json.dumps(header)] + [json.dumps(s) for s in steps]


def run(steps: list[dict[str, Any]]) -> Replayer:
    r = Replayer(parse_lines(trace_lines(steps)))
    for index, step in enumerate(r.trace.steps, start=1):
        outcome = r.run_step(index, step)
        if outcome.error or outcome.mismatch:
            raise SystemExit(f"benchmark trace failed at step {index}: {outcome.error}")
    return r


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] / 1000  # microseconds


# -- 1. latency ----------------------------------------------------------------------------


def bench_latency(rate: int, duration_s: float) -> dict[str, Any]:
    workload = {
        "workload": {
            "device": "drive0",
            "pattern": "uniform",
            "rate": rate,
            "size": 4096,
            "duration": duration_s,
            "read-ratio": 0.0,
        }
    }
    idle = run([workload, {"advance": duration_s + 1}]).machine
    base = [r.latency_ns for r in idle.io_log if r.op == "write"]
    backup = {
        "execute": "drive-backup",
        "arguments": {"device": "drive0", "target": "full.qcow2", "sync": "full", "job-id": "full"},
    }
    done = {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "full"}}}
    busy = run([workload, backup, done]).machine
    during = [r.latency_ns for r in busy.io_log if r.op == "write" and "backup" in r.jobs]
    return {"idle": base, "backup": during, "backup_s": busy.now_ns / 1e9}


# -- 2. speed ------------------------------------------------------------------------------


def engine_steps(ops: int) -> list[dict[str, Any]]:
    rate = 20000
    return [
        {
            "workload": {
                "device": "drive0",
                "pattern": "uniform",
                "rate": rate,
                "size": 4096,
                "duration": ops / rate,
                "read-ratio": 0.0,
            }
        }
    ]


def time_engine(ops: int) -> tuple[float, int]:
    """(wall seconds, guest requests) of running the workload to its end."""
    r = Replayer(parse_lines(trace_lines(engine_steps(ops))))
    r.run_step(1, r.trace.steps[0])
    env = r.machine.env
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0, len(r.machine.io_log)


def count_events(ops: int) -> int:
    r = Replayer(parse_lines(trace_lines(engine_steps(ops))))
    r.run_step(1, r.trace.steps[0])
    env, n = r.machine.env, 0
    while env.peek() != float("inf"):
        env.step()
        n += 1
    return n


def bare_timeouts(events: int) -> float:
    env = simpy.Environment()

    def loop() -> Generator[simpy.Event, Any, None]:
        for _ in range(events):
            yield env.timeout(1)

    env.process(loop())
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0


def bare_same_shape(ops: int) -> float:
    """Arrivals, a process per request, a Resource slot, a service timeout: no model."""
    env = simpy.Environment()
    queue = simpy.Resource(env, capacity=32)

    def request() -> Generator[simpy.Event, Any, None]:
        slot = queue.request()
        yield slot
        yield env.timeout(100_000)
        queue.release(slot)

    def arrivals() -> Generator[simpy.Event, Any, None]:
        for _ in range(ops):
            yield env.timeout(50_000)
            env.process(request())

    env.process(arrivals())
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0


# -- 3. a backup's task pool -----------------------------------------------------------------


def pool_trace(data_mib: int) -> list[dict[str, Any]]:
    write = f'qemu-io drive0 "write -P 7 0 {data_mib}M"'
    backup = {"device": "drive0", "target": "pool.qcow2", "sync": "full", "job-id": "bk"}
    return [
        {"execute": "human-monitor-command", "arguments": {"command-line": write}},
        {"execute": "drive-backup", "arguments": backup},
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}},
    ]


def time_pool(args: tuple[int, bool]) -> tuple[float, int, int]:
    """(wall seconds of the backup's run, simpy steps, simulated end in ns)."""
    data_mib, analytic = args
    r = Replayer(parse_lines(trace_lines(pool_trace(data_mib))))
    r.machine.leaps = analytic
    env = r.machine.env
    steps = [0]
    real_step = env.step

    def step() -> None:
        steps[0] += 1
        real_step()

    env.step = step  # type: ignore[method-assign]
    for index, step_ in enumerate(r.trace.steps[:2], start=1):
        r.run_step(index, step_)
    t0 = time.perf_counter()
    outcome = r.run_step(3, r.trace.steps[2])
    wall = time.perf_counter() - t0
    if outcome.error or outcome.mismatch:
        raise SystemExit(f"pool benchmark failed: {outcome.error}")
    return wall, steps[0], r.machine.now_ns


def interleaved_best(runs: int, *timed: Any) -> list[float]:
    """Best wall time of each (fn, arg) pair, the pairs run in turn `runs` times so
    that a change in machine load hits every figure alike."""
    best = [float("inf")] * len(timed)
    for _ in range(runs):
        for i, (fn, arg) in enumerate(timed):
            result = fn(arg)
            best[i] = min(best[i], result[0] if isinstance(result, tuple) else result)
    return best


def main() -> None:
    quick = "--quick" in sys.argv
    scale = 5 if quick else 1
    rate, duration = 1000, 10.0 / scale

    lat = bench_latency(rate, duration)
    idle50, idle99 = percentile(lat["idle"], 0.50), percentile(lat["idle"], 0.99)
    bk50, bk99 = percentile(lat["backup"], 0.50), percentile(lat["backup"], 0.99)
    print(f"guest 4 KiB random writes at {rate}/s on a 1 GiB disk (simulated latency, us)")
    print(
        f"  no job:           p50 {idle50:8.1f}   p99 {idle99:8.1f}   ({len(lat['idle'])} writes)"
    )
    print(
        f"  full backup runs: p50 {bk50:8.1f}   p99 {bk99:8.1f}   ({len(lat['backup'])} writes;"
        f" backup took {lat['backup_s']:.2f} s simulated)"
    )
    ratio99 = bk99 / idle99
    verdict = "ok" if ratio99 >= 2 else "MISSED"
    print(f"  p99 with backup / without: {ratio99:.1f}x   target >= 2x (CBW visible)  {verdict}")

    ops = 100_000 // scale
    events = count_events(ops)
    done = time_engine(ops)[1]
    engine_s, bare_s, shape_s = interleaved_best(
        5, (time_engine, ops), (bare_timeouts, events), (bare_same_shape, done)
    )
    print(
        f"\nengine speed: {done} guest requests, {events} simpy events "
        f"({events / done:.1f} per request)"
    )
    print(
        f"  engine:              {done / engine_s:10,.0f} simulated I/O ops/s "
        f"({engine_s * 1e6 / done:.1f} us per op)"
    )
    print(
        f"  bare simpy timeouts: {done / bare_s:10,.0f} ops/s at the same event count "
        f"({events / bare_s:,.0f} events/s)"
    )
    print(f"  bare simpy, same shape (no model): {done / shape_s:10,.0f} ops/s")
    ratio = engine_s / bare_s
    verdict = "ok" if ratio <= 3 else "MISSED"
    print(f"  engine / bare timeouts: {ratio:.2f}x   target <= 3x  {verdict}")
    print(f"  engine / bare same shape: {engine_s / shape_s:.2f}x")

    data_mib = 512 // scale
    fast, slow = time_pool((data_mib, True)), time_pool((data_mib, False))
    if fast[2] != slow[2]:
        raise SystemExit(f"pool benchmark: end {fast[2]} ns analytic, {slow[2]} ns resources")
    fast_s, slow_s = interleaved_best(
        5, (time_pool, (data_mib, True)), (time_pool, (data_mib, False))
    )
    print(
        f"\nbackup block-copy pool: {data_mib} MiB of data, 64 tasks in flight, "
        f"{fast[2] / 1e9:.3f} s simulated either way"
    )
    print(f"  analytic device time: {fast[1]:8,} simpy steps  {fast_s * 1e3:7.1f} ms")
    print(f"  queue/link resources: {slow[1]:8,} simpy steps  {slow_s * 1e3:7.1f} ms")
    ratio = slow[1] / fast[1]
    verdict = "ok" if ratio >= 2 else "MISSED"
    print(
        f"  steps {ratio:.1f}x fewer   target >= 2x  {verdict};  wall {slow_s / fast_s:.2f}x faster"
    )


if __name__ == "__main__":
    main()
