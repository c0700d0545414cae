"""Fuzz campaigns: rounds of Hypothesis runs, failures exported, coverage on disk.

Theory of operation.  A campaign runs the state machine (`BlockMachine`, or a
subclass) in *rounds* of `round_examples` examples each until `examples`
have been generated (or the time budget runs out).  Every round is one
Hypothesis run with its own seed, derived from the campaign seed and the
round number, and its own key in the example database (`OUT/hypothesis/`),
so a campaign is a pure function of its seed while the database is empty;
re-running in the same folder first replays what the database remembers.
Hypothesis reports every distinct failure of a round (one exception class
per invariant and message shape) after shrinking it; each is exported to
`OUT/failures/` (sim/fuzz/export.py).  A round cut short by a failure (or
one that only replayed the database's failures) goes on in *parts*, each a
Hypothesis run with a seed and key of its own, until it has generated its
share: shrink and replay runs are counted apart and never stand in for an
example.  An exported failure is *muted* for the rest of the campaign
(still checked and counted, no longer failing; by failure key, see
`sim.fuzz.machine.failure_key`) so later runs look for something new.

Wall time is read only for the progress bar, the coverage series and the
time budget (which also ends the polish of exported failures); nothing that
is generated depends on it.  `--time-budget`
necessarily cuts by wall time: the same seed with a budget runs as many
examples as the machine manages, and a failure caught in mid-shrink is
exported as shrunk as it got (`"shrunk": false` in the index).

Ctrl-C (or the budget) stops at once: the smallest failing example seen so
far for every failure not yet exported is written out, then the coverage;
every file is replaced atomically, so what is on disk is always whole.  The
budget bounds exporting too: the trace-level polish of an exported failure
(sim/fuzz/export.py) stops at the budget's end (after Ctrl-C it is skipped),
so what runs after the budget is one replay per failure left to write (its
pinned expectations) and the coverage file.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import HypothesisException, Unsatisfiable, UnsatisfiedAssumption
from hypothesis.stateful import get_state_machine_test

from sim.bundled import bundled
from sim.check import CHECKERS
from sim.fuzz.coverage import Coverage
from sim.fuzz.export import (
    BackgroundPolish,
    ExportRecord,
    PreparedFailure,
    atomic_write_json,
    export_failure,
    polished_failure,
    prepare_failure,
)
from sim.fuzz.hygiene import GENERATING, end_generation, freeze_startup_heap, hypothesis_phase
from sim.fuzz.machine import (
    INTERNAL_ERROR,
    BlockMachine,
    FuzzFailure,
    MachineCore,
    describe_exception,
    failure_key,
)
from sim.fuzz.triage import CLASS_HELP, class_rank
from sim.replay import StepOutcome

COVERAGE_WRITE_EVERY_S = 5.0
SAMPLE_EVERY = 10  # example runs (shrink runs too) between two points of the series


class CampaignStop(BaseException):  # noqa: N818 - not an error: a stop request
    """Raised from inside an example when the time budget is spent (not an Exception,
    so Hypothesis lets it through instead of treating it as a failure)."""


@dataclass
class CampaignConfig:
    """What `blocksim fuzz` was asked to do."""

    policy: str = "qemu-7.2"
    invariants: list[str] | None = None  # None: every registered checker
    examples: int = 1000
    steps: int = 25
    seed: int = 0
    time_budget_s: float | None = None
    out: Path | None = Path("fuzz-out")  # None: write nothing, keep failures in memory (a shard)
    round_examples: int = 200
    groups: tuple[str, ...] | None = None  # None: the machine's own
    progress: bool = False
    shrink: bool = True  # False: stop a round at its first failure, export it as found
    mute: tuple[str, ...] = ()  # known failures: invariant names or failure keys
    first_round: int = 0  # the number (and so the seed) of the first round
    database: bool = True  # Hypothesis' example database in OUT/hypothesis (else none)

    def invariant_names(self) -> list[str]:
        return list(CHECKERS) if self.invariants is None else list(self.invariants)


@dataclass
class CampaignResult:
    """What a campaign did: failures (new and known), coverage, counts, how it ended."""

    config: CampaignConfig
    failures: list[ExportRecord] = field(default_factory=list)
    duplicates: int = 0
    examples: int = 0  # new examples Hypothesis generated (what --examples asks for)
    rejected: int = 0  # generated examples that turned out invalid (not counted above)
    replays: int = 0  # runs that replayed or shrank an example (not counted above)
    steps: int = 0
    rounds: int = 0
    wall_s: float = 0.0
    stopped: str = "done"  # done, time-budget, interrupted
    muted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. Hypothesis found a flaky example
    coverage: Coverage = field(default_factory=Coverage)
    prepared: list[PreparedFailure] = field(default_factory=list)  # out=None: the traces

    def summary(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["out"] = str(self.config.out) if self.config.out is not None else None
        return run_summary(cfg, self, rounds=self.rounds, muted=self.muted)


class RunTotals(Protocol):
    """What a finished run (one process, or shards merged) counted."""

    stopped: str
    examples: int
    rejected: int
    replays: int
    steps: int
    wall_s: float
    coverage: Coverage
    duplicates: int
    warnings: list[str]
    failures: list[ExportRecord]


def throughput(
    examples: int, rejected: int, replays: int, steps: int, wall_s: float
) -> dict[str, Any]:
    """What ran and how fast, as campaign.json says it for a run and for each shard."""
    return {
        "examples": examples,
        "rejected": rejected,
        "replays": replays,
        "steps": steps,
        "wall_s": round(wall_s, 3),
        "steps_per_s": round(steps / wall_s, 1) if wall_s else 0.0,
    }


def run_summary(config: dict[str, Any], run: RunTotals, **specific: Any) -> dict[str, Any]:
    """campaign.json, whoever ran the campaign: its configuration, how it ended, what
    ran, coverage and failures, then what is specific to the runner (`specific`, in
    the order given).  The key order is part of the file's bytes."""
    return {
        "config": config,
        "stopped": run.stopped,
        **throughput(run.examples, run.rejected, run.replays, run.steps, run.wall_s),
        "coverage_points": run.coverage.points,
        "duplicates": run.duplicates,
        "warnings": run.warnings,
        "failures": [f.to_json() for f in run.failures],
        **specific,
    }


class Campaign:
    """Runs one campaign; also the observer every example reports to."""

    def __init__(
        self,
        config: CampaignConfig,
        machine: type[MachineCore] = BlockMachine,
        background_polish: bool = False,
    ) -> None:
        """`background_polish`: polish expected failures in a second process while the
        round goes on (`BackgroundPolish`; the same files, less wall time when another
        core is free)."""
        self.config = config
        self.machine = machine
        self.result = CampaignResult(config)
        self.coverage = self.result.coverage
        self.out = Path(config.out) if config.out is not None else None
        self.listener: Any = None  # called with the campaign after every example
        self._signatures: set[str] = set()  # out=None: signatures kept so far
        self.muted: set[str] = set(config.mute)
        # failures not exported yet, by failure key: (failure, shrunk); during a round
        # the smallest example seen, after it what Hypothesis reported
        self.pending: dict[str, tuple[FuzzFailure, bool]] = {}
        # failure key -> (seconds, examples generated) when an example first showed it
        self.first_seen: dict[str, tuple[float, int]] = {}
        # failures triage classes expected, not exported yet, by failure key: the first
        # example that showed each, which Hypothesis never shrinks (`expected_found`)
        self.expected: dict[str, FuzzFailure] = {}
        self._expected_keys: set[str] = set()
        self._t0 = 0.0
        self._last_write = 0.0
        self._round_runs = 0  # examples generated in this round
        self._round_size = config.round_examples
        self._round_replays = 0  # shrink and replay runs in this round
        self._part = 0  # the part of the round running (a round cut short goes on in parts)
        self._generating = True
        self._progress: Any = None
        self.polisher = BackgroundPolish() if background_polish else None

    # -- the observer (called by every example) --------------------------------------------
    def example_started(self, machine: MachineCore) -> None:
        self._generating = hypothesis_phase() in GENERATING
        if self._generating and self._round_runs >= self._round_size:
            # the round's examples are all generated: after a failure Hypothesis' target
            # phase goes on past max_examples; bound the work by what was asked
            end_generation()

    def step_done(
        self, machine: MachineCore, step: dict[str, Any], outcome: StepOutcome, jobs: dict[str, str]
    ) -> None:
        if len(machine.steps) == 1:
            self.coverage.start_example(machine.enabled)
        names = tuple(c.name for c in machine.replayer.checkers) if machine.replayer else ()
        self.coverage.observe_step(
            machine.machine, step, outcome, jobs, names, frozenset(self.muted)
        )

    def end_checked(self, violations: list[dict[str, Any]]) -> None:
        self.coverage.count_violations(violations, frozenset(self.muted))

    def failure_seen(self, failure: FuzzFailure) -> None:
        key = failure_key(failure.kind, failure.message)
        self.first_seen.setdefault(key, (self.elapsed(), self.result.examples))
        known = self.pending.get(key)
        if known is None or len(failure.steps) <= len(known[0].steps):
            self.pending[key] = (failure, False)

    def expected_found(self, failure: FuzzFailure) -> None:
        """A failure triage classes expected (a documented consequence of the policy,
        sim/fuzz/triage.py), seen while shrinking is on: the example goes on as if it
        were muted, and the first example that showed it is exported when the round
        ends, cut at the trace level by the exporter only.  Hypothesis' shrinker took
        three quarters of a default campaign, most of it on these."""
        key = failure_key(failure.kind, failure.message)
        if key in self.muted or key in self.expected:
            return
        self.first_seen.setdefault(key, (self.elapsed(), self.result.examples))
        self.expected[key] = failure
        self._expected_keys.add(key)
        if self.polisher is not None:  # exported unshrunk: its polish is coarse
            self.polisher.submit(failure, coarse=True, deadline=self.export_deadline())

    def example_finished(self, machine: MachineCore) -> float | None:
        """Count the example; its coverage rarity for `hypothesis.target` while
        Hypothesis generates, None while it shrinks or replays.

        A target observation only steers generation (the target phase climbs from the
        best generated example), but Hypothesis files every observed example into its
        Pareto front, which compares it choice by choice with the front's entries:
        observed on shrink runs, that took a third of a campaign that shrinks."""
        if not self._generating:
            self.result.replays += 1
            self._round_replays += 1
        elif isinstance(sys.exc_info()[1], UnsatisfiedAssumption):
            self.result.rejected += 1
        else:
            self.result.examples += 1
            self._round_runs += 1
        self.result.steps = self.coverage.steps
        self.coverage.generated = self.result.examples
        wall = self.elapsed()
        if self.coverage.examples % SAMPLE_EVERY == 0:  # shrinking too: time goes on
            self.coverage.sample(wall, self.failure_counts())
        if wall - self._last_write >= COVERAGE_WRITE_EVERY_S:
            self.write_coverage()
        self.show_progress()
        if self.polisher is not None:
            self.polisher.poll()
        if self.listener is not None:
            self.listener(self)
        budget = self.config.time_budget_s
        if budget is not None and wall >= budget:
            raise CampaignStop("time budget spent")
        return self.coverage.example_rarity() if self._generating else None

    # -- running -------------------------------------------------------------------------------
    def run(self) -> CampaignResult:
        """Run every round; always leaves failures, coverage and a summary on disk."""
        freeze_startup_heap()
        self._t0 = time.monotonic()
        if self.out is not None:
            (self.out / "failures").mkdir(parents=True, exist_ok=True)
        with self.progress_bar():
            try:
                self._rounds()
            except CampaignStop:
                self.result.stopped = "time-budget"
            except KeyboardInterrupt:
                self.result.stopped = "interrupted"
            finally:
                try:
                    self._export_pending()
                finally:
                    if self.polisher is not None:
                        self.polisher.close()
                self.result.wall_s = self.elapsed()
                self.result.muted = sorted(self.muted)
                self.coverage.generated = self.result.examples
                self.coverage.sample(self.result.wall_s, self.failure_counts())
                if self.out is not None:
                    self.write_coverage()
                    atomic_write_json(self.out / "campaign.json", self.result.summary())
        return self.result

    def _rounds(self) -> None:
        cfg = self.config
        number, idle = cfg.first_round, 0
        while self.result.examples < cfg.examples and idle < 2:
            # a round ends early at a failure (Hypothesis shrinks it), and one that
            # replays failures its database remembers generates nothing: the round
            # goes on in parts until it has generated its share of what was asked
            goal = min(self.result.examples + cfg.round_examples, cfg.examples)
            self._part = 0
            while self.result.examples < goal and idle < 2:
                before = self._progress_mark()
                self._round(number, goal - self.result.examples)
                idle = idle + 1 if self._progress_mark() == before else 0
                self._part += 1
            number += 1
            self.result.rounds = number - cfg.first_round

    def _progress_mark(self) -> tuple[int, int]:
        # examples generated and failures exported: a part that changes neither (every
        # example rejected) twice in a row ends the campaign
        return self.result.examples, len(self.result.failures) + self.result.duplicates

    def _round(self, number: int, size: int) -> None:
        cfg = self.config
        part = f":{self._part}" if self._part else ""  # a round's later parts: own seed and key
        seed = round_seed(cfg.seed, number, self._part)
        attrs: dict[str, Any] = {
            "policy": cfg.policy,
            "checks": tuple(cfg.invariant_names()),
            "muted": frozenset(self.muted),
            "expected_unshrunk": cfg.shrink,
            "observer": self,
            "name": f"fuzz-{cfg.policy}",
            "_hypothesis_internal_use_seed": seed,
        }
        if cfg.groups is not None:
            attrs["groups"] = tuple(cfg.groups)
        cls = type(f"{self.machine.__name__}_round{number}", (self.machine,), attrs)
        test = get_state_machine_test(cls, settings=self.settings(size))  # type: ignore[no-untyped-call]
        key = f"blocksim-fuzz:{self.machine.__qualname__}:{cfg.policy}:{cfg.seed}:{number}{part}"
        test.hypothesis.inner_test._hypothesis_internal_add_digest = key.encode()
        self._round_runs, self._round_size, self._round_replays = 0, size, 0
        try:
            test()
            self.pending.clear()  # nothing failed in the end (a flaky example at most)
        except Unsatisfiable:
            pass  # every example of the round was rejected: nothing to report
        except BaseException as exc:  # noqa: BLE001 - sorted out just below
            failures, others = split_failures(exc)
            for other in others:
                if not isinstance(other, HypothesisException):
                    raise  # KeyboardInterrupt, CampaignStop, or a bug of the fuzzer itself
                first = str(other).strip().splitlines()[0] if str(other).strip() else ""
                self.result.warnings.append(f"round {number}: {type(other).__name__}: {first}")
            # Hypothesis reports every distinct failure shrunk: the unshrunk ones seen
            # on the way are superseded (and a Ctrl-C while exporting keeps the rest)
            self.pending = {
                failure_key(f.kind, f.message): (f, self.config.shrink) for f in failures
            }
        self._export_pending(number)  # and the expected failures the round met

    def settings(self, max_examples: int) -> settings:
        return settings(
            max_examples=max_examples,
            stateful_step_count=self.config.steps,
            deadline=None,
            database=DirectoryBasedExampleDatabase(str(self.out / "hypothesis"))
            if self.config.database and self.out is not None
            else None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target)
            + ((Phase.shrink,) if self.config.shrink else ()),
            report_multiple_bugs=True,
            print_blob=False,
            verbosity=Verbosity.quiet,
        )

    # -- failures --------------------------------------------------------------------------------
    def _export(self, failure: FuzzFailure, shrunk: bool, round_number: int | None) -> None:
        where = f"round {round_number}, " if round_number is not None else ""
        context = (
            f"policy {self.config.policy}, campaign seed {self.config.seed}, {where}"
            f"{self.result.examples} examples in"
        )
        deadline = self.export_deadline()
        polished = None  # polished in the background (not after Ctrl-C: written as found)
        if self.polisher is not None and self.result.stopped != "interrupted":
            took, trimmed = self.polisher.result(failure)
            polished = polished_failure(failure, trimmed) if took else None
        if self.out is not None:
            record = export_failure(
                failure,
                self.out / "failures",
                context,
                shrunk=shrunk,
                deadline=deadline,
                polished=polished,
            )
        else:
            prepared = prepare_failure(
                polished or failure,
                context,
                shrunk=shrunk,
                polished=polished is not None,
                deadline=deadline,
            )
            record = prepared.record
            record.duplicate = record.signature in self._signatures
            if not record.duplicate:
                self._signatures.add(record.signature)
                self.result.prepared.append(prepared)
        # when it was found (shrinking and exporting may come much later)
        seen = self.first_seen.get(failure_key(failure.kind, failure.message))
        record.wall_s, record.examples = seen or (self.elapsed(), self.result.examples)
        if not shrunk and failure_key(failure.kind, failure.message) in self._expected_keys:
            record.shrink_left = (
                "expected failures are not shrunk by Hypothesis (--mute expected skips "
                f"them); the trace is the example that showed it, cut at the trace level "
                f"to {record.steps} steps"
            )
        elif not shrunk:
            why = {"time-budget": "the time budget", "interrupted": "Ctrl-C"}.get(
                self.result.stopped, "shrinking being off"
            )
            cut = (
                "until the time budget ran out"
                if deadline is not None and time.monotonic() >= deadline
                else ""
            )
            record.shrink_left = (
                f"Hypothesis' shrinker was stopped by {why} after {self._round_replays} "
                f"shrink run(s) of this round; the trace is the smallest example seen, then "
                f"cut at the trace level{' ' + cut if cut else ''} to {record.steps} steps"
            )
        # exported once, a failure is muted for the rest of the campaign: later rounds
        # (and the rest of this one) look for something new
        self.muted.add(failure_key(failure.kind, failure.message))
        if record.duplicate:
            self.result.duplicates += 1
        else:
            self.result.failures.append(record)
        if not record.duplicate and self.out is not None:
            atomic_write_json(
                self.out / "failures" / "index.json",
                [f.to_json() for f in by_class(self.result.failures)],
            )

    def _export_pending(self, round_number: int | None = None) -> None:
        for key, failure in self.expected.items():
            self.pending.setdefault(key, (failure, False))
        self.expected.clear()
        for key in sorted(self.pending):
            failure, shrunk = self.pending[key]
            self._export(failure, shrunk=shrunk, round_number=round_number)
            del self.pending[key]

    def export_deadline(self) -> float | None:
        """When exporting must be done (a `time.monotonic()` reading): the time budget
        bounds the whole campaign, exports included, so their trace-level polish stops
        there; after Ctrl-C at once (the smallest example seen is written as it is)."""
        if self.result.stopped == "interrupted":
            return time.monotonic()
        budget = self.config.time_budget_s
        return None if budget is None else self._t0 + budget

    def failure_counts(self) -> dict[str, int]:
        """Failures exported so far, by kind (the coverage series' `failures`)."""
        return counts_by_kind(self.result.failures)

    # -- output ----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def write_coverage(self) -> None:
        self._last_write = self.elapsed()
        if self.out is None:
            return
        atomic_write_json(self.out / "coverage.json", self.coverage.to_json())

    @contextmanager
    def progress_bar(self) -> Iterator[None]:
        if not self.config.progress:
            yield
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        columns = (
            TextColumn("[bold]fuzz[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} steps/s  failures {task.fields[failures]}  "
                       "coverage {task.fields[points]}  {task.fields[elapsed]}"),
        )  # fmt: skip
        with Progress(*columns, transient=False) as progress:
            self._progress = (progress, progress.add_task(
                self.config.policy, total=self.config.examples, rate="-", failures=0, points=0,
                elapsed="0s"))  # fmt: skip
            yield
            self.show_progress()

    def show_progress(self) -> None:
        if self._progress is None:
            return
        progress, task = self._progress
        cfg, wall = self.config, max(self.elapsed(), 1e-9)
        progress.update(
            task,
            completed=min(self.result.examples, cfg.examples),  # generated, as asked
            rate=f"{self.coverage.steps / wall:,.0f}",
            failures=len(self.result.failures) + len(self.pending),
            points=self.coverage.points,
            elapsed=f"{wall:.0f}s",
        )


def round_seed(seed: int, number: int, part: int = 0) -> int:
    """The Hypothesis seed of round `number` (its part `part`) of a campaign with seed `seed`."""
    tail = f":{part}" if part else ""
    digest = hashlib.sha256(f"blocksim-fuzz:{seed}:{number}{tail}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def split_failures(exc: BaseException) -> tuple[list[FuzzFailure], list[BaseException]]:
    """The FuzzFailures inside what Hypothesis raised, and anything else."""
    if isinstance(exc, FuzzFailure):
        return [exc], []
    if isinstance(exc, BaseExceptionGroup):
        failures: list[FuzzFailure] = []
        others: list[BaseException] = []
        for inner in exc.exceptions:
            f, o = split_failures(inner)
            failures += f
            others += o
        return failures, others
    return [], [exc]


def run_campaign(
    config: CampaignConfig,
    machine: type[MachineCore] = BlockMachine,
    background_polish: bool = False,
) -> CampaignResult:
    """Run a campaign (see CampaignConfig); returns its result, files are in config.out.
    `background_polish`: see Campaign."""
    return Campaign(config, machine, background_polish).run()


# -- profiles ------------------------------------------------------------------------------------

PROFILE_KEYS = (
    "policies", "invariants", "examples", "steps", "seed", "time-budget", "round-examples", "groups",
    "mute",
)  # fmt: skip


def load_profile(name: str, folder: Path | None = None) -> dict[str, Any]:
    """A campaign profile: `fuzz/profiles/NAME.toml` (the checkout's, else the copy
    installed with blocksim), or a path to a .toml file.

    Raises ValueError naming an unknown key or a missing file."""
    import tomllib

    folder = folder if folder is not None else bundled("fuzz/profiles")
    path = Path(name) if name.endswith(".toml") else folder / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []
        raise ValueError(
            f"no campaign profile {name!r} ({path}); known: {', '.join(known) or 'none'}"
        )
    with path.open("rb") as fh:
        profile = tomllib.load(fh)
    unknown = sorted(set(profile) - set(PROFILE_KEYS) - {"description"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a profile takes {list(PROFILE_KEYS)}")
    return profile


# -- re-checking a corpus ------------------------------------------------------------------------


@dataclass
class CorpusCheck:
    """What replaying one corpus trace said."""

    path: str
    status: str  # reproduces, fixed, changed, passes, error
    detail: str = ""


def replay_corpus(folder: Path) -> list[CorpusCheck]:
    """Replay every trace under `folder` with its header's invariants.

    A failure trace (`fuzz-KIND-SIG`, pinned violations) *reproduces* when the
    replay matches every pin; it is *fixed* when the pinned failure is gone,
    *changed* when something else differs.  A trace without pinned violations
    *passes* when it replays as pinned."""
    from sim.check import make_checkers
    from sim.errors import TraceError
    from sim.replay import replay
    from sim.trace import load_trace

    checks = []
    for path in sorted(folder.rglob("*.jsonl")):
        try:
            trace = load_trace(path)
            names = trace.header.raw.get("invariants", [])
            checkers = make_checkers(list(CHECKERS) if names == "all" else list(names))
        except (TraceError, ValueError) as exc:
            checks.append(CorpusCheck(str(path), "error", str(exc)))
            continue
        internal = trace.header.name.startswith(f"fuzz-{INTERNAL_ERROR}-")
        try:
            result = replay(trace, checkers=checkers)
        except Exception as exc:  # noqa: BLE001 - an escaping simulator exception
            status = "reproduces" if internal else "changed"
            checks.append(CorpusCheck(str(path), status, describe_exception(exc)))
            continue
        checks.append(_corpus_verdict(str(path), result, internal))
    return checks


def _corpus_verdict(path: str, result: Any, internal: bool) -> CorpusCheck:
    if internal:
        if result.internal_errors:
            return CorpusCheck(path, "reproduces", result.internal_errors[0])
        return CorpusCheck(path, "fixed", "no simulator error any more")
    pinned = (result.trace.final_expect or {}).get("violations") or []
    if result.trace_errors:
        return CorpusCheck(path, "error", result.trace_errors[0])
    if not result.mismatches and not result.internal_errors:
        return CorpusCheck(path, "reproduces" if pinned else "passes")
    if pinned and not result.final.get("violations") and not result.internal_errors:
        return CorpusCheck(path, "fixed", "the pinned violation is gone")
    detail = (result.mismatches or result.internal_errors)[0].splitlines()[0]
    return CorpusCheck(path, "changed", detail)


# -- the command line's helpers ----------------------------------------------------------------


def configs_from_options(
    profile: dict[str, Any],
    policy: str | None,
    invariants: list[str] | None,
    examples: int | None,
    steps: int | None,
    seed: int | None,
    time_budget_s: float | None,
    out: Path,
    progress: bool,
) -> list[CampaignConfig]:
    """One CampaignConfig per policy: explicit options over the profile over defaults.

    Several policies run one after the other into OUT/POLICY (the differential
    profile); one policy writes straight into OUT.  Raises ValueError for an
    unknown policy."""
    from sim.trace import POLICIES

    policies = policy.split(",") if policy else list(profile.get("policies", ["qemu-7.2"]))
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ValueError(f"unknown policy {unknown}; known: {', '.join(POLICIES)}")
    if invariants is None and "invariants" in profile:
        value = profile["invariants"]
        invariants = list(CHECKERS) if value == "all" else list(value)
    groups = profile.get("groups")
    configs = []
    for name in policies:
        configs.append(
            CampaignConfig(
                policy=name,
                invariants=invariants,
                examples=examples or int(profile.get("examples", 1000)),
                steps=steps or int(profile.get("steps", 25)),
                seed=seed if seed is not None else int(profile.get("seed", 0)),
                time_budget_s=time_budget_s or profile.get("time-budget"),
                out=out / name if len(policies) > 1 else out,
                round_examples=int(profile.get("round-examples", 200)),
                groups=tuple(groups) if groups else None,
                progress=progress,
                mute=tuple(profile.get("mute", ())),
            )
        )
    return configs


def limit_memory(megabytes: int) -> None:
    """Cap this process' address space: a simulator bug that allocates without end
    (a walk round a cyclic graph) becomes a MemoryError, an internal-error failure,
    instead of taking the machine down."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = megabytes << 20
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))


def runs_note(replays: int, rejected: int) -> str:
    """ " (+N runs replaying or shrinking, M rejected)": what ran besides the examples."""
    parts = [f"+{replays} runs replaying or shrinking"] if replays else []
    parts += [f"{rejected} rejected as invalid"] if rejected else []
    return f" ({', '.join(parts)})" if parts else ""


def counts_by_kind(records: list[ExportRecord]) -> dict[str, int]:
    """How many failures of each kind (the coverage series' `failures`)."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.kind] = counts.get(record.kind, 0) + 1
    return counts


def by_class(records: list[ExportRecord]) -> list[ExportRecord]:
    """Failures in triage order (new first, expected last), then as found."""
    return sorted(records, key=lambda r: class_rank(r.triage))


def failure_lines(records: list[ExportRecord]) -> list[str]:
    """The failures of a campaign grouped by triage class, new first."""
    lines: list[str] = []
    current = None
    for record in by_class(records):
        if record.triage != current:
            current = record.triage
            count = sum(1 for r in records if r.triage == current)
            lines.append(f"  {current.upper()} ({count}): {CLASS_HELP.get(current, '')}")
        mark = "" if record.reproduced else "  NOT REPRODUCED"
        shrunk = "" if record.shrunk else f" (not fully shrunk: {record.shrink_left})"
        lines.append(
            f"    [{record.kind}] {record.steps} step{'' if record.steps == 1 else 's'}{shrunk}: {record.message[:160]}{mark}"
        )
        if record.triage_reason:
            lines.append(f"      why: {record.triage_reason[:200]}")
        lines.append(f"      blocksim replay {record.path}")
    return lines


def run_headline(head: str, run: RunTotals, asked: int, known: str) -> str:
    """The first line a finished campaign prints: `head`, what ran against what was
    asked, throughput, coverage, failures (found by this run, whatever their triage
    class, and `known` ones), how it ended."""
    rate = run.steps / run.wall_s if run.wall_s else 0.0
    return (
        f"{head}: {run.examples} of {asked} examples"
        f"{runs_note(run.replays, run.rejected)}, {run.steps} steps "
        f"in {run.wall_s:.1f} s ({rate:,.0f} steps/s), {run.coverage.points} coverage "
        f"points, {len(run.failures)} failure(s) found, {run.duplicates} {known}"
        + ("" if run.stopped == "done" else f" [stopped: {run.stopped}]")
    )


def summary_lines(result: CampaignResult) -> list[str]:
    """What `blocksim fuzz` prints when a campaign ends."""
    cfg = result.config
    lines = [run_headline(f"policy {cfg.policy}, seed {cfg.seed}", result, cfg.examples, "known")]
    lines += failure_lines(result.failures)
    lines.extend(f"  warning: {w}" for w in result.warnings)
    if cfg.out is not None:
        lines.append(f"  coverage: {cfg.out / 'coverage.json'}")
    return lines
