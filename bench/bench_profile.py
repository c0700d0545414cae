"""Where blocksim's CPU goes in three costs rows: the figures behind README.md's
"What is still behind and why".

  writes   random 4 KiB guest writes one by one (io.write) on a 1 TiB qcow2 disk with
           4 bitmaps, then the first read, which splices the write log in: CPU per
           write, and the share of each module (cProfile's own time, by file)
  one      `blocksim replay` of one 23-step trace as a process: the interpreter
           with this machine's site hooks (`python -c pass`), click, blocksim's
           modules (and the share of that spent creating dataclasses), the replay
  traces   the recorded traces of the costs table's first row in one process:
           imports, reading the traces, replaying (CPU a step) and the largest
           module's share of the replay

Each part runs in fresh interpreters (`--child`), CPU times are medians of
`--repeat` runs (default 5); module shares come from one run under cProfile
(which slows Python calls, so shares, not times, are taken from it).

    python bench/bench_profile.py [--writes N] [--repeat R] [--json FILE]

`--json bench/results/profile.json` keeps the figures and the load average
before and after; README.md's paragraph is rendered from it
(scripts/readme_numbers.py).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import runpy
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_costs  # noqa: E402 - next to this file


def process_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def shares(profile: cProfile.Profile, top: int = 5) -> list[tuple[str, float]]:
    """Own time by source file: (file under the repository or a library's top package,
    percent of the whole), largest first."""
    stats = pstats.Stats(profile)
    by_file: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        path = Path(filename)
        if filename == "~":
            name = "built-in functions"
        elif filename.startswith("<"):
            name = "other"
        elif path.is_relative_to(ROOT):
            name = str(path.relative_to(ROOT))
        else:
            name = next(
                (p for p in reversed(path.parts[:-1]) if p in ("numpy", "simpy", "bitarray")),
                f"Python's {path.name}",
            )
        by_file[name] = by_file.get(name, 0.0) + tottime
    total = sum(by_file.values()) or 1.0
    ranked = sorted(by_file.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [(name, round(100 * t / total, 1)) for name, t in ranked]


def cumulative(profile: cProfile.Profile, filename_end: str, function: str) -> float:
    stats = pstats.Stats(profile)
    total = 0.0
    for (filename, _, name), (_, _, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename.endswith(filename_end) and name == function:
            total += cumtime
    return total


# -- children -------------------------------------------------------------------------------
def child_writes(n: int, profiled: bool) -> dict[str, Any]:
    from sim.model import io

    state, bb, offsets = bench_costs.writes_drive(n)
    root, new_stamp = bb.root, state.new_stamp
    assert root is not None and root.content is not None
    content = root.content
    profile = cProfile.Profile() if profiled else None
    c0 = time.process_time()
    if profile is not None:
        profile.enable()
    for off in offsets:
        io.write(state, bb, root, off, 4096, new_stamp(5))
    c1 = time.process_time()
    content.stamp_at(0)  # the first read splices the log in
    c2 = time.process_time()
    if profile is not None:
        profile.disable()
        return {"shares": shares(profile)}
    return {"write_us": (c1 - c0) / n * 1e6, "splice_us": (c2 - c1) / n * 1e6}


def _replay_argv() -> list[str]:
    return ["sim", "replay", str(bench_costs.ONE_TRACE)]


def _run_sim(argv: list[str]) -> None:
    """`python -m sim ARGS` in this process, its output dropped."""
    saved_argv, saved_out = sys.argv, sys.stdout
    sys.argv = argv
    try:
        with open(os.devnull, "w") as sys.stdout:
            runpy.run_module("sim", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        sys.argv, sys.stdout = saved_argv, saved_out


def child_one(modules: list[str], profiled: bool) -> dict[str, Any]:
    """Import click, then the modules a replay loads, then replay (each timed)."""
    import importlib

    c0 = time.process_time()
    import click  # noqa: F401

    c1 = time.process_time()
    profile = cProfile.Profile() if profiled else None
    if profile is not None:
        profile.enable()
    for name in modules:
        importlib.import_module(name)
    if profile is not None:
        profile.disable()
    c2 = time.process_time()
    _run_sim(_replay_argv())
    c3 = time.process_time()
    out: dict[str, Any] = {"click_ms": (c1 - c0) * 1e3, "sim_ms": (c2 - c1) * 1e3,
                           "replay_ms": (c3 - c2) * 1e3}  # fmt: skip
    if profile is not None:
        whole = sum(row[2] for row in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]
        out["dataclass_share"] = cumulative(profile, "dataclasses.py", "_process_class") / whole
    return out


def child_modules() -> dict[str, Any]:
    """The blocksim modules `blocksim replay TRACE` loads."""
    _run_sim(_replay_argv())
    return {"modules": sorted(m for m in sys.modules if m == "sim" or m.startswith("sim."))}


def child_traces(paths: list[str], profiled: bool) -> dict[str, Any]:
    c0 = time.process_time()
    from sim.entry import tune_collector

    tune_collector()
    import sim.replay  # noqa: F401 - its import counts with the others
    from sim.trace import load_trace

    c1 = time.process_time()
    traces = [load_trace(Path(p)) for p in paths]
    c2 = time.process_time()
    profile = cProfile.Profile() if profiled else None
    if profile is not None:
        profile.enable()
    steps, _ = bench_costs.replay_all(traces)
    if profile is not None:
        profile.disable()
        return {"shares": shares(profile)}
    c3 = time.process_time()
    return {
        "imports_ms": (c1 - c0) * 1e3,
        "read_ms": (c2 - c1) * 1e3,
        "replay_ms": (c3 - c2) * 1e3,
        "steps": steps,
        "process_s": process_cpu(),
    }


def in_child(row: str, *args: str) -> dict[str, Any]:
    """Run `--child ROW` of this benchmark in a fresh interpreter (its last line is JSON)."""
    return bench_costs.run_child(__file__, row, *args)


def child_main(args: list[str]) -> None:
    part, rest = args[0], args[1:]
    if part == "writes":
        result = child_writes(int(rest[0]), rest[1] == "1")
    elif part == "modules":
        result = child_modules()
    elif part == "one":
        result = child_one(rest[1:], rest[0] == "1")
    elif part == "traces":
        result = child_traces(rest[1:], rest[0] == "1")
    else:
        raise SystemExit(f"unknown part {part}")
    print(json.dumps(result))


# -- the parts ------------------------------------------------------------------------------
def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def command_cpu_ms(cmd: list[str], repeat: int) -> float:
    """Median CPU of a command run as a process (after one run that fills caches)."""
    env = bench_costs.child_env()
    subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, check=True)
    cpus = []
    for _ in range(repeat):
        c0 = bench_costs.cpu_s()
        subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, check=True)
        cpus.append(bench_costs.cpu_s() - c0)
    return statistics.median(cpus) * 1e3


def part_writes(n: int, repeat: int) -> dict[str, Any]:
    runs = [in_child("writes", str(n), "0") for _ in range(repeat)]
    return {
        "writes": n,
        "write_us": round(median_of(runs, "write_us"), 2),
        "splice_us": round(median_of(runs, "splice_us"), 2),
        "shares": in_child("writes", str(n), "1")["shares"],
    }


def part_one(repeat: int) -> dict[str, Any]:
    modules = in_child("modules")["modules"]
    runs = [in_child("one", "0", *modules) for _ in range(repeat)]
    profiled = in_child("one", "1", *modules)
    return {
        "trace": str(bench_costs.ONE_TRACE.relative_to(ROOT)),
        "process_ms": round(command_cpu_ms([sys.executable, "-m", *_replay_argv()], repeat)),
        "interpreter_ms": round(command_cpu_ms([sys.executable, "-c", "pass"], repeat)),
        "click_ms": round(median_of(runs, "click_ms")),
        "sim_modules": len(modules),
        "sim_ms": round(median_of(runs, "sim_ms")),
        "dataclass_share": round(profiled["dataclass_share"], 2),
        "replay_ms": round(median_of(runs, "replay_ms"), 1),
    }  # fmt: skip


def part_traces(count: int, repeat: int) -> dict[str, Any]:
    paths = [str(p) for p, _ in bench_costs.recorded_traces(count)]
    runs = [in_child("traces", "0", *paths) for _ in range(repeat)]
    steps = runs[0]["steps"]
    return {
        "traces": len(paths),
        "steps": steps,
        "process_s": round(median_of(runs, "process_s"), 2),
        "imports_ms": round(median_of(runs, "imports_ms")),
        "read_ms": round(median_of(runs, "read_ms")),
        "replay_us_per_step": round(median_of(runs, "replay_ms") * 1e3 / steps),
        "shares": in_child("traces", "1", *paths)["shares"],
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200_000, help="writes (part writes)")
    parser.add_argument("--traces", type=int, default=145, help="recorded traces (part traces)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per median")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    load_before = os.getloadavg()[0]
    doc: dict[str, Any] = {
        "command": "python bench/bench_profile.py"
        + (f" --writes {args.writes}" if args.writes != 200_000 else "")
        + (f" --repeat {args.repeat}" if args.repeat != 5 else ""),
        "writes": part_writes(args.writes, args.repeat),
        "one": part_one(args.repeat),
        "traces": part_traces(args.traces, args.repeat),
        "load_before": round(load_before, 1),
        "load_after": round(os.getloadavg()[0], 1),
        "cores": os.cpu_count(),
    }
    print(json.dumps(doc, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
