"""Sector runs and content comparisons, without per-sector Python loops.

A *run list* is a sorted list of disjoint `(first, end)` sector ranges (end
exclusive).  Checkers compare contents only on the runs something could have
changed (what the guest wrote, what a node has allocated): `compare` walks
the extents both chains show there (`sim.model.content.chain_extents`),
`compare_view` reads a run's stamps once with numpy against another view.

Two stamps hold the same data when they are equal, or when both read as
zeroes (0 = unallocated, which reads as zeroes at the bottom of a chain, and
`ZERO_STAMP`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitarray import bitarray
from bitarray.util import intervals

from sim.model.content import (
    SECTOR_SHIFT,
    ZERO_STAMP,
    Content,
    StampTable,
    chain_extents,
    read_through,
)

if TYPE_CHECKING:
    import numpy as np
else:
    from sim.lazy import numpy as np

Runs = list[tuple[int, int]]
MAX_LISTED = 4  # differing runs a message lists


def union(*lists: Iterable[tuple[int, int]]) -> Runs:
    """The union of run lists, sorted and coalesced."""
    items = sorted(r for runs in lists for r in runs if r[1] > r[0])
    out: Runs = []
    for first, end in items:
        if out and first <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((first, end))
    return out


def intersect(a: Runs, b: Runs) -> Runs:
    """Sectors in both run lists (both sorted and disjoint)."""
    out: Runs = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(runs: Runs, nsectors: int) -> Runs:
    return [(f, min(e, nsectors)) for f, e in runs if f < nsectors]


def byte_run(offset: int, length: int) -> tuple[int, int]:
    """The sector run covering a byte range."""
    return offset >> SECTOR_SHIFT, (offset + length + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT


def allocated(contents: Iterable[Content]) -> Runs:
    """Sectors allocated in any of `contents`."""
    return union(*(list(c.allocated_sectors()) for c in contents))


def bit_runs(bits: bitarray, granularity: int, size_bytes: int) -> Runs:
    """Sector runs of the set bits of a bitmap with `granularity` bytes a bit."""
    nsectors = (size_bytes + (1 << SECTOR_SHIFT) - 1) >> SECTOR_SHIFT
    per = granularity >> SECTOR_SHIFT
    return [
        (start * per, min(stop * per, nsectors)) for value, start, stop in intervals(bits) if value
    ]


def byte_ranges(bits: bitarray, granularity: int, size_bytes: int) -> list[list[int]]:
    """[offset, length] byte ranges of the set bits (for messages), at most MAX_LISTED."""
    out: list[list[int]] = []
    for value, start, stop in intervals(bits):
        if value:
            off = start * granularity
            out.append([off, min(stop * granularity, size_bytes) - off])
            if len(out) == MAX_LISTED:
                break
    return out


def same_data(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per sector: do the two stamps hold the same data?"""
    same: np.ndarray = (expected == actual) | ((expected <= ZERO_STAMP) & (actual <= ZERO_STAMP))
    return same


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Where two views of a disk differ."""

    sectors: int  # how many sectors differ
    first_sector: int
    expected: int  # stamps at the first differing sector
    actual: int
    runs: Runs  # the differing runs (at most MAX_LISTED)

    def where(self) -> str:
        return (
            f"{self.sectors << SECTOR_SHIFT} bytes differ, first at offset "
            f"{self.first_sector << SECTOR_SHIFT}"
        )

    def what(self, stamps: StampTable, expected_label: str = "expected") -> str:
        return (
            f"{expected_label} {describe(stamps, self.expected)}, "
            f"got {describe(stamps, self.actual)}"
        )

    def details(self) -> dict[str, object]:
        return {
            "bytes": self.sectors << SECTOR_SHIFT,
            "offset": self.first_sector << SECTOR_SHIFT,
            "expected_stamp": self.expected,
            "actual_stamp": self.actual,
            "ranges": [[f << SECTOR_SHIFT, (e - f) << SECTOR_SHIFT] for f, e in self.runs],
        }


def describe(stamps: StampTable, stamp: int) -> str:
    """A stamp in words: which write and its pattern byte."""
    if stamp <= ZERO_STAMP:
        return "zeroes" if stamp == ZERO_STAMP else "unallocated (zeroes)"
    return f"write #{stamp} (pattern 0x{stamps.pattern(stamp):02x})"


def compare(runs: Runs, expected: list[Content], actual: list[Content]) -> Mismatch | None:
    """Compare what reads through two chains (top first) see on `runs`: extent by
    extent (what `compare_view` finds sector by sector, at the cost of the extents)."""
    if not expected or not actual or expected[0].nsectors != actual[0].nsectors:
        return compare_view(runs, expected, lambda lo, hi: read_through(actual, lo, hi))
    total = 0
    first = exp0 = act0 = -1
    bad: Runs = []
    for lo, hi in runs:
        hi = min(hi, expected[0].nsectors)
        if lo >= hi:
            continue
        last = len(bad)  # runs of this range start here; they join when they touch
        for s, e, x, y in _paired(_pieces(expected, lo, hi), _pieces(actual, lo, hi)):
            if x == y or (x <= ZERO_STAMP and y <= ZERO_STAMP):
                continue
            total += e - s
            if first < 0:
                first, exp0, act0 = s, x, y
            if len(bad) > last and bad[-1][1] == s:
                bad[-1] = (bad[-1][0], e)
            elif len(bad) < MAX_LISTED:
                bad.append((s, e))
    if total == 0:
        return None
    return Mismatch(total, first, exp0, act0, bad)


def _pieces(chain: list[Content], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """(first, end, stamp) covering [lo, hi) for a read through `chain`, 0 in holes."""
    out: list[tuple[int, int, int]] = []
    cur = lo
    for a, b, stamp in chain_extents(chain, lo, hi):
        if a > cur:
            out.append((cur, a, 0))
        out.append((a, b, stamp))
        cur = b
    if cur < hi:
        out.append((cur, hi, 0))
    return out


def _paired(
    left: list[tuple[int, int, int]], right: list[tuple[int, int, int]]
) -> Iterable[tuple[int, int, int, int]]:
    """(first, end, left stamp, right stamp) over two coverings of one range."""
    i = j = 0
    while i < len(left) and j < len(right):
        a0, a1, x = left[i]
        b0, b1, y = right[j]
        end = min(a1, b1)
        yield max(a0, b0), end, x, y
        if a1 == end:
            i += 1
        if b1 == end:
            j += 1


def compare_view(
    runs: Runs, expected: list[Content], read: Callable[[int, int], np.ndarray]
) -> Mismatch | None:
    """Compare a read through a chain with `read(first_sector, end_sector)`'s stamps."""
    total = 0
    first = exp0 = act0 = -1
    bad: Runs = []
    for lo, hi in runs:
        exp = read_through(expected, lo, hi)
        act = read(lo, hi)
        diff = ~same_data(exp, act)
        if not diff.any():
            continue
        idx = np.flatnonzero(diff)
        total += int(idx.size)
        if first < 0:
            first, exp0, act0 = lo + int(idx[0]), int(exp[idx[0]]), int(act[idx[0]])
        if len(bad) < MAX_LISTED:
            bad.extend(_runs_of(idx, lo)[: MAX_LISTED - len(bad)])
    if total == 0:
        return None
    return Mismatch(total, first, exp0, act0, bad)


def _runs_of(idx: np.ndarray, base: int) -> Runs:
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [idx.size - 1]))
    return [
        (base + int(idx[s]), base + int(idx[e]) + 1)
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
