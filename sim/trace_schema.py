"""The trace's own argument table: every header key and step field, its type and range.

Theory of operation.  As `sim.qmp.schema` checks QMP arguments against
QEMU's QAPI types before a handler runs, this table checks what the trace
format itself defines (the header, its drives' `timing`, `wait`, `advance`)
before the machine sees it (`workload` and `fault` objects are checked by
their implementations in sim.engine, which need the machine to resolve names).  Every value is checked for its JSON type first
and its range second, so no value reaches arithmetic it cannot survive (a
string multiplied by 1e9, a float too large for an integer, a timeout of
null).  Checks that need the machine (does the device exist, is the size
within it) stay with the step's implementation.  A failed check raises
`TraceError` naming the field by its path, the accepted values and the value
given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sim.errors import TraceError

MAX_SECONDS = 1e9  # advance, wait timeout: about 31 years of simulated time
MAX_DRIVE_SIZE = 1 << 50  # 1 PiB
MAX_TIMING_US = 1e9  # latency: at most 1000 s per request
MAX_BANDWIDTH_MBPS = 1e9
MAX_QUEUE_DEPTH = 65536
MAX_SEED = (1 << 64) - 1


def show(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters (a hostile value may be huge)."""
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit])
    return text if len(text) <= limit + 2 else text[:limit] + "...'"


@dataclass(frozen=True, slots=True)
class Number:
    """A JSON number (not a boolean) in [lo, hi]; `lo_open` excludes lo; `integer`
    asks for a whole number."""

    lo: float
    hi: float
    lo_open: bool = False
    integer: bool = False

    def phrase(self) -> str:
        if self.integer:
            return f"an integer from {_num(self.lo)} to {_num(self.hi)}"
        left = "(" if self.lo_open else "["
        return f"a number in {left}{_num(self.lo)}, {_num(self.hi)}]"

    def ok(self, value: object) -> bool:
        if isinstance(value, bool):
            return False
        if self.integer:
            return isinstance(value, int) and self.lo <= value <= self.hi
        if not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo_open and value <= self.lo:
            return False
        return self.lo <= value <= self.hi


def _num(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e16):
        n = int(x)
        for exp in (63, 64, 50, 31):
            if n == 1 << exp:
                return f"2^{exp}"
            if n == (1 << exp) - 1:
                return f"2^{exp}-1"
        return str(n)
    return f"{x:g}"


def number(value: object, spec: Number, where: str, line: int) -> float:
    """`value` checked against `spec`, as a float (or int for integer specs)."""
    if not spec.ok(value):
        raise TraceError(f"{where} must be {spec.phrase()}, got {show(value)}", line)
    assert isinstance(value, int | float)
    return value


def string(value: object, where: str, line: int, choices: tuple[str, ...] = ()) -> str:
    """A non-empty string (one of `choices` when given)."""
    if choices and value not in choices:
        raise TraceError(f"{where} must be one of {list(choices)}, got {show(value)}", line)
    if not isinstance(value, str) or not value:
        raise TraceError(f"{where} must be a non-empty string, got {show(value)}", line)
    return value


def keys(obj: dict[str, Any], allowed: tuple[str, ...], where: str, line: int) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise TraceError(f"{where}: unknown key(s) {extra}; it takes {list(allowed)}", line)


# -- the table ------------------------------------------------------------------------------

ADVANCE = Number(0, MAX_SECONDS)
WAIT_TIMEOUT = Number(0, MAX_SECONDS)
WAIT_KEYS = ("event", "data", "timeout")

TIMING = {
    "latency_us": Number(0, MAX_TIMING_US),
    "bandwidth_mbps": Number(0, MAX_BANDWIDTH_MBPS, lo_open=True),
    "jitter": Number(0, 1),
    "queue_depth": Number(1, MAX_QUEUE_DEPTH, integer=True),
}


def check_timing(raw: object, where: str, line: int) -> dict[str, float]:
    """A header drive's `timing` object: known keys, each a number in its range."""
    if not isinstance(raw, dict):
        raise TraceError(f"{where} must be an object, got {show(raw)}", line)
    out: dict[str, float] = {}
    for key, value in raw.items():
        spec = TIMING.get(key)
        if spec is None:
            raise TraceError(
                f"{where}: unknown timing key {show(key)}; known: {sorted(TIMING)}", line
            )
        if key == "queue_depth" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not spec.ok(value):
            what = "timing queue_depth must be an integer" if key == "queue_depth" else ""
            raise TraceError(
                f"{where}.{key} must be {spec.phrase()}, got {show(value)}"
                + (f" ({what})" if what else ""),
                line,
            )
        out[key] = value
    return out


def check_wait(w: object, line: int) -> None:
    if not isinstance(w, dict) or not isinstance(w.get("event"), str) or not w["event"]:
        raise TraceError(
            f'wait must be {{"event": NAME, "data": {{...}}, "timeout": S}}, got {show(w)}', line
        )
    if set(w) - set(WAIT_KEYS) or not isinstance(w.get("data", {}), dict):
        raise TraceError('wait takes only "event", "data" (an object) and "timeout"', line)
    if "timeout" in w and not WAIT_TIMEOUT.ok(w["timeout"]):
        raise TraceError(
            f"wait timeout takes simulated seconds, {WAIT_TIMEOUT.phrase()}, "
            f"got {show(w['timeout'])}",
            line,
        )


def check_advance(a: object, line: int) -> None:
    if not ADVANCE.ok(a):
        raise TraceError(f"advance takes seconds, a number from 0 to 1e9, got {show(a)}", line)
