"""The timing model: how long I/O takes on a simulated device.

Theory of operation.  Every image file lives on a `Device`: a service time
per request (`latency_us` + bytes / `bandwidth_mbps`, stretched or shrunk by
up to `jitter` of itself, drawn from the machine's one seeded RNG) and a
`queue_depth`: at most that many requests are in service at once, the rest
wait in FIFO order (a `simpy.Resource`).  The requests in service overlap
their latency but share the bandwidth: their transfers (bytes /
`bandwidth_mbps`) go one after the other, so a backup's 64 concurrent 1 MiB
block-copy tasks move at most `bandwidth_mbps` together.  Guest I/O and job
I/O ask the same Device, so a backup slows the guest down and vice versa.

Placement.  Each header drive's image is on its own device, with the
drive's `"timing"` overrides.  Images the trace creates later (backup and
mirror targets, snapshot overlays, blockdev-add files) share one `scratch`
device with the default timing: the usual setup of a backup going to other
storage than the disk it reads.

Defaults describe a modest datacentre SSD.  Jitter is off by default: with
equal work, concurrent jobs then finish in creation order, as they do on a
real QEMU, so traces compared with QEMU keep QEMU's event order; turn it on
per drive (`"timing": {"jitter": 0.1}`) for latency studies.

=================  ========  =========================================
key                default   meaning
=================  ========  =========================================
``latency_us``     100       fixed cost of one request, microseconds
``bandwidth_mbps`` 500       transfer rate, MiB/s
``jitter``         0         each request's time is scaled by 1 +/- U(0, jitter)
``queue_depth``    32        requests in service at once
=================  ========  =========================================
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass
from heapq import heapreplace
from typing import Any

import simpy

DEFAULTS: dict[str, float] = {
    "latency_us": 100.0,
    "bandwidth_mbps": 500.0,
    "jitter": 0.0,
    "queue_depth": 32,
}
NS_PER_S = 1_000_000_000
SCRATCH_DEVICE = "scratch"
MAX_QUEUE_DEPTH = 65536


@dataclass(frozen=True, slots=True)
class DeviceTiming:
    """Latency, bandwidth, jitter and queue depth of one device."""

    latency_ns: int
    bytes_per_s: float
    jitter: float
    queue_depth: int

    @classmethod
    def from_header(cls, overrides: dict[str, Any] | None) -> DeviceTiming:
        """DEFAULTS with a header drive's `timing` object applied.

        Raises ValueError naming the key and the accepted values."""
        cfg = dict(DEFAULTS)
        for key, value in (overrides or {}).items():
            if key not in DEFAULTS:
                raise ValueError(f"unknown timing key {key!r}; known: {sorted(DEFAULTS)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"timing {key} must be a non-negative number, got {value!r}")
            cfg[key] = float(value)
        if cfg["jitter"] > 1:
            raise ValueError(f"timing jitter must be between 0 and 1, got {cfg['jitter']!r}")
        if cfg["bandwidth_mbps"] <= 0:
            raise ValueError("timing bandwidth_mbps must be positive")
        depth = cfg["queue_depth"]
        if depth != int(depth) or not 1 <= depth <= MAX_QUEUE_DEPTH:
            raise ValueError(
                f"timing queue_depth must be an integer from 1 to {MAX_QUEUE_DEPTH}, got {depth!r}"
            )
        return cls(
            int(cfg["latency_us"] * 1000),
            cfg["bandwidth_mbps"] * (1 << 20),
            cfg["jitter"],
            int(depth),
        )

    def io_ns(self, length: int, rng: random.Random) -> int:
        """Service time of one request of `length` bytes (one RNG draw if jittered)."""
        base = self.latency_ns + length * NS_PER_S / self.bytes_per_s
        if self.jitter:
            base *= 1.0 + self.jitter * (2.0 * rng.random() - 1.0)
        return max(int(base), 1)


# A job chunk that block status finds zero or unallocated: block-copy writes zeroes
# to the target (a metadata update, no data read or written).  QEMU 7.2 on the
# development machine backs up a 64 GiB disk of holes in 0.5-0.7 s: about 10 us a
# 1 MiB chunk.
HOLE_CHUNK_NS = 10_000


def rate_limit_ns(length: int, speed: int) -> int:
    """The least time `length` bytes may take at `speed` bytes/s (0 = unlimited)."""
    return int(length * NS_PER_S / speed) if speed > 0 else 0


class Device:
    """One storage device: its timing, its request queue and its transfer link.

    Without jitter a request's times follow from the requests submitted before it
    (`served`, `held`): the queue grants slots first come first served and a slot is
    held until the request's transfer ends, so slots are granted in submission order
    and requests reach the link in that order too.  Each request is then one simpy
    timeout, due when the `queue` / `link` resources' run would end it.  With jitter
    (a draw from the machine's RNG when the slot is granted) the resources run it."""

    __slots__ = ("name", "timing", "queue", "link", "analytic", "_free", "_link_free")

    def __init__(self, env: simpy.Environment, name: str, timing: DeviceTiming) -> None:
        self.name = name
        self.timing = timing
        self.queue = simpy.Resource(env, capacity=timing.queue_depth)
        self.link = simpy.Resource(env, capacity=1)
        # the analytic run: when each queue slot frees up (a heap), when the link does
        self.analytic = not timing.jitter
        self._free: list[int] = [0] * timing.queue_depth
        self._link_free = 0

    def full(self, now: float) -> bool:
        """Whether every queue slot is taken at `now` (a new request would wait)."""
        if self.analytic:
            return self._free[0] > now
        return self.queue.count >= self.queue.capacity

    def served(self, now: int, length: int) -> int:
        """When a job request of `length` bytes submitted at `now` ends (no jitter): it
        gets the first queue slot to free up, overlaps its latency with the others',
        then waits for the link; the slot is free again when its transfer ends."""
        ns = self.timing.io_ns(length, _NO_RNG)
        transfer = min(ns, int(length * NS_PER_S / self.timing.bytes_per_s))
        free = self._free[0]
        start = max(now if now > free else free, self._link_free - ns + transfer)
        end = start + ns
        self._link_free = end
        heapreplace(self._free, end)
        return end

    def held(self, now: int, ns: int) -> int:
        """When a guest request that holds a queue slot for `ns` (no link), submitted
        at `now`, ends (no jitter)."""
        free = self._free[0]
        end = (now if now > free else free) + ns
        heapreplace(self._free, end)
        return end

    def io(
        self, env: simpy.Environment, length: int, rng: random.Random
    ) -> Generator[simpy.Event, Any, None]:
        """A process step: wait for a queue slot, then be served (`yield from`): the
        requests in service overlap their latency, and share the bandwidth (their
        transfers go one after the other)."""
        if self.analytic:
            now = int(env.now)
            yield env.timeout(self.served(now, length) - now)
            return
        with self.queue.request() as slot:
            yield slot
            ns = self.timing.io_ns(length, rng)
            transfer = min(ns, int(length * NS_PER_S / self.timing.bytes_per_s))
            yield env.timeout(ns - transfer)
            with self.link.request() as turn:
                yield turn
                yield env.timeout(transfer)


_NO_RNG = random.Random(0)  # io_ns draws nothing without jitter
