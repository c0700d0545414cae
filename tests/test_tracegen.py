"""sim.fuzz.tracegen: seeded random traces for real QEMU 7.2.

Pure tests check determinism, the trace format, the rules that keep a trace
deterministic on QEMU, and that no known QEMU 7.2 crasher is ever generated.
The `qemu` test records a few generated traces twice on real QEMU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.fuzz.tracegen import AREAS, generate_trace, generate_with_predictions
from sim.oracle.guards import crash_reason
from sim.trace import dumps, load_trace, parse_lines
from tests.helpers import needs_qemu

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "scenarios" / "qemu-7.2-recorded"
SEEDS = range(500)
JOB_STARTS = ("drive-backup", "blockdev-backup", "drive-mirror", "block-commit", "block-stream")
ENDS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")


@pytest.fixture(scope="module")
def traces() -> list[tuple[list[dict], list[str | None]]]:
    return [generate_with_predictions(seed, None, 30) for seed in SEEDS]


def lines_of(trace: list[dict]) -> list[str]:
    return [dumps(step) for step in trace]


# --- determinism ------------------------------------------------------------------------


def test_same_seed_same_trace() -> None:
    for seed in (0, 1, 7, 123, 9999):
        assert generate_trace(seed) == generate_trace(seed)
        assert generate_trace(seed, {"bitmap", "io"}, 12) == generate_trace(
            seed, {"io", "bitmap"}, 12
        )


def test_same_trace_under_any_hash_seed() -> None:
    """No dependence on set or dict-of-set iteration order (PYTHONHASHSEED)."""
    code = (
        "import json; from sim.fuzz.tracegen import generate_trace; "
        "print(json.dumps([generate_trace(s, None, 30) for s in range(40)]))"
    )
    outputs = set()
    for hash_seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1


def test_different_seeds_differ(traces) -> None:
    bodies = {json.dumps(trace[1:]) for trace, _ in traces}
    assert len(bodies) == len(traces)


# --- format -----------------------------------------------------------------------------


def test_every_step_parses_and_is_replayable_on_qemu(traces) -> None:
    for seed, (trace, predictions) in zip(SEEDS, traces, strict=True):
        parsed = parse_lines(lines_of(trace), f"seed {seed}")
        assert parsed.header.seed == seed and parsed.header.policy == "qemu-7.2"
        assert len(parsed.steps) == len(trace) - 1 == len(predictions) >= 30
        for step in parsed.steps:
            assert step.kind in ("execute", "wait"), (seed, step)  # no advance, no sim-only
            assert step.expect is None


def test_header_and_description(traces) -> None:
    for trace, _ in traces:
        header = trace[0]
        assert 1 <= len(header["drives"]) <= 2
        for drive in header["drives"]:
            assert 16 << 20 <= drive["size"] <= 64 << 20 and drive["size"] % 512 == 0
        areas = header["description"].split(": ", 1)[1].split(", ")
        assert areas and set(areas) <= set(AREAS)


def test_areas_restrict_the_commands() -> None:
    for seed in range(60):
        trace, predictions = generate_with_predictions(seed, {"bitmap"}, 20)
        commands = {s["execute"] for s in trace[1:]}
        assert commands <= {
            "block-dirty-bitmap-add",
            "block-dirty-bitmap-remove",
            "block-dirty-bitmap-clear",
            "block-dirty-bitmap-enable",
            "block-dirty-bitmap-disable",
            "block-dirty-bitmap-merge",
            "x-debug-block-dirty-bitmap-sha256",
            "query-jobs",
            "query-block-jobs",
        }, commands
        assert "error" not in predictions  # no `invalid` area: nothing QEMU should refuse
    with pytest.raises(ValueError, match="unknown area"):
        generate_trace(1, {"bitmaps"})


def test_a_share_of_refused_commands(traces) -> None:
    predictions = [p for _, preds in traces for p in preds]
    share = predictions.count("error") / len(predictions)
    assert 0.05 < share < 0.3


# --- what keeps a trace deterministic on QEMU, and alive --------------------------------


class Drives:
    """Which drive a name (drive id, or a node-name that became a drive's root) means."""

    def __init__(self, header: dict) -> None:
        self.of = {d["node-name"]: d["id"] for d in header["drives"]}
        self.of.update((d["id"], d["id"]) for d in header["drives"])

    def see(self, step: dict) -> None:
        args = step.get("arguments", {})
        name = args.get("snapshot-node-name") or args.get("node-name")
        if step.get("execute") in ("blockdev-snapshot-sync", "drive-mirror") and name:
            self.of[name] = self.of.get(args.get("device") or args["node-name"], "")

    def __call__(self, name: str) -> str:
        return self.of.get(name, "")


def qemu_io_drive(step: dict, drives: Drives) -> str | None:
    if step.get("execute") != "human-monitor-command":
        return None
    return drives(step["arguments"]["command-line"].split()[1])


def job_id(step: dict) -> str:
    args = step["arguments"]
    return args.get("job-id") or args["device"]


def started_jobs(step: dict, prediction: str | None) -> list[str]:
    if prediction != "ok":
        return []
    if step.get("execute") in JOB_STARTS:
        return [job_id(step)]
    if step.get("execute") == "transaction":
        return [job_id({"arguments": a["data"]}) for a in step["arguments"]["actions"]
                if a["type"] in ("drive-backup", "blockdev-backup")]  # fmt: skip
    return []


def test_every_job_is_waited_for_to_its_end(traces) -> None:
    """Jobs start one at a time (or two in one transaction) and each gets an end wait."""
    for seed, (trace, predictions) in zip(SEEDS, traces, strict=True):
        open_jobs = 0
        for step, prediction in zip(trace[1:], predictions, strict=True):
            started = len(started_jobs(step, prediction))
            if started:
                assert open_jobs == 0, (seed, step)
                open_jobs = started
            if "wait" in step and step["wait"]["event"] in ENDS:
                open_jobs -= 1
                assert open_jobs >= 0, (seed, step)
        assert open_jobs == 0, seed


def test_no_known_qemu_crasher_or_hang(traces) -> None:
    """The guard's crashers, and those found while recording the corpus:

    - a block-dirty-bitmap-enable transaction action that is refused (e.g. under
      completion-mode grouped) crashes in its abort;
    - a pending (auto-finalize false) stream of a node without backing file crashes
      on a read through the drive: no reads during any pending stream;
    - a pending mirror or active commit keeps its source drained: any qemu-io on
      the drive hangs QEMU;
    - a concluded, not dismissed stream job crashes query-named-block-nodes, which
      the recorder runs at the end: every stream with auto-dismiss false is dismissed.
    """
    for seed, (trace, _) in zip(SEEDS, traces, strict=True):
        drive_of = Drives(trace[0])
        pending: list[tuple[str, str]] = []  # (kind, drive) of the job now pending
        last = ("", False, "")  # kind, auto-dismiss false, drive of the job started last
        undismissed_streams: list[str] = []
        for step in trace[1:]:
            if "wait" in step:
                event, data = step["wait"]["event"], step["wait"]["data"]
                if event == "BLOCK_JOB_PENDING":
                    pending.append((last[0], last[2]))
                elif event in ENDS:
                    pending.clear()
                    if last[:2] == ("block-stream", True):
                        undismissed_streams.append(data["device"])
                continue
            command, args = step["execute"], step.get("arguments", {})
            assert crash_reason(command, args) is None, (seed, step)
            if command in JOB_STARTS:
                kind = "active" if command == "block-commit" and "top-node" not in args else command
                last = (kind, args.get("auto-dismiss") is False, drive_of(args["device"]))
            if command == "transaction" and any("backup" in a["type"] for a in args["actions"]):
                last = ("drive-backup", False, "")
            drive_of.see(step)
            if (
                command in ("job-dismiss", "block-job-dismiss")
                and args["id"] in undismissed_streams
            ):
                undismissed_streams.remove(args["id"])
            if command == "transaction":
                actions = args["actions"]
                types = [a["type"] for a in actions]
                if "properties" in args:
                    assert "block-dirty-bitmap-enable" not in types, (seed, step)
                for action in actions:
                    if action["type"] == "block-dirty-bitmap-enable":
                        assert action["data"]["name"] != "nope", (seed, step)
            if command == "human-monitor-command":
                line = args["command-line"]
                target = qemu_io_drive(step, drive_of)
                for kind, drive in pending:
                    if kind in ("drive-mirror", "active"):
                        assert target != drive, (seed, step)
                    if kind == "block-stream":
                        assert '"read' not in line, (seed, step)
        assert undismissed_streams == [], seed


def test_a_held_job_is_left_alone(traces) -> None:
    """While a job waits in READY / pending, no other job starts."""
    for seed, (trace, predictions) in zip(SEEDS, traces, strict=True):
        held: str | None = None
        for step, prediction in zip(trace[1:], predictions, strict=True):
            if "wait" in step:
                event, data = step["wait"]["event"], step["wait"]["data"]
                if event in ("BLOCK_JOB_READY", "BLOCK_JOB_PENDING"):
                    held = data.get("device") or data.get("id")
                elif event in ENDS and data["device"] == held:
                    held = None
                continue
            if held is not None:
                assert not started_jobs(step, prediction), (seed, step)


def test_nothing_races_the_copy_of_writes_made_while_ready(traces) -> None:
    """A forced cancel does not wait for the copy of writes made while READY, and an
    active commit's copy dirties the base's bitmaps whenever it happens."""
    for seed, (trace, _) in zip(SEEDS, traces, strict=True):
        drives = Drives(trace[0])
        ready: tuple[str, str] | None = None  # (job id, drive) held in READY
        starts: list[tuple[str, str]] = []  # (drive, command) of each job started
        wrote = active = False
        for step in trace[1:]:
            drives.see(step)
            if step.get("execute") in JOB_STARTS:
                args = step["arguments"]
                kind = "active" if step["execute"] == "block-commit" else step["execute"]
                starts.append((drives(args["device"]), kind))
            if "wait" in step:
                event, data = step["wait"]["event"], step["wait"]["data"]
                if event == "BLOCK_JOB_READY":
                    ready, wrote = (data["device"], starts[-1][0]), False
                    active = starts[-1][1] == "active"
                elif event in ENDS or event == "BLOCK_JOB_PENDING":
                    ready = None  # pending: the copy converged before
                continue
            if ready is None:
                continue
            line = step.get("arguments", {}).get("command-line", "")
            if qemu_io_drive(step, drives) == ready[1] and '"write' in line:
                wrote = True
            forced = step["execute"] == "job-cancel" or step.get("arguments", {}).get("force")
            if wrote and forced and step["execute"] in ("job-cancel", "block-job-cancel"):
                raise AssertionError((seed, step))
            bitmap_command = "bitmap" in step["execute"] or step["execute"] == "transaction"
            assert not (wrote and active and bitmap_command), (seed, step)
            assert not (wrote and step["execute"].startswith("query-")), (seed, step)


# --- recorded on real QEMU --------------------------------------------------------------


@pytest.mark.qemu
@needs_qemu
def test_generated_traces_record_deterministically(tmp_path: Path) -> None:
    from sim.oracle.record import record_trace

    for seed in (3, 11, 2247):
        src = tmp_path / f"t{seed}.jsonl"
        src.write_text("\n".join(lines_of(generate_trace(seed))) + "\n", encoding="utf-8")
        record_trace(src, tmp_path / "a.jsonl")
        record_trace(src, tmp_path / "b.jsonl")
        a = (tmp_path / "a.jsonl").read_text(encoding="utf-8")
        assert a == (tmp_path / "b.jsonl").read_text(encoding="utf-8"), seed


def test_recorded_corpus_is_complete() -> None:
    files = sorted(CORPUS.glob("rec-*.jsonl"))
    if not files:
        pytest.skip("no recorded corpus")
    assert len(files) >= 150
    assert sum(f.stat().st_size for f in files) < 5_500_000
    for path in files:
        trace = load_trace(path)
        assert trace.header.name == path.stem
        assert trace.final_expect is not None and trace.final_expect["violations"] == []
        assert all(step.expect is not None for step in trace.steps), path
