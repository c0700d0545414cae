"""Fuzzer throughput as users see it, against Hypothesis alone.

1. The campaign: `blocksim fuzz --examples 200 --steps 25` exactly as a user
   runs it (its own process, every checker on, the example database in the
   run folder, shrinking on, failures exported).  Its steps are every QMP step
   it ran, generating, replaying or shrinking; its steps/s is what the
   command prints (start-up excluded; the process' wall time is printed too).
2. A bare Hypothesis `RuleBasedStateMachine` with as many rules as
   `BlockMachine`, each drawing one integer and doing nothing, run in this
   process for 200 examples of 25 steps with Hypothesis' default phases and
   an example database, as a campaign round has them.

`bench/bench_costs.py fuzz` (the costs table) takes its row from here.

The figure is campaign steps/s over bare steps/s, against the target
(>= 0.7x).  Both are also given per CPU-second (the campaign process' user +
system time, this process' time for the bare machine), which other processes
on the machine do not change: `uptime` is printed next to the timings.
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


def campaign(examples: int) -> tuple[int, float, float, float]:
    """(steps, the campaign's own seconds, process wall seconds, process CPU seconds)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: compiled modules kept
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "sim", "fuzz", "--examples", str(examples)]
        cmd += ["--steps", str(STEPS), "--out", str(out), "--no-progress"]
        cpu0, t0 = children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if proc.returncode not in (0, 1):  # 1: the campaign found failures
            raise SystemExit(f"blocksim fuzz failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads((out / "campaign.json").read_text())
    return int(summary["steps"]), float(summary["wall_s"]), wall, cpu


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
    examples = 50 if "--quick" in sys.argv else 200
    if "--examples" in sys.argv:
        examples = int(sys.argv[sys.argv.index("--examples") + 1])
    n_rules = rule_count()
    print(f"before: {uptime()}")
    steps, own_s, wall, cpu = campaign(examples)
    b_steps, b_s, b_cpu = bare(n_rules, examples)
    print(f"after:  {uptime()}")
    rate, b_rate = steps / own_s, b_steps / b_s
    print(
        f"campaign: blocksim fuzz --examples {examples} --steps {STEPS}: {steps:,} steps "
        f"(generating, replaying, shrinking) in {own_s:.1f} s = {rate:,.0f} steps/s "
        f"({wall:.1f} s with start-up); {steps / cpu:,.0f} steps per CPU-second"
    )
    print(
        f"bare:     {n_rules}-rule RuleBasedStateMachine drawing one integer a rule: "
        f"{b_steps:,} steps in {b_s:.1f} s = {b_rate:,.0f} steps/s; "
        f"{b_steps / b_cpu:,.0f} steps per CPU-second"
    )
    ratio, cpu_ratio = rate / b_rate, (steps / cpu) / (b_steps / b_cpu)
    verdict = "meets" if ratio >= TARGET else "misses"
    print(
        f"ratio: campaign steps/s over bare {ratio:.2f}x (target >= {TARGET}x: {verdict} it); "
        f"per CPU-second {cpu_ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
