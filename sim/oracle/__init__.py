"""The differential oracle: real QEMU 7.2 as the ground truth.

Its public face: `diff_trace` runs a trace on the binary and on the simulator
and returns a `DiffReport` (the differences, earliest first); `record_trace`
writes a trace back with QEMU's own answers (`recorded_lines` the same from
a run already made); `step_label` names a step as diffs do; `qemu_answer` is what QEMU
answered where a difference shows (two runs of a trace compared); `run_trace` runs one on the
binary alone; `find_qemu` locates the binary.  `OracleError` (and its
`QemuNotFound`, `QemuDied`) is what goes wrong on the QEMU side.
"""

from sim.oracle.diff import (
    Difference,
    DiffReport,
    check_runnable,
    diff_trace,
    qemu_answer,
    step_label,
)
from sim.oracle.qemu_runner import OracleError, QemuDied, QemuNotFound, find_qemu, run_trace
from sim.oracle.record import record_trace, recorded_lines

__all__ = [
    "diff_trace",
    "DiffReport",
    "Difference",
    "record_trace",
    "recorded_lines",
    "step_label",
    "qemu_answer",
    "run_trace",
    "check_runnable",
    "find_qemu",
    "OracleError",
    "QemuNotFound",
    "QemuDied",
]
