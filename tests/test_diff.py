"""The differential oracle (sim/oracle/diff.py, differential.py) and `blocksim diff/record`.

Tests marked `qemu` run real QEMU 7.2 and skip without it; the rest are pure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.compare import differences, first_difference
from sim.fuzz import differential
from sim.fuzz.differential import Outcome, shrink, units_of
from sim.model import bitmap_ops
from sim.model.content import SECTOR, StampTable, new_content
from sim.model.graph import Image
from sim.oracle.diff import (
    Difference,
    check_runnable,
    compare_image_bytes,
    compare_image_runs,
    diff_trace,
    reads_host_bytes,
    sim_guest_view,
)
from sim.trace import dumps, load_trace, parse_lines
from tests.helpers import needs_qemu

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios" / "qemu-7.2"
LIFECYCLE = SCENARIOS / "bm-lifecycle-basic.jsonl"
HEADER = {
    "trace": 1,
    "name": "diff-test",
    "drives": [{"id": "drive0", "node-name": "fmt0", "format": "qcow2", "size": 4 << 20}],
}


def make_trace(*steps: dict[str, Any]) -> Any:
    return parse_lines([json.dumps(HEADER)] + [json.dumps(s) for s in steps], "test")


def qemu_io(text: str, device: str = "drive0") -> dict[str, Any]:
    line = f'qemu-io {device} "{text}"'
    return {"execute": "human-monitor-command", "arguments": {"command-line": line}}


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# --- against real QEMU -------------------------------------------------------------------


@pytest.mark.qemu
@needs_qemu
@pytest.mark.parametrize("name", ["bm-lifecycle-basic", "mir-ready-complete", "bk-paused-busy"])
def test_reference_trace_diffs_clean(name: str) -> None:
    result = run_cli("diff", str(SCENARIOS / f"{name}.jsonl"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"IDENTICAL {name}")
    assert "compared as the whole ordered list" in result.output


@pytest.mark.qemu
@needs_qemu
def test_altered_bitmap_rule_is_caught_at_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bitmap_ops.set_enabled

    def never_disable(graph: Any, policy: Any, node: str, name: str, enabled: bool) -> Any:
        return real(graph, policy, node, name, True)  # a disabled bitmap keeps recording

    monkeypatch.setattr(bitmap_ops, "set_enabled", never_disable)
    result = run_cli("diff", str(LIFECYCLE))
    assert result.exit_code == 1, result.output
    # step 7 is the sha256 after the write to the disabled bitmap
    assert "first diverging: step 7 (line 9) x-debug-block-dirty-bitmap-sha256" in result.output
    assert "step 10 (line 12) x-debug-block-dirty-bitmap-sha256: .return.sha256" in result.output


@pytest.mark.qemu
@needs_qemu
def test_wrong_pattern_in_an_overlay_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = make_trace(
        qemu_io("write -P 0x5 0 64k"),
        {"execute": "blockdev-snapshot-sync",
         "arguments": {"device": "drive0", "snapshot-file": "ov0.qcow2"}},
        qemu_io("write -P 0x6 1M 64k"),
    )  # fmt: skip
    assert diff_trace(trace).identical
    real_new = StampTable.new
    monkeypatch.setattr(StampTable, "new", lambda self, p: real_new(self, 0x7 if p == 6 else p))
    report = diff_trace(trace)
    assert [d.where for d in report.differences] == ["image ov0.qcow2"]
    assert report.first is not None
    assert report.first.detail == "content differs at [1M, 1088k): expected 0x06, got 0x07"


@pytest.mark.qemu
@needs_qemu
def test_record_command_writes_expects(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text(dumps(HEADER) + "\n" + dumps({"execute": "query-jobs"}) + "\n")
    result = run_cli("record", str(src), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["expect"] == {"return": []}
    assert "final-expect" in json.loads(lines[2])


@pytest.mark.qemu
@needs_qemu
def test_small_differential_campaign(tmp_path: Path) -> None:
    pytest.importorskip("sim.fuzz.tracegen")
    summary = differential.differential_campaign(2, 7, tmp_path)
    assert summary.traces == 2 and summary.generator_errors == []
    assert summary.qemu_runs >= 2  # every generated trace ran on the binary
    # each mismatching trace is counted once, in exactly one class, under its own seed
    seeds = [s for c in summary.classes for s in c.seeds]
    assert len(seeds) == len(set(seeds)) == summary.mismatching == 2 - summary.identical
    assert summary.traces_per_minute > 0
    assert json.loads((tmp_path / "summary.json").read_text())["traces"] == 2
    written = sorted((tmp_path / "failures").glob("*.jsonl"))
    assert len(written) == len(summary.classes)


# --- without QEMU ------------------------------------------------------------------------


def test_campaign_classes_are_pinned_or_unexplained(tmp_path: Path) -> None:
    # every pinned known difference names its class; a campaign's class is explained
    # only by a pinned trace with the same signature
    pinned = differential.pinned_classes()
    folder = Path("scenarios/known-differences/differential")
    assert len(pinned) == len(list(folder.glob("*.jsonl")))
    signature = next(iter(pinned))
    summary = differential.Summary(traces=2, mismatching=2)
    for seed, sig in enumerate((signature, "response:query-jobs:(top):qemu-error/sim-return")):
        summary.classes.append(differential.MismatchClass(sig, [seed], "x", 3, 2, ""))
    assert [c.signature for c in summary.unexplained(pinned)] == [summary.classes[1].signature]
    text = summary.render(pinned)
    assert f"pinned: {pinned[signature]}" in text
    assert "unexplained: 1 class(es), 1 trace(s)" in text and "UNEXPLAINED" in text


def test_sim_only_steps_are_refused_before_anything_runs(tmp_path: Path) -> None:
    trace = make_trace({"execute": "query-jobs"}, {"workload": {"device": "drive0"}})
    with pytest.raises(Exception, match="line 3: 'workload' steps are simulator-only"):
        check_runnable(trace)
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join([json.dumps(HEADER), json.dumps({"fault": {"node": "fmt0"}})]))
    for command in ("diff", "record"):
        result = CliRunner().invoke(main, [command, str(path)])
        assert result.exit_code == 2
        assert "cannot run on real QEMU" in result.output
        assert "'fault' steps are simulator-only" in result.output


def test_missing_qemu_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["diff", "--qemu", "/nonexistent/qemu", str(LIFECYCLE)])
    assert result.exit_code == 2
    assert "'/nonexistent/qemu' not found" in result.output
    result = CliRunner().invoke(main, ["record", "--qemu", "/nonexistent/qemu", str(LIFECYCLE)])
    assert result.exit_code == 2 and "install QEMU 7.2" in result.output


def test_guest_view_reads_through_backing_files() -> None:
    stamps = StampTable()
    base = Image("base.qcow2", "qcow2", 8 * SECTOR, new_content(8 * SECTOR))
    top = Image("top.qcow2", "qcow2", 8 * SECTOR, new_content(8 * SECTOR), "base.qcow2")
    base.content.write(0, 4 * SECTOR, stamps.new(0x5))
    top.content.write(2 * SECTOR, SECTOR, stamps.new(0x6))
    top.content.write(3 * SECTOR, SECTOR, 1)  # zeroes written: hides the base
    images = {"base.qcow2": base, "top.qcow2": top}
    assert sim_guest_view(images, "top.qcow2", stamps) == bytes([5, 5, 6, 0, 0, 0, 0, 0])
    assert sim_guest_view(images, "base.qcow2", stamps) == bytes([5, 5, 5, 5, 0, 0, 0, 0])
    top.backing_file = None  # e.g. after a stream: QEMU no longer reads the base
    assert sim_guest_view(images, "top.qcow2", stamps) == bytes([0, 0, 6, 0, 0, 0, 0, 0])


def test_guest_view_opens_a_json_backing_name_from_its_options() -> None:
    # QEMU names a qcow2 node whose backing blockdev-add set as json:{...}; qemu-img opens
    # the file it names and takes the backing from the options, not from that file's header
    stamps = StampTable()
    base = Image("base.qcow2", "qcow2", 4 * SECTOR, new_content(4 * SECTOR))
    mid = Image("mid.qcow2", "qcow2", 4 * SECTOR, new_content(4 * SECTOR), "base.qcow2")
    base.content.write(0, 4 * SECTOR, stamps.new(0x5))
    mid.content.write(SECTOR, SECTOR, stamps.new(0x6))
    options = {"driver": "qcow2", "file": {"driver": "file", "filename": "mid.qcow2"}}
    top = Image("top.qcow2", "qcow2", 4 * SECTOR, new_content(4 * SECTOR))
    images = {"base.qcow2": base, "mid.qcow2": mid, "top.qcow2": top}
    top.backing_file = "json:" + json.dumps(options)  # no backing option: mid's header's
    assert sim_guest_view(images, "top.qcow2", stamps) == bytes([5, 6, 5, 5])
    null = {"driver": "null-co", "size": 4 * SECTOR}
    top.backing_file = "json:" + json.dumps({**options, "backing": null})
    assert sim_guest_view(images, "top.qcow2", stamps) == bytes([0, 6, 0, 0])
    top.backing_file = "json:" + json.dumps({**options, "backing": None})
    assert sim_guest_view(images, "top.qcow2", stamps) == bytes([0, 6, 0, 0])
    base_options = {"driver": "qcow2", "file": {"driver": "file", "filename": "base.qcow2"}}
    top.backing_file = "json:" + json.dumps({**options, "backing": base_options})
    assert sim_guest_view(images, "top.qcow2", stamps) == bytes([5, 6, 5, 5])
    debug = {"driver": "blkdebug", "image": options["file"], "inject-error.0.event": "l2_load"}
    top.backing_file = "json:" + json.dumps({**options, "file": debug})  # blkdebug's image
    assert sim_guest_view(images, "top.qcow2", stamps) == bytes([5, 6, 5, 5])
    for unknown in ("json:{", 'json:{"driver": "nbd"}', "json:[]"):
        top.backing_file = unknown  # options naming no image the simulator holds end the chain
        assert sim_guest_view(images, "top.qcow2", stamps) == bytes([0, 0, 0, 0])


def test_image_bytes_comparison() -> None:
    real = b"\x05" * 1024 + b"\x00" * 1024
    assert compare_image_bytes("a", real, bytes([5, 5, 0, 0])) == (None, 0)
    diff, _ = compare_image_bytes("a", real, bytes([5, 6, 0, 5]))
    assert diff is not None and diff.where == "image a"
    assert diff.detail == (
        "content differs at [512, 1k): expected 0x05, got 0x06; [1536, 2k): expected 0x00, got 0x05"
    )
    partly = b"\x05" * 100 + b"\x00" * 412  # a sub-sector write: the simulator stamps it whole
    assert compare_image_bytes("a", partly, b"\x05") == (None, 1)
    diff, _ = compare_image_bytes("a", partly, b"\x07")
    assert diff is not None and "expected mixed bytes, got 0x07" in diff.detail
    diff, _ = compare_image_bytes("a", real, b"\x05")
    assert diff is not None and diff.detail == "size: expected 2048 bytes, got 512"
    # sparse: QEMU's data runs, zeroes elsewhere
    runs = [(1024, b"\x05" * 512)]
    assert compare_image_runs("a", 4096, runs, bytes([0, 0, 5, 0, 0, 0, 0, 0])) == (None, 0)
    diff, _ = compare_image_runs("a", 4096, runs, bytes([0, 0, 5, 0, 0, 0, 9, 9]))
    assert (
        diff is not None and diff.detail == "content differs at [3k, 4k): expected 0x00, got 0x09"
    )


def test_signatures_ignore_indices_and_numbers() -> None:
    a = Difference("final", None, None, "nodes", ".nodes[2].dirty-bitmaps[0].count", "", "x")
    b = Difference("final", None, None, "nodes", ".nodes[0].dirty-bitmaps[1].count", "", "x")
    assert a.signature == b.signature == "final:nodes:.nodes[].dirty-bitmaps[].count:x"
    img = Difference("image", None, None, "drive0-ov12.qcow2", "backing_file", "", "backing file")
    assert img.signature == "image:driveN-ovN.qcowN:backing_file:backing file"


def test_differences_lists_every_place() -> None:
    exp = {"a": [1, 2], "b": "#block12", "c": True}
    act = {"a": [1, 3, 4], "b": "#auto", "c": 1, "d": 0}
    assert list(differences(exp, act)) == [
        ".a[1]: expected 2, got 3",
        ".a: expected 2 item(s), got 3",
        ".c: expected True, got 1",
        "(top): unexpected key(s) ['d']",
    ]
    assert first_difference(exp, act) == ".a[1]: expected 2, got 3"


def test_invented_names_compare_equal_but_types_stay_strict() -> None:
    exp = {"return": [{"node-name": "#auto", "desc": "Node '#auto' is busy", "n": 1}]}
    act = {"return": [{"desc": "Node '#block123' is busy", "n": 1, "node-name": "#block7"}]}
    assert first_difference(exp, act) is None
    # with invented names on both sides, True is still not 1 and 1.0 not 1
    assert first_difference(exp, {**act, "return": [{**act["return"][0], "n": True}]}) == (
        ".return[0].n: expected 1, got True"
    )
    assert first_difference(exp, {**act, "return": [{**act["return"][0], "n": 1.0}]}) == (
        ".return[0].n: expected 1, got 1.0"
    )
    # an invented name takes every digit that follows, ASCII or not, in both comparisons
    assert first_difference({"a": "#auto"}, {"a": "#block1\u0663"}) is None
    assert first_difference({"a": "#auto\u0663"}, {"a": "#block1\u0663"}) is not None


def test_units_keep_jobs_with_their_waits() -> None:
    steps: list[dict[str, Any]] = [
        {"execute": "drive-mirror", "arguments": {"device": "drive0", "job-id": "j1"}},
        {"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "j1"}}},
        {"execute": "query-block-jobs"},
        {"execute": "block-job-complete", "arguments": {"device": "j1"}},
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j1"}}},
        {"execute": "block-stream", "arguments": {"device": "drive0"}},
        {"execute": "query-jobs"},
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "drive0"}}},
    ]
    assert units_of(steps) == [[0, 1], [2], [3, 4], [5, 7], [6]]


def test_shrink_keeps_the_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    body = [{"execute": "query-jobs", "id": i} for i in range(12)]
    needed = {3, 8}

    def fake_run(steps: list[dict[str, Any]], qemu: Any, timeout: float) -> Outcome:
        ids = {s.get("id") for s in steps[1:]}
        return Outcome("sig" if needed <= ids else None, "text")

    monkeypatch.setattr(differential, "run_outcome", fake_run)
    monkeypatch.setattr(differential, "_sim_breaks_waits", lambda trial, original: False)
    kept, outcome, runs = shrink([HEADER, *body], Outcome("sig", "text"), None)
    assert [s["id"] for s in kept[1:]] == [3, 8]
    assert outcome.signature == "sig" and 0 < runs < 40


def test_load_and_refuse_on_a_real_scenario_file() -> None:
    check_runnable(load_trace(LIFECYCLE))  # recorded traces are runnable


# --- QEMU's own nondeterminism (a fake QEMU side: the simulator's answers, one altered) ------


class FakeQemu:
    """Stands in for `QemuRunner`: answers every step as the simulator does, except the
    `query-block-jobs` reply on the runs `odd` names (1-based, counted over all runs)."""

    runs = 0
    odd: frozenset[int] = frozenset()

    def __init__(self, trace: Any, **_: Any) -> None:
        self.trace = trace

    def __enter__(self) -> FakeQemu:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def run(self) -> Any:
        from sim.oracle.qemu_runner import RunResult
        from sim.replay import replay

        FakeQemu.runs += 1
        sim = replay(self.trace)
        steps = []
        for step, outcome in zip(self.trace.steps, sim.steps, strict=True):
            response = dict(outcome.response)
            if step.body.get("execute") == "query-block-jobs" and FakeQemu.runs in self.odd:
                response = {"return": [{"device": "ghost", "type": "backup"}]}
            steps.append({"step": outcome.index, "line": step.line, "command": step.body,
                          "response": response, "events": outcome.events})  # fmt: skip
        return RunResult(steps, sim.final)


def fake_campaign(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, odd: set[int]
) -> differential.Summary:
    from sim.oracle import diff as oracle_diff

    steps = [HEADER, {"execute": "query-jobs"}, {"execute": "query-block-jobs"}]
    monkeypatch.setattr(oracle_diff, "QemuRunner", FakeQemu)
    monkeypatch.setattr(oracle_diff, "compare_images", lambda runner, sim: ([], [], []))
    monkeypatch.setattr(differential, "find_qemu", lambda qemu: "qemu")
    monkeypatch.setattr(differential, "_draw", lambda *a: iter([(0, 11, [dict(s) for s in steps])]))
    monkeypatch.setattr(FakeQemu, "runs", 0)
    monkeypatch.setattr(FakeQemu, "odd", frozenset(odd))
    return differential.differential_campaign(1, 1, tmp_path, shrink_runs=4, pinned={})


def test_qemu_answering_a_rerun_differently_is_its_own_class(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the campaign's run answers query-block-jobs with a job, the re-run with none (as the
    # simulator does): QEMU disagrees with itself where the simulator differs
    summary = fake_campaign(monkeypatch, tmp_path, {1})
    [cls] = summary.classes
    assert cls.signature.startswith("response:query-block-jobs:")
    assert cls.nondeterministic == [11] and cls.deterministic == []
    assert cls.status({}) == "qemu-nondeterministic"
    assert summary.unexplained({}) == [] and summary.nondeterministic({}) == [cls]
    text = summary.render({})
    assert "unexplained: 0 class(es), 0 trace(s)" in text
    assert "QEMU nondeterministic: 1 class(es), 1 trace(s)" in text
    evidence = json.loads(Path(cls.evidence).read_text())
    assert evidence["where"] == "step 2 (line 3) query-block-jobs"
    answers = [a["answer"] for a in evidence["qemu_answers"]]
    assert answers == [{"return": [{"device": "ghost", "type": "backup"}]}, {"return": []}]
    assert evidence["runs_against_the_simulator"][1]["first_difference"] == "identical"
    # its shrunk trace did not show it again: QEMU's runs of that one disagree too
    assert cls.reproduced == "0/2" and Path(cls.shrunk_evidence).is_file()
    # a merged campaign keeps the verdict, and it is still counted on its own line
    merged = differential.merge_summaries([tmp_path])
    assert merged.classes[0].status({}) == "qemu-nondeterministic"
    assert "QEMU nondeterministic: 1 class(es)" in merged.render({})


def test_qemu_answering_the_same_every_time_stays_a_real_mismatch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    summary = fake_campaign(monkeypatch, tmp_path, set(range(1, 100)))
    [cls] = summary.classes
    assert cls.deterministic == [11] and cls.nondeterministic == [] and cls.evidence == ""
    assert cls.status({}) == "unexplained" and summary.unexplained({}) == [cls]
    assert cls.shrunk_evidence == "" and cls.reproduced == "2/2"
    text = summary.render({})
    assert "unexplained: 1 class(es), 1 trace(s)" in text and "UNEXPLAINED" in text
    assert "QEMU nondeterministic: 0 class(es), 0 trace(s)" in text
    assert not (tmp_path / "failures" / "qemu-nondeterministic").exists()
    # the re-runs are bounded: campaign run, RECHECK_RUNS, shrinking, confirmation
    assert FakeQemu.runs == summary.qemu_runs <= 1 + differential.RECHECK_RUNS + 4 + 2
    # a pinned class is not re-run
    FakeQemu.runs = 0
    pinned = {cls.signature: "x.jsonl"}
    again = differential.differential_campaign(1, 1, tmp_path / "p", shrink_runs=0, pinned=pinned)
    assert again.classes[0].deterministic == [] and FakeQemu.runs == 1 + differential.CONFIRM_RUNS


def test_qemu_answer_is_taken_where_the_difference_shows() -> None:
    # events: the list up to the differing event; final state: the value at the field
    # (or where it is absent); an image: that image's differences in this run
    from sim.oracle import DiffReport, qemu_answer
    from sim.oracle.qemu_runner import RunResult

    events = [{"event": "A", "data": {}}, {"event": "B", "data": {"n": 1}}, {"event": "C"}]
    final = {"nodes": [{"node-name": "fmt0", "dirty-bitmaps": [{"name": "b0", "count": 7}]}],
             "events": events}  # fmt: skip
    image = Difference("image", None, None, "ov1.qcow2", "content", "differs at [0, 512)", "c")
    report = DiffReport(make_trace(), "qemu-7.2", [image], [], RunResult([], final), None, 0, 0)  # type: ignore[arg-type]
    at_event = Difference("events", 1, 2, "query-jobs", "events[1].data.n", "", "B data")
    assert qemu_answer(report, at_event) == events[:2]
    count = ".nodes[0].dirty-bitmaps[0].count"
    assert qemu_answer(report, Difference("final", None, None, "nodes", count, "", "")) == 7
    gone = ".nodes[1].dirty-bitmaps[0].count"
    assert qemu_answer(report, Difference("final", None, None, "nodes", gone, "", "")) == {
        "absent": gone
    }
    assert qemu_answer(report, image) == ["differs at [0, 512)"]


def test_a_qemu_crash_the_simulator_warned_of_is_untestable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QEMU 7.2 segfaults on a qemu-io read through a stream job's filter when the job had
    nothing to stream and is held pending (found by a campaign); the simulator warns of
    it, so the campaign counts such a trace untestable, not an unexplained class.  A
    crash the simulator did not predict stays a `qemu-died` class."""
    from sim.oracle import QemuDied

    header = {**HEADER, "name": "stream-pending-read"}
    stream = {"execute": "block-stream", "arguments": {"device": "drive0", "job-id": "j",
              "auto-finalize": False}}  # fmt: skip
    read = {"execute": "human-monitor-command",
            "arguments": {"command-line": 'qemu-io drive0 "read 0 64k"'}}  # fmt: skip

    def died(*args: Any, **kwargs: Any) -> None:
        raise QemuDied("QEMU was killed by signal 11 while running 'human-monitor-command'")

    monkeypatch.setattr(differential, "diff_trace", died)
    outcome = differential.run_outcome([header, stream, read], None, 5.0)
    assert outcome.signature is not None
    assert outcome.signature.startswith("untestable:real QEMU 7.2 crashes (SIGSEGV)")
    outcome = differential.run_outcome([header, read], None, 5.0)
    assert outcome.signature == "qemu-died:human-monitor-command"


def test_an_overlay_over_a_qcow2_file_read_as_bytes_is_not_compared() -> None:
    # a snapshot of a qcow2 drive's protocol node: the overlay's backing is the qcow2
    # image file read as plain bytes (backing format `file`), which blocksim does not hold
    base = Image("drive0.qcow2", "qcow2", 4 * SECTOR, new_content(4 * SECTOR))
    top = Image("ov1.qcow2", "qcow2", 4 * SECTOR, new_content(4 * SECTOR), "drive0.qcow2")
    over = Image("ov2.qcow2", "qcow2", 4 * SECTOR, new_content(4 * SECTOR), "ov1.qcow2")
    images = {"drive0.qcow2": base, "ov1.qcow2": top, "ov2.qcow2": over}
    top.backing_format, over.backing_format = "file", "qcow2"
    assert reads_host_bytes(images, top) == "drive0.qcow2"
    assert reads_host_bytes(images, over) == "drive0.qcow2"
    assert reads_host_bytes(images, base) is None
    top.backing_format = "qcow2"  # an ordinary overlay of the format node
    assert reads_host_bytes(images, over) is None
    raw = Image("drive0.raw", "raw", 4 * SECTOR, new_content(4 * SECTOR))
    top.backing_file, top.backing_format, images["drive0.raw"] = "drive0.raw", "file", raw
    assert reads_host_bytes(images, top) is None  # a raw image's bytes are its contents


def test_a_protocol_snapshot_leaves_dirty_l2_entries_out_of_the_image() -> None:
    # qcow2 writes a new cluster's data into its file at once, but the L2 entry mapping
    # it only at the next write-back of its table; a snapshot of the protocol node
    # flushes that node, not the format node, whose tables then go into the overlay
    from sim.replay import replay

    header = {**HEADER, "drives": [{**HEADER["drives"][0], "file-node-name": "proto0"}]}
    steps = [
        qemu_io("write -P 17 0 64k"),
        qemu_io("flush"),
        qemu_io("write -P 34 1M 64k"),  # linked in the cache only
        {
            "execute": "blockdev-snapshot-sync",
            "arguments": {
                "node-name": "proto0",
                "snapshot-file": "ov1.qcow2",
                "snapshot-node-name": "ov1",
                "format": "qcow2",
            },
        },  # fmt: skip
        qemu_io("write -P 51 2M 64k"),  # reaches ov1 as host bytes
    ]
    trace = parse_lines([json.dumps(header)] + [json.dumps(s) for s in steps], "test")
    result = replay(trace)
    images = result.machine.state.graph.images
    view = sim_guest_view(images, "drive0.qcow2", result.machine.state.stamps)
    per_64k = (64 << 10) // SECTOR
    assert view[:per_64k] == bytes([17]) * per_64k  # flushed: in the file
    assert view[(1 << 20) // SECTOR : (1 << 20) // SECTOR + per_64k] == bytes(per_64k)
    assert view[(2 << 20) // SECTOR : (2 << 20) // SECTOR + per_64k] == bytes(per_64k)
    assert images["drive0.qcow2"].unlinked == [((1 << 20) // SECTOR, (1 << 20) // SECTOR + per_64k)]
    # the overlay took fmt0's host bytes: blocksim diff does not compare it
    assert images["ov1.qcow2"].holds_host_bytes and not images["drive0.qcow2"].holds_host_bytes
