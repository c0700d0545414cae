"""Differential fuzzing: generated traces on real QEMU 7.2 and on the simulator.

Theory of operation: `differential_campaign` asks the trace generator
(`sim.fuzz.tracegen.generate_trace`, traces whose outcome is deterministic on
real QEMU) for `n_traces` traces, diffs each one (`sim.oracle.diff_trace`, one fresh
QEMU process per run) and sorts the mismatches into classes by the signature
of their first difference (layer, command, field, kind of change).  The
first trace of each class is shrunk and written to ``OUT/failures/``; later
traces of a known class are only counted, which keeps the campaign fast.

QEMU itself is not always deterministic (a job's progress under load).  A
mismatching trace whose class no pinned known difference explains is run
again on QEMU (at most `RECHECK_RUNS` times); when two of QEMU's own runs
answer differently where the simulator differs (`qemu_answer`), the trace
is *QEMU-nondeterministic*: its evidence (each run's answer there) goes to
``OUT/failures/qemu-nondeterministic/`` and the summary counts such classes
on a line of their own.  A class stays UNEXPLAINED unless every one of its
traces showed that; when QEMU answers a trace the same way every time and
the simulator differs, the mismatch is real.

Shrinking is delta debugging over *units*: each step that is not a `wait`,
together with the waits that belong to it (a wait belongs to the latest job
command that names the job it waits for), so a job is never kept without the
wait for its end and a wait never outlives its job.  A candidate is first run
on the simulator alone; if that makes a wait unsatisfiable where the original
had none, it is rejected without starting QEMU.  Otherwise it is diffed, and
kept when its first difference has the same signature.  A QEMU that crashes
(`QemuDied`) or hangs (a command that never answers) is a class of its own
and is shrunk the same way.

Two trace sources: ``tracegen`` (the seeded generator of QEMU-deterministic
traces) and ``rules`` (`sim.fuzz.difftraces`: the fuzzer's own rules,
restricted to timing-independent steps).  Every diff also counts, per
command, the traces and steps it matched (`CommandTally`), and with
`record_dir` each trace is written back with QEMU's answers as
expectations (``match/`` when the simulator matched it, ``mismatch/``
otherwise): the recorded corpus is a by-product of the campaign.

Run it: ``python -m sim.fuzz.differential --traces 300 --seed 1 --out DIR``
or ``blocksim diff --campaign 300 --source rules --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.bundled import bundled
from sim.compare import first_difference
from sim.errors import TraceError
from sim.oracle import (
    Difference,
    DiffReport,
    OracleError,
    QemuDied,
    QemuNotFound,
    diff_trace,
    find_qemu,
    qemu_answer,
    recorded_lines,
    step_label,
)
from sim.replay import replay
from sim.trace import Trace, atomic_write_text, dumps, parse_lines

CAMPAIGN_WAIT_TIMEOUT_S = 15.0  # generated jobs run on 16-64 MiB images: well under a second
SHRINK_WAIT_TIMEOUT_S = 10.0
MAX_SHRINK_RUNS = 150  # QEMU runs one shrink may spend
SUMMARY_EVERY = 25  # traces between two writes of summary.json during a campaign
CONFIRM_RUNS = 2  # extra runs of a shrunk trace: a flaky class shows as "reproduced 0/2"
RECHECK_RUNS = 2  # re-runs of an unexplained mismatching trace, to see QEMU disagree with itself
NONDETERMINISTIC = "qemu-nondeterministic"  # the evidence folder under OUT/failures/
SEED_STRIDE = 1_000_000  # trace i of campaign seed s uses generator seed s * SEED_STRIDE + i

# Commands that start, move or end a job: what a `wait` for a job event belongs to.
JOB_COMMANDS = frozenset(
    {
        "drive-backup", "blockdev-backup", "drive-mirror", "blockdev-mirror",
        "block-commit", "block-stream", "transaction",
        "block-job-complete", "block-job-finalize", "block-job-cancel",
        "block-job-dismiss", "block-job-pause", "block-job-resume", "block-job-set-speed",
        "job-complete", "job-finalize", "job-cancel", "job-dismiss", "job-pause", "job-resume",
    }
)  # fmt: skip

# Known differences found by campaigns: each pinned trace's header names its class
# ("... differential campaign class SIGNATURE, N of the campaign's traces): ...") and
# says why the simulator differs in `// reason: ...` lines (README.md's table shows them).
PINNED_FOLDER = "scenarios/known-differences/differential"
_PINNED_CLASS = re.compile(
    r"differential campaign class (?P<signature>.*?), (?P<count>[^,]*) of the campaign's traces\)"
)
_REASON = "// reason:"

TraceSteps = list[dict[str, Any]]  # the header dict, then the step dicts (generator output)
Progress = Callable[[int, int, str], None]  # (traces done, traces in all, what happened)


@dataclass
class MismatchClass:
    """One class of mismatch: its signature, how often it showed, its minimal trace."""

    signature: str
    seeds: list[int]
    path: str  # the shrunk trace in OUT/failures/
    steps_before: int
    steps_after: int
    first: str  # the first difference of the shrunk trace, rendered
    reproduced: str = ""  # "k/n": the shrunk trace showed it again in k of n more runs
    # traces QEMU answered differently on a re-run where the simulator differs ...
    nondeterministic: list[int] = field(default_factory=list)
    # ... and traces QEMU answered the same way in every re-run (a real mismatch)
    deterministic: list[int] = field(default_factory=list)
    evidence: str = ""  # the first QEMU-nondeterministic trace's evidence file
    shrunk_evidence: str = ""  # QEMU's runs of the shrunk trace disagreed: their evidence

    @property
    def count(self) -> int:
        return len(self.seeds)

    def status(self, pinned: Container[str]) -> str:
        """This class's `class_status` against the `pinned` signatures."""
        traces, flaky = len(set(self.seeds)), len(set(self.nondeterministic))
        return class_status(self.signature, traces, flaky, pinned)


def class_status(signature: str, traces: int, nondeterministic: int, pinned: Container[str]) -> str:
    """What explains a campaign's class of `traces` traces: ``pinned`` (a known difference
    names its signature), ``qemu-nondeterministic`` (QEMU answered a re-run of each of
    its traces differently where the simulator differs: `nondeterministic` of them) or
    nothing (``unexplained``)."""
    if signature in pinned:
        return "pinned"
    if traces and nondeterministic >= traces:
        return NONDETERMINISTIC
    return "unexplained"


@dataclass(frozen=True, slots=True)
class PinnedDifference:
    """A known difference from QEMU 7.2 pinned by a differential campaign: the trace in
    ``scenarios/known-differences/differential/`` holding the simulator's answers, the
    class (mismatch signature) it stands for, how many of the pinning campaign's traces
    showed it, and why the simulator differs (its ``// reason:`` lines)."""

    signature: str
    path: Path
    count_when_pinned: str  # as its header says it ("17")
    reason: str


def pinned_differences(folder: str | Path | None = None) -> list[PinnedDifference]:
    """Every known difference pinned in `folder` (default: the bundled
    ``scenarios/known-differences/differential``), in file-name order.  A trace whose
    header names no class is not one."""
    root = Path(folder) if folder is not None else bundled(PINNED_FOLDER)
    found: list[PinnedDifference] = []
    for path in sorted(root.glob("*.jsonl")) if root.is_dir() else []:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
            reason = " ".join(
                line[len(_REASON) :].strip() for line in handle if line.startswith(_REASON)
            )
        try:
            description = str(json.loads(first).get("description", ""))
        except (json.JSONDecodeError, AttributeError):
            continue
        match = _PINNED_CLASS.search(description)
        if match is not None:
            found.append(PinnedDifference(match["signature"], path, match["count"], reason))
    return found


def pinned_classes(folder: str | Path | None = None) -> dict[str, str]:
    """Signature -> pinned trace, for every known difference pinned in `folder`
    (default: the bundled ``scenarios/known-differences/differential``).  A campaign's
    class is *explained* when its signature is pinned there with its reason."""
    found: dict[str, str] = {}
    for pinned in pinned_differences(folder):
        found.setdefault(pinned.signature, pinned.path.name)
    return found


@dataclass
class CommandTally:
    """Per command: traces holding it and how many of them matched; its steps, matched."""

    traces: int = 0
    traces_matched: int = 0
    steps: int = 0
    steps_matched: int = 0

    def per_thousand(self) -> tuple[int, int]:
        """(traces, steps) matched per 1,000 drawn."""
        t = round(1000 * self.traces_matched / self.traces) if self.traces else 0
        s = round(1000 * self.steps_matched / self.steps) if self.steps else 0
        return t, s


@dataclass
class Summary:
    """What a differential campaign found, and how fast it went."""

    traces: int = 0
    identical: int = 0
    mismatching: int = 0
    classes: list[MismatchClass] = field(default_factory=list)
    elapsed_s: float = 0.0
    diff_s: float = 0.0  # time spent diffing generated traces (shrinking excluded)
    qemu_runs: int = 0  # every QEMU run, shrinking included
    generator_errors: list[str] = field(default_factory=list)  # seeds the generator failed on
    untestable: int = 0  # traces QEMU must not run (a known crasher): not diffed
    steps: int = 0
    steps_matched: int = 0
    commands: dict[str, CommandTally] = field(default_factory=dict)

    def tally(self, outcome: Outcome) -> None:
        """Count one diffed trace's steps, per command."""
        identical = outcome.signature is None
        self.steps += len(outcome.labels)
        self.steps_matched += sum(1 for i in range(len(outcome.labels)) if i not in outcome.bad)
        for label in dict.fromkeys(outcome.labels):
            t = self.commands.setdefault(label, CommandTally())
            t.traces += 1
            t.traces_matched += identical
        for index, label in enumerate(outcome.labels):
            t = self.commands[label]
            t.steps += 1
            t.steps_matched += index not in outcome.bad

    @property
    def traces_per_minute(self) -> float:
        """Generated traces diffed per minute of wall time, shrinking included."""
        return 60.0 * self.traces / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def diff_traces_per_minute(self) -> float:
        """Traces per minute of diffing alone (what a campaign without mismatches runs at)."""
        return 60.0 * self.traces / self.diff_s if self.diff_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "traces": self.traces,
            "identical": self.identical,
            "mismatching": self.mismatching,
            "elapsed_s": round(self.elapsed_s, 1),
            "traces_per_minute": round(self.traces_per_minute, 1),
            "diff_traces_per_minute": round(self.diff_traces_per_minute, 1),
            "qemu_runs": self.qemu_runs,
            "generator_errors": self.generator_errors,
            "untestable": self.untestable,
            "steps": self.steps,
            "steps_matched": self.steps_matched,
            "per_command": {
                name: {
                    "traces": t.traces,
                    "traces_matched": t.traces_matched,
                    "steps": t.steps,
                    "steps_matched": t.steps_matched,
                    "per_1000": list(t.per_thousand()),
                }
                for name, t in sorted(self.commands.items())
            },
            "classes": [
                {
                    "signature": c.signature,
                    "count": c.count,
                    "seeds": c.seeds,
                    "trace": c.path,
                    "steps": [c.steps_before, c.steps_after],
                    "first": c.first,
                    "reproduced": c.reproduced,
                    "nondeterministic": c.nondeterministic,
                    "deterministic": c.deterministic,
                    "evidence": c.evidence,
                    "shrunk_evidence": c.shrunk_evidence,
                }
                for c in self.classes
            ],
        }

    def unexplained(self, pinned: dict[str, str]) -> list[MismatchClass]:
        """The classes neither a pinned known difference nor QEMU's own nondeterminism
        explains (`MismatchClass.status`)."""
        return [c for c in self.classes if c.status(pinned) == "unexplained"]

    def nondeterministic(self, pinned: dict[str, str]) -> list[MismatchClass]:
        """The classes whose every trace QEMU answered differently on a re-run."""
        return [c for c in self.classes if c.status(pinned) == NONDETERMINISTIC]

    def render(self, pinned: dict[str, str] | None = None) -> str:
        """A readable summary: counts, speed, one paragraph per class (each marked
        pinned, with its trace, or UNEXPLAINED against `pinned`, default the bundled
        known differences)."""
        pinned = pinned_classes() if pinned is None else pinned
        unexplained = self.unexplained(pinned)
        flaky = self.nondeterministic(pinned)
        lines = [
            f"{self.traces} traces: {self.identical} identical, {self.mismatching} mismatching "
            f"in {len(self.classes)} class(es); {self.elapsed_s:.0f} s, "
            f"{self.traces_per_minute:.1f} traces/min ({self.diff_traces_per_minute:.1f} "
            f"without shrinking), {self.qemu_runs} QEMU runs"
        ]
        if self.traces:
            lines.append(
                f"per 1,000 drawn: {round(1000 * self.identical / self.traces)} traces matched, "
                f"{round(1000 * self.steps_matched / max(self.steps, 1))} steps matched "
                f"({self.steps} steps); {self.untestable} untestable trace(s) skipped"
            )
            lines.append("  command                              traces  /1000    steps  /1000")
            for name, t in sorted(self.commands.items()):
                pt, ps = t.per_thousand()
                lines.append(f"  {name:36} {t.traces:6} {pt:6} {t.steps:8} {ps:6}")
        lines.append(
            f"unexplained: {len(unexplained)} class(es), "
            f"{sum(c.count for c in unexplained)} trace(s) "
            f"({len(self.classes) - len(unexplained) - len(flaky)} class(es) pinned as "
            "known differences)"
        )
        lines.append(
            f"QEMU nondeterministic: {len(flaky)} class(es), {sum(c.count for c in flaky)} "
            "trace(s) (QEMU answered a re-run of the same trace differently where the "
            f"simulator differs; evidence in failures/{NONDETERMINISTIC}/)"
        )
        if self.generator_errors:
            lines.append(f"generator failed on {len(self.generator_errors)} seed(s):")
            lines.extend(f"  {e}" for e in self.generator_errors[:10])
        for c in self.classes:
            known = pinned.get(c.signature)
            lines.append(
                f"- {c.signature}: {c.count} trace(s) (seeds {c.seeds[:5]}), shrunk "
                f"{c.steps_before} -> {c.steps_after} steps, reproduced {c.reproduced}: {c.path}"
            )
            status = c.status(pinned)
            if status == "pinned":
                lines.append(f"    pinned: {known}")
            elif status == NONDETERMINISTIC:
                lines.append(
                    f"    QEMU NONDETERMINISTIC: QEMU answered a re-run of each of its "
                    f"{c.count} trace(s) differently there; evidence: {c.evidence}"
                )
            else:
                lines.append("    UNEXPLAINED")
                if c.nondeterministic or c.deterministic:
                    lines.append(
                        f"    re-run on QEMU: {len(c.nondeterministic)} trace(s) answered "
                        f"differently (evidence: {c.evidence or '-'}), "
                        f"{len(c.deterministic)} the same way every time"
                    )
            if c.shrunk_evidence:
                lines.append(
                    f"    QEMU's runs of the shrunk trace disagreed there: {c.shrunk_evidence}"
                )
            lines.append("    " + c.first.replace("\n", "\n    "))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One diff: the signature of its first difference (None: identical) and its text."""

    signature: str | None
    text: str
    sim_trace_errors: int = 0
    labels: tuple[str, ...] = ()  # each step's command (`step_label`)
    bad: frozenset[int] = frozenset()  # 0-based indices of the steps a difference shows at
    recorded: list[str] | None = None  # the trace with QEMU's answers (when QEMU ran it all)
    report: DiffReport | None = field(default=None, compare=False, repr=False)  # the diff


@dataclass(frozen=True)
class SelfDisagreement:
    """Runs of one trace on which real QEMU answered differently where the simulator
    differs (the first run's first difference): that answer depends on timing on QEMU."""

    where: str  # the place, as diffs name it
    answers: list[Any]  # QEMU's answer there, one per run (the mismatching run first)
    runs: tuple[int, int]  # the two 1-based runs whose answers differ
    detail: str  # how they differ
    verdicts: list[str]  # each run's diff against the simulator: its first difference


def self_disagreement(runs: Sequence[Outcome]) -> SelfDisagreement | None:
    """Whether QEMU's runs of one trace (`runs`, each a diff of it) answered differently
    at the first run's first difference; a run QEMU died or hung in answers nothing."""
    report = runs[0].report
    place = report.first if report is not None else None
    answers = [_answer_at(o, place) for o in runs]
    for later in range(1, len(runs)):
        detail = first_difference(answers[0], answers[later])
        if detail is not None:
            where = place.where if place is not None else "the whole run"
            verdicts = [o.text if o.signature is not None else "identical" for o in runs]
            return SelfDisagreement(where, answers, (1, later + 1), detail, verdicts)
    return None


def _answer_at(outcome: Outcome, place: Difference | None) -> Any:
    if outcome.report is None:
        return {"no-answers": outcome.signature}  # QEMU died or hung
    if place is None:
        return {"answered": "every step"}
    return qemu_answer(outcome.report, place)


def recheck(
    steps: TraceSteps, outcome: Outcome, qemu: str | None, runs: int = RECHECK_RUNS
) -> tuple[SelfDisagreement | None, int]:
    """Run a mismatching trace on QEMU again (at most `runs` times, until QEMU answers
    differently where it mismatched); returns the disagreement found (None: QEMU gave
    the same answer there every time) and the QEMU runs spent."""
    seen = [outcome]
    for _ in range(runs):
        seen.append(run_outcome(steps, qemu, CAMPAIGN_WAIT_TIMEOUT_S))
        found = self_disagreement(seen)
        if found is not None:
            return found, len(seen) - 1
    return None, runs


def differential_campaign(
    n_traces: int,
    seed: int,
    out_dir: str | Path,
    qemu: str | None = None,
    progress: Progress | None = None,
    *,
    source: str = "tracegen",
    first: int = 0,
    record_dir: str | Path | None = None,
    shrink_runs: int = MAX_SHRINK_RUNS,
    pinned: dict[str, str] | None = None,
) -> Summary:
    """Diff `n_traces` generated traces on real QEMU and the simulator; returns the `Summary`.

    `source` ``tracegen``: trace i uses generator seed ``seed * 1_000_000 + i``;
    ``rules``: trace i is `sim.fuzz.difftraces.draw_traces`' trace i for
    `seed`.  `first` is the index of the first trace (campaigns run in
    chunks).  With `record_dir`, every trace QEMU ran through is written
    there with QEMU's answers (``match/`` or ``mismatch/``).  `shrink_runs`
    caps the QEMU runs shrinking one new class may spend.  A mismatching trace
    whose signature `pinned` (default: `pinned_classes()`) does not name is
    run again (`recheck`).  Writes the shrunk trace of each mismatch class
    to ``out_dir/failures/`` and the summary to ``out_dir/summary.json``.  `progress(done, total, message)` is called
    after every trace.  Raises `QemuNotFound` when QEMU is missing.
    """
    find_qemu(qemu)
    out = Path(out_dir)
    (out / "failures").mkdir(parents=True, exist_ok=True)
    records = Path(record_dir) if record_dir is not None else None
    summary = Summary()
    known: dict[str, MismatchClass] = {}
    pinned = pinned_classes() if pinned is None else pinned
    started = time.perf_counter()
    for index, trace_seed, steps in _draw(source, n_traces, seed, first, summary, progress):
        t0 = time.perf_counter()
        outcome = run_outcome(steps, qemu, CAMPAIGN_WAIT_TIMEOUT_S)
        summary.diff_s += time.perf_counter() - t0
        if outcome.signature is not None and outcome.signature.startswith("untestable:"):
            summary.untestable += 1
            if progress is not None:
                progress(index + 1, n_traces, f"seed {trace_seed}: untestable")
            continue
        summary.traces += 1
        summary.qemu_runs += 1
        summary.tally(outcome)
        if records is not None and outcome.recorded is not None:
            folder = records / ("match" if outcome.signature is None else "mismatch")
            folder.mkdir(parents=True, exist_ok=True)
            name = str(steps[0].get("name") or f"trace-{trace_seed}")
            atomic_write_text(folder / f"{name}.jsonl", "\n".join(outcome.recorded) + "\n")
        message = f"seed {trace_seed}: identical"
        if outcome.signature is None:
            summary.identical += 1
        else:
            summary.mismatching += 1
            cls = known.get(outcome.signature)
            disagreement: SelfDisagreement | None = None
            check = outcome.signature not in pinned
            if check:
                disagreement, runs = recheck(steps, outcome, qemu)
                summary.qemu_runs += runs
            if cls is None:
                cls = _new_class(steps, trace_seed, outcome, qemu, out, summary, shrink_runs)
                known[cls.signature] = cls
                summary.classes.append(cls)
                message = f"seed {trace_seed}: NEW {cls.signature} -> {cls.path}"
            else:
                message = f"seed {trace_seed}: {cls.signature} (seen)"
            cls.seeds.append(trace_seed)
            if check:
                message += count_recheck(cls, out, steps, trace_seed, disagreement)
        if progress is not None:
            progress(index + 1, n_traces, message)
        if summary.traces % SUMMARY_EVERY == 0:  # a campaign cut short keeps its figures
            _write_summary(out, summary, started)
    _write_summary(out, summary, started)
    return summary


def _write_summary(out: Path, summary: Summary, started: float) -> None:
    summary.elapsed_s = time.perf_counter() - started
    atomic_write_text(out / "summary.json", json.dumps(summary.to_json(), indent=1) + "\n")
    atomic_write_text(out / "summary.txt", summary.render() + "\n")


def _draw(
    source: str,
    n_traces: int,
    seed: int,
    first: int,
    summary: Summary,
    progress: Progress | None,
) -> Iterator[tuple[int, int, TraceSteps]]:
    """(index, seed, steps) of each trace of the campaign, from `source`."""
    if source == "rules":
        from sim.fuzz.difftraces import DRAW_ROUND, draw_traces

        done = 0
        while done < n_traces:  # a round at a time: the first diffs start at once
            count = min(DRAW_ROUND - (first + done) % DRAW_ROUND, n_traces - done)
            for offset, steps in enumerate(draw_traces(count, seed, first=first + done)):
                yield done + offset, first + done + offset, steps
            done += count
        return
    if source != "tracegen":
        raise ValueError(f"unknown trace source {source!r} (tracegen, rules)")
    from sim.fuzz.tracegen import generate_trace

    for index in range(n_traces):
        trace_seed = seed * SEED_STRIDE + first + index
        try:
            yield index, trace_seed, generate_trace(trace_seed)
        except Exception as exc:  # noqa: BLE001 - a generator bug must not end the campaign
            summary.generator_errors.append(f"seed {trace_seed}: {type(exc).__name__}: {exc}")
            if progress is not None:
                progress(index + 1, n_traces, f"seed {trace_seed}: GENERATOR ERROR {exc!r}")


def _new_class(
    steps: TraceSteps,
    trace_seed: int,
    outcome: Outcome,
    qemu: str | None,
    out: Path,
    summary: Summary,
    shrink_runs: int = MAX_SHRINK_RUNS,
) -> MismatchClass:
    assert outcome.signature is not None
    shrunk, final, runs = shrink(steps, outcome, qemu, shrink_runs)
    again = [run_outcome(shrunk, qemu, SHRINK_WAIT_TIMEOUT_S) for _ in range(CONFIRM_RUNS)]
    summary.qemu_runs += runs + CONFIRM_RUNS
    reproduced = sum(o.signature == outcome.signature for o in again)
    path = write_failure(out / "failures", shrunk, outcome.signature, final, trace_seed)
    disagreement = self_disagreement([final, *again])
    return MismatchClass(
        outcome.signature,
        [],
        str(path),
        len(steps) - 1,
        len(shrunk) - 1,
        final.text,
        f"{reproduced}/{CONFIRM_RUNS}",
        shrunk_evidence=write_shrunk_evidence(
            out, shrunk, outcome.signature, disagreement, trace_seed
        ),
    )


def count_recheck(
    cls: MismatchClass,
    out: Path,
    steps: TraceSteps,
    trace_seed: int,
    disagreement: SelfDisagreement | None,
) -> str:
    """Count a re-run trace of `cls` as QEMU-nondeterministic (writing its evidence) or
    deterministic; returns what the progress line adds."""
    if disagreement is None:
        cls.deterministic.append(trace_seed)
        return ""
    cls.nondeterministic.append(trace_seed)
    label = f"seed {trace_seed}"
    path = write_evidence(out / "failures", steps, cls.signature, disagreement, label)
    cls.evidence = cls.evidence or str(path)
    return f"; QEMU answered a re-run differently: {path}"


def write_shrunk_evidence(
    out: Path,
    shrunk: TraceSteps,
    signature: str,
    disagreement: SelfDisagreement | None,
    trace_seed: int,
) -> str:
    """The evidence file of QEMU's runs of a shrunk trace disagreeing ("" when they agree)."""
    if disagreement is None:
        return ""
    label = f"shrunk from seed {trace_seed}"
    return str(write_evidence(out / "failures", shrunk, signature, disagreement, label))


# --- one run -----------------------------------------------------------------------------


def to_trace(steps: TraceSteps) -> Trace:
    """Parse generator output (header dict, step dicts) as a trace file would be."""
    return parse_lines([dumps(s) for s in steps], "generated")


def run_outcome(steps: TraceSteps, qemu: str | None, wait_timeout_s: float) -> Outcome:
    """Diff one trace; its `Outcome` (a QEMU crash or a refused trace is a signature too)."""
    trace = to_trace(steps)
    try:
        report = diff_trace(trace, qemu=qemu, wait_timeout_s=wait_timeout_s)
    except QemuDied as exc:
        predicted = _predicted_stop(trace)
        if predicted is not None:  # the simulator said so: a crasher the draw missed
            return Outcome("untestable:" + predicted[:80], f"{exc}\n{predicted}")
        return Outcome(f"qemu-died:{_died_command(str(exc))}", str(exc))
    except QemuNotFound:
        raise
    except OracleError as exc:  # QEMU hung (a command that never answered) or misbehaved
        return Outcome(f"qemu-failed:{_died_command(str(exc))}", str(exc))
    except TraceError as exc:  # the generator produced a step QEMU must not run
        return Outcome("untestable:" + re.sub(r"line \d+: ", "", str(exc))[:80], str(exc))
    return _report_outcome(report, steps)


def _predicted_stop(trace: Trace) -> str | None:
    """The simulator's warning that real QEMU 7.2 crashes or aborts on this trace (the
    cases found recording traces, each warned where the simulator meets it), or None."""
    warnings = replay(trace).machine.state.warnings
    return next((w for w in warnings if " crashes " in w or " aborts " in w), None)


def _report_outcome(report: DiffReport, steps: TraceSteps) -> Outcome:
    errors = len(report.sim.trace_errors)
    labels = tuple(step_label(s) for s in report.trace.steps)
    bad = frozenset(d.step - 1 for d in report.differences if d.step is not None)
    recorded = None
    if not any("error" in r for r in report.qemu.steps):
        lines = [dumps(s) for s in steps]
        recorded = recorded_lines(lines, report.trace.steps, report.qemu)
    first = report.first
    if first is None:
        return Outcome(None, report.render(limit=3), errors, labels, bad, recorded, report)
    text = f"{first.where}: {first.detail}"
    return Outcome(first.signature, text, errors, labels, bad, recorded, report)


def _died_command(message: str) -> str:
    found = re.search(r"while running '([^']+)'", message)
    return found.group(1) if found else "unknown"


# --- shrinking ---------------------------------------------------------------------------


def units_of(steps: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices of `steps` grouped into units that are kept or dropped together.

    A unit is one non-wait step plus the waits that belong to it: the latest
    earlier job command (`JOB_COMMANDS`) whose arguments name a value of the
    wait's data (the job id), else the latest job command, else the step
    just before.  Waits before any other step form a unit of their own.
    """
    units: list[list[int]] = []
    owner_of_step: dict[int, int] = {}  # step index -> unit index
    for index, step in enumerate(steps):
        if "wait" not in step:
            owner_of_step[index] = len(units)
            units.append([index])
            continue
        owner = _wait_owner(steps, index)
        if owner is None:
            units.append([index])
        else:
            units[owner_of_step[owner]].append(index)
    return units


def _wait_owner(steps: Sequence[dict[str, Any]], index: int) -> int | None:
    wanted = {v for v in steps[index]["wait"].get("data", {}).values() if isinstance(v, str)}
    job_steps = [i for i in range(index - 1, -1, -1) if steps[i].get("execute") in JOB_COMMANDS]
    for i in job_steps:
        if wanted & _strings(steps[i].get("arguments")):
            return i
    if job_steps:
        return job_steps[0]
    earlier = [i for i in range(index - 1, -1, -1) if "wait" not in steps[i]]
    return earlier[0] if earlier else None


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return set()


def shrink(
    steps: TraceSteps, outcome: Outcome, qemu: str | None, max_runs: int = MAX_SHRINK_RUNS
) -> tuple[TraceSteps, Outcome, int]:
    """Delta-debug `steps` down to a minimal trace with the same first-difference signature.

    Units (see `units_of`) first, then single actions of the transactions left.

    Returns the shrunk steps (header first), the `Outcome` of its last
    successful run, and how many QEMU runs it took.  At most `max_runs` runs.
    """
    header, body = steps[0], steps[1:]
    units = units_of(body)
    runs = 0
    best = outcome

    def interesting_steps(trial: TraceSteps) -> Outcome | None:
        nonlocal runs
        if _sim_breaks_waits(trial, outcome):
            return None
        runs += 1
        result = run_outcome(trial, qemu, SHRINK_WAIT_TIMEOUT_S)
        return result if result.signature == outcome.signature else None

    def interesting(candidate: list[list[int]]) -> Outcome | None:
        return interesting_steps(
            [header] + [body[i] for i in sorted(i for u in candidate for i in u)]
        )

    chunks = 2
    while len(units) >= 2 and runs < max_runs:
        size = math.ceil(len(units) / chunks)
        for start in range(0, len(units), size):
            candidate = units[:start] + units[start + size :]
            result = interesting(candidate) if candidate else None
            if result is not None:
                units, best = candidate, result
                chunks = max(chunks - 1, 2)
                break
            if runs >= max_runs:
                break
        else:
            if size == 1:
                break
            chunks = min(chunks * 2, len(units))
    kept = [header] + [body[i] for i in sorted(i for u in units for i in u)]
    for index in range(1, len(kept)):  # then the actions of each remaining transaction
        while runs < max_runs:
            smaller = _drop_one_action(kept, index, interesting_steps)
            if smaller is None:
                break
            kept, best = smaller
    return kept, best, runs


def _drop_one_action(
    steps: TraceSteps, index: int, interesting: Callable[[TraceSteps], Outcome | None]
) -> tuple[TraceSteps, Outcome] | None:
    """`steps` with one action less in the transaction at `index`, if still interesting."""
    step = steps[index]
    actions = (
        step.get("arguments", {}).get("actions") if step.get("execute") == "transaction" else None
    )
    if not isinstance(actions, list) or len(actions) < 2:
        return None
    for drop in range(len(actions)):
        arguments = dict(step["arguments"], actions=actions[:drop] + actions[drop + 1 :])
        trial = steps[:index] + [dict(step, arguments=arguments)] + steps[index + 1 :]
        result = interesting(trial)
        if result is not None:
            return trial, result
    return None


def _sim_breaks_waits(trial: TraceSteps, original: Outcome) -> bool:
    """True when the simulator alone shows the candidate has a wait that is never satisfied
    (and the original had none): QEMU would only time out on it."""
    if original.sim_trace_errors:
        return False
    try:
        return bool(replay(to_trace(trial)).trace_errors)
    except Exception:  # noqa: BLE001 - a simulator crash is for the diff to show
        return False


# --- output ------------------------------------------------------------------------------


def failure_name(signature: str) -> str:
    """A file name for a mismatch class: readable head plus a short hash of the signature."""
    head = re.sub(r"[^A-Za-z0-9]+", "-", signature.split(":(", 1)[0])[:60].strip("-")
    digest = hashlib.sha1(signature.encode()).hexdigest()[:8]
    return f"{head}-{digest}"


def write_failure(
    folder: Path, steps: TraceSteps, signature: str, outcome: Outcome, seed: int
) -> Path:
    """Write a shrunk trace with `//` comments saying what differs; returns its path."""
    name = failure_name(signature)
    header = dict(steps[0])
    header["name"] = f"diff-{name}"
    header["description"] = f"differential mismatch {signature} (shrunk from generator seed {seed})"
    comments = [f"// signature: {signature}"]
    comments += [f"// {line}" for line in outcome.text.splitlines()]
    lines = [dumps(header), *comments, *(dumps(s) for s in steps[1:])]
    path = folder / f"{name}.jsonl"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_evidence(
    folder: Path, steps: TraceSteps, signature: str, found: SelfDisagreement, label: str
) -> Path:
    """Write the evidence that QEMU answered runs of a trace differently where the
    simulator differs (the trace, QEMU's answer there in each run, each run's verdict)
    into ``folder/qemu-nondeterministic/``; returns its path."""
    target = folder / NONDETERMINISTIC
    target.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
    path = target / f"{failure_name(signature)}-{tag}.json"
    doc = {
        "signature": signature,
        "trace": label,
        "where": found.where,
        "differ": f"run {found.runs[0]} vs run {found.runs[1]}: {found.detail}",
        "qemu_answers": [{"run": i, "answer": a} for i, a in enumerate(found.answers, 1)],
        "runs_against_the_simulator": [
            {"run": i, "first_difference": v} for i, v in enumerate(found.verdicts, 1)
        ],
        "steps": steps,
    }
    atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


# --- campaigns run in chunks ----------------------------------------------------------------


def merge_summaries(folders: Sequence[str | Path]) -> Summary:
    """One `Summary` from the ``summary.json`` of campaign chunks (their traces, steps
    and per-command tallies added; classes joined by signature, the first chunk's
    shrunk trace kept)."""
    merged = Summary()
    by_signature: dict[str, MismatchClass] = {}
    for folder in folders:
        data = json.loads((Path(folder) / "summary.json").read_text())
        merged.traces += data["traces"]
        merged.identical += data["identical"]
        merged.mismatching += data["mismatching"]
        merged.elapsed_s += data["elapsed_s"]
        rate = data.get("diff_traces_per_minute") or 0
        merged.diff_s += 60.0 * data["traces"] / rate if rate else 0.0
        merged.qemu_runs += data["qemu_runs"]
        merged.untestable += data.get("untestable", 0)
        merged.steps += data.get("steps", 0)
        merged.steps_matched += data.get("steps_matched", 0)
        merged.generator_errors += data["generator_errors"]
        for name, t in data.get("per_command", {}).items():
            tally = merged.commands.setdefault(name, CommandTally())
            tally.traces += t["traces"]
            tally.traces_matched += t["traces_matched"]
            tally.steps += t["steps"]
            tally.steps_matched += t["steps_matched"]
        for c in data["classes"]:
            known = by_signature.get(c["signature"])
            if known is None:
                known = MismatchClass(
                    c["signature"], [], c["trace"],
                    c["steps"][0], c["steps"][1], c["first"], c["reproduced"],
                )  # fmt: skip
                by_signature[c["signature"]] = known
                merged.classes.append(known)
            known.seeds.extend(c["seeds"])
            known.nondeterministic.extend(c.get("nondeterministic", []))
            known.deterministic.extend(c.get("deterministic", []))
            known.evidence = known.evidence or c.get("evidence", "")
            known.shrunk_evidence = known.shrunk_evidence or c.get("shrunk_evidence", "")
    return merged


# --- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim.fuzz.differential``: run a campaign, print the summary."""
    parser = argparse.ArgumentParser(
        prog="python -m sim.fuzz.differential",
        description="Differential fuzzing of the simulator against real QEMU 7.2.",
    )
    parser.add_argument("--traces", type=int, default=100, help="how many traces (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--out", required=True, help="folder for failures/ and summary.json")
    parser.add_argument("--qemu", default=None, help="path of qemu-system-x86_64")
    parser.add_argument(
        "--source", choices=("tracegen", "rules"), default="tracegen", help="trace source"
    )
    parser.add_argument("--first", type=int, default=0, help="index of the first trace")
    parser.add_argument("--record", default=None, help="write recorded traces into this folder")
    parser.add_argument(
        "--merge", nargs="+", default=None, help="merge the summaries of these campaign folders"
    )
    args = parser.parse_args(argv)
    if args.merge:
        merged = merge_summaries(args.merge)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "summary.json", json.dumps(merged.to_json(), indent=1) + "\n")
        atomic_write_text(out / "summary.txt", merged.render() + "\n")
        sys.stdout.write(merged.render() + "\n")
        return 0

    def progress(done: int, total: int, message: str) -> None:
        sys.stderr.write(f"[{done}/{total}] {message}\n")

    try:
        summary = differential_campaign(
            args.traces,
            args.seed,
            args.out,
            args.qemu,
            progress,
            source=args.source,
            first=args.first,
            record_dir=args.record,
        )
    except OracleError as exc:
        sys.stderr.write(f"differential: {exc}\n")
        return 2
    pinned = pinned_classes()
    sys.stdout.write(summary.render(pinned) + "\n")
    return 0 if not summary.unexplained(pinned) else 1


if __name__ == "__main__":
    sys.exit(main())
