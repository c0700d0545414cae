"""Record a trace on real QEMU 7.2: write it back with what QEMU really answered.

The output is a recorded trace: every `execute` and `wait`
step gets QEMU's normalized answer as ``"expect"`` (replacing any old one), and
the last line is ``{"final-expect": STATE}`` with the final state and every
event.  Everything else stays byte for byte: the header line, ``//`` comments,
blank lines, `advance` steps.  Recording a trace again on the same
QEMU gives the same file.

Where QEMU itself races (two jobs whose completions run in either order), the
order of the events may differ from one run to the next.  Recorded with several
runs, every answer and the final state must be the same in each run; the event
orders seen besides the first run's go to ``final-expect``'s
``other-event-orders`` (a list of whole event lists), and a replay accepts any
of them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from sim.compare import first_difference
from sim.errors import TraceError
from sim.oracle.qemu_runner import DEFAULT_WAIT_TIMEOUT_S, QemuRunner, RunResult, StepResult
from sim.trace import Step, dumps, parse_lines, read_lines


def record_trace(
    trace_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    qemu: str | os.PathLike[str] | None = None,
    *,
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    runs: int = 1,
) -> RunResult:
    """Run the trace at `trace_path` on real QEMU and write the recorded trace to `out_path`.

    `out_path` may be `trace_path` (the file is replaced only once the run
    succeeded).  With `runs` > 1 the trace runs that many times, each on a fresh
    QEMU (`merge_runs`).  Returns the `RunResult` written.  Raises `TraceError`
    (nothing written) if a step could not run on QEMU: a sim-only or broken step,
    a known QEMU crasher, or a wait that timed out, or if the runs answered
    differently otherwise than in the order of the events; `OracleError` if QEMU
    is missing or died.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    raw = read_lines(trace_path)
    trace = parse_lines(raw, str(trace_path))
    lines = [line if isinstance(line, str) else line.decode("utf-8", "replace") for line in raw]
    results = []
    for _ in range(runs):
        with QemuRunner(trace, qemu=qemu, wait_timeout_s=wait_timeout_s) as runner:
            result = runner.run()
        _raise_step_errors(result.steps)
        results.append(result)
    result = merge_runs(results, trace.steps)
    recorded = recorded_lines(lines, trace.steps, result)
    _write_atomically(Path(out_path), "\n".join(recorded) + "\n")
    return result


def merge_runs(results: list[RunResult], steps: list[Step]) -> RunResult:
    """One recording of several runs of a trace: the first run's, with the event
    orders the other runs gave (when they differ from it) as the final state's
    `other-event-orders`.  Pure.  Raises `TraceError` when a run answered a step,
    or ended in a final state, otherwise than the first did: that is more than
    an order of events, and no recording can say it."""
    first = results[0]
    orders: list[list[dict[str, Any]]] = [first.final.get("events", [])]
    for number, other in enumerate(results[1:], start=2):
        for step, a, b in zip(steps, first.steps, other.steps, strict=True):
            diff = first_difference(a["response"], b["response"])
            if diff is not None:
                raise TraceError(
                    f"QEMU answered step {a['step']} differently in run {number} than in run "
                    f"1 ({diff}): not only the order of events is racy, nothing written",
                    step.line,
                )
        rest = {k: v for k, v in other.final.items() if k != "events"}
        diff = first_difference({k: v for k, v in first.final.items() if k != "events"}, rest)
        if diff is not None:
            raise TraceError(
                f"QEMU's final state differs in run {number} than in run 1 ({diff}), "
                "nothing written",
                steps[-1].line if steps else 1,
            )
        events = other.final.get("events", [])
        if all(first_difference(seen, events) is not None for seen in orders):
            orders.append(events)
    if len(orders) == 1:
        return first
    final = dict(first.final)
    final["other-event-orders"] = orders[1:]
    return RunResult(first.steps, final, first.scratch_dir)


def recorded_lines(lines: list[str], steps: list[Step], result: RunResult) -> list[str]:
    """The lines of the recorded trace: `lines` with expects and final-expect from `result`.

    Pure: `steps` are the parsed steps of `lines`, `result` the run of them.
    """
    by_line = {step.line: (step, res) for step, res in zip(steps, result.steps, strict=True)}
    out: list[str] = []
    header_seen = False
    for number, text in enumerate(lines, start=1):
        stripped = text.strip()
        if number in by_line:
            out.append(_step_line(*by_line[number]))
        elif not stripped or stripped.startswith("//") or not header_seen:
            out.append(text)  # comments, blank lines, the header: as they were
            header_seen = header_seen or bool(stripped and not stripped.startswith("//"))
        # else: the old final-expect line, replaced at the end
    out.append(dumps({"final-expect": result.final}))
    return out


def _step_line(step: Step, res: StepResult) -> str:
    body: dict[str, Any] = dict(step.body)
    if step.kind in ("execute", "wait") and res["response"] is not None:
        body["expect"] = {k: v for k, v in res["response"].items() if k != "id"}
    return dumps(body)


def _raise_step_errors(steps: list[StepResult]) -> None:
    failed = [s for s in steps if "error" in s]
    if not failed:
        return
    summary = "; ".join(s["error"] for s in failed)
    raise TraceError(
        f"{len(failed)} step(s) could not run on real QEMU, nothing written: {summary}",
        failed[0]["line"],
    )


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
