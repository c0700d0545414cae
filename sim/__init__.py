"""blocksim: a deterministic simulator and fuzzer for QEMU 7.2's block layer.

The public API, most important first: replay a trace (`replay`, `load_trace`),
drive a simulated QEMU directly (`Machine`, `Monitor`), check invariants
(`make_checkers`, `Violation`), and the failure types (`QMPError`,
`TraceError`, `SimulatorBug`).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.check import Violation, make_checkers
    from sim.engine.machine import Machine
    from sim.errors import QMPError, SimulatorBug, TraceError
    from sim.qmp.dispatch import Monitor
    from sim.replay import ReplayResult, replay
    from sim.trace import POLICIES, load_trace, parse_lines

# Each public name and the module it lives in: imported on first use, so a command
# loads only what it needs (the CLI starts without numpy, simpy or hypothesis).
_HOMES = {
    "replay": "sim.replay",
    "load_trace": "sim.trace",
    "parse_lines": "sim.trace",
    "ReplayResult": "sim.replay",
    "Machine": "sim.engine.machine",
    "Monitor": "sim.qmp.dispatch",
    "make_checkers": "sim.check",
    "Violation": "sim.check",
    "POLICIES": "sim.trace",
    "QMPError": "sim.errors",
    "TraceError": "sim.errors",
    "SimulatorBug": "sim.errors",
}


def lazy_exports(
    package: str, namespace: dict[str, Any], homes: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` for names imported on first use: each
    name of `homes` from the module given there, then kept in `namespace` (the
    package's globals)."""

    def getattr_(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(home), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *homes})

    return getattr_, dir_


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES)


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
