"""Disk contents as write stamps, one per 512-byte sector.

A stamp is the id of the guest write (or zero write) that last put data in a
sector of *this* node: 0 = unallocated (a read falls through to the backing
node), 1 = zeroes written (`write -z`, discard with unmap), n >= 2 = data,
whose pattern byte is `StampTable.pattern(n)`.  Jobs copy stamps, so the
identity of data survives backup, mirror, commit and stream, which is what
the point-in-time and lost-data checkers compare.

Two stores behind one interface (both measured fastest for their range): a dense numpy int32
array for disks up to `DENSE_LIMIT_BYTES`, and a dict keyed by 4 KiB block for
larger disks, so memory grows with what was written, not with the disk.

Writes are rounded out to whole sectors: a sub-sector write stamps the whole
sector (a documented approximation; real QEMU merges bytes).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SECTOR = 512
SECTOR_SHIFT = 9
ZERO_STAMP = 1
FIRST_DATA_STAMP = 2
DENSE_LIMIT_BYTES = 1 << 30
BLOCK_SECTORS = 8  # 4 KiB blocks in the sparse store
DEFAULT_PATTERN = 0xCD  # qemu-io `write` without -P


class StampTable:
    """Allocates write stamps and remembers each one's pattern byte."""

    __slots__ = ("_patterns",)

    def __init__(self) -> None:
        self._patterns: list[int] = [0, 0]  # unallocated and zero read as 0x00

    def new(self, pattern: int) -> int:
        self._patterns.append(pattern)
        return len(self._patterns) - 1

    def pattern(self, stamp: int) -> int:
        return self._patterns[stamp]

    def patterns_of(self, stamps: np.ndarray) -> np.ndarray:
        """Pattern byte for each stamp in an array."""
        table = np.asarray(self._patterns, dtype=np.int32)
        return table[stamps]

    def __len__(self) -> int:
        return len(self._patterns)


def sector_span(offset: int, length: int) -> tuple[int, int]:
    """First sector and end sector (exclusive) covering [offset, offset+length)."""
    return offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT


class Content:
    """What one node stores itself (not what reads through it see)."""

    size_bytes: int
    nsectors: int

    def write(self, offset: int, length: int, stamp: int) -> None:
        raise NotImplementedError

    def write_stamps(self, first_sector: int, stamps: np.ndarray) -> None:
        """Store stamps sector by sector; 0 entries leave the sector as it is."""
        raise NotImplementedError

    def read(self, first_sector: int, end_sector: int) -> np.ndarray:
        """This node's own stamps for a sector range (0 where unallocated)."""
        raise NotImplementedError

    def allocated_sectors(self) -> Iterator[tuple[int, int]]:
        """(first, end) sector runs this node has allocated, ascending."""
        raise NotImplementedError

    def allocated_bytes(self, cluster_bytes: int) -> int:
        """Bytes in clusters holding any allocated sector (what qcow2 block-status says)."""
        per = max(cluster_bytes >> SECTOR_SHIFT, 1)
        clusters: list[int] = []
        last = -1
        for first, end in self.allocated_sectors():
            lo = max(first // per, last + 1)
            hi = (end - 1) // per
            if hi >= lo:
                clusters.append(hi - lo + 1)
                last = hi
        total = sum(clusters) * cluster_bytes
        if last >= 0 and (last + 1) * cluster_bytes > self.size_bytes:
            total -= (last + 1) * cluster_bytes - self.size_bytes
        return total

    def clone(self) -> Content:
        raise NotImplementedError


class DenseContent(Content):
    """Stamps in one numpy int32 array, one entry per sector."""

    __slots__ = ("size_bytes", "nsectors", "stamps")

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.nsectors = -(-size_bytes // SECTOR)
        self.stamps = np.zeros(self.nsectors, dtype=np.int32)

    def write(self, offset: int, length: int, stamp: int) -> None:
        self.stamps[offset >> SECTOR_SHIFT : (offset + length + SECTOR - 1) >> SECTOR_SHIFT] = stamp

    def write_stamps(self, first_sector: int, stamps: np.ndarray) -> None:
        view = self.stamps[first_sector : first_sector + stamps.size]
        np.copyto(view, stamps, where=stamps != 0)

    def read(self, first_sector: int, end_sector: int) -> np.ndarray:
        return self.stamps[first_sector:end_sector].copy()

    def allocated_sectors(self) -> Iterator[tuple[int, int]]:
        nz = self.stamps != 0
        if not nz.any():
            return
        edges = np.flatnonzero(np.diff(np.concatenate(([False], nz, [False])).astype(np.int8)))
        yield from zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)

    def clone(self) -> DenseContent:
        other = DenseContent.__new__(DenseContent)
        other.size_bytes, other.nsectors = self.size_bytes, self.nsectors
        other.stamps = self.stamps.copy()
        return other


class SparseContent(Content):
    """Stamps in a dict keyed by 4 KiB block: an int when the whole block has one
    stamp, else an int32 array of 8 sector stamps."""

    __slots__ = ("size_bytes", "nsectors", "blocks")

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.nsectors = -(-size_bytes // SECTOR)
        self.blocks: dict[int, int | np.ndarray] = {}

    def write(self, offset: int, length: int, stamp: int) -> None:
        if length == 4096 and not offset & 4095:  # the common aligned 4 KiB write
            self.blocks[offset >> 12] = stamp
            return
        first, end = sector_span(offset, length)
        blocks = self.blocks
        b0, b1 = first >> 3, (end - 1) >> 3
        for b in range(b0, b1 + 1):
            lo = max(first - (b << 3), 0)
            hi = min(end - (b << 3), 8)
            if lo == 0 and hi == 8:
                blocks[b] = stamp
            else:
                arr = self._block_array(b)
                arr[lo:hi] = stamp
                blocks[b] = arr

    def _block_array(self, b: int) -> np.ndarray:
        cur = self.blocks.get(b, 0)
        if isinstance(cur, np.ndarray):
            return cur
        return np.full(BLOCK_SECTORS, cur, dtype=np.int32)

    def write_stamps(self, first_sector: int, stamps: np.ndarray) -> None:
        for first, end in _runs_nonzero(stamps):
            seg = stamps[first:end]
            for s in np.unique(seg).tolist():
                # write each run of equal stamps; runs are few in practice
                idx = np.flatnonzero(seg == s)
                for a, b in _consecutive(idx):
                    self.write(
                        (first_sector + first + a) << SECTOR_SHIFT, (b - a) << SECTOR_SHIFT, s
                    )

    def read(self, first_sector: int, end_sector: int) -> np.ndarray:
        out = np.zeros(end_sector - first_sector, dtype=np.int32)
        if not self.blocks:
            return out
        b0, b1 = first_sector >> 3, (end_sector - 1) >> 3
        if b1 - b0 > len(self.blocks):
            keys = sorted(k for k in self.blocks if b0 <= k <= b1)
        else:
            keys = [b for b in range(b0, b1 + 1) if b in self.blocks]
        for b in keys:
            base = (b << 3) - first_sector
            lo, hi = max(base, 0), min(base + 8, out.size)
            val = self.blocks[b]
            out[lo:hi] = val[lo - base : hi - base] if isinstance(val, np.ndarray) else val
        return out

    def allocated_sectors(self) -> Iterator[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        for b in sorted(self.blocks):
            val = self.blocks[b]
            if isinstance(val, np.ndarray):
                runs.extend(((b << 3) + lo, (b << 3) + hi) for lo, hi in _runs_nonzero(val))
            elif val != 0:
                runs.append((b << 3, (b << 3) + 8))
        yield from _coalesce(runs, self.nsectors)

    def clone(self) -> SparseContent:
        other = SparseContent(self.size_bytes)
        other.blocks = {
            k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.blocks.items()
        }
        return other


def _coalesce(runs: list[tuple[int, int]], limit: int) -> Iterator[tuple[int, int]]:
    """Merge touching ascending runs; clip to `limit`."""
    cur_first = cur_end = -1
    for first, end in runs:
        if first == cur_end:
            cur_end = end
            continue
        if cur_first >= 0:
            yield cur_first, min(cur_end, limit)
        cur_first, cur_end = first, end
    if cur_first >= 0:
        yield cur_first, min(cur_end, limit)


def _runs_nonzero(arr: np.ndarray) -> list[tuple[int, int]]:
    nz = arr != 0
    if not nz.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([False], nz, [False])).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _consecutive(idx: np.ndarray) -> list[tuple[int, int]]:
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [idx.size - 1]))
    return [(int(idx[s]), int(idx[e]) + 1) for s, e in zip(starts, ends, strict=True)]


def new_content(size_bytes: int) -> Content:
    """The store that suits a disk of this size."""
    if size_bytes <= DENSE_LIMIT_BYTES:
        return DenseContent(size_bytes)
    return SparseContent(size_bytes)


def read_through(chain: list[Content], first_sector: int, end_sector: int) -> np.ndarray:
    """Stamps a read sees through a backing chain (top first); 0 = reads as zeroes."""
    out = (
        chain[0].read(first_sector, end_sector)
        if chain
        else np.zeros(end_sector - first_sector, dtype=np.int32)
    )
    for layer in chain[1:]:
        holes = out == 0
        if not holes.any():
            break
        if layer.size_bytes <= first_sector << SECTOR_SHIFT:
            break
        below = layer.read(first_sector, min(end_sector, layer.nsectors))
        h = holes[: below.size]
        out[: below.size][h] = below[h]
    return out
