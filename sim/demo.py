"""`blocksim demo`: replays, a short campaign and a policy matrix, then the report.

    run_demo(out_dir, scenarios_dir, fuzz_seconds, say) -> Report

Builds the run folder `out_dir/run/` and the report `out_dir/index.html`:

1. timelines of a few bundled scenarios with jobs (those of `scenarios/engine/`
   with a guest workload first) and of `demo-jobs-under-load`, a trace written
   here that runs a guest workload across a full backup, then a write-blocking
   mirror to READY and its pivot (the two costs the latency figure compares);
2. a fuzz campaign of `fuzz_seconds` through `sim.fuzz.campaign.run_campaign`
   when the fuzzer is installed (skipped with a note otherwise);
3. matrix.json: every scenario replayed under every policy with every checker,
   each (policy, invariant) cell keeping the shortest trace that breaks it;
4. `build_report(out_dir/run, out_dir)`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim import bundled
from sim.replay import ReplayResult, replay
from sim.report import Report, build_report, command_line
from sim.timeline import TimelineRecorder, write_json
from sim.trace import Trace, atomic_write_text, dumps, load_trace

Say = Callable[[str], None]

# Bundled scenarios with jobs worth a timeline, after scenarios/engine's workloads.
PICKED = (
    "qemu-7.2/bk-iotest124-incremental-simple.jsonl",
    "engine/com-active.jsonl",
    "thread/snapshot-breaks-device-bitmap.jsonl",
)
MAX_TIMELINES = 7

DEMO_TRACE: list[dict[str, Any]] = [
    {
        "trace": 1,
        "name": "demo-jobs-under-load",
        "drives": [
            {
                "id": "drive0",
                "node-name": "fmt0",
                "file-node-name": "proto0",
                "format": "qcow2",
                "size": 256 << 20,
                "timing": {"jitter": 0.1},
            }
        ],
        "policy": "qemu-7.2",
        "seed": 1,
        "description": "blocksim demo: on a drive with 10% timing jitter, a Zipf guest "
        "workload (400 requests/s, 64 KiB, 30% reads) runs for 12 s; a rate-limited full backup runs from t=2 s (copy-before-write "
        "delays writes to clusters not yet copied), then a write-blocking mirror reaches "
        "READY (every write also goes to the target) and pivots. Two bitmaps, one cleared "
        "when the backup ends, show the dirty counts.",
    },
    {"execute": "block-dirty-bitmap-add", "arguments": {"node": "fmt0", "name": "since-start"}},
    {"execute": "block-dirty-bitmap-add", "arguments": {"node": "fmt0", "name": "incremental"}},
    {
        "workload": {
            "device": "drive0",
            "pattern": "zipf",
            "rate": 400,
            "size": 65536,
            "duration": 12,
            "read-ratio": 0.3,
        }
    },
    {"advance": 2},
    {
        "execute": "drive-backup",
        "arguments": {
            "device": "drive0",
            "job-id": "backup0",
            "sync": "full",
            "target": "full.qcow2",
            "format": "qcow2",
            "speed": 134217728,
        },
    },
    {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "backup0"}}},
    {"execute": "block-dirty-bitmap-clear", "arguments": {"node": "fmt0", "name": "incremental"}},
    {"advance": 1},
    {
        "execute": "drive-mirror",
        "arguments": {
            "device": "drive0",
            "job-id": "mirror0",
            "sync": "full",
            "target": "mirror.qcow2",
            "format": "qcow2",
            "copy-mode": "write-blocking",
        },
    },
    {"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "mirror0"}}},
    {"advance": 2},
    {"execute": "block-job-complete", "arguments": {"device": "mirror0"}},
    {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "mirror0"}}},
    {"advance": 6},
]


def run_demo(out_dir: Path, scenarios: Path, fuzz_seconds: float, say: Say) -> Report:
    """Build the demo run folder under out_dir/run and its report in out_dir."""
    run = out_dir / "run"
    for sub in ("timelines", "traces", "failures"):
        shutil.rmtree(run / sub, ignore_errors=True)
    for name in ("coverage.json", "campaign.json", "matrix.json"):
        (run / name).unlink(missing_ok=True)
    demo = run / "traces" / "demo-jobs-under-load.jsonl"
    demo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(demo, "".join(dumps(line) + "\n" for line in DEMO_TRACE))
    for trace in [demo, *pick_scenarios(scenarios)]:
        result, timeline = record(load_trace(trace), source=str(trace))
        write_json(run / "timelines" / f"{trace.stem}.json", timeline)
        say(
            f"timeline  {bundled.shown(trace)}: {len(result.steps)} steps, "
            f"{timeline['end_ns'] / 1e9:.3g} s"
        )
    fuzz(run, fuzz_seconds, say)
    # the differential corpus (1,000+ QEMU-recorded traces) would only slow the matrix down
    traces = [p for p in scenarios.rglob("*.jsonl") if "differential" not in p.parts]
    matrix = policy_matrix(sorted(traces), run)
    write_json(run / "matrix.json", matrix)
    broken = sum(1 for c in matrix["cells"] if c["broken"])
    say(
        f"matrix    {len(matrix['policies'])} policies x {len(matrix['invariants'])} "
        f"invariants: {broken} broken cells"
    )
    command = command_line(
        ["blocksim", "demo", "-o", str(out_dir), "--fuzz-seconds", f"{fuzz_seconds:g}"]
    )
    report = build_report(run, out_dir, title="blocksim demo report", command=command)
    say(f"report    {report.index}: {len(report.pngs)} figures")
    return report


def pick_scenarios(scenarios: Path) -> list[Path]:
    """scenarios/engine traces with a guest workload, then PICKED (those that exist)."""
    engine = sorted((scenarios / "engine").glob("*.jsonl"))
    with_load = [p for p in engine if '"workload"' in p.read_text(encoding="utf-8")]
    picked = [scenarios / p for p in PICKED if (scenarios / p).is_file()]
    out: list[Path] = []
    for p in [*with_load, *picked]:
        if p not in out:
            out.append(p)
    return out[: MAX_TIMELINES - 1]


def fuzz(run: Path, seconds: float, say: Say) -> None:
    """A short campaign into the run folder, when the fuzzer is installed."""
    if seconds <= 0:
        say("fuzz      skipped (--fuzz-seconds 0)")
        return
    try:
        from sim.fuzz.campaign import CampaignConfig, run_campaign
    except ImportError as exc:
        say(f"fuzz      skipped: the fuzzer is not available ({exc})")
        return
    config = CampaignConfig(
        examples=100_000, steps=20, seed=0, time_budget_s=seconds, out=run, round_examples=100
    )
    result = run_campaign(config)
    if result.stopped == "interrupted":
        # the campaign keeps what it found and returns; the demo stops here too
        raise KeyboardInterrupt
    extra = f" (+{result.replays} runs replaying or shrinking)" if result.replays else ""
    failures = len(result.failures)
    say(
        f"fuzz      {result.examples} example{'s' * (result.examples != 1)} generated{extra}, "
        f"{result.steps} steps in {result.wall_s:.0f} s (budget {seconds:g} s, failures "
        f"exported within it), "
        f"{failures} failure{'s' * (failures != 1)}"
    )


def record(
    trace: Trace,
    policy: str | None = None,
    seed: int | None = None,
    checkers: list[Any] | None = None,
    source: str = "",
) -> tuple[ReplayResult, dict[str, Any]]:
    """Replay `trace` with a recorder attached; returns the result and timeline.json."""
    recorder = TimelineRecorder(trace)
    result = replay(trace, policy, seed, [*(checkers or []), recorder])
    return result, recorder.to_json(result.policy, result.seed, source or trace.path)


def policy_matrix(traces: list[Path], run: Path) -> dict[str, Any]:
    """matrix.json (sim.matrix), each cell's minimal trace copied into run/traces/."""
    from sim.matrix import policy_matrix as build
    from sim.matrix import to_json

    matrix = to_json(build(traces))
    for cell in matrix["cells"]:
        if cell["broken"]:
            path = Path(cell["trace"])
            name = f"{path.parent.name}-{path.name}"  # scenario folders reuse file names
            shutil.copyfile(path, run / "traces" / name)
            cell["trace"] = f"traces/{name}"
    return matrix
