"""The four kinds of failure, and their one shape each.

::

    Exception
     +-- QMPError        a QMP *response*: QEMU refused the command.  Raised
     |                   anywhere below the dispatcher, turned into
     |                   {"error": {"class", "desc"}} only by sim.qmp.dispatch.
     |                   `desc` is QEMU 7.2's exact text.
     +-- TraceError      the trace itself is wrong (bad JSON, unknown step,
     |                   a wait that can never be satisfied); carries the
     |                   1-based line number of the offending line.
     +-- SimulatorBug    an internal error of blocksim (never QEMU's fault);
                         the fuzzer reports it as failure kind `internal-error`.

Invariant breaks are not exceptions: they are `sim.check.Violation` records.
"""

from __future__ import annotations


class QMPError(Exception):
    """A QMP error response, exactly as QEMU 7.2 would send it."""

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.cls = cls

    def to_response(self) -> dict[str, object]:
        return {"error": {"class": self.cls, "desc": self.desc}}


class TraceError(Exception):
    """A malformed or unsatisfiable trace line; `line` is 1-based (0 = whole file)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class SimulatorBug(Exception):
    """An internal error of the simulator (a blocksim bug, not a QEMU behaviour)."""
