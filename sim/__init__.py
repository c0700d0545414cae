"""blocksim: a deterministic simulator and fuzzer for QEMU 7.2's block layer.

The public API, most important first: replay a trace (`replay`, `load_trace`),
drive a simulated QEMU directly (`Machine`, `Monitor`), check invariants
(`make_checkers`, `Violation`), and the failure types (`QMPError`,
`TraceError`, `SimulatorBug`).
"""

from sim.check import Violation, make_checkers
from sim.engine.machine import Machine
from sim.errors import QMPError, SimulatorBug, TraceError
from sim.qmp.dispatch import Monitor
from sim.replay import ReplayResult, replay
from sim.trace import POLICIES, load_trace, parse_lines

__all__ = [
    "replay",
    "load_trace",
    "parse_lines",
    "ReplayResult",
    "Machine",
    "Monitor",
    "make_checkers",
    "Violation",
    "POLICIES",
    "QMPError",
    "TraceError",
    "SimulatorBug",
]
