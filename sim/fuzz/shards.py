"""Campaigns split into shards, run on a Dask cluster (or one by one), merged into one run.

Theory of operation.  A sharded campaign is, for every policy, `shards`
independent campaigns of one round each: shard i of policy P is round i of
the campaign (`sim.fuzz.campaign`: seed `round_seed(seed, i)`), with its own
coverage counters, no example database and no mutes learnt from other shards.
A shard is therefore a pure function of (policy, seed, shard index, its
example budget, steps, invariants): it gives the same failures and coverage
on any worker, in any order, and run again after its worker died.

`run_shard` is what a worker runs: it fuzzes, polishes and pins its failures
(`PreparedFailure`, nothing written on the worker) and returns them with its
coverage and throughput.  While it runs it reports its progress (examples,
steps, the smallest failing example per failure not yet exported) through
`sim.cluster.emit`.

`ShardedCampaign` is the coordinator.  It runs the shards through a
`sim.cluster.Runner` (in this process, a LocalCluster, or a remote
scheduler), shows one progress bar for all of them, and merges each result
as it arrives into one run folder that `blocksim report` reads:

- `coverage.json`: the sum of the shards' counters (its points are the
  union of theirs), with one series point per merged shard;
- `failures/`: one trace per (policy, failure key), the smallest over all
  shards (fewest steps, then lowest shard, then signature), so the set does
  not depend on the order shards complete in; the others count as
  duplicates; with several policies a file name starts with the policy;
- `campaign.json`: the totals and one line per shard.

Ctrl-C cancels the shards still running and exports, unshrunk, the smallest
failing example each of them had reported; a worker that dies has its shard
rerun by Dask on another worker (reported; only that shard's work is lost).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.cluster import Runner, TaskLost, emit
from sim.fuzz.campaign import (
    Campaign,
    CampaignConfig,
    by_class,
    counts_by_kind,
    failure_lines,
    run_headline,
    run_summary,
    throughput,
)
from sim.fuzz.coverage import Coverage
from sim.fuzz.export import ExportRecord, PreparedFailure, atomic_write_json, prepare_failure
from sim.fuzz.failures import FuzzFailure

EMIT_EVERY_S = 0.5


@dataclass(frozen=True)
class ShardSpec:
    """One shard: round `config.first_round` of the campaign for `config.policy`."""

    config: CampaignConfig  # out=None, one round of config.examples
    deadline: float | None = None  # time.time() at which the campaign's budget ends

    @property
    def index(self) -> int:
        return self.config.first_round

    @property
    def label(self) -> str:
        return f"{self.config.policy}/{self.index}"


@dataclass
class ShardResult:
    """What a shard hands back: its failures (pinned traces), coverage and throughput."""

    policy: str
    index: int
    examples: int
    replays: int
    rejected: int
    steps: int
    wall_s: float
    stopped: str
    coverage: Coverage
    failures: list[PreparedFailure]
    duplicates: int
    warnings: list[str]
    pid: int = 0


def plan_shards(
    configs: list[CampaignConfig], shards: int | None, deadline: float | None = None
) -> list[ShardSpec]:
    """Shards of every policy's campaign: `shards` each (default: one per round of
    `round_examples`), the examples spread evenly, policies interleaved."""
    per_policy: list[list[ShardSpec]] = []
    for cfg in configs:
        count = shards or max(1, math.ceil(cfg.examples / cfg.round_examples))
        count = min(count, cfg.examples)
        specs = []
        for i in range(count):
            size = cfg.examples // count + (1 if i < cfg.examples % count else 0)
            shard = dataclasses.replace(
                cfg,
                out=None,
                first_round=i,
                examples=size,
                round_examples=size,
                progress=False,
                database=False,
                time_budget_s=None,
            )
            specs.append(ShardSpec(shard, deadline))
        per_policy.append(specs)
    longest = max(len(s) for s in per_policy)
    return [s[i] for i in range(longest) for s in per_policy if i < len(s)]


def failure_to_json(failure: FuzzFailure) -> dict[str, Any]:
    return {
        "kind": failure.kind,
        "message": failure.message,
        "header": failure.header,
        "steps": failure.steps,
        "violations": failure.violations,
    }


def failure_from_json(doc: dict[str, Any]) -> FuzzFailure:
    return FuzzFailure(doc["kind"], doc["message"], doc["header"], doc["steps"], doc["violations"])


class _Reporter:
    """The shard's listener: emits its progress at most every EMIT_EVERY_S seconds."""

    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        self.last = 0.0
        self.pending_shape: tuple[tuple[str, int], ...] = ()

    def __call__(self, campaign: Campaign) -> None:
        now = time.monotonic()
        if now - self.last < EMIT_EVERY_S:
            return
        self.last = now
        self.send(campaign)

    def send(self, campaign: Campaign, done: bool = False) -> None:
        message: dict[str, Any] = {
            "shard": self.spec.label,
            "examples": campaign.result.examples,
            "steps": campaign.coverage.steps,
            "failures": len(campaign.result.failures) + len(campaign.pending),
            "done": done,
        }
        shape = tuple(sorted((k, len(f.steps)) for k, (f, _) in campaign.pending.items()))
        if shape != self.pending_shape and not done:
            self.pending_shape = shape
            message["pending"] = [
                failure_to_json(campaign.pending[k][0]) for k in sorted(campaign.pending)
            ]
        emit(message)


def run_shard(spec: ShardSpec) -> ShardResult:
    """Run one shard (on a worker): its failures prepared in memory, nothing written."""
    import os
    import warnings

    from hypothesis.errors import HypothesisDeprecationWarning

    # a Dask worker's own threads use the `random` module while an example draws;
    # Hypothesis takes that for the strategy's doing and warns (generation is unaffected:
    # it draws from its own seeded Random)
    warnings.filterwarnings(
        "ignore", message="Do not use the `random` module", category=HypothesisDeprecationWarning
    )
    config = spec.config
    if spec.deadline is not None:
        left = spec.deadline - time.time()
        config = dataclasses.replace(config, time_budget_s=max(left, 1e-3))
    campaign = Campaign(config)
    reporter = _Reporter(spec)
    campaign.listener = reporter
    if spec.deadline is not None and spec.deadline <= time.time():
        result = campaign.result
        result.stopped = "time-budget"
    else:
        result = campaign.run()
    reporter.send(campaign, done=True)
    return ShardResult(
        config.policy,
        spec.index,
        result.examples,
        result.replays,
        result.rejected,
        result.steps,
        result.wall_s,
        result.stopped,
        result.coverage,
        result.prepared,
        result.duplicates,
        result.warnings,
        os.getpid(),
    )


@dataclass
class _Best:
    rank: tuple[int, int, str]  # steps, shard index, signature
    record: ExportRecord


@dataclass
class ShardedResult:
    """What the coordinator merged: one run's failures, coverage and counts."""

    configs: list[CampaignConfig]
    shards: int
    where: str
    failures: list[ExportRecord] = field(default_factory=list)
    duplicates: int = 0  # found again: in another shard, or already in OUT/failures
    examples: int = 0
    replays: int = 0
    rejected: int = 0
    steps: int = 0
    wall_s: float = 0.0
    stopped: str = "done"
    coverage: Coverage = field(default_factory=Coverage)
    shard_rows: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)  # workers lost, shards rerun or lost
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        first = self.configs[0]
        config = {
            "policies": [c.policy for c in self.configs],
            "invariants": first.invariant_names(),
            "examples": first.examples,
            "steps": first.steps,
            "seed": first.seed,
            "shards": self.shards,
            "groups": list(first.groups) if first.groups is not None else None,
            "mute": list(first.mute),
            "time_budget_s": first.time_budget_s,
            "shrink": first.shrink,
        }
        return run_summary(
            config,
            self,
            ran_on=self.where,
            incidents=self.incidents,
            shard_results=sorted(self.shard_rows, key=lambda r: (r["index"], r["policy"])),
        )


class ShardedCampaign:
    """The coordinator: runs the shards, merges them, writes one run folder."""

    def __init__(
        self,
        configs: list[CampaignConfig],
        out: Path,
        runner: Runner,
        shards: int | None = None,
        progress: bool = False,
        time_budget_s: float | None = None,
        say: Any = None,
    ) -> None:
        self.configs = configs
        self.out = Path(out)
        self.runner = runner
        self.progress = progress
        self.say = say or (lambda _text: None)
        deadline = time.time() + time_budget_s if time_budget_s else None
        self.specs = plan_shards(configs, shards, deadline)
        self.per_policy = max(s.index for s in self.specs) + 1
        self.result = ShardedResult(configs, self.per_policy, runner.describe())
        self.multi = len(configs) > 1
        self._lock = threading.Lock()
        self._live: dict[str, dict[str, Any]] = {}  # shard label -> its latest report
        self._pending: dict[str, list[dict[str, Any]]] = {}  # shard label -> failing examples
        self._pids: dict[str, int] = {}
        self._done: set[str] = set()
        self._best: dict[tuple[str, str], _Best] = {}
        self._known: set[str] = set()
        self._t0 = 0.0
        self._bar: Any = None

    # -- events from the shards (any thread) ------------------------------------------------
    def on_event(self, message: dict[str, Any]) -> None:
        with self._lock:
            if "worker-lost" in message:
                self._incident(f"worker {message['worker-lost']} left the cluster")
                return
            label = str(message.get("shard"))
            if label in self._done:
                return
            pid = int(message.get("pid", 0))
            before = self._pids.get(label)
            if before is not None and before != pid:
                self._incident(
                    f"shard {label} restarted in process {pid} (its worker, process "
                    f"{before}, died; the shard's unsaved work is redone)"
                )
            self._pids[label] = pid
            self._live[label] = message
            if "pending" in message:
                self._pending[label] = list(message["pending"])
        self._show()

    def _incident(self, text: str) -> None:
        self.result.incidents.append(text)
        self.say(f"  {text}")

    # -- running ------------------------------------------------------------------------------
    def run(self) -> ShardedResult:
        self._t0 = time.monotonic()
        failures = self.out / "failures"
        failures.mkdir(parents=True, exist_ok=True)
        self._known = {p.name for p in failures.glob("*.jsonl")}
        with self._progress_bar():
            stream = self.runner.run(
                run_shard, self.specs, self.on_event, names=[s.label for s in self.specs]
            )
            try:
                for index, outcome in stream:
                    self._merge(self.specs[index], outcome)
            except KeyboardInterrupt:
                self.result.stopped = "interrupted"
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
                self._export_in_flight()
            finally:
                self._finish()
        return self.result

    def _merge(self, spec: ShardSpec, outcome: Any) -> None:
        with self._lock:
            self._done.add(spec.label)
            self._pending.pop(spec.label, None)
            self._live.pop(spec.label, None)
        if isinstance(outcome, TaskLost):
            self._incident(f"shard {spec.label} lost: {outcome.reason}")
            self.result.shard_rows.append(
                {"policy": spec.config.policy, "index": spec.index, "lost": outcome.reason}
            )
            return
        res: ShardResult = outcome
        r = self.result
        r.coverage.absorb(res.coverage)
        r.examples += res.examples
        r.replays += res.replays
        r.rejected += res.rejected
        r.steps += res.steps
        r.duplicates += res.duplicates
        r.warnings.extend(f"shard {spec.label}: {w}" for w in res.warnings)
        if res.stopped == "time-budget":
            r.stopped = "time-budget"
        for prepared in res.failures:
            self._offer(res.policy, res.index, prepared)
        r.shard_rows.append(
            {
                "policy": res.policy,
                "index": res.index,
                **throughput(res.examples, res.rejected, res.replays, res.steps, res.wall_s),
                "failures": len(res.failures),
                "stopped": res.stopped,
            }
        )
        r.coverage.sample(self.elapsed(), self._failure_counts())
        self._write()
        self._show()
        if res.stopped == "interrupted":  # Ctrl-C reached a shard running in this process
            raise KeyboardInterrupt

    def _offer(self, policy: str, shard: int, prepared: PreparedFailure) -> None:
        """Keep `prepared` if it is the smallest of its (policy, failure key) so far."""
        name = f"{policy}-{prepared.record.path}" if self.multi else prepared.record.path
        if name in self._known:
            self.result.duplicates += 1  # in OUT/failures before this campaign began
            return
        key = (policy, prepared.key)
        rank = (prepared.record.steps, shard, prepared.record.signature)
        best = self._best.get(key)
        if best is not None and best.rank <= rank:
            self.result.duplicates += 1
            return
        if best is not None:
            self.result.duplicates += 1
            Path(best.record.path).unlink(missing_ok=True)
        record = prepared.write(self.out / "failures", name)
        record.wall_s, record.examples = self.elapsed(), self.result.examples
        self._best[key] = _Best(rank, record)
        self.result.failures = [
            b.record for _, b in sorted(self._best.items(), key=lambda kv: (kv[0], kv[1].rank))
        ]

    def _export_in_flight(self) -> None:
        """After an interrupt: the smallest failing example each unfinished shard reported."""
        with self._lock:
            pending = {label: list(docs) for label, docs in self._pending.items()}
        for spec in self.specs:
            for doc in pending.get(spec.label, []):
                failure = failure_from_json(doc)
                context = (
                    f"policy {spec.config.policy}, campaign seed {spec.config.seed}, "
                    f"shard {spec.index}, interrupted"
                )
                try:
                    # interrupted: written as reported, without the trace-level polish
                    prepared = prepare_failure(
                        failure, context, shrunk=False, deadline=time.monotonic()
                    )
                except KeyboardInterrupt:
                    return  # a second Ctrl-C: keep what is written
                self._offer(spec.config.policy, spec.index, prepared)

    def _finish(self) -> None:
        r = self.result
        r.wall_s = self.elapsed()
        r.coverage.sample(r.wall_s, self._failure_counts())
        self._write()

    def _failure_counts(self) -> dict[str, int]:
        return counts_by_kind(self.result.failures)

    def _write(self) -> None:
        atomic_write_json(
            self.out / "failures" / "index.json",
            [f.to_json() for f in by_class(self.result.failures)],
        )
        atomic_write_json(self.out / "coverage.json", self.result.coverage.to_json())
        atomic_write_json(self.out / "campaign.json", self.result.summary())

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    # -- the progress bar ----------------------------------------------------------------------
    @contextmanager
    def _progress_bar(self) -> Iterator[None]:
        if not self.progress:
            yield
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        total = sum(s.config.examples for s in self.specs)
        columns = (
            TextColumn("[bold]fuzz[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} steps/s  failures {task.fields[failures]}  "
                       "coverage {task.fields[points]}  shards {task.fields[shards]}"),
        )  # fmt: skip
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(
                ",".join(c.policy for c in self.configs), total=total, rate="-", failures=0,
                points=0, shards=f"0/{len(self.specs)}")  # fmt: skip
            self._bar = (progress, task)
            self.say = progress.console.print
            try:
                yield
            finally:
                self._show()
                self._bar = None

    def _show(self) -> None:
        if self._bar is None:
            return
        progress, task = self._bar
        with self._lock:
            live = list(self._live.values())
            pending = sum(int(m.get("failures", 0)) for m in live)
            done_shards = len(self._done)
        examples = self.result.examples + sum(int(m.get("examples", 0)) for m in live)
        steps = self.result.steps + sum(int(m.get("steps", 0)) for m in live)
        wall = max(self.elapsed(), 1e-9)
        progress.update(
            task,
            completed=examples,
            rate=f"{steps / wall:,.0f}",
            failures=len(self.result.failures) + pending,
            points=self.result.coverage.points,
            shards=f"{done_shards}/{len(self.specs)}",
        )


def summary_lines(result: ShardedResult, out: Path) -> list[str]:
    """What `blocksim fuzz --workers/--scheduler` prints when the campaign ends."""
    policies = ",".join(c.policy for c in result.configs)
    asked = sum(c.examples for c in result.configs)
    head = (
        f"policy {policies}, seed {result.configs[0].seed}, {result.shards} shard(s) per "
        f"policy on {result.where}"
    )
    lines = [run_headline(head, result, asked, "duplicate(s)")]
    lines += failure_lines(result.failures)
    lines.extend(f"  incident: {i}" for i in result.incidents)
    lines.extend(f"  warning: {w}" for w in result.warnings)
    lines.append(f"  run folder: {out} (blocksim report {out})")
    return lines
