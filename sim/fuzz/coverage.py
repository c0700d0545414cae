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
``cmd-status``     verb (cancel, pause, ...)   status of the job the command met
                   or write / snapshot /
                   bitmap / transaction
``race``           the same families           ``<job type>/running/d<decile>``: how far
                                               a running job had got (offset/len)
=================  ==========================  ====================================

`cmd-status` and `race` cells are measured against the cells that exist
(`race_cells()`): every verb x status QEMU 7.2's JobVerbTable accepts, every
other family x every status a job can rest in between two commands, and every
family x job type x progress decile of a running job.  Distinct interleavings
are counted too: for each command sequence (the step labels of an example,
`tie-break` steps left out) the distinct orders of the job events it produced.

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
# statuses a job can be in between two commands (created, waiting and aborting pass
# within one command or one instant)
RESTING = ("running", "paused", "ready", "standby", "pending", "concluded")
FAMILIES = ("write", "snapshot", "bitmap", "transaction")
JOB_TYPES = ("backup", "mirror", "commit", "stream")
DECILE_FAMILIES = FAMILIES
VERB_NAMES = ("cancel", "pause", "resume", "set-speed", "complete", "finalize", "dismiss")


def command_family(label: str) -> str | None:
    """The race family of a step label: a job verb, or write/snapshot/bitmap/transaction."""
    if label == "qemu-io write":
        return "write"
    for prefix in ("block-job-", "job-"):
        if label.startswith(prefix) and label[len(prefix) :] in VERB_NAMES:
            return label[len(prefix) :]
    if label in ("blockdev-snapshot-sync", "blockdev-snapshot"):
        return "snapshot"
    if label.startswith("block-dirty-bitmap-"):
        return "bitmap"
    if label == "transaction":
        return "transaction"
    return None


def race_cells() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The cells that exist: (family-or-verb, status) as QEMU 7.2's JobVerbTable and job
    states allow them, and (family, type/running/decile) for landings on running jobs."""
    from sim.model.jobs import JOB_VERBS

    status_cells = [(v, s) for v in VERB_NAMES for s in RESTING if s in JOB_VERBS[v]]
    status_cells += [(f, s) for f in FAMILIES for s in RESTING]
    decile_cells = [
        (f, f"{t}/running/d{d}") for f in DECILE_FAMILIES for t in JOB_TYPES for d in range(10)
    ]
    return status_cells, decile_cells


class Coverage:
    """Counters of coverage points for one campaign (see the module docstring)."""

    def __init__(self) -> None:
        self.hits: Counter[Point] = Counter()
        self.series: list[dict[str, Any]] = []
        self.examples = 0  # every example run, shrink and replay runs included
        # generated examples (what --examples counts), when a campaign says so
        self.generated: int | None = None
        self.steps = 0
        self.rejected = 0
        self._example: set[Point] = set()
        self._status: dict[str, str] = {}
        self._types: dict[str, str] = {}  # job id -> type, for jobs gone by now
        self._distinct = 0
        # command sequence -> the distinct job-event orders it produced
        self.orders: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        self._seq: list[str] = []
        self._order: list[str] = []

    # -- recording ---------------------------------------------------------------------------
    def hit(self, category: str, a: str, b: str) -> None:
        point = (category, a, b)
        if point not in self.hits and category not in NOT_COUNTED:
            self._distinct += 1
        self.hits[point] += 1
        self._example.add(point)

    def _end_example(self) -> None:
        if self._seq:
            self.orders.setdefault(tuple(self._seq), set()).add(tuple(self._order))
        self._seq, self._order = [], []

    def start_example(self, groups: frozenset[str]) -> None:
        self._end_example()
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
        self._races(machine, step, label, jobs_before)
        if "tie-break" not in step:
            self._seq.append(label)
        for ev in outcome.events:
            data = ev.get("data", {})
            self._order.append(f"{ev.get('event')}:{data.get('id', data.get('device', ''))}")
        self._transitions(machine, outcome.events)
        self._shape(machine)
        for name in checkers:
            self.hits[("invariant", name, "evaluated")] += 1
        self.count_violations(outcome.violations, muted)

    def count_violations(self, violations: list[dict[str, Any]], muted: frozenset[str]) -> None:
        """Violations a step's checkers (or their end-of-example verdicts) reported."""
        for v in violations:
            name = str(v.get("invariant"))
            key = failure_key(name, str(v.get("message", "")))
            self.hit("invariant", name, "muted" if name in muted or key in muted else "violated")

    def _races(
        self, machine: Any, step: dict[str, Any], label: str, jobs_before: dict[str, str]
    ) -> None:
        """cmd-status and race cells of a command landing while jobs exist."""
        if "execute" not in step or not jobs_before:
            return
        family = command_family(label)
        if family is None:
            return
        met = list(jobs_before)
        if family in VERB_NAMES:
            args = step.get("arguments", {})
            named = args.get("id", args.get("device")) if isinstance(args, dict) else None
            met = [named] if isinstance(named, str) and named in jobs_before else []
        live = {j.id: j for j in machine.state.jobs}
        for job_id in met:
            status = jobs_before[job_id]
            self.hit("cmd-status", family, status)
            job = live.get(job_id)
            if status == "running" and job is not None and job.len > 0:
                decile = min(9, job.offset * 10 // job.len)
                self.hit("race", family, f"{job.type}/running/d{decile}")

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
            if before == "null":  # that job is gone: a new job took its id
                before = "undefined"
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
        if other.generated is not None:
            self.generated = (self.generated or 0) + other.generated
        self.steps += other.steps
        self.rejected += other.rejected
        for seq, seen in other.orders.items():
            self.orders.setdefault(seq, set()).update(seen)
        if other._seq:
            self.orders.setdefault(tuple(other._seq), set()).add(tuple(other._order))

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
        """Add a point to the coverage-over-time series: `examples` generated so far
        (every run when no campaign set `generated`), `runs` every example run."""
        self.series.append(
            {
                "examples": self.examples if self.generated is None else self.generated,
                "runs": self.examples,
                "steps": self.steps,
                "points": self.points,
                "failures": dict(sorted(failures.items())),
                "wall_s": round(wall_s, 3),
            }
        )

    def race_summary(self) -> dict[str, Any]:
        """Reached cells against the cells that exist, and distinct interleavings."""
        status_cells, decile_cells = race_cells()
        reached_status = [c for c in status_cells if ("cmd-status", *c) in self.hits]
        reached_decile = [c for c in decile_cells if ("race", *c) in self.hits]
        orders = dict(self.orders)
        if self._seq:
            orders.setdefault(tuple(self._seq), set()).add(tuple(self._order))
        return {
            "command-x-job-status": {
                "reached": len(reached_status),
                "exist": len(status_cells),
                "missing": [f"{a} in {b}" for a, b in status_cells if (a, b) not in reached_status],
            },
            "progress-deciles": {"reached": len(reached_decile), "exist": len(decile_cells)},
            "interleavings": {
                "command-sequences": len(orders),
                "distinct": sum(len(v) for v in orders.values()),
                "sequences-with-several": sum(1 for v in orders.values() if len(v) > 1),
            },
        }

    def to_json(self) -> dict[str, Any]:
        """coverage.json: nested counters plus the series, in a stable order."""
        nested: dict[str, dict[str, dict[str, int]]] = {}
        for (category, a, b), n in sorted(self.hits.items()):
            nested.setdefault(category, {}).setdefault(a, {})[b] = n
        return {
            "examples": self.examples if self.generated is None else self.generated,
            "runs": self.examples,
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
            "command-x-job-status": nested.get("cmd-status", {}),
            "races": nested.get("race", {}),
            "race-coverage": self.race_summary(),
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
    return category in ("transition", "shape", "cmd-status", "race")


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
    for kind in ("advance", "workload", "fault", "until", "tie-break"):
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
