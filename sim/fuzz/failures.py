"""What a fuzz failure is: the trace that shows it, and what tells two apart.

`FuzzFailure` carries the failing trace (header + steps) and the violation.
`failure_key` is the identity of a failure across examples and campaigns: the
invariant plus the shape of its message; Hypothesis gets one exception class per
key (`failure_type`) so that it shrinks each distinct failure on its own.
"""

from __future__ import annotations

import re
import traceback
from typing import Any

from sim.trace import dumps

INTERNAL_ERROR = "internal-error"


class FuzzFailure(AssertionError):
    """An example broke an invariant (or the simulator): the trace that shows it.

    `kind` is the invariant's name or "internal-error"; `header` and `steps`
    are the trace (dicts as on the wire); `violations` the checker records
    of the failing step; `message` one line for humans."""

    kind: str = ""

    def __init__(
        self,
        kind: str,
        message: str,
        header: dict[str, Any],
        steps: list[dict[str, Any]],
        violations: list[dict[str, Any]],
    ) -> None:
        super().__init__(f"[{kind}] step {len(steps)}: {message}")
        self.kind = kind
        self.message = message
        self.header = header
        self.steps = steps
        self.violations = violations

    def trace_lines(self) -> list[str]:
        """The failing trace as JSON Lines (header first, no expectations)."""
        return [dumps(self.header)] + [dumps(s) for s in self.steps]


_FAILURE_TYPES: dict[str, type[FuzzFailure]] = {}
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+")


def message_shape(message: str) -> str:
    """A message with names and numbers blanked: `Dirty bitmap '*' not found`."""
    return _NUMBER.sub("N", _QUOTED.sub("'*'", message))[:160]


def failure_key(kind: str, message: str) -> str:
    """What tells two failures apart: the invariant, and the shape of the first two
    clauses of its message (names, numbers and QMP command names blanked), so that
    `device '*' lost guest data in blockdev-add: N bytes differ...` and `... in
    blockdev-del: ...` are one failure but a bitmap now on a snapshot overlay and
    one now on a job's filter are two."""
    from sim.qmp.dispatch import COMMANDS

    shape = ": ".join(message_shape(message).split(": ")[:2])
    words = [
        w.replace(w.rstrip(",;:."), "*") if w.rstrip(",;:.") in COMMANDS else w
        for w in shape.split(" ")
    ]
    return f"{kind}: {' '.join(words)}"


def failure_type(kind: str, message: str) -> type[FuzzFailure]:
    """One exception class per failure key, so that Hypothesis tracks and shrinks each
    distinct failure on its own (it tells bugs apart by exception type)."""
    key = failure_key(kind, message)
    cls = _FAILURE_TYPES.get(key)
    if cls is None:
        tag = re.sub(r"\W+", "_", kind).strip("_")
        cls = type(f"Failure_{tag}_{len(_FAILURE_TYPES)}", (FuzzFailure,), {"kind": kind})
        _FAILURE_TYPES[key] = cls
    return cls


def describe_exception(exc: BaseException) -> str:
    """`Type: message at file.py:line` (where it was raised), without keeping the traceback."""
    tb = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {tb[0].filename.rsplit('/', 1)[-1]}:{tb[0].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"
