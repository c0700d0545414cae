"""Differential fuzzing: generated traces on real QEMU 7.2 and on the simulator.

Theory of operation: `differential_campaign` asks the trace generator
(`sim.fuzz.tracegen.generate_trace`, traces whose outcome is deterministic on
real QEMU) for `n_traces` traces, diffs each one (`sim.oracle.diff_trace`, one fresh
QEMU process per run) and sorts the mismatches into classes by the signature
of their first difference (layer, command, field, kind of change).  The
first trace of each class is shrunk and written to ``OUT/failures/``; later
traces of a known class are only counted, which keeps the campaign fast.

Shrinking is delta debugging over *units*: each step that is not a `wait`,
together with the waits that belong to it (a wait belongs to the latest job
command that names the job it waits for), so a job is never kept without the
wait for its end and a wait never outlives its job.  A candidate is first run
on the simulator alone; if that makes a wait unsatisfiable where the original
had none, it is rejected without starting QEMU.  Otherwise it is diffed, and
kept when its first difference has the same signature.  A QEMU that crashes
(`QemuDied`) or hangs (a command that never answers) is a class of its own
and is shrunk the same way.

Run it: ``python -m sim.fuzz.differential --traces 300 --seed 1 --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.errors import TraceError
from sim.oracle import DiffReport, OracleError, QemuDied, QemuNotFound, diff_trace, find_qemu
from sim.replay import replay
from sim.trace import Trace, dumps, parse_lines

CAMPAIGN_WAIT_TIMEOUT_S = 15.0  # generated jobs run on 16-64 MiB images: well under a second
SHRINK_WAIT_TIMEOUT_S = 10.0
MAX_SHRINK_RUNS = 150  # QEMU runs one shrink may spend
CONFIRM_RUNS = 2  # extra runs of a shrunk trace: a flaky class shows as "reproduced 0/2"
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

TraceSteps = list[dict[str, Any]]  # the header dict, then the step dicts (generator output)
Progress = Callable[[int, int, str], None]  # (traces done, traces in all, what happened)


@dataclass
class MismatchClass:
    """One class of mismatch: its signature, how often it showed, its minimal trace."""

    signature: str
    first_seed: int
    seeds: list[int]
    path: str  # the shrunk trace in OUT/failures/
    steps_before: int
    steps_after: int
    first: str  # the first difference of the shrunk trace, rendered
    reproduced: str = ""  # "k/n": the shrunk trace showed it again in k of n more runs

    @property
    def count(self) -> int:
        return len(self.seeds)


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
            "classes": [
                {
                    "signature": c.signature,
                    "count": c.count,
                    "seeds": c.seeds,
                    "trace": c.path,
                    "steps": [c.steps_before, c.steps_after],
                    "first": c.first,
                    "reproduced": c.reproduced,
                }
                for c in self.classes
            ],
        }

    def render(self) -> str:
        """A readable summary: counts, speed, one paragraph per class."""
        lines = [
            f"{self.traces} traces: {self.identical} identical, {self.mismatching} mismatching "
            f"in {len(self.classes)} class(es); {self.elapsed_s:.0f} s, "
            f"{self.traces_per_minute:.1f} traces/min ({self.diff_traces_per_minute:.1f} "
            f"without shrinking), {self.qemu_runs} QEMU runs"
        ]
        if self.generator_errors:
            lines.append(f"generator failed on {len(self.generator_errors)} seed(s):")
            lines.extend(f"  {e}" for e in self.generator_errors[:10])
        for c in self.classes:
            lines.append(
                f"- {c.signature}: {c.count} trace(s) (seeds {c.seeds[:5]}), shrunk "
                f"{c.steps_before} -> {c.steps_after} steps, reproduced {c.reproduced}: {c.path}"
            )
            lines.append("    " + c.first.replace("\n", "\n    "))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One diff: the signature of its first difference (None: identical) and its text."""

    signature: str | None
    text: str
    sim_trace_errors: int = 0


def differential_campaign(
    n_traces: int,
    seed: int,
    out_dir: str | Path,
    qemu: str | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Diff `n_traces` generated traces on real QEMU and the simulator; returns the `Summary`.

    Trace i uses generator seed ``seed * 1_000_000 + i``.  Writes the shrunk
    trace of each mismatch class to ``out_dir/failures/`` and the summary to
    ``out_dir/summary.json``.  `progress(done, total, message)` is called
    after every trace.  Raises `QemuNotFound` when QEMU is missing.
    """
    from sim.fuzz.tracegen import generate_trace

    find_qemu(qemu)
    out = Path(out_dir)
    (out / "failures").mkdir(parents=True, exist_ok=True)
    summary = Summary()
    known: dict[str, MismatchClass] = {}
    started = time.perf_counter()
    for index in range(n_traces):
        trace_seed = seed * SEED_STRIDE + index
        try:
            steps = generate_trace(trace_seed)
        except Exception as exc:  # noqa: BLE001 - a generator bug must not end the campaign
            summary.generator_errors.append(f"seed {trace_seed}: {type(exc).__name__}: {exc}")
            if progress is not None:
                progress(index + 1, n_traces, f"seed {trace_seed}: GENERATOR ERROR {exc!r}")
            continue
        t0 = time.perf_counter()
        outcome = run_outcome(steps, qemu, CAMPAIGN_WAIT_TIMEOUT_S)
        summary.diff_s += time.perf_counter() - t0
        summary.traces += 1
        summary.qemu_runs += 1
        message = f"seed {trace_seed}: identical"
        if outcome.signature is None:
            summary.identical += 1
        else:
            summary.mismatching += 1
            cls = known.get(outcome.signature)
            if cls is None:
                cls = _new_class(steps, trace_seed, outcome, qemu, out, summary)
                known[cls.signature] = cls
                summary.classes.append(cls)
                message = f"seed {trace_seed}: NEW {cls.signature} -> {cls.path}"
            else:
                message = f"seed {trace_seed}: {cls.signature} (seen)"
            cls.seeds.append(trace_seed)
        if progress is not None:
            progress(index + 1, n_traces, message)
    summary.elapsed_s = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    (out / "summary.txt").write_text(summary.render() + "\n")
    return summary


def _new_class(
    steps: TraceSteps,
    trace_seed: int,
    outcome: Outcome,
    qemu: str | None,
    out: Path,
    summary: Summary,
) -> MismatchClass:
    assert outcome.signature is not None
    shrunk, final, runs = shrink(steps, outcome, qemu)
    again = [run_outcome(shrunk, qemu, SHRINK_WAIT_TIMEOUT_S) for _ in range(CONFIRM_RUNS)]
    summary.qemu_runs += runs + CONFIRM_RUNS
    reproduced = sum(o.signature == outcome.signature for o in again)
    path = write_failure(out / "failures", shrunk, outcome.signature, final, trace_seed)
    return MismatchClass(
        outcome.signature,
        trace_seed,
        [],
        str(path),
        len(steps) - 1,
        len(shrunk) - 1,
        final.text,
        f"{reproduced}/{CONFIRM_RUNS}",
    )


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
        return Outcome(f"qemu-died:{_died_command(str(exc))}", str(exc))
    except QemuNotFound:
        raise
    except OracleError as exc:  # QEMU hung (a command that never answered) or misbehaved
        return Outcome(f"qemu-failed:{_died_command(str(exc))}", str(exc))
    except TraceError as exc:  # the generator produced a step QEMU must not run
        return Outcome("untestable:" + re.sub(r"line \d+: ", "", str(exc))[:80], str(exc))
    return _report_outcome(report)


def _report_outcome(report: DiffReport) -> Outcome:
    errors = len(report.sim.trace_errors)
    first = report.first
    if first is None:
        return Outcome(None, report.render(limit=3), errors)
    text = f"{first.where}: {first.detail}"
    return Outcome(first.signature, text, errors)


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
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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
    args = parser.parse_args(argv)

    def progress(done: int, total: int, message: str) -> None:
        sys.stderr.write(f"[{done}/{total}] {message}\n")

    try:
        summary = differential_campaign(args.traces, args.seed, args.out, args.qemu, progress)
    except OracleError as exc:
        sys.stderr.write(f"differential: {exc}\n")
        return 2
    sys.stdout.write(summary.render() + "\n")
    return 0 if not summary.classes else 1


if __name__ == "__main__":
    sys.exit(main())
