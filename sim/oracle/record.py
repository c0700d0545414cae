"""Record a trace on real QEMU 7.2: write it back with what QEMU really answered.

The output is a recorded trace: every `execute` and `wait`
step gets QEMU's normalized answer as ``"expect"`` (replacing any old one), and
the last line is ``{"final-expect": STATE}`` with the final state and every
event.  Everything else stays byte for byte: the header line, ``//`` comments,
blank lines, `advance` steps.  Recording a trace again on the same
QEMU gives the same file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from sim.errors import TraceError
from sim.oracle.qemu_runner import DEFAULT_WAIT_TIMEOUT_S, QemuRunner, RunResult, StepResult
from sim.trace import Step, dumps, parse_lines, read_lines


def record_trace(
    trace_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    qemu: str | os.PathLike[str] | None = None,
    *,
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
) -> RunResult:
    """Run the trace at `trace_path` on real QEMU and write the recorded trace to `out_path`.

    `out_path` may be `trace_path` (the file is replaced only once the run
    succeeded).  Returns the `RunResult`.  Raises `TraceError` (nothing
    written) if a step could not run on QEMU: a sim-only or broken step, a
    known QEMU crasher, or a wait that timed out; `OracleError` if QEMU is
    missing or died.
    """
    raw = read_lines(trace_path)
    trace = parse_lines(raw, str(trace_path))
    lines = [line if isinstance(line, str) else line.decode("utf-8", "replace") for line in raw]
    with QemuRunner(trace, qemu=qemu, wait_timeout_s=wait_timeout_s) as runner:
        result = runner.run()
    _raise_step_errors(result.steps)
    recorded = recorded_lines(lines, trace.steps, result)
    _write_atomically(Path(out_path), "\n".join(recorded) + "\n")
    return result


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
