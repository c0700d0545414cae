"""The real-QEMU runner (sim/oracle): recording, refusals, cleanup.

Tests marked `qemu` need qemu-system-x86_64 7.2 on PATH and are skipped
without it; the rest are pure.  Each QEMU run takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.errors import TraceError
from sim.oracle.guards import crash_reason, place_files, refusal
from sim.oracle.normalize import first_difference, matches, names_equal, normalize_final, scrub
from sim.oracle.qemu_runner import QemuDied, QemuNotFound, QemuRunner, find_qemu, run_trace
from sim.oracle.record import record_trace, recorded_lines
from sim.trace import load_trace, parse_lines
from tests.helpers import needs_qemu

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios" / "qemu-7.2"
REFERENCE = ["bm-lifecycle-basic", "bk-paused-busy", "mir-ready-complete", "snap-chain-three"]
HEADER = {
    "trace": 1,
    "name": "oracle-test",
    "drives": [
        {"id": "drive0", "node-name": "fmt0", "file-node-name": "proto0",
         "format": "qcow2", "size": 67108864}
    ],
}  # fmt: skip


def make_trace(*steps: dict[str, object]):
    return parse_lines([json.dumps(HEADER)] + [json.dumps(s) for s in steps], "test")


def execute(command: str, **arguments: object) -> dict[str, object]:
    step: dict[str, object] = {"execute": command}
    if arguments:
        step["arguments"] = arguments
    return step


def qemu_io(text: str) -> dict[str, object]:
    return execute("human-monitor-command", **{"command-line": f'qemu-io drive0 "{text}"'})


# --- against real QEMU -------------------------------------------------------------------


@pytest.mark.qemu
@needs_qemu
@pytest.mark.parametrize("name", REFERENCE)
def test_reference_trace_records_identically(name: str) -> None:
    path = SCENARIOS / f"{name}.jsonl"
    trace = load_trace(path)
    result = run_trace(trace)
    for step, res in zip(trace.steps, result.steps, strict=True):
        assert "error" not in res, res
        if step.expect is not None:
            assert first_difference(step.expect, res["response"]) is None, f"line {step.line}"
    assert first_difference(trace.final_expect, result.final) is None
    lines = path.read_text(encoding="utf-8").splitlines()
    assert recorded_lines(lines, trace.steps, result) == lines


@pytest.mark.qemu
@needs_qemu
def test_record_trace_writes_the_reference_file_back(tmp_path: Path) -> None:
    source = SCENARIOS / "bm-lifecycle-basic.jsonl"
    out = tmp_path / "out.jsonl"
    record_trace(source, out)
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.qemu
@needs_qemu
def test_record_trace_fills_in_expects_and_final_state(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text(
        "\n".join(
            [json.dumps(HEADER), "// a comment", json.dumps(execute("query-jobs")), ""]
        ),
        encoding="utf-8",
    )  # fmt: skip
    record_trace(src, src)
    lines = src.read_text(encoding="utf-8").splitlines()
    assert lines[:2] == [json.dumps(HEADER), "// a comment"]
    assert json.loads(lines[2])["expect"] == {"return": []}
    final = json.loads(lines[-1])["final-expect"]
    assert final["backends"] == [{"device": "drive0", "node-name": "fmt0"}]
    assert [n["node-name"] for n in final["nodes"]] == ["fmt0", "proto0"]


@pytest.mark.qemu
@needs_qemu
def test_sim_only_and_crashing_steps_are_refused_and_the_run_goes_on() -> None:
    trace = make_trace(
        execute("block-dirty-bitmap-add", node="drive0", name="b0"),
        {"workload": {"device": "drive0"}},
        execute("block-dirty-bitmap-merge", node="drive0", target="b0", bitmaps=[]),
        {"fault": {"node": "proto0"}},
        execute("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"),
    )
    result = run_trace(trace)
    workload, merge, fault = result.steps[1], result.steps[2], result.steps[3]
    assert workload["response"] is None and workload["error"].startswith("line 3: 'workload'")
    assert "simulator-only" in workload["error"]
    assert merge["response"] is None and "crashes QEMU 7.2" in merge["error"]
    assert fault["error"].startswith("line 5:")
    assert "sha256" in result.steps[4]["response"]["return"]  # QEMU still alive
    assert result.final["nodes"][0]["dirty-bitmaps"][0]["name"] == "b0"


@pytest.mark.qemu
@needs_qemu
def test_record_refuses_a_trace_with_a_sim_only_step(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(HEADER) + "\n" + json.dumps({"workload": {}}) + "\n")
    with pytest.raises(TraceError, match="line 2: 'workload' steps are simulator-only"):
        record_trace(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.qemu
@needs_qemu
def test_wait_that_never_comes_times_out_with_its_line() -> None:
    trace = make_trace(
        {"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "nojob"}, "timeout": 0.3}},
        execute("query-jobs"),
    )
    result = run_trace(trace)
    assert result.steps[0]["error"].startswith("line 2: no BLOCK_JOB_READY event")
    assert result.steps[1]["response"] == {"return": []}


@pytest.mark.qemu
@needs_qemu
def test_wait_consumes_events_that_arrived_earlier_once() -> None:
    done = {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j0"}}
    trace = make_trace(
        qemu_io("write -P 0x7 0 64k"),
        execute("drive-backup", device="drive0", target="b.qcow2", sync="full", **{"job-id": "j0"}),
        execute("query-block"),
        {"wait": done},
        {"wait": {**done, "timeout": 0.2}},
    )
    result = run_trace(trace)
    assert result.steps[3]["response"]["data"]["len"] == 64 * 1024 * 1024
    assert "no BLOCK_JOB_COMPLETED event" in result.steps[4]["error"]
    statuses = [e["data"].get("status") for e in result.final["events"]]
    assert statuses[-2:] == ["concluded", "null"]


@pytest.mark.qemu
@needs_qemu
def test_scratch_dir_is_removed_and_qemu_stopped(tmp_path: Path) -> None:
    with QemuRunner(make_trace(), scratch_parent=tmp_path) as runner:
        runner.run()
        scratch = runner.scratch_dir
        assert (scratch / "drive0.qcow2").exists()
    assert not scratch.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.qemu
@needs_qemu
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_cleanup_on_exceptions(tmp_path: Path, exc: type[BaseException]) -> None:
    with pytest.raises(exc):
        with QemuRunner(make_trace(), scratch_parent=tmp_path) as runner:
            runner.start()
            proc = runner._proc
            raise exc()
    assert proc is not None and proc.poll() is not None
    assert list(tmp_path.iterdir()) == []


def _interrupt_once(real: Any, before: bool = False) -> Any:
    """`real`, except that its first call raises KeyboardInterrupt (before or after
    doing its work), as a Ctrl-C landing there would."""
    calls: list[int] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if calls:
            return real(*args, **kwargs)
        calls.append(1)
        if not before:
            real(*args, **kwargs)
        raise KeyboardInterrupt

    return call


@pytest.mark.qemu
@needs_qemu
@pytest.mark.parametrize("where", ["scratch-made", "qemu-starting", "reaping", "removing"])
def test_ctrl_c_anywhere_leaves_no_scratch_and_no_qemu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A Ctrl-C right after the scratch folder is made, while QEMU starts, while close
    waits for QEMU, or half-way through removing the folder: QEMU is gone and so is the
    folder."""
    import os
    import shutil as shutil_module

    import sim.oracle.qemu_runner as qr

    runner = QemuRunner(make_trace(), scratch_parent=tmp_path)
    try:
        with pytest.raises(KeyboardInterrupt), monkeypatch.context() as mp:
            if where == "scratch-made":
                mp.setattr(os, "mkdir", _interrupt_once(os.mkdir))
            elif where == "qemu-starting":
                mp.setattr(qr.QemuRunner, "_connect", _interrupt_once(lambda self: None, True))
            elif where == "removing":
                mp.setattr(shutil_module, "rmtree", _interrupt_once(shutil_module.rmtree, True))
            runner.start()  # closes the runner when it fails
            if where == "reaping":
                assert runner._proc is not None
                mp.setattr(runner._proc, "wait", _interrupt_once(runner._proc.wait, True))
            runner.close()
        proc = runner._proc
        assert proc is None or proc.poll() is not None, "QEMU outlived close()"
        assert list(tmp_path.iterdir()) == []
    finally:
        runner.close()


@pytest.mark.qemu
@needs_qemu
def test_kept_scratch_gives_image_contents(tmp_path: Path) -> None:
    trace = make_trace(
        qemu_io("write -P 0x5 0 64k"),
        execute("blockdev-snapshot-sync", device="drive0", **{"snapshot-file": "ov0.qcow2"}),
        qemu_io("write -P 0x6 64k 64k"),
    )
    with QemuRunner(trace, keep_scratch=True, scratch_parent=tmp_path) as runner:
        result = runner.run()
        assert sorted(runner.images()) == ["drive0.qcow2", "ov0.qcow2"]
        base, top = runner.read_image("drive0.qcow2"), runner.read_image("ov0.qcow2")
    assert result.scratch_dir is not None and Path(result.scratch_dir).is_dir()
    assert base[:65536] == b"\x05" * 65536 and base[65536:131072] == bytes(65536)
    assert top[:131072] == b"\x05" * 65536 + b"\x06" * 65536
    assert result.final["backends"] == [{"device": "drive0", "node-name": "#auto"}]


@pytest.mark.qemu
@needs_qemu
def test_qemu_that_cannot_start_is_reported(tmp_path: Path) -> None:
    bad = dict(HEADER, drives=[dict(HEADER["drives"][0], **{"file-node-name": "#bad"})])
    trace = parse_lines([json.dumps(bad)], "test")
    with pytest.raises(QemuDied, match="exited"):
        with QemuRunner(trace, scratch_parent=tmp_path) as runner:
            runner.start()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.qemu
@needs_qemu
def test_qemu_dying_mid_run_is_reported(tmp_path: Path) -> None:
    trace = make_trace({"wait": {"event": "SHUTDOWN"}}, execute("query-jobs"))
    with QemuRunner(trace, scratch_parent=tmp_path) as runner:
        runner.start()
        assert runner._proc is not None
        runner._proc.kill()
        with pytest.raises(QemuDied, match="killed by signal 9"):
            runner.run_step(1, trace.steps[0])
        with pytest.raises(QemuDied):
            runner.run_step(2, trace.steps[1])
    assert list(tmp_path.iterdir()) == []


# --- without QEMU ------------------------------------------------------------------------


def test_missing_qemu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QemuNotFound, match="'/nonexistent/qemu-system-x86_64' not found"):
        QemuRunner(make_trace(), qemu="/nonexistent/qemu-system-x86_64")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(QemuNotFound, match="install QEMU 7.2"):
        find_qemu()
    with pytest.raises(QemuNotFound):
        run_trace(make_trace())


def test_bare_file_names_go_to_the_scratch_folder() -> None:
    s = "/scratch"
    assert place_files("drive-backup", {"target": "b.qcow2", "sync": "full"}, s) == {
        "target": "/scratch/b.qcow2", "sync": "full"}  # fmt: skip
    assert place_files("drive-mirror", {"target": "/abs/m.qcow2"}, s) == {"target": "/abs/m.qcow2"}
    add = {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "x.qcow2"}}
    assert place_files("blockdev-add", add, s)["file"]["filename"] == "/scratch/x.qcow2"
    txn = {"actions": [
        {"type": "blockdev-snapshot-sync", "data": {"device": "drive0", "snapshot-file": "o.qcow2"}},
        {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "target"}},
    ]}  # fmt: skip
    placed = place_files("transaction", txn, s)["actions"]
    assert placed[0]["data"]["snapshot-file"] == "/scratch/o.qcow2"
    assert placed[1] == txn["actions"][1]
    assert place_files("block-dirty-bitmap-add", {"node": "d", "name": "target"}, s) == {
        "node": "d", "name": "target"}  # fmt: skip
    # protocol names are not files (QEMU's path_has_protocol); QEMU runs in the scratch folder
    for name in ('json:{"driver": "qcow2", "file": {"filename": "a.qcow2"}}', "null-co://"):
        create = {"options": {"driver": "qcow2", "file": "p", "backing-file": name}}
        assert place_files("blockdev-create", create, s) == create
    assert place_files("change-backing-file", {"backing-file": "d:/x"}, s) == {
        "backing-file": "d:/x"}  # fmt: skip
    assert place_files("change-backing-file", {"backing-file": "d/x:y"}, s) == {
        "backing-file": "/scratch/d/x:y"}  # fmt: skip


def test_known_crashers_are_refused() -> None:
    assert crash_reason("block-dirty-bitmap-merge", {"target": "b", "bitmaps": []})
    assert crash_reason("block-dirty-bitmap-merge", {"target": "b", "bitmaps": ["a"]}) is None
    merge = {
        "type": "block-dirty-bitmap-merge",
        "data": {"node": "d", "target": "b", "bitmaps": []},
    }
    assert crash_reason("transaction", {"actions": [merge]})
    snap = {"type": "blockdev-snapshot-sync", "data": {"device": "drive0", "snapshot-file": "a"}}
    assert crash_reason("transaction", {"actions": [snap, snap]})
    assert crash_reason("transaction", {"actions": [snap]}) is None
    trace = make_trace({"execute": "quit"}, {"advance": 1}, {"nonsense": 1})
    assert "runner reads the final state" in (refusal(trace.steps[0]) or "")
    assert refusal(trace.steps[1]) is None
    assert (refusal(trace.steps[2]) or "").startswith("line 4:")


def test_normal_forms() -> None:
    assert names_equal("#block123", "#auto") and names_equal("#block1", "#block2")
    assert not names_equal("#auto", "fmt0")
    raw = {"desc": "Node '#block042' is busy", "file": "/tmp/s/ov0.qcow2", "n": 3}
    assert scrub(raw, ["/tmp/s"]) == {"desc": "Node '#auto' is busy", "file": "ov0.qcow2", "n": 3}
    assert matches({"a": ["#auto", 1]}, {"a": ["#block7", 1]})
    assert first_difference({"a": [1, 2]}, {"a": [1]}) == ".a: expected 2 item(s), got 1"
    assert first_difference({"a": True}, {"a": 1}) == ".a: expected True, got 1"
    state = {"events": [], "jobs": [], "nodes": [{"dirty-bitmaps": [], "node-name": "#block9"}]}
    assert list(normalize_final(state)) == ["nodes", "jobs", "events"]
    assert list(normalize_final(state)["nodes"][0]) == ["node-name", "dirty-bitmaps"]
    assert normalize_final(state)["nodes"][0]["node-name"] == "#auto"
