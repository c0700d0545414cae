"""Guest workloads: the sim-only `workload` step, a guest issuing I/O over time.

Theory of operation.  A workload is one simpy process that issues requests
at the times its `pattern` says, each request being a process of its own so
requests overlap and queue on the device (sim/engine/timing.py).  A write is
applied to the model when it is issued, through `sim.model.io.write`
like a qemu-io write (bitmaps, copy-before-write, data stamps, write
observers), and then takes time: first the copy-before-write copies it
caused (a read on the backup source's device, a write on the target's, which
is how a running backup shows in guest latency), a mirror's target write in
write-blocking mode, then the write itself on the device holding the data.
A read only takes time.  Every request is logged in `Machine.io_log`.

Patterns (request times and offsets; every offset is a multiple of `size`):

- ``sequential``: evenly spaced, 1/rate apart; offsets 0, size, 2*size, ...
  wrapping at the end of the disk.
- ``uniform``: Poisson arrivals at `rate`; offsets uniform over the disk.
- ``zipf``: Poisson arrivals; offsets Zipf-distributed (exponent ZIPF_S) over
  the disk's blocks, the hot blocks scattered over the disk.
- ``burst``: BURST_OPS requests at the same instant every BURST_OPS/rate
  seconds, at consecutive offsets from a uniform random start.

Every random choice comes from the machine's one seeded RNG.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from math import gcd
from typing import TYPE_CHECKING, Any, NamedTuple

import simpy

from sim.engine import reqlist
from sim.engine.faults import cbw_runs, write_landed
from sim.engine.throttle import groups_on_path, throttled
from sim.engine.timing import NS_PER_S, Device
from sim.model import drain, io
from sim.model.io import write_path

if TYPE_CHECKING:
    from sim.engine.machine import Machine

PATTERNS = ("sequential", "uniform", "zipf", "burst")
WORKLOAD_KEYS = ("device", "pattern", "rate", "size", "duration", "read-ratio", "fill")
REQUIRED = ("device", "pattern", "rate", "size", "duration")
BURST_OPS = 16
ZIPF_S = 1.1
MAX_RATE = 10_000_000.0  # requests per second
MIN_RATE = 1e-6  # one request in about 11.6 days (keeps every gap a finite integer)
# requests are simulated one by one (tens of microseconds each): bounded so that
# no trace runs for minutes
MAX_OPS = 100_000  # rate * duration of one workload
MAX_MACHINE_OPS = 400_000  # all workloads of one machine together
MAX_DURATION_S = 1e6
MAX_REQUEST_BYTES = 2147483136  # BDRV_REQUEST_MAX_BYTES in QEMU 7.2

Proc = Generator[simpy.Event, Any, None]


class IoRecord(NamedTuple):
    """One guest request a workload issued: when, what, how long, under which jobs."""

    time_ns: int  # when it was issued
    op: str  # "read" | "write" | "read-failed" | "write-failed"
    latency_ns: int  # issue to completion, queueing and copy-before-write included
    jobs: tuple[str, ...]  # types of the jobs that existed then, oldest first


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A validated `workload` step."""

    device: str
    pattern: str
    rate: float  # requests per second
    size_bytes: int
    duration_ns: int
    read_ratio: float
    fill: int  # the pattern byte written data reads back as
    line: int = 0


@dataclass(slots=True)
class Workload:
    """A running (or finished) workload and its counters."""

    spec: WorkloadSpec
    start_ns: int
    reads: int = 0
    writes: int = 0
    failed: int = 0
    in_flight: int = 0
    finished: bool = False
    root: Any = None  # the node the last request entered at, and its device (a cache)
    device: Any = None


def start_workload(m: Machine, spec: WorkloadSpec) -> Workload:
    """Spawn the workload's process; it starts issuing at the current instant."""
    w = Workload(spec, m.now_ns)
    bb = m.state.graph.backends.get(spec.device)
    if bb is not None and spec.read_ratio < 1.0:
        bb.took_write = True  # the guest device writes: it holds the write permission
    m.env.process(workload_process(m, w))
    return w


# -- arrivals ------------------------------------------------------------------------------


def workload_process(m: Machine, w: Workload) -> Proc:
    """Issue requests until the duration is over (requests in flight then finish)."""
    spec, env, rng = w.spec, m.env, m.rng
    root_size = m.state.resolve_target(spec.device)[1]
    nblocks = max((root_size.size_bytes if root_size else spec.size_bytes) // spec.size_bytes, 1)
    end = w.start_ns + spec.duration_ns
    choose = _offsets(spec.pattern, nblocks, rng)
    size, ratio = spec.size_bytes, spec.read_ratio
    if spec.pattern in ("sequential", "burst"):
        batch = BURST_OPS if spec.pattern == "burst" else 1
        period_s = batch / spec.rate
        k = 0
        while True:
            when = w.start_ns + int(round(k * period_s * NS_PER_S))
            if when >= end:
                break
            if when > env.now:
                yield env.timeout(when - env.now)
            base = choose(k)
            offsets = [((base + i) % nblocks) * size for i in range(batch)]
            if batch == 1:
                _issue(m, w, offsets[0])
            else:
                _issue_burst(m, w, offsets)
            k += 1
    else:
        # the hot loop of the engine benchmark: _issue inlined
        process, expovariate, random, rate = env.process, rng.expovariate, rng.random, spec.rate
        k = 0
        while True:
            gap = int(expovariate(rate) * NS_PER_S)
            if env.now + gap >= end:
                break
            yield env.timeout(gap)
            is_read = ratio >= 1.0 or (ratio > 0.0 and random() < ratio)
            w.in_flight += 1
            process(guest_request(m, w, is_read, choose(k) * size))
            k += 1
    w.finished = True


def _offsets(pattern: str, nblocks: int, rng: Any) -> Any:
    """k -> block number for the pattern (burst: the burst's first block)."""
    if pattern == "sequential":
        return lambda k: k % nblocks
    if pattern in ("uniform", "burst"):
        random = rng.random
        return lambda k: int(random() * nblocks)
    sampler = ZipfSampler(nblocks, ZIPF_S)
    stride = _coprime_stride(nblocks)
    return lambda k: ((sampler.sample(rng) - 1) * stride) % nblocks


def _coprime_stride(n: int) -> int:
    """A multiplier that scatters ranks over n blocks without collisions."""
    stride = 2654435761 % n or 1
    while gcd(stride, n) != 1:
        stride += 1
    return stride


class ZipfSampler:
    """Zipf(n, s) in O(1) per draw: rejection-inversion (Hoermann and Derflinger,
    1996), the method of Apache Commons' RejectionInversionZipfSampler."""

    __slots__ = ("n", "s", "h_x1", "h_n", "c")

    def __init__(self, n: int, s: float) -> None:
        self.n, self.s = n, s
        self.h_x1 = self._h_integral(1.5) - 1.0
        self.h_n = self._h_integral(n + 0.5)
        self.c = 2.0 - self._h_integral_inverse(self._h_integral(2.5) - self._h(2.0))

    def sample(self, rng: Any) -> int:
        """A rank in 1..n; rank 1 is the most frequent."""
        while True:
            u = self.h_n + rng.random() * (self.h_x1 - self.h_n)
            x = self._h_integral_inverse(u)
            k = min(max(int(x + 0.5), 1), self.n)
            if k - x <= self.c or u >= self._h_integral(k + 0.5) - self._h(k):
                return k

    def _h(self, x: float) -> float:
        return math.exp(-self.s * math.log(x))

    def _h_integral(self, x: float) -> float:
        log_x = math.log(x)
        return _helper2((1.0 - self.s) * log_x) * log_x

    def _h_integral_inverse(self, x: float) -> float:
        t = max(x * (1.0 - self.s), -1.0)
        return math.exp(_helper1(t) * x)


def _helper1(x: float) -> float:
    return math.log1p(x) / x if abs(x) > 1e-8 else 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))


def _helper2(x: float) -> float:
    return (
        math.expm1(x) / x if abs(x) > 1e-8 else 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    )


# -- one request ---------------------------------------------------------------------------


def _issue(m: Machine, w: Workload, offset: int) -> None:
    ratio = w.spec.read_ratio
    is_read = ratio >= 1.0 or (ratio > 0.0 and m.rng.random() < ratio)
    w.in_flight += 1
    m.env.process(guest_request(m, w, is_read, offset))


def _issue_burst(m: Machine, w: Workload, offsets: list[int]) -> None:
    """Requests issued at one instant: their processes start one after the other with
    nothing in between, so the first one applies every write of the burst at once."""
    ratio = w.spec.read_ratio
    reads = [ratio >= 1.0 or (ratio > 0.0 and m.rng.random() < ratio) for _ in offsets]
    burst = _Burst([o for o, r in zip(offsets, reads, strict=True) if not r])
    for is_read, offset in zip(reads, offsets, strict=True):
        w.in_flight += 1
        m.env.process(guest_request(m, w, is_read, offset, None if is_read else burst))


class _Burst:
    """The writes of a burst and, once the first request of the burst ran, their
    outcome by offset (None: each request writes for itself)."""

    __slots__ = ("offsets", "done", "results")

    def __init__(self, offsets: list[int]) -> None:
        self.offsets = offsets
        self.done = False
        self.results: dict[int, bool] | None = None

    def apply(self, m: Machine, w: Workload, bb: Any, root: Any) -> None:
        """io.write_batch of the burst's writes, when each request would write: no
        fault armed (one could fail some), no filter to copy before the write."""
        self.done = True
        offsets = self.offsets
        if m.faults or root is None or root.read_only or root.is_filter:
            return
        if len(set(offsets)) != len(offsets):
            return
        state = m.state
        stamps = state.stamps.new_many(w.spec.fill, len(offsets))
        got = io.write_batch(state, bb, root, offsets, w.spec.size_bytes, stamps)
        self.results = {o: r.ok for o, r in zip(offsets, got, strict=True)}


def guest_request(
    m: Machine, w: Workload, is_read: bool, offset: int, burst: _Burst | None = None
) -> Proc:
    """One guest request: applied to the model now, then served by the devices (a
    write of a burst by the burst's first request)."""
    env, state = m.env, m.state
    size = w.spec.size_bytes
    start = env.now
    jobs = m.job_types() if state.jobs else ()
    bb, root = state.resolve_target(w.spec.device)
    while state.jobs and root is not None and (held := drained_hold(m, root)) is not None:
        yield held  # blk_wait_while_drained: until a job's drained section ends
        bb, root = state.resolve_target(w.spec.device)  # a pivot may have moved it
    ok = root is not None and (is_read or not root.read_only)
    copies: list[tuple[Device | None, Device, int, list[simpy.Event]]] = []
    waits: list[simpy.Event] = []
    if ok and root is not None:
        if (
            m.faults
            and m.guest_io_error(bb, root, "read" if is_read else "write", offset, size) is not None
        ):
            ok = False
            if not is_read and m.faults.landed:  # qcow2 pieces written all the same
                write_landed(m, state.new_stamp(w.spec.fill))
        elif not is_read:
            if burst is not None and not burst.done:
                burst.apply(m, w, bb, root)
            if burst is not None and burst.results is not None:
                ok = burst.results[offset]
            else:
                if root.is_filter:
                    waits = reqlist.write_waits(m, root, offset, size)
                    copies = write_copies(m, root, offset, size)
                stamp = state.new_stamp(w.spec.fill)
                ok = io.write(state, bb, root, offset, size, stamp).ok
    if root is not None and state.throttle_groups:
        groups = groups_on_path(root)
        if groups:
            yield from throttled(m, groups, not is_read, size)
    for src, dst, n, req in copies:
        if src is not None:
            yield from src.io(env, n, m.rng)
        yield from dst.io(env, n, m.rng)
        for done in req:
            reqlist.end(done)
    if waits:  # block-copy requests in flight over the written clusters
        live = [w for w in waits if not w.processed]
        if live:
            yield env.all_of(live)
    if root is not None:
        if root is not w.root:
            w.root, w.device = root, m.device_of(root)
        device = w.device
        if device.analytic:  # no jitter: the slot's grant follows from the requests before
            now = int(env.now)
            yield env.timeout(device.held(now, device.timing.io_ns(size, m.rng)) - now)
        else:
            with device.queue.request() as slot:
                yield slot
                ns = device.timing.io_ns(size, m.rng)
                yield env.timeout(ns)
    op = "read" if is_read else "write"
    if bb is not None:  # the device model accounts it (query-blockstats)
        now = int(env.now)
        bb.stats.done(op, size, now - int(start), not ok, now)
    if is_read:
        w.reads += 1
    else:
        w.writes += 1
    if not ok:
        w.failed += 1
        op += "-failed"
    w.in_flight -= 1
    # tuple.__new__: a third of the cost of IoRecord(...) on this hot path
    m.io_log.append(tuple.__new__(IoRecord, (start, op, env.now - start, jobs)))


def drained_hold(m: Machine, root: Any) -> simpy.Event | None:
    """What a guest request entering at `root` waits for when a job holds a node on its
    path drained (a completed mirror waiting to be finalized: drain.held_by_jobs), or
    None: an event the machine triggers at the next job status change."""
    held = drain.held_by_jobs(m.state)
    if not held:
        return None
    path = write_path(m.state.graph, root)
    if not any(node in path for _, node in held):
        return None
    return m.job_status_changed()


def write_copies(
    m: Machine, root: Any, offset: int, length: int
) -> list[tuple[Device | None, Device, int, list[simpy.Event]]]:
    """The extra I/O a write through `root` waits for: (read device or None, write
    device, bytes, its block-copy request) for each copy-before-write copy (listed
    in flight until its I/O is done: `sim.engine.reqlist`) and write-blocking mirror
    write."""
    out: list[tuple[Device | None, Device, int, list[simpy.Event]]] = []
    for node in reqlist.write_filters(m, root):
        if node.driver == "copy-before-write":
            for source, target, runs in cbw_runs(m, node, offset, length):
                n = sum(r[1] for r in runs)
                assert node.cbw is not None
                reqs = [reqlist.add(m, node.cbw, at, size) for at, size in runs]
                out.append((m.device_of(source), m.device_of(target), n, reqs))
        elif node.driver == "mirror_top":
            kind = _mirror_of(m, node)
            if kind is not None and kind.write_blocking:
                out.append((None, m.device_of(kind.target), length, []))
    return out


def _mirror_of(m: Machine, node: Any) -> Any:
    for job in m.state.jobs:
        if job.kind.filter is node:
            return job.kind
    return None
