"""Replaying a trace on the simulator, step by step, against its expectations.

`replay(trace)` builds a Machine from the header, runs every step, compares
each `expect` and the `final-expect`, and returns a `ReplayResult` holding
the per-step output lines of the trace spec (`--json`) and every mismatch.
A bad line is reported with its line number and the replay goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim import sim_only
from sim.compare import first_difference
from sim.engine import until, view, workload
from sim.engine.machine import NS_PER_S, Machine
from sim.errors import TraceError
from sim.qmp import commands  # noqa: F401 - registers every command
from sim.qmp.cmd_query import final_state
from sim.qmp.dispatch import Monitor
from sim.trace import Step, Trace

DEFAULT_WAIT_LIMIT_S = 3600.0


@dataclass
class StepOutcome:
    """One step's output line, plus what went wrong with it (if anything)."""

    index: int
    line: int
    command: dict[str, Any]
    response: dict[str, Any]
    events: list[dict[str, Any]]
    time_s: float
    output: str | None = None
    mismatch: str | None = None
    error: str | None = None
    violations: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def json_line(self) -> dict[str, Any]:
        line: dict[str, Any] = {
            "step": self.index,
            "command": self.command,
            "response": self.response,
            "events": self.events,
            "time": self.time_s,
        }
        if self.output is not None:
            line["output"] = self.output
        if self.error is not None:
            line["trace-error"] = self.error
        if self.violations:
            line["violations"] = self.violations
        if self.warnings:
            line["warnings"] = self.warnings
        return line


@dataclass
class ReplayResult:
    """Everything a replay produced."""

    trace: Trace
    policy: str
    seed: int
    steps: list[StepOutcome]
    final: dict[str, Any]
    mismatches: list[str]
    trace_errors: list[str]
    internal_errors: list[str]
    warnings: list[str]
    machine: Machine

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.trace_errors and not self.internal_errors


def sim_only_step(m: Machine, step: Step) -> tuple[dict[str, Any], str | None]:
    """Run a `workload`, `fault`, `until` or `tie-break` step (sim-only; see
    docs/sim-only-steps.md).

    All answer `{}`: a workload runs while time advances, a fault waits for the
    requests it will fail, `until` moves time to a point of a job, `tie-break`
    sets the order of same-instant events.  Raises TraceError for a bad step."""
    body = step.body.get(step.kind)
    if not isinstance(body, dict):
        raise TraceError(f"{step.kind} takes an object", step.line)
    if step.kind == "workload":
        spec = sim_only.parse_workload(m, body, step.line)
        m.workloads.append(workload.start_workload(m, spec))
        return {}, None
    if step.kind == "fault":
        m.faults.add(sim_only.parse_fault(m, body, step.line))
        return {}, None
    if step.kind == "until":
        until.run_until(m, sim_only.parse_until(body, step.line))
        return {}, None
    if step.kind == "tie-break":
        seed = body.get("seed")
        if set(body) != {"seed"} or not (
            seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0)
        ):
            raise TraceError('tie-break takes {"seed": N} (N >= 0) or {"seed": null}', step.line)
        m.env.set_tie_seed(seed)
        return {}, None
    raise TraceError(f"unknown sim-only step {step.kind!r}", step.line)


class Replayer:
    """Runs the steps of one trace on one Machine."""

    def __init__(
        self,
        trace: Trace,
        policy: str | None = None,
        seed: int | None = None,
        checkers: list[Any] | None = None,
        guard: bool | None = None,
    ) -> None:
        """`guard`: check that checkers never change the machine (a debug mode that
        costs a walk of the state per observer call; None: `BLOCKSIM_GUARD_VIEW`)."""
        h = trace.header
        self.trace = trace
        self.policy = policy or h.policy
        self.seed = h.seed if seed is None else seed
        self.machine = Machine(h.drives, self.policy, self.seed)
        self.monitor = Monitor(self.machine)
        self.checkers = checkers or []
        self.guard = view.guard_wanted() if guard is None else guard
        for checker in self.checkers:
            marks = {k: len(v) for k, v in view.observer_lists(self.machine).items()}
            checker.attach(self.machine)
            if self.guard:
                view.guard_observers(self.machine, f"checker {checker.name}", marks)
        self.outcomes: list[StepOutcome] = []
        self.mismatches: list[str] = []
        self.trace_errors: list[str] = []

    def run(self) -> ReplayResult:
        for index, step in enumerate(self.trace.steps, start=1):
            self.outcomes.append(self.run_step(index, step))
        return self.finish()

    def run_step(self, index: int, step: Step) -> StepOutcome:
        m = self.machine
        mark = len(m.events)
        warned = len(m.state.warnings)
        response: dict[str, Any] = {}
        output: str | None = None
        error: str | None = None
        try:
            response, output = self._dispatch(step)
        except TraceError as exc:
            exc.line = exc.line or step.line
            error = str(exc)
            self.trace_errors.append(f"step {index}: {error}")
        events = [e.wire() for e in m.events.since(mark)]
        outcome = StepOutcome(
            index,
            step.line,
            step.command,
            response,
            events,
            m.now_ns / NS_PER_S,
            output,
            None,
            error,
        )
        outcome.warnings = m.state.warnings[warned:]
        for checker in self.checkers:
            found = self._hook(checker, "after_step")(index)
            if found:
                outcome.violations.extend(v.to_dict() for v in found)
        if step.expect is not None and error is None:
            diff = first_difference(step.expect, _comparable(response))
            if diff:
                outcome.mismatch = diff
                self.mismatches.append(
                    f"step {index} (line {step.line}) {_label(step)}: {diff}\n"
                    f"    expected: {step.expect}\n    got:      {_comparable(response)}"
                )
        return outcome

    def _dispatch(self, step: Step) -> tuple[dict[str, Any], str | None]:
        m = self.machine
        if step.kind == "bad":
            assert step.error is not None
            raise step.error
        if step.kind == "execute":
            request = {"execute": step.body["execute"]}
            if "arguments" in step.body:
                request["arguments"] = step.body["arguments"]
            if "id" in step.body:
                request["id"] = step.body["id"]
            m.hmp_output = None
            response = self.monitor.execute(request)
            return response, m.hmp_output
        if step.kind == "wait":
            w = step.body["wait"]
            limit = w.get("timeout", DEFAULT_WAIT_LIMIT_S)
            ev = m.wait_for(w["event"], w.get("data", {}), int(round(limit * NS_PER_S)))
            if ev is None:
                what = f"wait for {w['event']} {w.get('data', {})}"
                if m.env.peek() == float("inf"):
                    raise TraceError(
                        f"{what} can never be satisfied: no such event is pending and "
                        "the event queue is empty",
                        step.line,
                    )
                raise TraceError(
                    f"{what}: not emitted within the wait's timeout of {limit:g} simulated "
                    f"seconds (now t={m.now_ns / NS_PER_S:.9f}s; the simulation still "
                    "has events pending: a longer timeout may see it)",
                    step.line,
                )
            return ev.wire(), None
        if step.kind == "advance":
            m.advance(float(step.body["advance"]))
            return {}, None
        return sim_only_step(m, step)

    def _hook(self, checker: Any, name: str) -> Any:
        """A checker's hook, under the read-only guard when it is on."""
        fn = getattr(checker, name)
        if not self.guard:
            return fn
        return view.GuardedObserver(self.machine, fn, f"checker {checker.name} ({name})")

    def finish(self) -> ReplayResult:
        m = self.machine
        final = final_state(m)
        violations: list[dict[str, Any]] = []
        for checker in self.checkers:
            violations.extend(v.to_dict() for v in self._hook(checker, "at_end")())
        final["violations"] = violations
        final["events"] = [e.wire() for e in m.events.history]
        fe = self.trace.final_expect
        if fe is not None:
            diff = final_difference(fe, final)
            if diff:
                self.mismatches.append(f"final state: {diff}")
        return ReplayResult(
            self.trace,
            self.policy,
            self.seed,
            self.outcomes,
            final,
            self.mismatches,
            self.trace_errors,
            self.monitor.internal_errors,
            m.state.warnings,
            m,
        )


OTHER_ORDERS = "other-event-orders"


def final_difference(expect: dict[str, Any], final: dict[str, Any]) -> str | None:
    """Where the final state differs from a `final-expect`; None when it matches.

    `events` is one whole ordered list; a recording of several runs on QEMU
    (`blocksim record --runs`) where QEMU raced into other orders keeps them in
    `other-event-orders`, and the events may equal any one of those lists."""
    orders = expect.get(OTHER_ORDERS)
    main = {k: v for k, v in expect.items() if k != OTHER_ORDERS}
    diff = first_difference(main, {k: final.get(k) for k in main})
    if diff is None or not isinstance(orders, list) or "events" not in main:
        return diff
    for events in orders:
        if first_difference({**main, "events": events}, {k: final.get(k) for k in main}) is None:
            return None
    return f"{diff} (nor one of the {len(orders)} other event order(s) QEMU gave)"


def _comparable(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "id"}


def _label(step: Step) -> str:
    if step.kind == "execute":
        return str(step.body.get("execute"))
    return step.kind


def replay(
    trace: Trace,
    policy: str | None = None,
    seed: int | None = None,
    checkers: list[Any] | None = None,
) -> ReplayResult:
    """Replay a parsed trace; see ReplayResult."""
    return Replayer(trace, policy, seed, checkers).run()
