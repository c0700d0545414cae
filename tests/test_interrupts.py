"""Ctrl-C and SIGKILL at any point: exit 130, no traceback, nothing half-written or left behind.

Each command runs as a real process in a session of its own; "Ctrl-C" is a
SIGINT to its whole process group, as a terminal sends it (QEMU included).  The
interrupt comes once the command is at work (its first output line, the run
folder or socket it makes), not after a fixed time: a busy machine neither
interrupts a command still loading nor waits longer than the command needs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ROOT

NOISE = ("Traceback", "Task exception", "never retrieved", "Exception ignored", "Aborted!")


def start(args: list[str], tmp: Path) -> subprocess.Popen[str]:
    scratch = tmp / "tmpdir"
    scratch.mkdir(exist_ok=True)
    # unbuffered: a line is on the pipe as soon as it is printed (see `first_line`)
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "sim", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    """Until `ready()` (polled), while the command runs; at most two minutes."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"the command ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within 120 s"
        time.sleep(0.05)


def first_line(proc: subprocess.Popen[str], starts: str = "") -> list[str]:
    """The command's output up to its first line starting with `starts`."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(starts):
            return seen
    raise AssertionError(f"the command ended before a line starting {starts!r}: {seen[-5:]}")


def ctrl_c(proc: subprocess.Popen[str], after_s: float) -> tuple[str, str]:
    """SIGINT to the command's process group `after_s` from now (at work by then)."""
    time.sleep(after_s)
    assert proc.poll() is None, "the command ended before the interrupt"
    os.killpg(proc.pid, signal.SIGINT)
    return proc.communicate(timeout=90)


def assert_clean_interrupt(proc: subprocess.Popen[str], out: str, err: str, tmp: Path) -> None:
    assert proc.returncode == 130, (out[-500:], err[-2000:])
    assert err.rstrip().endswith("blocksim: interrupted"), err[-2000:]
    for word in NOISE:
        assert word not in out + err, err[-2000:]
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    assert not left.stdout.split(), f"processes left in the session: {left.stdout}"
    assert not list((tmp / "tmpdir").iterdir()), "temporary files left behind"


def test_ctrl_c_during_replay(tmp_path: Path) -> None:
    proc = start(["replay", "--invariants", "all", "scenarios"], tmp_path)
    seen = first_line(proc)  # one trace replayed: the rest are under way
    out, err = ctrl_c(proc, 0.5)
    assert_clean_interrupt(proc, "".join(seen) + out, err, tmp_path)


def test_ctrl_c_during_fuzz_keeps_a_readable_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start(["fuzz", "--examples", "100000", "--out", str(run), "--no-progress"], tmp_path)
    wait_until(proc, (run / "failures").is_dir, "the campaign started")
    out, err = ctrl_c(proc, 1.0)
    assert_clean_interrupt(proc, out, err, tmp_path)
    json.loads((run / "coverage.json").read_text())
    assert not [p for p in run.rglob("*.tmp")], "a temporary file left in the run folder"


def test_ctrl_c_during_the_demos_fuzz_phase_stops_the_demo(tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    shutil.copy(ROOT / "scenarios/thread/snapshot-breaks-device-bitmap.jsonl", scenarios)
    args = ["demo", "-o", str(tmp_path / "demo"), "--scenarios", str(scenarios)]
    proc = start([*args, "--fuzz-seconds", "60"], tmp_path)
    seen = first_line(proc, "timeline")  # the timelines come first, then the fuzz phase
    wait_until(proc, (tmp_path / "demo" / "run" / "failures").is_dir, "the fuzz phase")
    t0 = time.monotonic()
    out, err = ctrl_c(proc, 1.0)
    assert time.monotonic() - t0 < 40, "the demo went on after Ctrl-C"
    assert_clean_interrupt(proc, "".join(seen) + out, err, tmp_path)
    assert "matrix" not in out


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU 7.2")
def test_ctrl_c_during_diff_leaves_no_qemu(tmp_path: Path) -> None:
    proc = start(["diff", "scenarios/qemu-7.2"], tmp_path)
    seen = first_line(proc)  # one trace diffed: the next one's QEMU is under way
    out, err = ctrl_c(proc, 0.2)
    assert_clean_interrupt(proc, "".join(seen) + out, err, tmp_path)
    scratch = str(tmp_path / "tmpdir")
    qemus = subprocess.run(["pgrep", "-f", scratch], capture_output=True, text=True)
    assert not qemus.stdout.split(), "a QEMU outlived blocksim diff"


def test_ctrl_c_stops_serve_cleanly(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    proc = start(
        ["serve", "--socket", str(sock), "--drive", "id=drive0,node-name=fmt0,size=64M"], tmp_path
    )
    wait_until(proc, sock.exists, "the QMP socket")
    out, err = ctrl_c(proc, 0.5)
    assert_clean_interrupt(proc, out, err, tmp_path)
    assert not sock.exists()


def test_sigkill_mid_campaign_leaves_a_run_folder_report_and_corpus_replay_read(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    proc = start(["fuzz", "--examples", "100000", "--out", str(run), "--no-progress"], tmp_path)
    # killed once the campaign has written its first coverage.json (5 s in), mid-example
    wait_until(proc, (run / "coverage.json").is_file, "the first coverage.json")
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    report = start(["report", str(run), "-o", str(tmp_path / "report")], tmp_path)
    out, err = report.communicate(timeout=300)
    assert report.returncode == 0, err
    assert (tmp_path / "report" / "index.html").exists()
    if list(run.rglob("*.jsonl")):
        corpus = start(["fuzz", "--replay-corpus", str(run)], tmp_path)
        out, err = corpus.communicate(timeout=300)
        assert corpus.returncode in (0, 1), out + err
        assert "ERROR" not in out


# -- exit codes and words ------------------------------------------------------------------


def blocksim(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["fuzz", "--time-budget", "nan"], "not a finite number of seconds"),
        (["demo", "--fuzz-seconds", "-1"], "-1.0 is not in the range"),
        (["demo", "--fuzz-seconds", "nan"], "not a finite number of seconds"),
        (["report", "/nonexistent-run-folder"], "does not exist"),
        (["fuzz", "--out", "/dev/null", "--examples", "2", "--no-progress"], "Not a directory"),
        (
            ["replay", "--record-timeline", "/dev/null/x", "scenarios/thread"],
            "Not a directory",
        ),
        (["replay", "/nonexistent.jsonl"], "no such trace file"),
        (["fuzz", "--replay-corpus", "/nonexistent"], "no corpus folder"),
    ],
)
def test_odd_values_and_unusable_paths_exit_2_with_one_line(args: list[str], fragment: str) -> None:
    proc = blocksim(*args)
    assert proc.returncode == 2, (proc.stdout[-500:], proc.stderr[-500:])
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_replay_corpus_of_an_empty_folder_exits_2(tmp_path: Path) -> None:
    proc = blocksim("fuzz", "--replay-corpus", str(tmp_path))
    assert proc.returncode == 2 and "no .jsonl traces under" in proc.stderr


def test_a_malformed_line_with_a_mismatch_is_exit_2(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    lines = [
        json.dumps({"trace": 1, "drives": []}),
        "{not json",
        json.dumps({"execute": "query-jobs", "expect": {"return": ["something"]}}),
    ]
    trace.write_text("\n".join(lines) + "\n")
    proc = blocksim("replay", str(trace))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout and "1 bad step" in proc.stdout


def test_one_step_is_singular(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"trace": 1, "drives": []}) + '\n{"execute": "query-jobs"}\n')
    proc = blocksim("replay", str(trace))
    assert proc.returncode == 0
    assert ": 1 step, 0 expectations" in proc.stdout and "1 steps" not in proc.stdout
