"""Throttle groups: the `throttle-group` QOM object and its leaky buckets.

QEMU 7.2 util/throttle.c and block/throttle-groups.c.  A group holds one
`ThrottleConfig`: six buckets (bps and iops, each total / read / write), each
with an average rate `avg`, a burst rate `max` and a burst length in seconds,
plus `op_size` (iops-size: a request larger than it counts as several
operations).  Every `throttle` filter node naming the group shares it.

Theory of operation.  A request through a throttle node asks the group how
long it must wait (`wait_ns`: the buckets leak at `avg` units per second
since the last look; a bucket fuller than its size, `max * burst_length`,
or avg / 10 without a burst rate, makes the request wait until it has leaked
down), waits, then is accounted (`account`: its bytes and operations are
poured into the buckets of its direction and the totals).  Cost is a few
float operations per request, whatever its size.  Who waits, and in which
order, is the engine's business (sim/engine/throttle.py).

Validation follows throttle_limits_to_config and throttle_is_valid with their
error texts; the `x-*` properties are throttle_group_set's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.errors import QMPError

THROTTLE_VALUE_MAX = 1_000_000_000_000_000
UINT_MAX = 4294967295
NS_PER_S = 1_000_000_000

# BucketType order of include/qemu/throttle.h
BUCKETS = ("bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write")
# ThrottleLimits members, in qapi/block-core.json order
LIMIT_KEYS = tuple(
    f"{kind}-{d}{suffix}"
    for kind in ("iops", "bps")
    for d in ("total", "read", "write")
    for suffix in ("", "-max", "-max-length")
) + ("iops-size",)


@dataclass(slots=True)
class Bucket:
    """One LeakyBucket: rates in units per second, levels in units."""

    avg: int = 0
    max: int = 0
    burst_length: int = 1
    level: float = 0.0
    burst_level: float = 0.0


@dataclass(slots=True)
class ThrottleConfig:
    """A ThrottleConfig: the six buckets and op_size."""

    buckets: dict[str, Bucket] = field(default_factory=lambda: {b: Bucket() for b in BUCKETS})
    op_size: int = 0

    def copy(self) -> ThrottleConfig:
        return ThrottleConfig(
            {k: Bucket(b.avg, b.max, b.burst_length) for k, b in self.buckets.items()},
            self.op_size,
        )


def _set_field(cfg: ThrottleConfig, key: str, value: int) -> None:
    if key == "iops-size":
        cfg.op_size = value
        return
    bucket_name = key.removesuffix("-max-length").removesuffix("-max")
    bucket = cfg.buckets[bucket_name]
    if key.endswith("-max-length"):
        bucket.burst_length = value
    elif key.endswith("-max"):
        bucket.max = value
    else:
        bucket.avg = value


def check_valid(cfg: ThrottleConfig) -> None:
    """throttle_is_valid: QMPError with QEMU's text for the first problem."""
    b = cfg.buckets

    def clash(field_: str) -> bool:
        return any(
            getattr(b[f"{kind}-total"], field_)
            and (getattr(b[f"{kind}-read"], field_) or getattr(b[f"{kind}-write"], field_))
            for kind in ("bps", "iops")
        )

    if clash("avg") or clash("max"):
        raise QMPError(
            "bps/iops/max total values and read/write values cannot be used at the same time"
        )
    if cfg.op_size and not any(b[k].avg for k in ("iops-total", "iops-read", "iops-write")):
        raise QMPError("iops size requires an iops value to be set")
    for name in BUCKETS:
        bkt = b[name]
        if not (0 <= bkt.avg <= THROTTLE_VALUE_MAX and 0 <= bkt.max <= THROTTLE_VALUE_MAX):
            raise QMPError(f"bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]")
        if not bkt.burst_length:
            raise QMPError("the burst length cannot be 0")
        if bkt.burst_length > 1 and not bkt.max:
            raise QMPError("burst length set without burst rate")
        if bkt.max and bkt.burst_length > THROTTLE_VALUE_MAX // bkt.max:
            raise QMPError("burst length too high for this burst rate")
        if bkt.max and not bkt.avg:
            raise QMPError("bps_max/iops_max require corresponding bps/iops values")
        if bkt.max and bkt.max < bkt.avg:
            raise QMPError("bps_max/iops_max cannot be lower than bps/iops")


def apply_limits(cfg: ThrottleConfig, limits: dict[str, Any]) -> None:
    """throttle_limits_to_config: set what `limits` (a checked ThrottleLimits) has,
    then check the whole config.  Values stored as C stores them: a negative
    rate fails the range check; a burst length above UINT_MAX is refused first."""
    for key in LIMIT_KEYS:
        if key not in limits:
            continue
        value = limits[key]
        if key.endswith("-max-length") and not 0 <= value <= UINT_MAX:
            raise QMPError(f"{key} value must be in the range [0, {UINT_MAX}]")
        _set_field(cfg, key, value)
    check_valid(cfg)


def set_property(cfg: ThrottleConfig, prop: str, value: int) -> None:
    """throttle_group_set: one legacy `x-<limit>` property (object-add only)."""
    if value < 0:
        raise QMPError("Property values cannot be negative")
    key = prop.removeprefix("x-")
    if key.endswith("-max-length") and value > UINT_MAX:
        # sic: QEMU 7.2's message lacks the space
        raise QMPError(f"{prop} value must be in therange [0, {UINT_MAX}]")
    _set_field(cfg, key, value)


def limits_of(cfg: ThrottleConfig) -> dict[str, int]:
    """throttle_config_to_limits: what qom-get of `limits` returns (every member)."""
    out: dict[str, int] = {}
    for key in LIMIT_KEYS:
        if key == "iops-size":
            out[key] = cfg.op_size
            continue
        bucket = cfg.buckets[key.removesuffix("-max-length").removesuffix("-max")]
        if key.endswith("-max-length"):
            out[key] = bucket.burst_length
        elif key.endswith("-max"):
            out[key] = bucket.max
        else:
            out[key] = bucket.avg
    return out


# the buckets a request of each direction fills and waits on (throttle_account,
# throttle_compute_wait_for)
_DIRECTION = {
    False: ("bps-total", "iops-total", "bps-read", "iops-read"),
    True: ("bps-total", "iops-total", "bps-write", "iops-write"),
}


@dataclass(eq=False, slots=True)
class ThrottleGroup:
    """A `throttle-group` object (block/throttle-groups.c ThrottleGroup): its id,
    its configuration and the time its buckets last leaked."""

    name: str
    cfg: ThrottleConfig = field(default_factory=ThrottleConfig)
    previous_leak_ns: int = 0

    def configure(self, cfg: ThrottleConfig, now_ns: int) -> None:
        """throttle_config: new limits, empty buckets."""
        self.cfg = cfg.copy()
        self.previous_leak_ns = now_ns

    @property
    def enabled(self) -> bool:
        """throttle_enabled: some bucket has a rate."""
        return any(b.avg for b in self.cfg.buckets.values())

    def _leak(self, now_ns: int) -> None:
        delta = now_ns - self.previous_leak_ns
        self.previous_leak_ns = now_ns
        if delta <= 0:
            return
        for bkt in self.cfg.buckets.values():
            bkt.level = max(bkt.level - bkt.avg * delta / NS_PER_S, 0.0)
            if bkt.burst_length > 1:
                bkt.burst_level = max(bkt.burst_level - bkt.max * delta / NS_PER_S, 0.0)

    def wait_ns(self, now_ns: int, is_write: bool) -> int:
        """throttle_compute_timer: how long a request of this direction must wait now."""
        self._leak(now_ns)
        longest = 0
        for name in _DIRECTION[is_write]:
            longest = max(longest, _bucket_wait(self.cfg.buckets[name]))
        return longest

    def account(self, is_write: bool, size: int) -> None:
        """throttle_account: pour one request into the buckets of its direction."""
        units = 1.0
        if self.cfg.op_size and size > self.cfg.op_size:
            units = size / self.cfg.op_size
        b = self.cfg.buckets
        direction = "write" if is_write else "read"
        for name, amount in (
            ("bps-total", float(size)),
            (f"bps-{direction}", float(size)),
            ("iops-total", units),
            (f"iops-{direction}", units),
        ):
            bkt = b[name]
            bkt.level += amount
            if bkt.burst_length > 1:
                bkt.burst_level += amount


def _bucket_wait(bkt: Bucket) -> int:
    """throttle_compute_wait for one bucket."""
    if not bkt.avg:
        return 0
    if not bkt.max:
        bucket_size, burst_size = bkt.avg / 10, 0.0
    else:
        bucket_size, burst_size = float(bkt.max * bkt.burst_length), bkt.max / 10
    extra = bkt.level - bucket_size
    if extra > 0:
        return int(extra * NS_PER_S / bkt.avg)
    if bkt.burst_length > 1:
        extra = bkt.burst_level - burst_size
        if extra > 0:
            return int(extra * NS_PER_S / bkt.max)
    return 0
