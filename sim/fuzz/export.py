"""Turning a fuzz failure into a trace file that `blocksim replay` reproduces.

`export_failure` writes `DIR/failures/<kind>-<signature>.jsonl`:

- the header the example ran with (drives, policy, simulator seed), its
  `"invariants"` narrowed to the violated one (none for `internal-error`),
  a name and a description saying how the campaign found it;
- every step, with the response the simulator gave pinned as `expect`;
- `{"final-expect": {"violations": [...]}}` pinned with what the replay of
  that very file reports.

The file is replayed once more before it is kept, and the record says
whether the violation came back (`reproduced`): a failure that does not
reproduce is a determinism bug of the simulator or of a checker.

Deduplication: the *signature* of a trace is a hash of the shape of its
steps (commands and argument keys, qemu-io verbs, transaction action types,
wait events; not names, offsets or patterns), so two shrunk examples that
differ only in values count as one failure.  Files are written atomically
(temporary file + rename), so an interrupted campaign never leaves half a
trace behind.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from sim.check import CHECKERS, make_checkers
from sim.fuzz.failures import INTERNAL_ERROR, FuzzFailure, describe_exception, failure_key
from sim.fuzz.triage import NEW, classify_expected, classify_qemu_stops, classify_refused
from sim.replay import ReplayResult, replay
from sim.trace import atomic_write_text, dumps, parse_lines


@dataclass
class ExportRecord:
    """One failure file: what broke, where it is, and whether it replays."""

    kind: str
    signature: str
    path: str
    steps: int
    message: str
    reproduced: bool
    duplicate: bool
    shrunk: bool = True
    wall_s: float = 0.0  # when an example of the campaign first showed it
    examples: int = 0  # examples run by then
    triage: str = "new"  # sim.fuzz.triage's class
    shrink_left: str = ""  # when not fully shrunk: what stopped the shrinker, how far it got
    triage_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "signature": self.signature,
            "path": self.path,
            "steps": self.steps,
            "message": self.message,
            "reproduced": self.reproduced,
            "shrunk": self.shrunk,
            "wall_s": round(self.wall_s, 3),
            "examples": self.examples,
            "class": self.triage,
            "class_reason": self.triage_reason,
            "shrink_left": self.shrink_left,
        }


def step_shape(step: dict[str, Any]) -> str:
    """A step without its values: `block-dirty-bitmap-add(name,node)`, `qemu-io write`."""
    if "execute" in step:
        name = str(step["execute"])
        args = step.get("arguments", {})
        if not isinstance(args, dict):
            return f"{name}(?)"
        if name == "human-monitor-command":
            inner = str(args.get("command-line", "")).split('"', 2)
            verb = inner[1].split(" ", 1)[0] if len(inner) > 1 else "?"
            return f"qemu-io {verb}"
        if name == "transaction":
            actions = args.get("actions", [])
            kinds = [str(a.get("type")) for a in actions if isinstance(a, dict)]
            return f"transaction[{','.join(kinds)}]"
        return f"{name}({','.join(sorted(args))})"
    if "wait" in step:
        return f"wait {step['wait'].get('event')}"
    return next((k for k in ("advance", "workload", "fault") if k in step), "?")


def signature(steps: list[dict[str, Any]]) -> str:
    """12 hex digits identifying the shape of a step sequence."""
    text = json.dumps([step_shape(s) for s in steps])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def failure_header(failure: FuzzFailure, context: str, sig: str) -> dict[str, Any]:
    header = dict(failure.header)
    header["name"] = f"fuzz-{failure.kind}-{sig}"
    if failure.kind in CHECKERS:
        header["invariants"] = [failure.kind]
    # an internal error keeps every checker the example ran: one of them may be the culprit
    header["description"] = (
        f"Found by blocksim fuzz ({context}): [{failure.kind}] at step "
        f"{len(failure.steps)} of {len(failure.steps)}: {failure.message}"
    )
    return header


def pin(header: dict[str, Any], steps: list[dict[str, Any]]) -> tuple[list[str], ReplayResult]:
    """Replay header + steps and return the lines with every answer pinned."""
    lines = [dumps(header)] + [dumps(s) for s in steps]
    names = header.get("invariants", [])
    result = replay(parse_lines(lines), checkers=make_checkers(list(names)))
    pinned = [lines[0]]
    for step, outcome in zip(steps, result.steps, strict=True):
        obj = dict(step)
        if ("execute" in obj or "wait" in obj) and outcome.error is None:
            obj["expect"] = {k: v for k, v in outcome.response.items() if k != "id"}
        pinned.append(dumps(obj))
    pinned.append(dumps({"final-expect": {"violations": result.final.get("violations", [])}}))
    return pinned, result


def reproduces(failure: FuzzFailure, result: ReplayResult) -> bool:
    """Did the replay show the same failure (invariant, step and message)?"""
    if failure.kind == INTERNAL_ERROR:
        return bool(result.internal_errors)
    wanted = failure.violations[0] if failure.violations else {}
    seen = [v for o in result.steps for v in o.violations] + list(
        result.final.get("violations", [])
    )
    return any(
        v.get("invariant") == failure.kind
        and v.get("step") == wanted.get("step", v.get("step"))
        and v.get("message") == wanted.get("message", v.get("message"))
        for v in seen
    )


MAX_POLISH_REPLAYS = 400


def polish(
    failure: FuzzFailure, coarse: bool = False, deadline: float | None = None
) -> FuzzFailure:
    """Shrink a failure's trace further, at the trace level: drop whole steps, then
    transaction actions, then arguments, keeping each cut that still shows the same
    failure (same `failure_key`).  Hypothesis' shrinker works on the random choices
    behind the rules and can leave an optional argument or a step that changes
    nothing; this pass works on the JSON itself, at a few milliseconds a replay.

    `coarse` (a failure Hypothesis did not shrink: a whole example of dozens of steps)
    first drops runs of steps, halves, then quarters and so on down to runs of two,
    each run tried from the end: dropping steps one at a time costs two replays per
    step dropped, each of nearly the whole trace.  Polishing stops after
    `MAX_POLISH_REPLAYS` replays, and at `deadline` (a `time.monotonic()` reading: a
    campaign's time budget bounds its exports too)."""
    cut = polish_steps(
        failure.kind, failure.message, failure.header, failure.steps, coarse, deadline
    )
    return polished_failure(failure, cut)


Polished = tuple[str, list[dict[str, Any]], dict[str, Any]] | None


def polished_failure(failure: FuzzFailure, cut: Polished) -> FuzzFailure:
    """The failure `polish_steps` made of `failure` (itself when it did not reproduce)."""
    if cut is None:
        return failure  # not reproducible on its own: keep it exactly as Hypothesis gave it
    message, steps, found = cut
    return type(failure)(failure.kind, message, failure.header, steps, [found])


def polish_steps(
    kind: str,
    message: str,
    header: dict[str, Any],
    steps: list[dict[str, Any]],
    coarse: bool,
    deadline: float | None,
) -> Polished:
    """`polish` on the failure's plain parts: (message, steps, violation) of the cut
    trace, or None when the trace does not show the failure on its own.  Plain data
    in and out, so a second process can run it (`BackgroundPolish`)."""
    key = failure_key(kind, message)
    names = list(header.get("invariants", []))
    if kind in CHECKERS:
        names = [kind]
    budget = [MAX_POLISH_REPLAYS]

    def shows(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
        if budget[0] <= 0 or not steps:
            return None
        if deadline is not None and time.monotonic() >= deadline:
            budget[0] = 0
            return None
        budget[0] -= 1
        return _failure_in(kind, key, header, names, steps)

    steps = [copy.deepcopy(s) for s in steps]
    found = shows(steps)
    if found is None:
        return None
    run = len(steps) // 2 if coarse else 0
    while run >= 2 and budget[0] > 0:
        start = len(steps) - run
        while start > -run and budget[0] > 0:
            candidate = steps[: max(start, 0)] + steps[start + run :]
            hit = shows(candidate)
            if hit is not None:
                steps, found = candidate, hit
            start -= run
        run //= 2
    changed = True
    while changed and budget[0] > 0:
        changed = False
        for candidate in _cuts(steps):
            hit = shows(candidate)
            if hit is not None:
                steps, found, changed = candidate, hit, True
                break
    return str(found.get("message", message)), steps, found


class BackgroundPolish:
    """Polishes failures in a second process while the campaign goes on generating.

    A campaign meets an expected failure (one triage explains) in the middle of a round
    and exports it when the round ends; its trace-level polish (up to
    `MAX_POLISH_REPLAYS` replays) is a pure function of the failure, so it can run
    meanwhile on another core.  One child process at a time, forked from the campaign
    (nothing to import again), runs `polish_steps` for the oldest waiting failure and
    sends the cut trace back through a pipe; the export takes that result instead of
    polishing again (`result`), so the files are the same bytes as when polishing in
    line.  A failure whose turn has not come yet, or whose child failed, is polished
    in line as before.  A child ignores Ctrl-C (the campaign handles it) and `close`
    ends one still running."""

    def __init__(self) -> None:
        self.waiting: list[tuple[FuzzFailure, bool, float | None]] = []
        self.running: tuple[FuzzFailure, int, int] | None = None  # failure, pid, pipe fd
        self.done: dict[int, tuple[FuzzFailure, Polished]] = {}

    def submit(self, failure: FuzzFailure, coarse: bool, deadline: float | None) -> None:
        self.waiting.append((failure, coarse, deadline))
        self.poll()

    def poll(self) -> None:
        """Collect a finished child and start the next (cheap: called once an example)."""
        import select

        if self.running is not None and select.select([self.running[2]], [], [], 0)[0]:
            self._collect()
        if self.running is None and self.waiting:
            self._start(*self.waiting.pop(0))

    def result(self, failure: FuzzFailure) -> tuple[bool, Polished]:
        """(True, what `polish_steps` gave) when `failure` was polished in the
        background (waiting for its child if it still runs); (False, None) when the
        caller must polish it itself (not submitted, not started yet, child failed)."""
        self.waiting = [w for w in self.waiting if w[0] is not failure]
        if self.running is not None and self.running[0] is failure:
            self._collect()
        hit = self.done.pop(id(failure), None)
        if hit is None or hit[0] is not failure:
            return False, None
        return True, hit[1]

    def close(self) -> None:
        """End the child still running, if any; forget what was not taken."""
        import signal

        self.waiting = []
        if self.running is not None:
            _failure, pid, fd = self.running
            self.running = None
            os.close(fd)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        self.done.clear()

    def _start(self, failure: FuzzFailure, coarse: bool, deadline: float | None) -> None:
        import signal

        args = (failure.kind, failure.message, failure.header, failure.steps, coarse, deadline)
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            stream.flush()
        read, write = os.pipe()
        # SIGINT blocked across the fork: the child ignores it before it can arrive
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
        except OSError:  # no process to be had (memory, process limits): polished in line
            pid = -1
        if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
            _polish_child(read, write, args)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(write)
        if pid < 0:
            os.close(read)
            return
        self.running = (failure, pid, read)

    def _collect(self) -> None:
        import pickle

        assert self.running is not None
        failure, pid, fd = self.running
        self.running = None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        os.close(fd)
        os.waitpid(pid, 0)
        try:
            ok, cut = pickle.loads(b"".join(chunks))
        except Exception:  # noqa: BLE001 - a child that died says nothing: polish in line
            return
        if ok:
            self.done[id(failure)] = (failure, cut)


def _polish_child(read: int, fd: int, args: tuple[Any, ...]) -> NoReturn:  # pragma: no cover
    """A BackgroundPolish child: polish, write the pickled outcome, exit at once (no
    exit handlers, no buffers flushed: they are the campaign's)."""
    import pickle
    import signal

    try:
        os.close(read)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        # streams of its own: another thread of the campaign (a progress bar) may have
        # held the lock of sys.stdout or sys.stderr at the fork, forever in this copy
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - ends with the child
        data = pickle.dumps((True, polish_steps(*args)))
    except BaseException:  # noqa: BLE001 - the campaign polishes it in line instead
        data = pickle.dumps((False, None))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os._exit(0)


def _cuts(steps: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Smaller variants of a trace, most promising first."""
    out = [steps[:i] + steps[i + 1 :] for i in reversed(range(len(steps)))]
    for i, step in enumerate(steps):
        args = step.get("arguments")
        if not isinstance(args, dict):
            continue
        actions = args.get("actions")
        if step.get("execute") == "transaction" and isinstance(actions, list) and len(actions) > 1:
            for j in range(len(actions)):
                smaller = dict(args, actions=actions[:j] + actions[j + 1 :])
                out.append(steps[:i] + [dict(step, arguments=smaller)] + steps[i + 1 :])
        if isinstance(actions, list):
            for j, action in enumerate(actions):
                data = action.get("data") if isinstance(action, dict) else None
                for k in list(data or {}):
                    assert data is not None
                    act = dict(action, data={x: v for x, v in data.items() if x != k})
                    smaller = dict(args, actions=actions[:j] + [act] + actions[j + 1 :])
                    out.append(steps[:i] + [dict(step, arguments=smaller)] + steps[i + 1 :])
        for k in list(args):
            if k not in ("actions", "command-line"):
                smaller = {x: v for x, v in args.items() if x != k}
                out.append(steps[:i] + [dict(step, arguments=smaller)] + steps[i + 1 :])
    return out


def _failure_in(
    kind: str, key: str, header: dict[str, Any], names: list[str], steps: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The first violation (or internal error) with failure key `key` a replay shows."""
    lines = [dumps(dict(header, invariants=names))] + [dumps(s) for s in steps]
    try:
        result = replay(parse_lines(lines), checkers=make_checkers(names))
    except Exception as exc:  # noqa: BLE001 - an escaping simulator exception
        message = f"{describe_exception(exc)} (escaped step {len(steps)})"
        hit = kind == INTERNAL_ERROR and failure_key(kind, message) == key
        return {"invariant": kind, "step": len(steps), "message": message} if hit else None
    if result.trace_errors:
        return None
    if kind == INTERNAL_ERROR:
        for message in result.internal_errors:
            if failure_key(kind, message) == key:
                return {"invariant": kind, "step": len(steps), "message": message}
        return None
    seen = [v for o in result.steps for v in o.violations] + list(
        result.final.get("violations", [])
    )
    for v in seen:
        if v.get("invariant") == kind and failure_key(kind, str(v.get("message"))) == key:
            return dict(v)
    return None


@dataclass
class PreparedFailure:
    """A polished failure with its pinned trace, not written anywhere yet (what a
    campaign shard hands back to the coordinator that writes the files)."""

    record: ExportRecord  # its path is the bare file name, its `duplicate` False
    lines: list[str]
    key: str  # failure_key of the polished failure

    def write(self, folder: Path, name: str | None = None) -> ExportRecord:
        """Write the trace as folder/NAME (default: the record's file name); a file that
        exists already is left alone and the record says `duplicate`."""
        path = folder / (name or self.record.path)
        record = dataclasses.replace(self.record, path=str(path))
        if path.exists():
            record.duplicate, record.reproduced = True, True  # checked when first written
            return record
        atomic_write_text(path, "\n".join(self.lines) + "\n")
        return record


def prepare_failure(
    failure: FuzzFailure,
    context: str,
    shrunk: bool = True,
    polished: bool = False,
    deadline: float | None = None,
) -> PreparedFailure:
    """Polish the failure (unless `polished`; until `deadline`), pin its trace and check
    that the pinned trace reproduces it."""
    if not polished:
        failure = polish(failure, coarse=not shrunk, deadline=deadline)
    sig = signature(failure.steps)
    record = ExportRecord(
        failure.kind,
        sig,
        f"{failure.kind}-{sig}.jsonl",
        len(failure.steps),
        failure.message,
        False,
        False,
        shrunk,
    )
    step = failure.violations[0].get("step") if failure.violations else None
    record.triage, record.triage_reason = classify_expected(
        str(failure.header.get("policy", "qemu-7.2")),
        failure.kind,
        failure.message,
        failure.steps,
        step if isinstance(step, int) else None,
    )
    if record.triage == NEW:
        refused = classify_refused(
            failure.header, failure.steps, step if isinstance(step, int) else None
        )
        if refused is not None:
            record.triage, record.triage_reason = refused
    header = failure_header(failure, context, sig)
    try:
        lines, result = pin(header, failure.steps)
        record.reproduced = reproduces(failure, result)
    except Exception as exc:  # noqa: BLE001 - the exception itself reproduces the failure
        lines = [dumps(header)] + [dumps(s) for s in failure.steps]
        record.reproduced = failure.kind == INTERNAL_ERROR
        record.message = f"{failure.message} (replay raised {type(exc).__name__})"
    else:
        if record.triage == NEW:
            stops = classify_qemu_stops(
                failure.steps,
                [o.warnings for o in result.steps],
                step if isinstance(step, int) else None,
            )
            if stops is not None:
                record.triage, record.triage_reason = stops
    return PreparedFailure(record, lines, failure_key(failure.kind, failure.message))


def export_failure(
    failure: FuzzFailure,
    folder: Path,
    context: str,
    shrunk: bool = True,
    deadline: float | None = None,
    polished: FuzzFailure | None = None,
) -> ExportRecord:
    """Polish the failure (until `deadline`, a `time.monotonic()` reading; `polished`:
    what that gave, done elsewhere), then write its trace into `folder` unless one with
    its signature exists."""
    if polished is None:
        polished = polish(failure, coarse=not shrunk, deadline=deadline)
    sig = signature(polished.steps)
    path = folder / f"{polished.kind}-{sig}.jsonl"
    if path.exists():  # known: no need to pin it again
        return ExportRecord(
            polished.kind, sig, str(path), len(polished.steps), polished.message, True, True, shrunk
        )
    return prepare_failure(polished, context, shrunk, polished=True).write(folder)
