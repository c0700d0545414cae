"""The differential campaign on a Dask cluster: every worker runs its own QEMU.

Theory of operation.  The serial campaign (`sim.fuzz.differential`) diffs
trace i = generator seed ``seed * 1_000_000 + i`` for i in range(n) and
shrinks the first trace of every mismatch class.  Here the same work runs in
two waves on a `sim.cluster.Runner`:

1. `diff_range` tasks diff consecutive ranges of trace indices (each diff
   starts a fresh QEMU on the worker) and return one row per trace: its
   signature, or the generator error;
2. the coordinator groups the rows into classes by signature, and one
   `shrink_class` task per class shrinks the class's lowest-seed trace, as the
   serial campaign would have, and confirms it.

The summary and the files are therefore the serial campaign's whatever the
worker count and the order tasks complete in (QEMU's own timing aside: a
class that is flaky on real QEMU is flaky here too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.cluster import TaskLost, emit
from sim.fuzz.differential import (
    CAMPAIGN_WAIT_TIMEOUT_S,
    CONFIRM_RUNS,
    SEED_STRIDE,
    SHRINK_WAIT_TIMEOUT_S,
    MismatchClass,
    Outcome,
    Summary,
    count_recheck,
    pinned_classes,
    recheck,
    run_outcome,
    self_disagreement,
    shrink,
    write_failure,
    write_shrunk_evidence,
)
from sim.trace import atomic_write_text

TRACES_PER_TASK = 5
Progress = Callable[[int, int, str], None]


def diff_range(
    task: tuple[int, int, int, str | None, dict[str, str]],
) -> list[dict[str, Any]]:
    """Diff traces start..stop-1 of campaign `seed`: one row per trace (a mismatch no
    pinned class names is re-run, as the serial campaign does: `recheck`)."""
    from sim.fuzz.tracegen import generate_trace
    from sim.oracle import find_qemu

    seed, start, stop, qemu, pinned = task
    find_qemu(qemu)
    rows: list[dict[str, Any]] = []
    for index in range(start, stop):
        trace_seed = seed * SEED_STRIDE + index
        row: dict[str, Any] = {"index": index, "seed": trace_seed}
        try:
            steps = generate_trace(trace_seed)
        except Exception as exc:  # noqa: BLE001 - a generator bug must not end the campaign
            row["generator_error"] = f"seed {trace_seed}: {type(exc).__name__}: {exc}"
            rows.append(row)
            emit({"trace": index, "signature": "GENERATOR ERROR"})
            continue
        t0 = time.perf_counter()
        outcome = run_outcome(steps, qemu, CAMPAIGN_WAIT_TIMEOUT_S)
        row["diff_s"] = time.perf_counter() - t0
        row["signature"] = outcome.signature
        if outcome.signature is not None:
            row.update(steps=steps, text=outcome.text, sim_trace_errors=outcome.sim_trace_errors)
            if outcome.signature not in pinned:
                row["disagreement"], row["recheck_runs"] = recheck(steps, outcome, qemu)
        rows.append(row)
        emit({"trace": index, "signature": outcome.signature or "identical"})
    return rows


def shrink_class(task: tuple[dict[str, Any], str | None]) -> dict[str, Any]:
    """Shrink and confirm one class's first trace (a row of `diff_range`)."""
    row, qemu = task
    outcome = Outcome(row["signature"], row["text"], row.get("sim_trace_errors", 0))
    shrunk, final, runs = shrink(row["steps"], outcome, qemu)
    again = [run_outcome(shrunk, qemu, SHRINK_WAIT_TIMEOUT_S) for _ in range(CONFIRM_RUNS)]
    reproduced = sum(o.signature == outcome.signature for o in again)
    return {
        "steps": shrunk,
        "text": final.text,
        "runs": runs + CONFIRM_RUNS,
        "reproduced": f"{reproduced}/{CONFIRM_RUNS}",
        "disagreement": self_disagreement([final, *again]),
    }


def distributed_differential(
    n_traces: int,
    seed: int,
    out_dir: str | Path,
    runner: Any,
    qemu: str | None = None,
    progress: Progress | None = None,
    per_task: int = TRACES_PER_TASK,
    pinned: dict[str, str] | None = None,
) -> Summary:
    """The serial `differential_campaign`'s result, computed on `runner`; writes
    OUT/failures/, OUT/summary.json and OUT/summary.txt the same way."""
    pinned = pinned_classes() if pinned is None else pinned
    out = Path(out_dir)
    (out / "failures").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = Summary()
    done = [0]

    def on_event(message: dict[str, Any]) -> None:
        if "trace" in message and progress is not None:
            done[0] += 1
            index = int(message["trace"])
            progress(
                done[0], n_traces, f"seed {seed * SEED_STRIDE + index}: {message['signature']}"
            )

    tasks = [
        (seed, start, min(start + per_task, n_traces), qemu, pinned)
        for start in range(0, n_traces, per_task)
    ]
    rows: list[dict[str, Any]] = []
    names = [f"diff-{t[1]}" for t in tasks]
    interrupted = False
    try:
        for _index, result in runner.run(diff_range, tasks, on_event, names):
            if isinstance(result, TaskLost):
                summary.generator_errors.append(
                    f"traces of task {result.index} lost: {result.reason}"
                )
                continue
            rows.extend(result)
    except KeyboardInterrupt:
        interrupted = True  # keep what was diffed; write each class's first trace unshrunk
    rows.sort(key=lambda r: r["index"])
    firsts: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "generator_error" in row:
            summary.generator_errors.append(row["generator_error"])
            continue
        summary.traces += 1
        summary.qemu_runs += 1 + row.get("recheck_runs", 0)
        summary.diff_s += row["diff_s"]
        if row["signature"] is None:
            summary.identical += 1
        else:
            summary.mismatching += 1
            firsts.setdefault(row["signature"], row)
    order = list(firsts)  # classes in order of their first trace, as the serial campaign
    shrink_tasks = [(firsts[sig], qemu) for sig in order]
    shrunk: dict[int, dict[str, Any]] = {}
    if interrupted:
        for i, sig in enumerate(order):
            row = firsts[sig]
            shrunk[i] = {"steps": row["steps"], "text": row["text"], "runs": 0,
                         "reproduced": "not shrunk (interrupted)"}  # fmt: skip
    else:
        for index, result in runner.run(
            shrink_class, shrink_tasks, None, [f"shrink-{i}" for i in range(len(order))]
        ):
            shrunk[index] = result
    for i, sig in enumerate(order):
        first, result = firsts[sig], shrunk.get(i)
        seeds = [r["seed"] for r in rows if r.get("signature") == sig]
        if result is None or isinstance(result, TaskLost):
            summary.classes.append(
                MismatchClass(sig, seeds, "", len(first["steps"]) - 1, 0, "", "lost")
            )
            continue
        summary.qemu_runs += result["runs"]
        final = Outcome(sig, result["text"])
        path = write_failure(out / "failures", result["steps"], sig, final, first["seed"])
        cls = MismatchClass(
            sig,
            seeds,
            str(path),
            len(first["steps"]) - 1,
            len(result["steps"]) - 1,
            result["text"],
            result["reproduced"],
            shrunk_evidence=write_shrunk_evidence(
                out, result["steps"], sig, result.get("disagreement"), first["seed"]
            ),
        )
        for row in rows:
            if row.get("signature") == sig and "recheck_runs" in row:
                count_recheck(cls, out, row["steps"], row["seed"], row["disagreement"])
        summary.classes.append(cls)
    summary.elapsed_s = time.perf_counter() - started
    atomic_write_text(out / "summary.json", json.dumps(summary.to_json(), indent=1) + "\n")
    atomic_write_text(out / "summary.txt", summary.render() + "\n")
    if interrupted:
        raise KeyboardInterrupt
    return summary
