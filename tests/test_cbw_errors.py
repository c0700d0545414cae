"""Copy-before-write filters by blockdev-add whose copies fail or time out, as
qemu-iotests tests/copy-before-write drives them: the recorded scenarios
(scenarios/iotests/iotest-copy-before-write-*.jsonl, QEMU 7.2) carry QMP's
answers; what qemu-io prints is not recorded, so it is checked here against the
iotest's reference output (its timing lines filtered out as the iotest does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.replay import replay
from sim.trace import load_trace

ROOT = Path(__file__).resolve().parent.parent / "scenarios" / "iotests"
WROTE_1M = "wrote 1048576/1048576 bytes at offset 0"
READ_1M = "read 1048576/1048576 bytes at offset 0"
EIO, EACCES = "write failed: Input/output error", "read failed: Permission denied"

# each case: the first line qemu-io prints for the iotest's commands, in order
CASES = {
    "error-break-snapshot": [WROTE_1M, EACCES],
    "error-break-guest-write": [EIO, READ_1M],
    "timeout-break-guest-write": [
        "wrote 524288/524288 bytes at offset 0",
        "write failed: Connection timed out",
        READ_1M,
    ],
    "timeout-break-snapshot": [
        "wrote 524288/524288 bytes at offset 0",
        "wrote 524288/524288 bytes at offset 524288",
        EACCES,
    ],
}


def _outputs(case: str) -> tuple[list[str], list[float]]:
    result = replay(load_trace(ROOT / f"iotest-copy-before-write-{case}.jsonl"))
    assert result.ok, result.mismatches
    lines, times = [], []
    for step in result.steps:
        line = step.command.get("arguments", {}).get("command-line", "")
        if line.startswith(("qemu-io cbw", "qemu-io access")) and step.output is not None:
            lines.append(step.output.splitlines()[0])
            times.append(step.time_s)
    return lines, times


@pytest.mark.parametrize("case", sorted(CASES))
def test_qemu_io_prints_what_the_iotest_expects(case: str) -> None:
    lines, _ = _outputs(case)
    assert lines[: len(CASES[case])] == CASES[case]


def test_a_timed_out_copy_keeps_the_write_waiting_for_cbw_timeout() -> None:
    # the second write's copy (512 KiB behind a 300 KiB/s group that already holds
    # 512 KiB) would pass after about 1.6 s; cbw-timeout is 1 s
    _, times = _outputs("timeout-break-guest-write")
    assert times[0] < 0.01 and times[1] - times[0] == pytest.approx(1.0)
