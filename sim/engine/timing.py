"""The timing model: how long I/O takes on a simulated device.

Per drive: `latency_us` per request, `bandwidth_mbps` (MiB/s), `jitter`
(fraction of the duration, drawn from the machine's seeded RNG) and
`queue_depth`.  Defaults describe a modest SSD; a trace header overrides
them per drive with `"timing": {...}`.  A job copy costs a read and a write;
a job's `speed` (bytes/s, 0 = unlimited) stretches it to the rate limit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

DEFAULTS: dict[str, float] = {"latency_us": 100.0, "bandwidth_mbps": 500.0, "jitter": 0.1,
                              "queue_depth": 32}
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class DeviceTiming:
    """Latency, bandwidth, jitter and queue depth of one device."""

    latency_ns: int
    bytes_per_s: float
    jitter: float
    queue_depth: int

    @classmethod
    def from_header(cls, overrides: dict[str, Any] | None) -> DeviceTiming:
        cfg = dict(DEFAULTS)
        for key, value in (overrides or {}).items():
            if key not in DEFAULTS:
                raise ValueError(f"unknown timing key {key!r}; known: {sorted(DEFAULTS)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"timing {key} must be a non-negative number, got {value!r}")
            cfg[key] = float(value)
        return cls(int(cfg["latency_us"] * 1000), max(cfg["bandwidth_mbps"], 1e-3) * (1 << 20),
                   cfg["jitter"], max(int(cfg["queue_depth"]), 1))

    def io_ns(self, length: int, rng: random.Random) -> int:
        """One request of `length` bytes."""
        base = self.latency_ns + length * NS_PER_S / self.bytes_per_s
        if self.jitter:
            base *= 1.0 + self.jitter * (2.0 * rng.random() - 1.0)
        return max(int(base), 1)

    def copy_ns(self, length: int, speed: int, rng: random.Random) -> int:
        """A job chunk: read it, write it, and obey the job's rate limit."""
        ns = self.io_ns(length, rng) + self.io_ns(length, rng)
        if speed > 0:
            ns = max(ns, int(length * NS_PER_S / speed))
        return ns
