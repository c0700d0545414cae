"""Fuzzer throughput: what the simulator costs on top of Hypothesis.

1. `BlockMachine` with every invariant checker on: QMP steps per second and
   examples per second, generation only (no shrinking, no database, every
   invariant muted so that no failure cuts the run short).
2. A bare Hypothesis `RuleBasedStateMachine` with as many rules, each taking
   the same `c` argument and doing nothing, run with the same settings.

Prints both and their ratio (the figure: how many times slower than Hypothesis
alone a fuzz step is).  `--quick` runs a fifth of the examples.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from sim.check import CHECKERS
from sim.fuzz.choices import choices
from sim.fuzz.machine import INTERNAL_ERROR, BlockMachine
from sim.replay import StepOutcome

STEPS = 25


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


class Counting(BlockMachine):
    """BlockMachine with every checker on and every failure muted; counts its work."""

    checks = tuple(CHECKERS)
    muted = frozenset([*CHECKERS, INTERNAL_ERROR])
    counts = {"examples": 0, "steps": 0}

    def __init__(self) -> None:
        super().__init__()
        Counting.counts["examples"] += 1

    def run(self, step: dict[str, Any]) -> StepOutcome:
        Counting.counts["steps"] += 1
        return super().run(step)


def bare_machine(n_rules: int) -> type[RuleBasedStateMachine]:
    """A state machine with `n_rules` rules that draw a `c` and do nothing."""
    counts = {"examples": 0, "steps": 0}

    def make_rule(i: int) -> Any:
        def body(self: Any, c: Any) -> None:
            counts["steps"] += 1

        body.__name__ = f"rule_{i}"
        return rule(c=choices())(body)

    def init(self: Any) -> None:
        RuleBasedStateMachine.__init__(self)
        counts["examples"] += 1

    attrs: dict[str, Any] = {f"rule_{i}": make_rule(i) for i in range(n_rules)}
    attrs["__init__"] = init
    attrs["counts"] = counts
    return type("Bare", (RuleBasedStateMachine,), attrs)


def measure(machine: Any, examples: int) -> tuple[float, int, int]:
    """(seconds, examples, steps) of a generation-only run."""
    t0 = time.perf_counter()
    try:
        run_state_machine_as_test(machine, settings=fuzz_settings(examples))  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not judge
        print(f"  (the run ended with {type(exc).__name__}: {str(exc)[:100]})")
    return time.perf_counter() - t0, machine.counts["examples"], machine.counts["steps"]


def main() -> None:
    examples = 100 if "--quick" in sys.argv else 500
    n_rules = len(BlockMachine.setup_state().rules)  # type: ignore[no-untyped-call]
    fuzz_s, fuzz_examples, fuzz_steps = measure(Counting, examples)
    bare = bare_machine(n_rules)
    bare_s, bare_examples, bare_steps = measure(bare, examples)
    fuzz_rate, bare_rate = fuzz_steps / fuzz_s, bare_steps / bare_s
    print(
        f"fuzz: BlockMachine, {n_rules} rules, {len(CHECKERS)} checkers on: "
        f"{fuzz_examples} examples, {fuzz_steps:,} QMP steps in {fuzz_s:.1f} s = "
        f"{fuzz_rate:,.0f} steps/s, {fuzz_examples / fuzz_s:,.1f} examples/s"
    )
    print(
        f"bare: RuleBasedStateMachine, {n_rules} rules doing nothing: "
        f"{bare_examples} examples, {bare_steps:,} steps in {bare_s:.1f} s = "
        f"{bare_rate:,.0f} steps/s, {bare_examples / bare_s:,.1f} examples/s"
    )
    print(f"ratio: a fuzz step costs {bare_rate / fuzz_rate:.1f}x a bare Hypothesis step")


if __name__ == "__main__":
    main()
