"""The `blocksim` command line: a thin layer over sim.replay, sim.fuzz, sim.oracle, sim.report.

Exit codes: 0 = everything matched, 1 = a mismatch / violation / difference,
2 = a bad trace or bad usage.  Never a traceback: every error is one clear line.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from sim.bundled import bundled
from sim.errors import TraceError
from sim.trace import POLICIES, atomic_write_text, dumps, load_trace

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


class Seconds(click.FloatRange):
    """A finite number of seconds in a range (NaN and infinities are refused)."""

    name = "seconds"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


def collect_traces(paths: tuple[str, ...]) -> list[Path]:
    """Files as given, folders searched recursively for *.jsonl (sorted)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(p.rglob("*.jsonl")))
        elif p.exists():
            out.append(p)
        else:
            raise click.UsageError(f"no such trace file or folder: {raw}")
    if not out:
        raise click.UsageError("no .jsonl traces found in " + ", ".join(paths))
    return out


# `--junit FILE`, shared by replay and diff
JUNIT_OPTION = click.option(
    "--junit",
    "junit_out",
    default=None,
    metavar="FILE",
    help="Also write a JUnit XML report (one test case per trace) for CI.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="blocksim")
def main() -> None:
    """blocksim: a deterministic simulator and fuzzer for QEMU 7.2's block layer."""


def _invariant_option(fn: Any) -> Any:
    return click.option(
        "--invariants",
        default=None,
        metavar="A,B,...|all|none",
        help="Checkers to run: comma-separated names, 'all' or 'none' "
        '(default: the trace header\'s "invariants", else none).',
    )(fn)


def _make_checkers(names: list[str]) -> list[Any]:
    """`sim.check.make_checkers`, imported only when a trace asks for checkers."""
    if not names:
        return []
    from sim.check import make_checkers

    return list(make_checkers(names))


def _timeline_recorder(trace: Any) -> Any:
    from sim.timeline import TimelineRecorder

    return TimelineRecorder(trace)


def parse_mute(value: str) -> tuple[str, ...]:
    """--mute values: 'expected', invariant names (or internal-error), failure keys
    ('INVARIANT: message shape', as the summary lists them); anything else is a typo
    that would mute nothing."""
    from sim.check import CHECKERS
    from sim.fuzz.failures import INTERNAL_ERROR
    from sim.fuzz.triage import MUTE_EXPECTED

    values = tuple(m.strip() for m in value.split(",") if m.strip())
    known = {*CHECKERS, INTERNAL_ERROR}
    for v in values:
        if v != MUTE_EXPECTED and v.split(": ", 1)[0] not in known:
            raise click.BadParameter(
                f"{v!r} mutes nothing: give '{MUTE_EXPECTED}', an invariant name or a "
                f"failure key ('INVARIANT: message'); invariants: {', '.join(CHECKERS)}, "
                f"{INTERNAL_ERROR}",
                param_hint="--mute",
            )
    return values


def parse_invariants(value: str | None) -> list[str] | None:
    """None = take them from each trace header; [] = none; else the names."""
    if value is None:
        return None
    from sim.check import CHECKERS

    if value == "all":
        return list(CHECKERS)
    if value == "none":
        return []
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in CHECKERS]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown invariant(s) {unknown}; known: {', '.join(CHECKERS)}",
            param_hint="--invariants",
        )
    return names


@main.command()
@click.argument("traces", nargs=-1, required=True)
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default=None,
    help="Bitmap-placement policy (default: the trace header's).",
)
@click.option("--seed", type=int, default=None, help="RNG seed (default: the trace header's).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Emit the spec's JSON lines per step and the final state.",
)
@_invariant_option
@click.option(
    "--record-timeline",
    "timeline_dir",
    default=None,
    metavar="DIR",
    help="Also record each replay's timeline for `blocksim report`: DIR/timeline.json "
    "for one trace, DIR/timelines/NAME.json for several.",
)
@JUNIT_OPTION
def replay(
    traces: tuple[str, ...],
    policy: str | None,
    seed: int | None,
    as_json: bool,
    invariants: str | None,
    timeline_dir: str | None,
    junit_out: str | None,
) -> None:
    """Replay TRACE files (or folders of .jsonl) and check every expectation."""
    from sim.replay import replay as run

    names = parse_invariants(invariants)
    files = collect_traces(traces)
    worst = EXIT_OK
    counts = {"pass": 0, "fail": 0, "error": 0}
    cases: list[dict[str, Any]] = []  # for --junit
    framed = as_json and len(files) > 1  # several traces: name each one and its verdict
    for path in files:
        if framed:
            click.echo(dumps({"trace-file": str(path)}))
        try:
            trace = load_trace(path)
        except TraceError as exc:
            click.echo(f"ERROR {path}: {exc}", err=not as_json)
            counts["error"] += 1
            worst = max(worst, EXIT_USAGE)
            cases.append({"path": str(path), "verdict": "error", "detail": str(exc)})
            if framed:
                click.echo(dumps({"verdict": "error", "trace-file": str(path), "detail": str(exc)}))
            continue
        try:
            wanted = names if names is not None else header_invariants(trace)
            checkers = _make_checkers(wanted)
        except ValueError as exc:
            click.echo(f"ERROR {path}: {exc}", err=True)
            counts["error"] += 1
            worst = max(worst, EXIT_USAGE)
            cases.append({"path": str(path), "verdict": "error", "detail": str(exc)})
            if framed:
                click.echo(dumps({"verdict": "error", "trace-file": str(path), "detail": str(exc)}))
            continue
        recorder = _timeline_recorder(trace) if timeline_dir is not None else None
        observers: list[Any] = [*checkers, recorder] if recorder is not None else checkers
        result = run(trace, policy=policy, seed=seed, checkers=observers)
        if recorder is not None and timeline_dir is not None:
            _write_timeline(
                Path(timeline_dir),
                path,
                files,
                recorder.to_json(result.policy, result.seed, str(path)),
            )
        if as_json:
            for outcome in result.steps:
                click.echo(dumps(outcome.json_line()))
            click.echo(dumps({"final": result.final}))
        code = _verdict(path, result, verbose=len(files) == 1, to_stderr=as_json)
        counts["pass" if code == EXIT_OK else ("error" if code == EXIT_USAGE else "fail")] += 1
        worst = max(worst, code)
        case = _case(path, result, code)
        cases.append(case)
        if framed:
            click.echo(dumps({k: case[k] for k in ("verdict", "name", "policy", "exit")} | {
                "trace-file": str(path), "violations": result.final.get("violations", [])}))  # fmt: skip
    if junit_out is not None:
        from sim.junit import write_junit

        write_junit(Path(junit_out), "blocksim replay", cases)
    if len(files) > 1:
        click.echo(
            f"{len(files)} traces: {counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['error']} with trace errors",
            err=as_json,
        )
    sys.exit(worst)


def _write_timeline(folder: Path, trace: Path, files: list[Path], timeline: dict[str, Any]) -> None:
    """One trace: DIR/timeline.json; several: DIR/timelines/STEM.json (PARENT-STEM when
    two traces share a file name)."""
    from sim.timeline import write_json

    if len(files) == 1:
        write_json(folder / "timeline.json", timeline)
        return
    shared = sum(1 for f in files if f.stem == trace.stem) > 1
    name = f"{trace.parent.name}-{trace.stem}" if shared else trace.stem
    write_json(folder / "timelines" / f"{name}.json", timeline)


def _dask_options(fn: Any) -> Any:
    fn = click.option(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:8786",
        help="Run on an existing Dask cluster (`dask scheduler`, `dask worker`).",
    )(fn)
    return click.option(
        "--workers",
        type=click.IntRange(1),
        default=None,
        metavar="N",
        help="Run on a local Dask cluster of N worker processes.",
    )(fn)


def _runner(workers: int | None, scheduler: str | None) -> Any:
    from sim.cluster import Runner

    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers (a local cluster) or --scheduler, not both")
    return Runner(workers, scheduler)


@main.command()
@click.argument("traces", nargs=-1)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write matrix.json (the report's input) here.",
)
@_dask_options
def matrix(
    traces: tuple[str, ...], json_out: str | None, workers: int | None, scheduler: str | None
) -> None:
    """Replay scenarios (default: scenarios/) under every policy with every checker and
    print the policy x invariant matrix with the minimal breaking trace per cell."""
    from rich.progress import Progress

    from sim.matrix import markdown, policy_matrix, to_json

    files = collect_traces(traces or (str(bundled("scenarios")),))
    with Progress(transient=True) as bar:
        task = bar.add_task("policy matrix", total=len(files))
        if workers is None and scheduler is None:
            result = policy_matrix(files, progress=lambda _p: bar.advance(task))
        else:
            result = _distributed_matrix(files, workers, scheduler, bar, task)
    click.echo(markdown(result))
    if json_out:
        atomic_write_text(Path(json_out), json.dumps(to_json(result), indent=1) + "\n")


def _distributed_matrix(
    files: list[Path], workers: int | None, scheduler: str | None, bar: Any, task: Any
) -> Any:
    from sim.matrix import distributed_matrix

    try:
        with _runner(workers, scheduler) as runner:
            return distributed_matrix(files, runner, progress=lambda n: bar.advance(task, n))
    except OSError as exc:  # the scheduler cannot be reached
        click.echo(f"blocksim matrix: Dask: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def header_invariants(trace: Any) -> list[str]:
    """The checkers a trace asks for in its header (`"invariants": [...]` or "all")."""
    value = trace.header.raw.get("invariants", [])
    if value == "all":
        from sim.check import CHECKERS

        return list(CHECKERS)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('header "invariants" must be a list of checker names or "all"')
    return list(value)


def plural(n: int, noun: str) -> str:
    """`1 step`, `2 steps`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _case(path: Path, result: Any, code: int) -> dict[str, Any]:
    """One trace's verdict as data: pass, fail (a mismatch or simulator bug), violation
    (one nothing pinned), error (a bad trace); with what a CI report shows."""
    violations = result.final.get("violations", [])
    if code == EXIT_OK:
        verdict, detail = "pass", ""
    elif code == EXIT_USAGE:
        verdict, detail = "error", "\n".join(result.trace_errors)
    elif result.mismatches or result.internal_errors:
        verdict = "fail"
        detail = "\n".join(
            [*(result.mismatches or result.internal_errors), *_violation_lines(violations)]
        )
    else:
        verdict = "violation"
        detail = "\n".join(_violation_lines(violations))
    return {
        "path": str(path),
        "name": result.trace.header.name or path.stem,
        "policy": result.policy,
        "verdict": verdict,
        "exit": code,
        "detail": detail,
        "steps": len(result.steps),
    }


def _violation_lines(violations: list[dict[str, Any]], limit: int = 10) -> list[str]:
    """One line per violation: step, invariant, message (at most `limit`, then a count)."""
    lines = [f"step {v.get('step')}: [{v.get('invariant')}] {v.get('message')}" for v in violations]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def _verdict(path: Path, result: Any, verbose: bool, to_stderr: bool) -> int:
    """Print one trace's verdict; return its exit code."""

    def say(text: str) -> None:
        click.echo(text, err=to_stderr)

    name = result.trace.header.name or path.stem
    violations = result.final.get("violations", [])
    for w in result.warnings:
        say(f"warning: {path}: {w}")
    for e in result.trace_errors:
        say(f"trace error: {path}: {e}")
    for e in result.internal_errors:
        say(f"SIMULATOR BUG: {path}: {e}")
    if result.mismatches:
        say(f"FAIL {name} ({path}, policy {result.policy})")
        for mm in result.mismatches:
            say("  " + mm.replace("\n", "\n  "))
        if violations:
            say(f"  the checkers reported {plural(len(violations), 'violation')}:")
            for line in _violation_lines(violations):
                say(f"    {line}")
    if result.trace_errors:  # a bad trace is exit 2, whatever else went wrong
        say(f"ERROR {name} ({path}): {plural(len(result.trace_errors), 'bad step')}")
        return EXIT_USAGE
    if result.mismatches:
        return EXIT_MISMATCH
    if result.internal_errors:
        say(f"FAIL {name} ({path}): simulator bug")
        return EXIT_MISMATCH
    fe = result.trace.final_expect
    pinned = fe is not None and "violations" in fe
    if violations and not pinned:
        say(
            f"VIOLATION {name} ({path}, policy {result.policy}): {plural(len(violations), 'violation')}"
        )
        for line in _violation_lines(violations):
            say(f"  {line}")
        return EXIT_MISMATCH
    expects = sum(1 for s in result.trace.steps if s.expect is not None)
    note = f", {plural(len(violations), 'expected violation')}" if violations else ""
    say(
        f"PASS {name}: {plural(len(result.steps), 'step')}, {plural(expects, 'expectation')}"
        f"{', final state' if fe is not None else ''}{note} (policy {result.policy})"
    )
    for line in _violation_lines(violations):
        say(f"  expected: {line}")
    if verbose and not to_stderr:
        for outcome in result.steps:
            cmd = outcome.command
            label = cmd.get("execute") or next(iter(cmd), "?")
            say(
                f"  {outcome.index:>3} t={outcome.time_s:.6f}s {label}: "
                f"{json.dumps(outcome.response)[:120]}"
            )
    return EXIT_OK


# --- real QEMU 7.2: record and diff (sim.oracle) -------------------------------------------


def _qemu_option(fn: Any) -> Any:
    return click.option(
        "--qemu",
        default=None,
        metavar="PATH",
        help="qemu-system-x86_64 to run (default: the one on PATH; qemu-img next to it).",
    )(fn)


@main.command()
@click.argument("trace")
@click.option(
    "-o",
    "--output",
    "out",
    default=None,
    metavar="OUT",
    help="Where to write the recorded trace (default: TRACE itself, replaced on success).",
)
@_qemu_option
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run it this many times, each on a fresh QEMU: the answers must agree; the "
    "event orders QEMU races into are all kept (final-expect's other-event-orders).",
)
def record(trace: str, out: str | None, qemu: str | None, runs: int) -> None:
    """Run TRACE on real QEMU 7.2; write it back with QEMU's answers as expects."""
    from sim.oracle.diff import check_runnable
    from sim.oracle.qemu_runner import OracleError, QemuNotFound
    from sim.oracle.record import record_trace

    target = out or trace
    try:
        check_runnable(load_trace(trace))
        result = record_trace(trace, target, qemu, runs=runs)
    except (TraceError, QemuNotFound) as exc:
        click.echo(f"blocksim record: {trace}: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except OracleError as exc:
        click.echo(f"blocksim record: {trace}: QEMU failed: {exc}", err=True)
        sys.exit(EXIT_MISMATCH)
    events = len(result.final.get("events", []))
    orders = len(result.final.get("other-event-orders", [])) + 1
    also = f", {orders} event orders in {runs} runs" if runs > 1 else ""
    click.echo(
        f"recorded {trace} on real QEMU: {len(result.steps)} steps, {events} events{also} "
        f"-> {target}"
    )


@main.command()
@click.argument("traces", nargs=-1)
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default="qemu-7.2",
    show_default=True,
    help="The simulator's bitmap-placement policy (real QEMU is qemu-7.2).",
)
@_qemu_option
@click.option("--no-images", is_flag=True, help="Do not compare image contents.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per trace (verdict and every difference) instead of text.",
)
@JUNIT_OPTION
@click.option(
    "--campaign",
    type=click.IntRange(min=1),
    default=None,
    help="Instead of TRACE files: draw N traces and diff each (a differential campaign).",
)
@click.option(
    "--source",
    type=click.Choice(("rules", "tracegen")),
    default="rules",
    show_default=True,
    help="Campaign traces: the fuzzer's rules (timing-independent) or the seeded generator.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Campaign seed.")
@click.option("--first", type=click.IntRange(min=0), default=0, help="Index of the first trace.")
@click.option("--out", default=None, help="Campaign folder: failures/, summary.json/.txt.")
@click.option("--record", default=None, help="Write every trace with QEMU's answers here.")
@click.option(
    "--shrink-runs",
    type=click.IntRange(min=0),
    default=150,
    show_default=True,
    help="QEMU runs shrinking one new mismatch class may spend.",
)
def diff(
    traces: tuple[str, ...],
    policy: str,
    qemu: str | None,
    no_images: bool,
    campaign: int | None,
    source: str,
    seed: int,
    first: int,
    out: str | None,
    record: str | None,
    shrink_runs: int,
    as_json: bool,
    junit_out: str | None,
) -> None:
    """Run TRACE files on real QEMU 7.2 and on the simulator; show every difference.

    With --campaign N: draw N traces (from the fuzzer's rules by default), diff
    each, shrink every new mismatch class into OUT/failures/ and print the
    traces and steps matched per 1,000, per command.  Each class is marked
    pinned (a known difference in scenarios/known-differences/differential/),
    QEMU nondeterministic (QEMU answered re-runs of each of its traces
    differently where the simulator differs; evidence in
    OUT/failures/qemu-nondeterministic/) or UNEXPLAINED; the exit status is 1
    only when some class is unexplained.
    """
    from sim.oracle.diff import diff_trace
    from sim.oracle.qemu_runner import OracleError, QemuNotFound

    if campaign is not None:
        _diff_campaign(campaign, source, seed, first, out, record, qemu, shrink_runs)
        return
    if not traces:
        raise click.UsageError("give TRACE files, or --campaign N")
    worst = EXIT_OK
    cases: list[dict[str, Any]] = []
    for path in collect_traces(traces):
        try:
            report = diff_trace(load_trace(path), policy=policy, qemu=qemu, images=not no_images)
        except QemuNotFound as exc:
            click.echo(f"blocksim diff: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except TraceError as exc:
            click.echo(f"blocksim diff: {path}: {exc}", err=True)
            worst = max(worst, EXIT_USAGE)
            cases.append({"path": str(path), "verdict": "error", "detail": str(exc)})
            if as_json:
                click.echo(dumps({"trace-file": str(path), "verdict": "error", "detail": str(exc)}))
            continue
        except OracleError as exc:
            if as_json:
                click.echo(dumps({"trace-file": str(path), "verdict": "different",
                                  "detail": f"QEMU failed: {exc}", "differences": []}))  # fmt: skip
            else:
                click.echo(f"DIFFERENT {path}: QEMU failed: {exc}")
            worst = max(worst, EXIT_MISMATCH)
            cases.append(
                {"path": str(path), "verdict": "different", "detail": f"QEMU failed: {exc}"}
            )
            continue
        doc = diff_json(path, report)
        click.echo(dumps(doc) if as_json else report.render())
        cases.append({"path": str(path), "name": doc["name"], "verdict": doc["verdict"],
                      "detail": "" if report.identical else report.render()})  # fmt: skip
        worst = max(worst, EXIT_OK if report.identical else EXIT_MISMATCH)
    if junit_out is not None:
        from sim.junit import write_junit

        write_junit(Path(junit_out), "blocksim diff", cases)
    sys.exit(worst)


def diff_json(path: Path, report: Any) -> dict[str, Any]:
    """`blocksim diff --json`: one trace's verdict and every difference, earliest first."""
    return {
        "trace-file": str(path),
        "name": report.trace.header.name or path.stem,
        "policy": report.policy,
        "verdict": "identical" if report.identical else "different",
        "differences": [
            {
                "section": d.section,
                "step": d.step,
                "line": d.line,
                "command": d.command,
                "field": d.field,
                "detail": d.detail,
                "signature": d.signature,
            }
            for d in report.differences
        ],
        "notes": list(report.notes),
        "images": list(report.images),
    }


def _diff_campaign(
    count: int,
    source: str,
    seed: int,
    first: int,
    out: str | None,
    record: str | None,
    qemu: str | None,
    shrink_runs: int,
) -> None:
    from sim.fuzz.differential import differential_campaign, pinned_classes
    from sim.oracle.qemu_runner import OracleError

    if out is None:
        raise click.UsageError("--campaign needs --out DIR")

    def progress(done: int, total: int, message: str) -> None:
        click.echo(f"[{done}/{total}] {message}", err=True)

    try:
        summary = differential_campaign(
            count,
            seed,
            out,
            qemu,
            progress,
            source=source,
            first=first,
            record_dir=record,
            shrink_runs=shrink_runs,
        )
    except OracleError as exc:
        click.echo(f"blocksim diff: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    pinned = pinned_classes()
    click.echo(summary.render(pinned))
    # a class pinned as a known difference is explained; any other fails the campaign
    sys.exit(EXIT_OK if not summary.unexplained(pinned) else EXIT_MISMATCH)


# --- reports (sim.report) -------------------------------------------------------------------


@main.command()
@click.argument("run_dir", metavar="RUN_DIR")
@click.option(
    "-o",
    "--out",
    default=None,
    metavar="DIR",
    help="Where to write the report (default: reports/NAME, NAME being RUN_DIR's name).",
)
@click.option("--title", default="", help="Page title (default: from RUN_DIR's name).")
def report(run_dir: str, out: str | None, title: str) -> None:
    """Draw a run folder (timelines, coverage, failures, matrix) as PNG/SVG and index.html.

    The run folder's layout is in reports/README.md."""
    from sim.report import build_report, command_line

    target = Path(out) if out else Path("reports") / Path(run_dir).resolve().name
    try:
        words = ["blocksim", "report", run_dir, "-o", str(target)]
        command = command_line(words + (["--title", title] if title else []))
        built = build_report(run_dir, target, title, command)
    except FileNotFoundError as exc:
        click.echo(f"blocksim report: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    for skipped in built.skipped:
        click.echo(f"  not drawn: {skipped.title}: {skipped.reason}")
    click.echo(f"{built.index}: {len(built.pngs)} figures (PNG and SVG in {target / 'figures'})")


@main.command()
@click.option("-o", "--out", default="reports/demo", show_default=True, metavar="DIR")
@click.option(
    "--scenarios",
    default=None,
    metavar="DIR",
    help="Scenario folder [default: ./scenarios, else the copy installed with blocksim].",
)
@click.option(
    "--fuzz-seconds",
    type=Seconds(0, 86400),
    default=30.0,
    show_default=True,
    help="Wall-clock budget of the short fuzz campaign, exporting its failures included (0: none).",
)
def demo(out: str, scenarios: str | None, fuzz_seconds: float) -> None:
    """Replay bundled scenarios with timelines, fuzz briefly, build the policy matrix,
    and write the full report under OUT (the run folder is OUT/run)."""
    from sim.demo import run_demo

    scenarios = scenarios or str(bundled("scenarios"))
    if not Path(scenarios).is_dir():
        raise click.UsageError(
            f"no scenario folder {scenarios!r}: none is installed with blocksim here; pass "
            "--scenarios DIR"
        )
    built = run_demo(Path(out), Path(scenarios), fuzz_seconds, click.echo)
    click.echo(f"open {built.index}")


# --- fuzzing (sim.fuzz) ---------------------------------------------------------------------


@main.command()
@click.option(
    "--profile",
    default=None,
    metavar="NAME|FILE",
    help="Campaign profile: fuzz/profiles/NAME.toml or a .toml path (options override it).",
)
@click.option(
    "--policy",
    default=None,
    metavar="P[,P...]",
    help=f"Placement policy, or several (one campaign each): {', '.join(POLICIES)} "
    "[default: qemu-7.2].",
)
@click.option(
    "--invariants",
    default=None,
    metavar="A,B,...|all|none",
    help="Checkers to run: comma-separated names, 'all' or 'none' [default: all].",
)
@click.option(
    "--examples",
    type=click.IntRange(1),
    default=None,
    help="Examples to generate, over every round [default: 1000].",
)
@click.option(
    "--steps", type=click.IntRange(1), default=None, help="Steps per example at most [default: 25]."
)
@click.option("--seed", type=int, default=None, help="Campaign seed [default: 0].")
@click.option(
    "--time-budget",
    type=Seconds(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop after this much wall time, exporting failures included (cuts by wall time).",
)
@click.option(
    "--out",
    default="fuzz-out",
    show_default=True,
    metavar="DIR",
    help="Failures, coverage.json, campaign.json and Hypothesis' database.",
)
@click.option(
    "--replay-corpus",
    default=None,
    metavar="DIR",
    help="Instead of fuzzing, re-check every trace under DIR.",
)
@click.option(
    "--memory-limit",
    type=click.IntRange(0),
    default=4096,
    show_default=True,
    metavar="MB",
    help="Address-space limit of this process (0: none).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--mute",
    default=None,
    metavar="WHAT[,WHAT...]",
    help="Known failures that must not stop the campaign: invariant names, failure keys, "
    "or 'expected' (every failure triaged as a documented consequence of the policy).",
)
@_dask_options
@click.option(
    "--shards",
    type=click.IntRange(1),
    default=None,
    metavar="K",
    help="Shards per policy (default: one per round of the profile's round-examples, "
    "200); results depend on it, not on the worker count.",
)
def fuzz(
    profile: str | None,
    policy: str | None,
    invariants: str | None,
    examples: int | None,
    steps: int | None,
    seed: int | None,
    time_budget: float | None,
    out: str,
    replay_corpus: str | None,
    memory_limit: int,
    no_progress: bool,
    workers: int | None,
    scheduler: str | None,
    shards: int | None,
    mute: str | None,
) -> None:
    """Search command interleavings for invariant violations (see fuzz/README.md).

    Each failure is shrunk (one triage classes expected is kept as found) and
    written to OUT/failures/ as a trace that `blocksim replay` reproduces; exit 1
    when there is one, 130 when interrupted."""
    from sim.fuzz import campaign as fc

    if replay_corpus is not None:
        sys.exit(_recheck_corpus(Path(replay_corpus)))
    try:
        base = fc.load_profile(profile) if profile else {}
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from None
    names = parse_invariants(invariants)
    try:
        configs = fc.configs_from_options(
            base, policy, names, examples, steps, seed, time_budget, Path(out), not no_progress
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if mute:
        extra = parse_mute(mute)
        for config in configs:
            config.mute = tuple(dict.fromkeys((*config.mute, *extra)))
    if workers is not None or scheduler is not None or shards is not None or len(configs) > 1:
        sys.exit(_fuzz_sharded(configs, Path(out), workers, scheduler, shards, time_budget))
    if memory_limit:
        fc.limit_memory(memory_limit)
    code = EXIT_OK
    # a second core polishes the expected failures while the campaign goes on
    background = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else False
    for config in configs:
        result = fc.run_campaign(config, background_polish=background)
        for line in fc.summary_lines(result):
            click.echo(line)
        if result.stopped == "interrupted":
            sys.exit(130)
        if result.failures or result.duplicates:
            code = EXIT_MISMATCH
    sys.exit(code)


def _fuzz_sharded(
    configs: list[Any],
    out: Path,
    workers: int | None,
    scheduler: str | None,
    shards: int | None,
    time_budget: float | None,
) -> int:
    """Shards of every policy's campaign, on Dask or one by one, merged into OUT."""
    from sim.fuzz.shards import ShardedCampaign, summary_lines

    budget = time_budget or configs[0].time_budget_s
    try:
        with _runner(workers, scheduler) as runner:
            campaign = ShardedCampaign(
                configs, out, runner, shards, configs[0].progress, budget, click.echo
            )
            result = campaign.run()
    except OSError as exc:  # the scheduler cannot be reached
        click.echo(f"blocksim fuzz: Dask: {exc}", err=True)
        return EXIT_USAGE
    for line in summary_lines(result, out):
        click.echo(line)
    if result.stopped == "interrupted":
        return 130
    return EXIT_MISMATCH if result.failures or result.duplicates else EXIT_OK


@main.command()
@click.option(
    "--traces",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="How many generated traces to diff.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Campaign seed (trace i uses generator seed SEED*1000000+i).",
)
@click.option(
    "--out",
    required=True,
    metavar="DIR",
    help="Folder for failures/, summary.json and summary.txt.",
)
@_qemu_option
@_dask_options
def differential(
    traces: int,
    seed: int,
    out: str,
    qemu: str | None,
    workers: int | None,
    scheduler: str | None,
) -> None:
    """Differential fuzzing: generated traces on real QEMU 7.2 and on the simulator;
    every class of difference shrunk to a minimal trace in OUT/failures/.

    Exit 0 when every trace matched, 1 when some differ, 2 when QEMU is missing."""
    from sim.fuzz.differential import differential_campaign
    from sim.fuzz.differential_shards import distributed_differential
    from sim.oracle import OracleError

    def progress(done: int, total: int, message: str) -> None:
        click.echo(f"[{done}/{total}] {message}", err=True)

    try:
        if workers is None and scheduler is None:
            summary = differential_campaign(traces, seed, out, qemu, progress)
        else:
            with _runner(workers, scheduler) as runner:
                summary = distributed_differential(traces, seed, out, runner, qemu, progress)
    except OracleError as exc:
        click.echo(f"blocksim differential: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo(f"interrupted: what was diffed so far is in {out}/summary.txt", err=True)
        sys.exit(130)
    except OSError as exc:  # the scheduler cannot be reached
        click.echo(f"blocksim differential: Dask: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(summary.render())
    sys.exit(EXIT_MISMATCH if summary.classes else EXIT_OK)


@main.command()
@click.argument("run_dir", metavar="RUN_DIR")
@_qemu_option
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="run every failure on QEMU for its side-by-side page, not only the new ones "
    "(only new ones are re-classed)",
)
def triage(run_dir: str, qemu: str | None, every: bool) -> None:
    """Check a campaign's new failures on real QEMU 7.2: each becomes refused-by-qemu (the
    trace needs a step QEMU refuses), artefact (QEMU answers differently before the
    violation) or stays new (QEMU agrees); RUN_DIR/failures/index.json is updated, and
    RUN_DIR/failures/NAME.qemu.json holds both runs step by step (`blocksim report`
    shows them side by side on the failure's page)."""
    from sim.fuzz.campaign import CLASS_HELP
    from sim.fuzz.export import atomic_write_json
    from sim.fuzz.triage import NEW, SIDE_BY_SIDE_SUFFIX, class_rank, triage_with_qemu
    from sim.oracle import OracleError, find_qemu

    index = Path(run_dir) / "failures" / "index.json"
    if not index.is_file():
        click.echo(
            f"blocksim triage: no {index}: give the folder of a `blocksim fuzz --out DIR` run",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    try:
        find_qemu(qemu)
        records = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, OracleError) as exc:
        click.echo(f"blocksim triage: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    for record in records:
        is_new = record.get("class", NEW) == NEW
        if not is_new and not every:
            continue
        trace = Path(run_dir) / "failures" / Path(str(record.get("path"))).name
        lines = [json.loads(x) for x in trace.read_text(encoding="utf-8").splitlines() if x.strip()]
        steps = [x for x in lines[1:] if "final-expect" not in x]
        pinned = [x for x in lines if "final-expect" in x]
        found = (pinned[0]["final-expect"].get("violations") or [{}]) if pinned else [{}]
        step = found[0].get("step") or len(steps)
        try:
            name, why, both = triage_with_qemu(lines[0], steps, int(step), qemu)
        except OracleError as exc:
            name, why, both = "", f"QEMU failed: {exc}", None
        if both is not None:
            atomic_write_json(trace.with_name(trace.stem + SIDE_BY_SIDE_SUFFIX), both)
        why = " ".join(why.split())
        if not is_new:
            click.echo(f"{'(kept) ' + str(record.get('class')):16} {trace.name}: {why[:160]}")
            continue
        if name:
            record["class"] = name
        record["class_reason"] = why
        click.echo(f"{(name or 'new').upper():16} {trace.name}: {why[:160]}")
    records.sort(key=lambda r: class_rank(str(r.get("class", NEW))))
    atomic_write_json(index, records)
    counts = {c: sum(1 for r in records if r.get("class") == c) for c in CLASS_HELP}
    click.echo(", ".join(f"{n} {c}" for c, n in counts.items() if n) + f" -> {index}")


def _recheck_corpus(folder: Path) -> int:
    from sim.fuzz.campaign import replay_corpus

    if not folder.is_dir():
        raise click.UsageError(f"no corpus folder {folder}")
    checks = replay_corpus(folder)
    if not checks:
        raise click.UsageError(f"no .jsonl traces under {folder}")
    for check in checks:
        detail = f": {check.detail}" if check.detail else ""
        click.echo(f"{check.status.upper():10} {check.path}{detail}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in
              ("reproduces", "passes", "fixed", "changed", "error")}  # fmt: skip
    click.echo(
        f"{plural(len(checks), 'trace')}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    )
    if counts["error"]:
        return EXIT_USAGE
    return EXIT_MISMATCH if counts["fixed"] or counts["changed"] else EXIT_OK


# --- blocksim serve: QMP (and NBD) for real clients (sim.serve) ---------------------------


def parse_drive_option(text: str) -> dict[str, Any]:
    """`id=drive0,node-name=fmt0,file-node-name=proto0,format=qcow2,size=64M` -> a header drive."""
    drive: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {part!r}", param_hint="--drive")
        if key == "size":
            drive[key] = _parse_size(value)
        else:
            drive[key] = value
    return drive


def _parse_size(value: str) -> int:
    units = {"": 1, "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = (value[:-1], value[-1]) if value[-1:] in units and value[-1:] else (value, "")
    if not number.isdigit():
        raise click.BadParameter(f"bad size {value!r}", param_hint="--drive")
    return int(number) * units[unit]


def _parse_tcp(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or host not in ("127.0.0.1", "localhost", "::1"):
        raise click.BadParameter(
            f"expected 127.0.0.1:PORT (loopback only), got {value!r}", param_hint="--tcp"
        )
    return host, int(port)


@main.command()
@click.option("--socket", "socket_path", default=None, metavar="PATH", help="QMP unix socket.")
@click.option("--tcp", "tcp", multiple=True, metavar="127.0.0.1:PORT", help="QMP on loopback TCP.")
@click.option(
    "--trace-header", default=None, metavar="FILE", help="Start from this trace's header line."
)
@click.option(
    "--drive",
    "drives",
    multiple=True,
    metavar="SPEC",
    help="id=ID,node-name=N[,file-node-name=F][,format=qcow2|raw],size=64M (repeatable).",
)
@click.option("--policy", type=click.Choice(POLICIES), default=None, help="Placement policy.")
@click.option("--seed", type=int, default=None, help="RNG seed (default: the header's, or 0).")
@click.option(
    "--pace",
    default="step",
    show_default=True,
    metavar="step|realtime[:FACTOR]",
    help="step: time moves by x-blocksim-advance/-wait; realtime: FACTOR sim s per wall s.",
)
@click.option(
    "--record-trace", default=None, metavar="OUT", help="Write the session as a replayable trace."
)
def serve(
    socket_path: str | None,
    tcp: tuple[str, ...],
    trace_header: str | None,
    drives: tuple[str, ...],
    policy: str | None,
    seed: int | None,
    pace: str,
    record_trace: str | None,
) -> None:
    """Serve the simulator over QMP (and NBD exports) for real clients."""
    from sim.serve.host import Pacing, SimHost
    from sim.serve.record import Recorder
    from sim.serve.server import ServeConfig, run_server
    from sim.trace import parse_header

    if socket_path is None and not tcp:
        raise click.UsageError("give --socket PATH and/or --tcp 127.0.0.1:PORT")
    if trace_header is not None and drives:
        raise click.UsageError("--trace-header and --drive exclude each other")
    try:
        pacing = Pacing.parse(pace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--pace") from None
    try:
        if trace_header is not None:
            header = load_trace(trace_header).header
        else:
            raw = {"trace": 1, "drives": [parse_drive_option(d) for d in drives]}
            header = parse_header(raw)
    except TraceError as exc:
        click.echo(f"blocksim serve: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    config = ServeConfig(socket_path, [_parse_tcp(t) for t in tcp])
    recorder = Recorder(record_trace) if record_trace else None

    def ready(addresses: list[str]) -> None:
        click.echo("blocksim serve: QMP on " + ", ".join(addresses), err=True)

    try:
        stopped_by = run_server(SimHost(header, policy, seed, pacing, recorder), config, ready)
    except OSError as exc:
        click.echo(f"blocksim serve: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if stopped_by == signal.SIGINT:  # stopped cleanly (trace recorded), as every Ctrl-C ends
        from sim import interrupt

        interrupt.exit_interrupted()


@main.command("export-iotest")
@click.argument("trace")
@click.option("-o", "--out", "out_dir", required=True, metavar="DIR", help="Folder to write to.")
@_qemu_option
def export_iotest_cmd(trace: str, out_dir: str, qemu: str | None) -> None:
    """Write TRACE as a Python qemu-iotest plus its .out taken from real QEMU 7.2."""
    from sim.oracle.iotest_export import export_iotest
    from sim.oracle.qemu_runner import QemuNotFound

    try:
        result = export_iotest(load_trace(trace), Path(out_dir), qemu)
    except (TraceError, QemuNotFound) as exc:
        click.echo(f"blocksim export-iotest: {trace}: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except (RuntimeError, OSError) as exc:
        click.echo(f"blocksim export-iotest: {trace}: {exc}", err=True)
        sys.exit(EXIT_MISMATCH)
    click.echo(f"wrote {result.test} and {result.out} (from QEMU 7.2)")
    if result.differences:
        click.echo("QEMU answered differently from the trace's expectations:")
        for line in result.differences:
            click.echo(f"  {line}")
        sys.exit(EXIT_MISMATCH)
    click.echo("QEMU 7.2 gave every answer the trace expects")


def run() -> None:
    """Run the command line: one clear line for any error, exit 130 on Ctrl-C
    (see sim.interrupt), exit 3 for a stray exception (never a traceback)."""
    from sim import interrupt

    interrupt.raise_interrupt()
    try:
        code = main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        interrupt.exit_interrupted()
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except OSError as exc:  # a file or folder that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"blocksim: {where}{exc.strerror or exc}", err=True)
        code = EXIT_USAGE
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # noqa: BLE001 - last resort: never a traceback
        click.echo(f"blocksim: internal error: {type(exc).__name__}: {exc}", err=True)
        code = 3
    interrupt.finish()
    if interrupt.interrupted():
        interrupt.exit_interrupted()
    sys.exit(code if isinstance(code, int) else (0 if code is None else 1))
