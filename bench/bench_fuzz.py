"""Fuzzer throughput as users see it, against Hypothesis alone.

1. The campaign: `blocksim fuzz --examples 200 --steps 25` exactly as a user
   runs it (its own process, every checker on, the example database in the
   run folder, shrinking on, failures exported), started through `--cli`
   below, which only counts.  Its time is the campaign's own (what the command
   prints, start-up excluded; the process' wall time is printed too).
2. A bare Hypothesis `RuleBasedStateMachine` with as many rules as
   `BlockMachine`, each drawing one integer and doing nothing, run in this
   process for 200 examples of 25 steps with Hypothesis' default phases and
   an example database, as a campaign round has them.

Steps are counted the same way on both sides: *state-machine steps*, one per
rule Hypothesis runs (its initialize rule included, which Hypothesis counts
towards `stateful_step_count` too), in every run: generating, replaying the
database, shrinking.  The bare machine's rules count themselves; the campaign's
are counted where Hypothesis hands a drawn rule (and its arguments) over to be
run (`RuleStrategy.do_draw`) and where `MachineCore.start` opens an example.
A campaign rule is a QMP command, a guest write, a time step or a whole race
(a job started, raced and run to its end: a dozen trace steps), so the command
also prints *trace steps* (each QMP command or sim-only step run, what
`blocksim fuzz` calls steps): 2-3 a state-machine step.  Trace steps over bare
steps is printed too, but it is not the ratio the target is about.

`bench/bench_costs.py fuzz` (the costs table) takes its row from here.

The figure is campaign steps/s over bare steps/s, against the target
(>= 0.7x).  Both are also given per CPU-second (the campaign process' user +
system time, this process' time for the bare machine), which other processes
on the machine do not change: `uptime` is printed next to the timings.  When
more than one core is usable, `blocksim fuzz` polishes expected failures in a
forked child while the round goes on (sim.fuzz.export.BackgroundPolish): the
wall time then overlaps that work, and the per-CPU-second figure counts the
child's CPU with the campaign's.
`--quick` runs 50 examples each; `--examples N` sets the count.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from sim.fuzz.machine import BlockMachine

STEPS = 25
TARGET = 0.7
ROOT = Path(__file__).resolve().parent.parent


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CampaignRun:
    """What one `blocksim fuzz` process did."""

    machine_steps: int  # state-machine steps (rules run, initialize included)
    trace_steps: int  # QMP and sim-only steps (what the command prints as steps)
    own_s: float  # the campaign's wall time, start-up excluded (campaign.json)
    wall: float  # the process' wall time
    cpu: float  # the process' user + system time


def campaign(examples: int) -> CampaignRun:
    """`blocksim fuzz --examples N --steps 25` in a process of its own, counted."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: compiled modules kept
    with tempfile.TemporaryDirectory() as tmp:
        out, counts = Path(tmp) / "run", Path(tmp) / "counts.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--cli", str(counts), "fuzz"]
        cmd += ["--examples", str(examples), "--steps", str(STEPS), "--out", str(out)]
        cmd += ["--no-progress"]
        cpu0, t0 = children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if proc.returncode not in (0, 1):  # 1: the campaign found failures
            raise SystemExit(f"blocksim fuzz failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads((out / "campaign.json").read_text())
        machine_steps = int(json.loads(counts.read_text())["machine_steps"])
    return CampaignRun(machine_steps, int(summary["steps"]), float(summary["wall_s"]), wall, cpu)


def counted_cli(counts: str, argv: list[str]) -> None:
    """Run `blocksim ARGV` as the console script does, counting state-machine steps into
    the JSON file `counts` when the process exits (one wrapped call a step)."""
    import atexit

    from hypothesis.stateful import RuleStrategy

    from sim.entry import run
    from sim.fuzz.machine import MachineCore

    seen = {"machine_steps": 0}
    draw, open_ = RuleStrategy.do_draw, MachineCore.open

    def counted_draw(self: Any, data: Any) -> Any:
        out = draw(self, data)  # a rule and its arguments: the rule runs next
        seen["machine_steps"] += 1
        return out

    def counted_open(self: Any, *args: Any, **kwargs: Any) -> None:
        # the initialize rule (MachineCore.start) ends by opening the example; it was
        # collected when the class was made, so it is counted from inside its body
        seen["machine_steps"] += 1
        open_(self, *args, **kwargs)

    RuleStrategy.do_draw = counted_draw  # type: ignore[method-assign]
    MachineCore.open = counted_open  # type: ignore[method-assign]
    atexit.register(lambda: Path(counts).write_text(json.dumps(seen)))
    sys.argv = ["blocksim", *argv]
    run()


def bare_machine(n_rules: int) -> type[RuleBasedStateMachine]:
    """A state machine with `n_rules` rules that draw an integer and do nothing."""
    counts = {"steps": 0}

    def make_rule(i: int) -> Any:
        def body(self: Any, c: int) -> None:
            counts["steps"] += 1

        body.__name__ = f"rule_{i}"
        return rule(c=st.integers(0, 255))(body)

    attrs: dict[str, Any] = {f"rule_{i}": make_rule(i) for i in range(n_rules)}
    attrs["counts"] = counts
    return type("Bare", (RuleBasedStateMachine,), attrs)


def bare(n_rules: int, examples: int) -> tuple[int, float, float]:
    """(steps, seconds, CPU seconds) of the bare machine with the settings a campaign
    round has that apply to it: Hypothesis' default phases, an example database."""
    machine = bare_machine(n_rules)
    with tempfile.TemporaryDirectory() as tmp:
        config = settings(
            max_examples=examples,
            stateful_step_count=STEPS,
            deadline=None,
            database=DirectoryBasedExampleDatabase(tmp),
            suppress_health_check=list(HealthCheck),
        )
        cpu0, t0 = time.process_time(), time.perf_counter()
        run_state_machine_as_test(machine, settings=config)  # type: ignore[no-untyped-call]
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    steps: int = getattr(machine, "counts")["steps"]  # noqa: B009 - set by bare_machine
    return steps, wall, cpu


def rule_count() -> int:
    return len(BlockMachine.setup_state().rules)  # type: ignore[no-untyped-call]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--cli":
        counted_cli(sys.argv[2], sys.argv[3:])
        return
    examples = 50 if "--quick" in sys.argv else 200
    if "--examples" in sys.argv:
        examples = int(sys.argv[sys.argv.index("--examples") + 1])
    n_rules = rule_count()
    print(f"before: {uptime()}")
    run = campaign(examples)
    b_steps, b_s, b_cpu = bare(n_rules, examples)
    print(f"after:  {uptime()}")
    rate, b_rate = run.machine_steps / run.own_s, b_steps / b_s
    print(
        f"campaign: blocksim fuzz --examples {examples} --steps {STEPS}: "
        f"{run.machine_steps:,} state-machine steps ({run.trace_steps:,} trace steps) "
        f"generating, replaying, shrinking in {run.own_s:.1f} s = {rate:,.0f} steps/s "
        f"({run.trace_steps / run.own_s:,.0f} trace steps/s; {run.wall:.1f} s with start-up); "
        f"{run.machine_steps / run.cpu:,.0f} steps per CPU-second"
    )
    print(
        f"bare:     {n_rules}-rule RuleBasedStateMachine drawing one integer a rule: "
        f"{b_steps:,} steps in {b_s:.1f} s = {b_rate:,.0f} steps/s; "
        f"{b_steps / b_cpu:,.0f} steps per CPU-second"
    )
    ratio = rate / b_rate
    cpu_ratio = (run.machine_steps / run.cpu) / (b_steps / b_cpu)
    verdict = "meets" if ratio >= TARGET else "misses"
    print(
        f"ratio: campaign state-machine steps/s over bare {ratio:.2f}x (target >= {TARGET}x: "
        f"{verdict} it); per CPU-second {cpu_ratio:.2f}x; trace steps/s over bare steps/s "
        f"{run.trace_steps / run.own_s / b_rate:.2f}x"
    )


if __name__ == "__main__":
    main()
