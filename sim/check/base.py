"""What every invariant checker is: a read-only observer of a Machine.

A checker is attached to a Machine before the first step and sees it through
`sim.engine.view.MachineView` (state to read, events, clock, hooks); it may register
observers (`machine.command_observers` for every QMP request/response,
`machine.state.write_observers` for every guest write) and must never change
the machine.  After each step `after_step(index)` returns the violations found
in that step; `at_end()` returns those only visible at the end of the run.

The checkers of this package (see sim/check/__init__.py) keep every violation
they report in `found`; their `at_end()` returns the whole verdict of the run
(the per-step ones included), so the final state's `violations` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.engine.view import MachineView


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: which, at which step, and what was seen."""

    invariant: str
    step: int
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "invariant": self.invariant,
            "step": self.step,
            "message": self.message,
        }
        if self.details:
            out["details"] = self.details
        return out


class Checker:
    """Base class of the invariant checkers (see sim/check/__init__.py for the list)."""

    name = "checker"
    # the StepLog holder shared with the checkers built together (sim.check.observe)
    shared: Any = None

    def attach(self, machine: MachineView) -> None:
        self.machine = machine
        self.found: list[Violation] = []

    def after_step(self, index: int) -> list[Violation]:
        return []

    def at_end(self) -> list[Violation]:
        return []

    def report(self, step: int, message: str, **details: Any) -> Violation:
        """Record a violation of this checker's invariant (details must be JSON values)."""
        violation = Violation(self.name, step, message, details)
        self.found.append(violation)
        return violation

    def violations(self) -> list[Violation]:
        """Every violation reported so far, in the order found."""
        return list(getattr(self, "found", []))
