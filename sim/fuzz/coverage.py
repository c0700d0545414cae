"""What a fuzz campaign has exercised: commands x outcomes, job states, graph shapes.

Theory of operation.  Every fact is a *point*, a triple (category, a, b)
counted in `Coverage.hits`:

=================  ==========================  ====================================
category           a                           b
=================  ==========================  ====================================
``command``        command (qemu-io verb,      ``return``, or the error / qemu-io
                   transaction/<action>, ...)  message with names and numbers blanked
``job-state``      command                     status of the job it names, or of
                                               each live job, or ``no-job``
``transition``     job type                    ``running->ready`` (JOB_STATUS_CHANGE)
``shape``          chain-depth, filters,       the value after a step
                   devices, nodes, jobs,
                   bitmaps
``invariant``      checker name                ``evaluated`` / ``violated`` / ``muted``
``group``          swarm group                 ``enabled``
=================  ==========================  ====================================

The number of distinct points (invariant evaluations excluded) is the
campaign's coverage figure; `series` samples it against examples run and
wall time.  `example_rarity()` scores an example by how rare its points are
(sum of 1/hits), the value the fuzzer hands to `hypothesis.target`.  Nothing
here reads a clock: the campaign passes wall time in.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from sim.fuzz.failures import failure_key, message_shape

Point = tuple[str, str, str]
NOT_COUNTED = frozenset({"invariant", "group"})
JOB_ARG_KEYS = ("id", "device", "job-id")


class Coverage:
    """Counters of coverage points for one campaign (see the module docstring)."""

    def __init__(self) -> None:
        self.hits: Counter[Point] = Counter()
        self.series: list[dict[str, Any]] = []
        self.examples = 0
        self.steps = 0
        self.rejected = 0
        self._example: set[Point] = set()
        self._status: dict[str, str] = {}
        self._types: dict[str, str] = {}  # job id -> type, for jobs gone by now
        self._distinct = 0

    # -- recording ---------------------------------------------------------------------------
    def hit(self, category: str, a: str, b: str) -> None:
        point = (category, a, b)
        if point not in self.hits and category not in NOT_COUNTED:
            self._distinct += 1
        self.hits[point] += 1
        self._example.add(point)

    def start_example(self, groups: frozenset[str]) -> None:
        self.examples += 1
        self._example = set()
        self._status = {}
        self._types = {}
        for g in sorted(groups):
            self.hit("group", g, "enabled")

    def observe_step(
        self,
        machine: Any,
        step: dict[str, Any],
        outcome: Any,
        jobs_before: dict[str, str],
        checkers: tuple[str, ...] = (),
        muted: frozenset[str] = frozenset(),
    ) -> None:
        """Record one step: its outcome, the job states it met, and the shape it left."""
        self.steps += 1
        if outcome.error is not None:
            self.rejected += 1
            self.hit("trace-error", step_label(step), message_shape(outcome.error))
            return
        label = step_label(step)
        result = outcome_label(step, outcome)
        self.hit("command", label, result)
        if "execute" in step:
            for action in step.get("arguments", {}).get("actions", []) or []:
                if isinstance(action, dict):
                    self.hit("command", f"transaction/{action.get('type')}", result)
        for state in job_states_met(step, jobs_before):
            self.hit("job-state", label, state)
        self._transitions(machine, outcome.events)
        self._shape(machine)
        for name in checkers:
            self.hits[("invariant", name, "evaluated")] += 1
        for v in outcome.violations:
            name = str(v.get("invariant"))
            key = failure_key(name, str(v.get("message", "")))
            self.hit("invariant", name, "muted" if name in muted or key in muted else "violated")

    def _transitions(self, machine: Any, events: list[dict[str, Any]]) -> None:
        types = self._types
        types.update((j.id, j.type) for j in machine.state.jobs)
        for ev in events:
            data = ev.get("data", {})
            if "type" in data and "device" in data:  # BLOCK_JOB_* events name the type
                types.setdefault(str(data["device"]), str(data["type"]))
        for ev in events:
            if ev.get("event") != "JOB_STATUS_CHANGE":
                continue
            data = ev.get("data", {})
            job_id, status = str(data.get("id")), str(data.get("status"))
            before = self._status.get(job_id, "undefined")
            self._status[job_id] = status
            self.hit("transition", types.get(job_id, "unknown"), f"{before}->{status}")

    def _shape(self, machine: Any) -> None:
        g = machine.state.graph
        self.hit("shape", "devices", str(len(g.backends)))
        self.hit("shape", "nodes", bucket(len(g.nodes)))
        for bb in g.backends.values():
            self.hit("shape", "chain-depth", chain_depth(bb.root))
        filters = sorted({n.driver for n in g.nodes if n.is_filter})
        self.hit("shape", "filters", "+".join(filters) or "none")
        jobs = sorted(j.type for j in machine.state.jobs)
        self.hit("shape", "jobs", "+".join(jobs) or "none")
        bitmaps = sum(len(n.bitmaps) for n in g.nodes) + sum(
            len(b.bitmaps) for b in g.backends.values()
        )
        self.hit("shape", "bitmaps", bucket(bitmaps))

    def absorb(self, other: Coverage) -> None:
        """Add another campaign's (a shard's) counters to these: the merged points are
        the union of both, every count the sum."""
        for point, n in other.hits.items():
            if point not in self.hits and point[0] not in NOT_COUNTED:
                self._distinct += 1
            self.hits[point] += n
        self.examples += other.examples
        self.steps += other.steps
        self.rejected += other.rejected

    def example_rarity(self) -> float:
        """How rare the *successful* things the example just run did are: log2(1 +
        sum of 1/hits over its points that are not refusals), rounded down.

        Refusals are left out on purpose: every error message is a rare point at
        first, and rewarding them drove the search into examples that fail every
        command (measured: 6 of 143 bitmap-adds succeeded, against 140 of 189
        without the target).  Few distinct values keep Hypothesis' Pareto front
        (kept with the example database) small: a continuous score made every
        example a front entry and doubled the cost of a run."""
        total = sum(1.0 / self.hits[p] for p in self._example if _rewarded(p))
        return float(math.floor(math.log2(1.0 + total)))

    # -- reporting ---------------------------------------------------------------------------
    @property
    def points(self) -> int:
        """Distinct coverage points reached (invariant and group counters excluded)."""
        return self._distinct

    def sample(self, wall_s: float, failures: dict[str, int]) -> None:
        """Add a point to the coverage-over-time series."""
        self.series.append(
            {
                "examples": self.examples,
                "steps": self.steps,
                "points": self.points,
                "failures": dict(sorted(failures.items())),
                "wall_s": round(wall_s, 3),
            }
        )

    def to_json(self) -> dict[str, Any]:
        """coverage.json: nested counters plus the series, in a stable order."""
        nested: dict[str, dict[str, dict[str, int]]] = {}
        for (category, a, b), n in sorted(self.hits.items()):
            nested.setdefault(category, {}).setdefault(a, {})[b] = n
        return {
            "examples": self.examples,
            "steps": self.steps,
            "rejected-steps": self.rejected,
            "points": self.points,
            "commands": nested.get("command", {}),
            "job-states": nested.get("job-state", {}),
            "transitions": nested.get("transition", {}),
            "graph-shapes": nested.get("shape", {}),
            "invariants": nested.get("invariant", {}),
            "groups": {g: v.get("enabled", 0) for g, v in nested.get("group", {}).items()},
            "trace-errors": nested.get("trace-error", {}),
            "series": self.series,
        }


SUCCESS_PREFIXES = ("return", "wrote ", "read ", "discard ")


def _rewarded(point: Point) -> bool:
    """Points the coverage target rewards: successful commands, job transitions and
    graph shapes (not refusals, nor commands met in a job state whatever they
    answered, nor trace errors or bookkeeping)."""
    category, _, outcome = point
    if category == "command":
        return outcome.startswith(SUCCESS_PREFIXES)
    return category in ("transition", "shape")


def step_label(step: dict[str, Any]) -> str:
    """What a step is, for coverage: the command, `qemu-io write`, `wait EVENT`, ..."""
    if "execute" in step:
        name = str(step["execute"])
        if name == "human-monitor-command":
            line = str(step.get("arguments", {}).get("command-line", ""))
            inner = line.split('"', 2)
            verb = inner[1].split(" ", 1)[0] if len(inner) > 1 else "?"
            return f"qemu-io {verb}"
        return name
    if "wait" in step:
        return f"wait {step['wait'].get('event')}"
    for kind in ("advance", "workload", "fault"):
        if kind in step:
            return kind
    return "?"


def outcome_label(step: dict[str, Any], outcome: Any) -> str:
    response = outcome.response
    if "error" in response:
        return message_shape(str(response["error"].get("desc", "")))
    if outcome.output:
        first = str(outcome.output).strip().splitlines()
        return message_shape(first[0]) if first else "return"
    if "execute" in step and response.get("return") not in ("", {}, None):
        ret = response.get("return")
        if isinstance(ret, str):
            return message_shape(ret.strip())
    return "return"


def job_states_met(step: dict[str, Any], jobs_before: dict[str, str]) -> list[str]:
    """The status of the job a command names, else of every live job, else `no-job`."""
    if not jobs_before:
        return ["no-job"]
    args = step.get("arguments", {}) if "execute" in step else {}
    if isinstance(args, dict):
        for key in JOB_ARG_KEYS:
            named = args.get(key)
            if isinstance(named, str) and named in jobs_before:
                return [jobs_before[named]]
    return sorted(set(jobs_before.values()))


def chain_depth(root: Any) -> str:
    """How many nodes a read through `root` may visit (filters included); `cycle` if it
    loops, which a well-formed graph never does (the checkers say so, coverage must not hang)."""
    seen: set[int] = set()
    node = root
    while node is not None:
        if id(node) in seen:
            return "cycle"
        seen.add(id(node))
        node = node.filtered_child() if node.is_filter else node.backing
    return str(len(seen))


def bucket(n: int) -> str:
    return str(n) if n < 4 else ("4-7" if n < 8 else "8+")
