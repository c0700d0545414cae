"""Disk contents as extents of write stamps.

A stamp is the id of the guest write (or zero write) that last put data in a
sector of *this* node: 0 = unallocated (a read falls through to the backing
node), 1 = zeroes written (`write -z`, discard with unmap), n >= 2 = data,
whose pattern byte is `StampTable.pattern(n)`.  Jobs copy stamps, so the
identity of data survives backup, mirror, commit and stream, which is what
the point-in-time and lost-data checkers compare.

Theory of operation.  A node's content is a sorted run list covering the
disk: sector ranges that carry one stamp each (an *extent*; stamp 0 for the
unallocated ones), what QEMU's block-status walks.  The list is cut into
chunks of at most `CHUNK_MAX` extents (two parallel lists: start sectors,
stamps) indexed by their first sector, so a write costs two bisections and
the splice of the chunks it meets, whatever the disk size: cost grows with
extents, never with disk bytes.  A chunk is changed in place only by the
content that made it (its owner token); `clone` shares chunks and the index,
and after a clone each side copies a chunk before its first change.  A
chunk's two lists are int64 arrays (`array.array`), so `arrays` hands the
whole run list to numpy by copying memory, not by converting each value.
`allocated_sectors` is computed once and cached until the next write.  A
qcow2 image's content also keeps a `ClusterSummary` (its L2 tables' counts,
part of `sim.model.qcow2_host.Qcow2Layout`) up to date, for the host-file
layout.

A guest's data or zero write of at most LOG_MAX_BYTES is not spliced in at
once: `write` and `write_many` append it to a `WriteLog` (int64 arrays of
offsets and stamps, one length while all writes have the same) and bump the
version, O(1) Python work a write.  (qcow2's copy-on-write asks which clusters
the log's writes touch, `WriteLog.clusters`, without splicing it.)  Every read and
every other kind of write first settles the log: a short log write by write as before, a long one in
one numpy pass (`merge_writes`: cut the disk where an extent or a write starts
or ends, give each piece the value of the last write covering it, join equal
neighbours; writes that do not overlap are merged in by position), after
which the chunks are rebuilt.  The cluster summary follows a log of data
writes from the clusters they touch (each holds data afterwards) and is
counted again from the new run list after any other.  Either way the run
list is the one the writes made one by one leave (chunk boundaries aside,
which no reader sees).

Writes are rounded out to whole sectors: a sub-sector write stamps the whole
sector (a documented approximation; real QEMU merges bytes).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
else:
    from sim.lazy import numpy as np


SECTOR = 512
SECTOR_SHIFT = 9
UNALLOCATED = 0
ZERO_STAMP = 1
FIRST_DATA_STAMP = 2
CHUNK_MAX = 512  # extents in one chunk of the run list before it is split
LOG_MAX_BYTES = 65536  # longer writes are made at once, not logged
LOG_MAX_WRITES = 1 << 20  # a log this long is spliced in (its memory is bounded)
LOG_MERGE_MIN = 256  # shorter write logs are spliced in write by write
LOG_MERGE_RATIO = 64  # ... and so are logs shorter than 1/64 of the run list's extents
MERGE_MAX_COVER = 1 << 22  # (write, extent) pairs one numpy merge handles at most
DEFAULT_PATTERN = 0xCD  # qemu-io `write` without -P

Extent = tuple[int, int, int]  # (first sector, end sector, stamp)
# [start sectors, stamps, owner token, unused]: the sectors and stamps as int64
# arrays (array.array), which numpy reads without converting each value
_Chunk = list[Any]


class StampTable:
    """Allocates write stamps and remembers each one's pattern byte."""

    __slots__ = ("_patterns", "_array")

    def __init__(self) -> None:
        self._patterns: list[int] = [0, 0]  # unallocated and zero read as 0x00
        self._array: np.ndarray | None = None

    def new(self, pattern: int) -> int:
        self._patterns.append(pattern)
        self._array = None
        return len(self._patterns) - 1

    def new_many(self, pattern: int, count: int) -> list[int]:
        """`count` new stamps of one pattern, in order (as `new` one by one)."""
        first = len(self._patterns)
        self._patterns.extend([pattern] * count)
        self._array = None
        return list(range(first, first + count))

    def pattern(self, stamp: int) -> int:
        return self._patterns[stamp]

    def patterns_of(self, stamps: np.ndarray) -> np.ndarray:
        """Pattern byte for each stamp in an array."""
        if self._array is None:
            self._array = np.asarray(self._patterns, dtype=np.int32)
        out: np.ndarray = self._array[stamps]
        return out

    def __len__(self) -> int:
        return len(self._patterns)

    def view_digest(self) -> tuple[int, ...]:
        """What the read-only guard of the machine view compares: the patterns, not the
        array a read caches."""
        return tuple(self._patterns)


class WriteLog:
    """Writes a content has taken but not yet spliced into its run list, in order:
    byte offsets and stamps as int64 arrays (appending is O(1)), and their lengths:
    one number while every write has the same (a guest's usual requests), an int64
    array of each write's once they differ."""

    __slots__ = ("offsets", "stamps", "length", "lengths", "_clusters")

    def __init__(self, length: int) -> None:
        self.offsets = array("q")
        self.stamps = array("q")
        self.length = length  # every write's length, while they are all equal; else -1
        self.lengths: array[int] | None = None  # each write's length, once they differ
        # (cluster bytes, writes indexed, the clusters they touch): `clusters`
        self._clusters: tuple[int, int, set[int]] | None = None

    def vary(self, length: int, n: int) -> None:
        """The last `n` writes appended have `length`, which is not `self.length`."""
        if self.lengths is None:
            self.lengths = array("q", (self.length,)) * (len(self.offsets) - n)
            self.length = -1
        self.lengths.extend(array("q", (length,)) * n)

    def writes(self) -> Iterator[tuple[int, int, int]]:
        """(offset, length, stamp) of each write, in order."""
        if self.lengths is None:
            return zip(self.offsets, repeat(self.length), self.stamps, strict=False)
        return zip(self.offsets, self.lengths, self.stamps, strict=True)

    def clusters(self, cluster_bytes: int) -> set[int]:
        """The clusters of `cluster_bytes` the writes touch.  Built as it is asked for:
        each ask indexes only the writes appended since the one before (cost per
        write, not per byte; a write touches at most LOG_MAX_BYTES / `cluster_bytes`
        + 1 clusters)."""
        n = len(self.offsets)
        kept = self._clusters
        if kept is not None and kept[0] == cluster_bytes:
            done, touched = kept[1], kept[2]
        else:
            done, touched = 0, set()
        offsets, length, lengths = self.offsets, self.length, self.lengths
        add = touched.add
        for i in range(done, n):
            offset = offsets[i]
            first = offset // cluster_bytes
            last = (offset + (length if lengths is None else lengths[i]) - 1) // cluster_bytes
            if first == last:
                add(first)
            else:
                touched.update(range(first, last + 1))
        self._clusters = (cluster_bytes, n, touched)
        return touched

    def sectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first sectors, end sectors, stamps) of the writes as numpy arrays."""
        offsets = np.frombuffer(self.offsets, dtype=np.int64)
        if self.lengths is None:
            ends = offsets + (self.length + SECTOR - 1)
        else:
            ends = offsets + np.frombuffer(self.lengths, dtype=np.int64)
            ends += SECTOR - 1
        ends >>= SECTOR_SHIFT
        return offsets >> SECTOR_SHIFT, ends, np.frombuffer(self.stamps, dtype=np.int64)


def stable_sort(values: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """(`values` sorted, the indices that sort them stably) for values in [0, bound]:
    one sort of (value, index) packed in an int64 when it fits (half the cost of an
    argsort), else an argsort.  The packed keys are distinct, so any sort gives the
    same order: numpy's stable one (timsort) also takes values already in order, or
    made of a few ascending runs, in one pass."""
    n = int(values.size)
    shift = max(n - 1, 1).bit_length()
    if bound < 1 << (62 - shift):
        keys = (values << shift) | np.arange(n, dtype=np.int64)
        keys.sort(kind="stable")
        return keys >> shift, keys & ((1 << shift) - 1)
    order = np.argsort(values, kind="stable")
    return values[order], order


def run_heads(values: np.ndarray) -> np.ndarray:
    """True where a value differs from the one before it (and at the first): the
    first element of each run of equal values."""
    head = np.empty(values.size, dtype=bool)
    head[:1] = True
    np.not_equal(values[1:], values[:-1], out=head[1:])
    return head


def merge_writes(
    starts: np.ndarray,
    stamps: np.ndarray,
    nsectors: int,
    firsts: np.ndarray,
    ends: np.ndarray,
    values: np.ndarray,
    by_first: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A run list (`starts`/`stamps`, the last extent ending at `nsectors`) after the
    writes [firsts[i], ends[i]) of values[i], made in order, i.e. the same run list
    the writes made one by one leave, touching extents of one stamp joined.  The
    points where anything starts cut the disk into pieces; each piece takes the
    value of the last write covering it, else the run list's.  Cost: a sort of the
    extents and the writes' ends, plus the pieces the writes cover; None (nothing
    done) when more than MERGE_MAX_COVER pieces would be covered, unless by one write.
    `by_first`: the writes' firsts and ends sorted by first, then by order, and the
    indices that sort them (`stable_sort`), when the caller has them."""
    if by_first is None:
        firsts, order = stable_sort(firsts, nsectors)  # sorted look-ups stay in the cache
        ends = ends[order]
    else:
        firsts, ends, order = by_first
    if firsts.size > 1:
        # a write made again over the same range: only the last one counts
        again = (firsts[1:] == firsts[:-1]) & (ends[1:] == ends[:-1])
        if again.any():
            kept = np.concatenate((~again, [True]))
            firsts, ends, order = firsts[kept], ends[kept], order[kept]
            del kept
        del again
    if firsts.size < 2 or bool((firsts[1:] >= ends[:-1]).all()):
        return _merge_disjoint(starts, stamps, nsectors, firsts, ends, values[order])
    cuts = np.concatenate((starts, firsts, np.sort(ends)))
    cuts.sort(kind="stable")  # three sorted runs: merged
    cuts = cuts[run_heads(cuts)]
    if cuts[-1] >= nsectors:
        cuts = cuts[: np.searchsorted(cuts, nsectors)]
    out = stamps[np.searchsorted(starts, cuts, side="right") - 1]
    a = np.searchsorted(cuts, firsts)
    counts = np.searchsorted(cuts, ends) - a
    total = int(counts.sum())
    if total > MERGE_MAX_COVER and firsts.size > 1:
        return None
    if total:
        writer = np.repeat(order, counts)
        piece = np.arange(total, dtype=np.int64) + np.repeat(
            a - (np.cumsum(counts) - counts), counts
        )
        last = np.full(cuts.size, -1, dtype=np.int64)
        np.maximum.at(last, piece, writer)  # the last write covering each piece
        del piece, writer
        hit = last >= 0
        out[hit] = values[last[hit]]
    keep = run_heads(out)
    return cuts[keep], out[keep]


def _merge_disjoint(
    starts: np.ndarray,
    stamps: np.ndarray,
    nsectors: int,
    firsts: np.ndarray,
    ends: np.ndarray,
    values: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """`merge_writes` for ascending writes that do not overlap: the run list's starts
    inside a write go, each write's start comes in and so does its end, carrying the
    run list's stamp there (or, where the next write starts at that end or the disk
    ends, the write's own value: a repeat, dropped with the other equal neighbours).
    The writes' points alternate (start, end, start, ...); the run list's starts
    left are merged in by position, each before a write's point equal to it."""
    j = np.searchsorted(firsts, starts, side="right") - 1
    outside = (j < 0) | (starts >= ends[np.maximum(j, 0)])
    del j
    after = stamps[np.searchsorted(starts, ends, side="right") - 1]
    back = ends < nsectors  # (an extent starting there too: equal neighbours, joined)
    back[:-1] &= firsts[1:] != ends[:-1]
    n = int(firsts.size)
    points = np.empty(2 * n, dtype=np.int64)
    points[0::2] = firsts
    points[1::2] = ends
    out = np.empty(2 * n, dtype=np.int64)
    out[0::2] = values
    np.copyto(after, values, where=~back)
    out[1::2] = after
    del after, back
    kept = starts[outside]
    if kept.size:
        at = np.searchsorted(points, kept)
        at += np.arange(kept.size, dtype=np.int64)
        rest = np.ones(2 * n + kept.size, dtype=bool)
        rest[at] = False
        merged = np.empty(rest.size, dtype=np.int64)
        merged[at] = kept
        merged[rest] = points
        points = merged
        merged = np.empty(rest.size, dtype=np.int64)
        merged[at] = stamps[outside]
        merged[rest] = out
        out = merged
        del merged, rest, at
    keep = run_heads(out)
    if keep.all():  # (random writes far apart: every point starts an extent)
        return points, out
    return points[keep], out[keep]


def sector_span(offset: int, length: int) -> tuple[int, int]:
    """First sector and end sector (exclusive) covering [offset, offset+length)."""
    return offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT


class Content:
    """What one node stores itself (not what reads through it see): its extents."""

    __slots__ = (
        "size_bytes",
        "nsectors",
        "_mins",
        "_chunks",
        "_shared",
        "_token",
        "_alloc",
        "_arrays",
        "_derived",
        "version",
        "_summary",
        "_log",
    )

    logs_writes: ClassVar[bool] = True  # short writes wait in a write log (`write_many`)

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.nsectors = -(-size_bytes // SECTOR)
        self._mins: list[int] = [0]  # first sector of each chunk, ascending
        self._token = object()  # marks the chunks this content may change in place
        self._chunks: list[_Chunk] = [
            [array("q", [0]), array("q", [UNALLOCATED]), self._token, None]
        ]
        self._shared = False  # the chunk index is shared with a clone
        self._alloc: list[tuple[int, int]] | None = None  # allocated runs, cached
        self._arrays: tuple[int, np.ndarray, np.ndarray] | None = None  # (version, arrays)
        self._derived: tuple[int, dict[Any, Any]] = (0, {})
        self.version = 0  # bumped by every write
        self._summary: ClusterSummary | None = None  # kept up to date by every write
        self._log: WriteLog | None = None  # writes not yet spliced into the chunks

    def view_digest(self) -> tuple[int, int]:
        """What the read-only guard of the machine view compares: size and write version;
        the chunks' arrays and the allocated runs are caches a read fills in."""
        return self.size_bytes, self.version

    # -- writes ----------------------------------------------------------------------------
    def write(self, offset: int, length: int, stamp: int) -> None:
        """Stamp the sectors covering [offset, offset+length).  A data or zero write of
        at most LOG_MAX_BYTES inside the disk is appended to the write log (spliced in
        when something reads); any other is made at once."""
        if 0 < length <= LOG_MAX_BYTES and stamp > UNALLOCATED and 0 <= offset:
            if offset + length <= self.size_bytes:
                log = self._log
                if log is None:
                    log = self._log = WriteLog(length)
                log.offsets.append(offset)
                log.stamps.append(stamp)
                if length != log.length:
                    log.vary(length, 1)
                self.version += 1
                self._alloc = None
                if len(log.stamps) >= LOG_MAX_WRITES:
                    self._settle()
                return
        if self._log is not None:
            self._settle()
        self._write_now(
            offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT, stamp
        )

    def _write_now(self, first: int, end: int, stamp: int) -> None:
        """Stamp sectors [first, end) now.  A write inside one chunk that this content
        owns (and, with a cluster summary, a data write inside one of its clusters) is
        spliced in place; any other goes through `write_sectors`."""
        if self._shared or end > self.nsectors or first >= end:
            self.write_sectors(first, end, stamp)
            return
        mins = self._mins
        i = bisect_right(mins, first) - 1
        chunk = self._chunks[i]
        if chunk[2] is not self._token or (i + 1 < len(mins) and mins[i + 1] <= end):
            self.write_sectors(first, end, stamp)
            return
        starts, vals = chunk[0], chunk[1]
        summary = self._summary
        if summary is not None:
            per = summary.per
            cs = first // per * per
            ce = cs + per
            if (
                stamp < FIRST_DATA_STAMP
                or end > ce
                or cs < starts[0]
                or (i + 1 < len(mins) and mins[i + 1] < ce)
            ):
                self.write_sectors(first, end, stamp)
                return
            j = bisect_right(starts, cs) - 1
            old = 0  # the cluster's class before: 0 free, 1 zeroes only, 2 data
            while j < len(starts) and starts[j] < ce:
                if vals[j] >= FIRST_DATA_STAMP:
                    old = 2
                    break
                if vals[j]:
                    old = 1
                j += 1
            if old != 2:
                summary.data += 1
                if not old:  # a newly allocated cluster
                    counts = summary._in
                    r = cs // per // summary.per_region
                    n = counts.get(r, 0) + 1
                    counts[r] = n
                    if n == 1:
                        summary.regions += 1
        self._alloc = None
        self.version += 1
        a = bisect_left(starts, first)
        n = len(starts)
        k = a if a == n or starts[a] > end else bisect_left(starts, end, a)
        if k < n and starts[k] == end:
            if vals[k] == stamp:
                k += 1
                del starts[a:k]
                del vals[a:k]
            elif a != k:
                del starts[a:k]
                del vals[a:k]
        else:
            after = vals[k - 1]
            if a != k:
                del starts[a:k]
                del vals[a:k]
            if after != stamp and end < self.nsectors:
                starts.insert(a, end)
                vals.insert(a, after)
        if a == 0 or vals[a - 1] != stamp:
            starts.insert(a, first)
            vals.insert(a, stamp)
        if len(starts) > CHUNK_MAX:
            self._split(i, chunk)

    def write_many(
        self,
        offsets: Sequence[int],
        length: int,
        stamps: Sequence[int],
        bounds: tuple[int, int] | None = None,
    ) -> None:
        """`write` for each offset with its stamp, in order (a guest's burst): appended
        to the write log at once when every one of them would be.  `bounds`: the
        lowest and the highest offset, when the caller has them."""
        n = len(offsets)
        lowest, highest = (
            bounds if bounds is not None else (min(offsets, default=-1), max(offsets, default=0))
        )
        if (
            self.logs_writes
            and n == len(stamps)
            and n
            and 0 < length <= LOG_MAX_BYTES
            and min(stamps) > UNALLOCATED
            and lowest >= 0
            and highest + length <= self.size_bytes
        ):
            log = self._log
            if log is None:
                log = self._log = WriteLog(length)
            if type(offsets) is list and type(stamps) is list:
                log.offsets.fromlist(offsets)  # (twice as fast as extend)
                log.stamps.fromlist(stamps)
            else:
                log.offsets.extend(offsets)
                log.stamps.extend(stamps)
            if length != log.length:
                log.vary(length, n)
            self.version += n
            self._alloc = None
            if len(log.stamps) >= LOG_MAX_WRITES:
                self._settle()
            return
        write = self.write
        for offset, stamp in zip(offsets, stamps, strict=True):
            write(offset, length, stamp)

    def write_runs(self, runs: list[tuple[int, int, int]]) -> None:
        """`write` for each data write (offset, length, stamp), in order (the copies of
        one perform_cow): appended to the write log at once when it exists and every
        one of them would be appended to it."""
        log = self._log
        n = len(runs)
        if (
            log is not None
            and self.logs_writes
            and len(log.stamps) + n < LOG_MAX_WRITES
            and all(
                0 < length <= LOG_MAX_BYTES
                and stamp >= FIRST_DATA_STAMP
                and 0 <= offset
                and offset + length <= self.size_bytes
                for offset, length, stamp in runs
            )
        ):
            offsets, stamps = log.offsets, log.stamps
            for offset, _length, stamp in runs:
                offsets.append(offset)
                stamps.append(stamp)
            if log.lengths is not None or any(r[1] != log.length for r in runs):
                if log.lengths is None:  # as `vary` does at the first other length
                    log.lengths = array("q", (log.length,)) * (len(offsets) - n)
                    log.length = -1
                log.lengths.extend([r[1] for r in runs])
            self.version += n
            self._alloc = None
            return
        write = self.write
        for offset, length, stamp in runs:
            write(offset, length, stamp)

    def _settle(self) -> None:
        """Splice the write log into the chunks (and the cluster summary): a short log
        write by write, a long one with numpy in one pass over the run list
        (`merge_writes`).  The version stays: the log's writes counted already."""
        log = self._log
        if log is None:
            return
        self._log = None
        version = self.version
        n = len(log.offsets)
        if n < LOG_MERGE_MIN or n * LOG_MERGE_RATIO < len(self._mins) * CHUNK_MAX:
            write_now = self._write_now
            for offset, length, stamp in log.writes():
                write_now(
                    offset >> SECTOR_SHIFT, (offset + length + SECTOR - 1) >> SECTOR_SHIFT, stamp
                )
        else:
            self._merge_log(log)
        self.version = version
        self._alloc = None

    def _merge_log(self, log: WriteLog) -> None:
        """The whole log at once: the run list rebuilt by `merge_writes`, the cluster
        summary brought up to date (`_merge_sectors`)."""
        self._merge_sectors(*log.sectors())

    def _merge_sectors(
        self,
        firsts: np.ndarray,
        ends: np.ndarray,
        values: np.ndarray,
        by_first: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Writes of sectors [firsts[i], ends[i]) with values[i], in order, inside the
        disk, all at once; a log covering too many pieces goes in parts, in order.
        The cluster summary follows data writes from the clusters they touch, and is
        counted again from the new run list after any other.  `by_first`: as for
        `merge_writes`."""
        self.version += int(firsts.size)
        self._alloc = self._arrays = None
        parts = [(firsts, ends, values)]
        starts, vals = self._raw_arrays()
        summary = self._summary
        counted = False  # the summary's counts follow already
        if summary is not None and values.size and int(values.min()) >= FIRST_DATA_STAMP:
            # data writes only: each cluster they touch holds data afterwards
            sorted_firsts, sorted_ends = (
                (by_first[0], by_first[1]) if by_first is not None else (firsts, ends)
            )
            clusters = touched_clusters(sorted_firsts, sorted_ends, summary.per, by_first is None)
            summary.add_data(starts, vals, clusters)
            counted = True
            del clusters, sorted_firsts, sorted_ends
        while parts:
            f, e, v = parts.pop()
            merged = merge_writes(starts, vals, self.nsectors, f, e, v, by_first)
            by_first = None  # (the whole log's, not a part's)
            if merged is None:  # halves, the first one first
                h = f.size // 2
                parts += [(f[h:], e[h:], v[h:]), (f[:h], e[:h], v[:h])]
            else:
                starts, vals = merged
        self._rebuild(starts, vals)
        if summary is not None and not counted:
            summary.count(starts, vals, self.nsectors)

    def _raw_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The chunks' run list as numpy arrays, whatever the write log holds (copies:
        a view would keep the chunk's array from growing, BufferError)."""
        chunks = self._chunks
        starts = np.concatenate([np.frombuffer(c[0], dtype=np.int64) for c in chunks])
        stamps = np.concatenate([np.frombuffer(c[1], dtype=np.int64) for c in chunks])
        return starts, stamps

    def _rebuild(self, starts: np.ndarray, stamps: np.ndarray) -> None:
        """New chunks (of this content alone) holding the run list `starts`/`stamps`."""
        self._token = token = object()
        half = CHUNK_MAX // 2
        chunks: list[_Chunk] = []
        for p in range(0, int(starts.size), half):
            s, v = array("q"), array("q")
            s.frombytes(starts[p : p + half].tobytes())
            v.frombytes(stamps[p : p + half].tobytes())
            chunks.append([s, v, token, None])
        self._chunks = chunks
        self._mins = starts[::half].tolist()
        self._shared = False

    def write_sectors(self, first: int, end: int, stamp: int) -> None:
        """Stamp sectors [first, end) (clipped to the disk); stamp 0 deallocates."""
        if self._log is not None:
            self._settle()
        if end > self.nsectors:
            end = self.nsectors
        if first >= end:
            return
        summary = self._summary
        if summary is None:
            self._write_sectors(first, end, stamp)
            return
        before = summary.tally(self, first, end)
        self._write_sectors(first, end, stamp)
        summary.apply(before, summary.tally(self, first, end))

    def _write_sectors(self, first: int, end: int, stamp: int) -> None:
        if self._shared:
            self._mins = list(self._mins)
            self._chunks = list(self._chunks)
            self._shared = False
            self._token = object()  # every chunk now belongs to someone else too
        self._alloc = None
        self.version += 1
        mins, chunks = self._mins, self._chunks
        i = bisect_right(mins, first) - 1
        j = i if i + 1 == len(mins) or mins[i + 1] > end else bisect_right(mins, end) - 1
        chunk = chunks[i]
        if j == i and chunk[2] is self._token:
            self._splice_in_place(i, chunk, first, end, stamp)
            return
        si, vi = chunk[0], chunk[1]
        a = bisect_left(si, first)
        new_s = si[:a]
        new_v = vi[:a]
        if not new_v or new_v[-1] != stamp:
            new_s.append(first)
            new_v.append(stamp)
        if end < self.nsectors:
            sj, vj = chunks[j][0], chunks[j][1]
            k = bisect_left(sj, end)
            if k < len(sj) and sj[k] == end:
                if vj[k] == stamp:
                    k += 1
            else:
                after = vj[k - 1]  # k > 0: chunk j starts at or before `end`
                if after != stamp:
                    new_s.append(end)
                    new_v.append(after)
            new_s.extend(sj[k:])
            new_v.extend(vj[k:])
        token = self._token
        if len(new_s) <= CHUNK_MAX:
            mins[i : j + 1] = [new_s[0]]
            chunks[i : j + 1] = [[new_s, new_v, token, None]]
            return
        half = CHUNK_MAX // 2
        pieces = range(0, len(new_s), half)
        mins[i : j + 1] = [new_s[p] for p in pieces]
        chunks[i : j + 1] = [
            [new_s[p : p + half], new_v[p : p + half], token, None] for p in pieces
        ]

    def _splice_in_place(self, i: int, chunk: _Chunk, first: int, end: int, stamp: int) -> None:
        """Set [first, end) to `stamp` inside chunk i, which this content owns."""
        starts, vals = chunk[0], chunk[1]
        a = bisect_left(starts, first)
        k = bisect_left(starts, end, a)
        head = a == 0 or vals[a - 1] != stamp
        tail = False
        after = 0
        if end < self.nsectors:
            if k < len(starts) and starts[k] == end:
                if vals[k] == stamp:
                    k += 1
            else:
                after = vals[k - 1]
                tail = after != stamp
        if a != k:
            del starts[a:k]
            del vals[a:k]
        if tail:
            starts.insert(a, end)
            vals.insert(a, after)
        if head:
            starts.insert(a, first)
            vals.insert(a, stamp)
        if len(starts) > CHUNK_MAX:
            self._split(i, chunk)

    def _split(self, i: int, chunk: _Chunk) -> None:
        """Cut an overfull chunk in two."""
        starts, vals = chunk[0], chunk[1]
        half = len(starts) // 2
        token = self._token
        self._chunks[i : i + 1] = [
            [starts[:half], vals[:half], token, None],
            [starts[half:], vals[half:], token, None],
        ]
        self._mins.insert(i + 1, starts[half])

    def write_stamps(self, first_sector: int, stamps: np.ndarray) -> None:
        """Store stamps sector by sector; 0 entries leave the sector as it is."""
        n = int(stamps.size)
        if n == 0:
            return
        change = np.flatnonzero(stamps[1:] != stamps[:-1]) + 1
        starts = [0, *change.tolist()]
        ends = [*change.tolist(), n]
        vals = stamps[starts].tolist()
        for s, e, v in zip(starts, ends, vals, strict=True):
            if v:
                self.write_sectors(first_sector + s, first_sector + e, v)

    def write_extents(self, runs: list[Extent]) -> None:
        """Store (first, end, stamp) extents (copying extents from another node)."""
        for first, end, stamp in runs:
            if stamp:
                self.write_sectors(first, end, stamp)

    # -- reads -----------------------------------------------------------------------------
    def extents(self, first: int = 0, end: int | None = None) -> list[Extent]:
        """(first, end, stamp) runs of allocated sectors in [first, end), ascending;
        touching runs of one stamp are merged."""
        if self._log is not None:
            self._settle()
        return self._spliced_extents(first, end)

    def _spliced_extents(self, first: int = 0, end: int | None = None) -> list[Extent]:
        """`extents` of the run list alone: the write log's writes left out."""
        end = self.nsectors if end is None else min(end, self.nsectors)
        out: list[Extent] = []
        if first >= end:
            return out
        mins, chunks = self._mins, self._chunks
        nchunks = len(mins)
        c = bisect_right(mins, first) - 1
        starts, vals = chunks[c][0], chunks[c][1]
        i = bisect_right(starts, first) - 1
        lo = first
        v = vals[i]
        while True:
            i += 1
            if i == len(starts):
                c += 1
                if c == nchunks:
                    hi = self.nsectors
                else:
                    starts, vals = chunks[c][0], chunks[c][1]
                    i = 0
                    hi = starts[0]
            else:
                hi = starts[i]
            if hi >= end:
                if v:
                    _append(out, lo, end, v)
                return out
            if v:
                _append(out, lo, hi, v)
            lo, v = hi, vals[i]

    def _run_list_holds(self, first: int, end: int) -> bool:
        """Whether the run list alone (the write log left out) has anything allocated
        in sectors [first, end): `_spliced_extents` answered yes or no, without the
        list."""
        end = min(end, self.nsectors)
        if first >= end:
            return False
        mins, chunks = self._mins, self._chunks
        nchunks = len(mins)
        c = bisect_right(mins, first) - 1
        starts, vals = chunks[c][0], chunks[c][1]
        i = bisect_right(starts, first) - 1
        while True:
            if vals[i]:
                return True
            i += 1
            if i == len(starts):
                c += 1
                if c == nchunks:
                    return False
                starts, vals = chunks[c][0], chunks[c][1]
                i = 0
            if starts[i] >= end:
                return False

    def iter_extents(self, first: int = 0) -> Iterator[Extent]:
        """(first, end, stamp) runs of allocated sectors from `first` on, ascending, one
        by one (a caller that stops early pays only for what it took); touching runs of
        one stamp are not merged."""
        if self._log is not None:
            self._settle()
        mins, chunks = self._mins, self._chunks
        c0 = bisect_right(mins, first) - 1
        i0 = bisect_right(chunks[c0][0], first) - 1
        lo = first
        for c in range(c0, len(mins)):
            starts, vals = chunks[c][0], chunks[c][1]
            nxt = mins[c + 1] if c + 1 < len(mins) else self.nsectors
            for i in range(i0 if c == c0 else 0, len(starts)):
                hi = starts[i + 1] if i + 1 < len(starts) else nxt
                v = vals[i]
                if v and hi > lo:
                    yield lo, hi, v
                lo = hi

    def cluster_summary(self, cluster_bytes: int) -> ClusterSummary:
        """The cluster summary at this cluster size, built now (one pass over the
        extents) unless a write-by-write one is kept already; kept from now on."""
        if self._log is not None:
            self._settle()
        summary = self._summary
        if summary is None or summary.cluster_bytes != cluster_bytes:
            summary = self._summary = ClusterSummary(self, cluster_bytes)
        return summary

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole run list as numpy arrays: (start sectors, stamps), one entry per
        extent including the unallocated ones (stamp 0); an extent ends where the next
        starts, the last one at `nsectors`.  Cached until the next write."""
        if self._log is not None:
            self._settle()
        cached = self._arrays
        if cached is not None and cached[0] == self.version:
            return cached[1], cached[2]
        starts, stamps = self._raw_arrays()
        self._arrays = (self.version, starts, stamps)
        return starts, stamps

    def derived(self) -> dict[Any, Any]:
        """A memo for values computed from this content (the host-file layout), emptied
        by the next write."""
        version, memo = self._derived
        if version != self.version:
            memo = {}
            self._derived = (self.version, memo)
        return memo

    def read(self, first_sector: int, end_sector: int) -> np.ndarray:
        """This node's own stamps for a sector range (0 where unallocated)."""
        end_sector = min(end_sector, self.nsectors)
        out = np.zeros(max(end_sector - first_sector, 0), dtype=np.int32)
        for lo, hi, s in self.extents(first_sector, end_sector):
            out[lo - first_sector : hi - first_sector] = s
        return out

    def stamp_at(self, sector: int) -> int:
        """The stamp of one sector."""
        if self._log is not None:
            self._settle()
        chunk = self._chunks[bisect_right(self._mins, sector) - 1]
        starts, vals = chunk[0], chunk[1]
        return vals[bisect_right(starts, sector) - 1]

    def next_data(self, sector: int) -> int:
        """The first sector at or after `sector` holding data (a stamp that is neither
        unallocated nor zeroes), or `nsectors`: where block status stops saying
        "zero".  A bisection, then a walk over the extents that are not data."""
        if self._log is not None:
            self._settle()
        if sector >= self.nsectors:
            return self.nsectors
        mins, chunks = self._mins, self._chunks
        c = bisect_right(mins, sector) - 1
        starts, vals = chunks[c][0], chunks[c][1]
        i = bisect_right(starts, sector) - 1
        if vals[i] >= FIRST_DATA_STAMP:
            return sector
        while True:
            i += 1
            if i == len(starts):
                c += 1
                if c == len(mins):
                    return self.nsectors
                starts, vals = chunks[c][0], chunks[c][1]
                i = 0
            if vals[i] >= FIRST_DATA_STAMP:
                return int(starts[i])

    def allocated_runs(self) -> list[tuple[int, int]]:
        """(first, end) sector runs this node has allocated, ascending; cached until the
        next write (callers must not change the list)."""
        if self._log is not None:
            self._settle()
        if self._alloc is None:
            self._alloc = merged_runs(self.extents())
        return self._alloc

    def allocated_sectors(self) -> Iterator[tuple[int, int]]:
        """(first, end) sector runs this node has allocated, ascending."""
        return iter(self.allocated_runs())

    def allocated_bytes(self, cluster_bytes: int) -> int:
        """Bytes in clusters holding any allocated sector (what qcow2 block-status says)."""
        per = max(cluster_bytes >> SECTOR_SHIFT, 1)
        count = 0
        last = -1
        for first, end in self.allocated_runs():
            lo = max(first // per, last + 1)
            hi = (end - 1) // per
            if hi >= lo:
                count += hi - lo + 1
                last = hi
        total = count * cluster_bytes
        if last >= 0 and (last + 1) * cluster_bytes > self.size_bytes:
            total -= (last + 1) * cluster_bytes - self.size_bytes
        return total

    def resize(self, size_bytes: int) -> None:
        """Truncate or grow (bdrv_co_truncate): data past a shrink is gone, the growth is
        unallocated."""
        if self._log is not None:
            self._settle()
        old = self.nsectors
        new = -(-size_bytes // SECTOR)
        if new < old:
            self.write_sectors(new, old, UNALLOCATED)
            self.nsectors = new
        elif new > old:
            self.nsectors = new
            self.write_sectors(old, new, UNALLOCATED)
        self.size_bytes = size_bytes
        self._alloc = None
        if self._summary is not None:  # the cluster count changed: counted again
            self._summary.recount(self)

    def clone(self) -> Content:
        """An independent copy (chunks are shared until either side writes)."""
        if self._log is not None:
            self._settle()
        other = Content.__new__(type(self))  # a subclass copies its own slots after
        other.size_bytes, other.nsectors = self.size_bytes, self.nsectors
        other._mins, other._chunks = self._mins, self._chunks
        other._shared = self._shared = True
        other._token = self._token
        other._alloc = self._alloc
        other._arrays = self._arrays
        other._derived = (-1, {})
        other.version = self.version
        other._summary = None
        other._log = None
        return other


class ClusterSummary:
    """What a qcow2 image's L2 tables say, counted and kept up to date write by write:
    how many clusters hold data (a stamp other than zeroes), and how many clusters
    are allocated (any stamp) in each L2 table's region (`cluster_bytes / 8`
    clusters).  The host-file layout (`sim.model.host_file`) reads these totals
    instead of passing over every extent.

    A write counts the clusters it touches before and after it changes the content;
    a write inside one cluster and one chunk of the run list (the guest's usual
    request) looks at that cluster's few extents only.  Cost grows with the extents
    a write replaces and the L2 regions it spans, never with its bytes."""

    __slots__ = ("cluster_bytes", "per", "per_region", "data", "regions", "_in")

    def __init__(self, content: Content, cluster_bytes: int) -> None:
        self.cluster_bytes = cluster_bytes
        self.per = max(cluster_bytes >> SECTOR_SHIFT, 1)  # sectors in a cluster
        self.per_region = max(cluster_bytes // 8, 1)  # clusters one L2 table maps
        self.data = 0  # clusters holding data
        self.regions = 0  # L2 regions with an allocated cluster
        self._in: dict[int, int] = {}  # allocated clusters per L2 region (nonzero only)
        self.recount(content)

    def recount(self, content: Content) -> None:
        """Count the content's clusters from scratch (a pass over its extents)."""
        self.data = self.regions = 0
        self._in = {}
        if content.nsectors:
            self.apply((0, {}), self.tally(content, 0, content.nsectors))

    def count(self, starts: np.ndarray, stamps: np.ndarray, nsectors: int) -> None:
        """Count from scratch, with numpy, from a run list (`Content.arrays`)."""
        per = self.per
        c0 = starts // per  # first and end cluster each extent touches
        c1 = np.empty_like(starts)
        c1[:-1] = starts[1:]
        c1[-1:] = nsectors
        c1 -= 1
        c1 //= per
        c1 += 1
        data = stamps >= FIRST_DATA_STAMP
        d0, d1 = _cluster_runs(c0[data], c1[data])
        self.data = int((d1 - d0).sum())
        del d0, d1, data
        alloc = stamps != UNALLOCATED
        a0, a1 = _cluster_runs(c0[alloc], c1[alloc])
        del c0, c1, alloc
        pr = self.per_region
        r0 = a0 // pr
        spans = (a1 - 1) // pr - r0 + 1
        total = int(spans.sum())
        base = np.repeat(np.cumsum(spans) - spans, spans)
        region = np.repeat(r0, spans) + np.arange(total, dtype=np.int64) - base
        lo = np.maximum(np.repeat(a0, spans), region * pr)
        hi = np.minimum(np.repeat(a1, spans), (region + 1) * pr)
        if total:
            cut = np.flatnonzero(run_heads(region))
            counts = np.add.reduceat(hi - lo, cut)
            self._in = dict(zip(region[cut].tolist(), counts.tolist(), strict=True))
        else:
            self._in = {}
        self.regions = len(self._in)

    def add_data(self, starts: np.ndarray, stamps: np.ndarray, clusters: np.ndarray) -> None:
        """The counts after data writes that touch `clusters` (ascending, distinct) of
        the run list `starts`/`stamps` (before the writes), each of which holds data
        afterwards: those that held none count as data clusters now, those that
        were free count as allocated in their L2 region.  Cost grows with the
        clusters and the run list's extents."""
        if not clusters.size:
            return
        per = self.per
        lo = np.searchsorted(starts, clusters * per, side="right") - 1
        hi = np.searchsorted(starts, (clusters + 1) * per)  # extents [lo, hi) meet each
        before = np.zeros(stamps.size + 1, dtype=np.int64)  # data extents before each
        np.cumsum(stamps >= FIRST_DATA_STAMP, out=before[1:])
        self.data += int(clusters.size - np.count_nonzero(before[hi] > before[lo]))
        np.cumsum(stamps != UNALLOCATED, out=before[1:])  # allocated extents before each
        fresh = clusters[before[hi] == before[lo]] // self.per_region
        del lo, hi, before
        if not fresh.size:
            return
        heads = np.flatnonzero(run_heads(fresh))
        sizes = np.diff(heads, append=fresh.size)
        counts = self._in
        for r, k in zip(fresh[heads].tolist(), sizes.tolist(), strict=True):
            was = counts.get(r, 0)
            counts[r] = was + k
            self.regions += not was

    def tally(self, content: Content, first: int, end: int) -> tuple[int, dict[int, int]]:
        """(data clusters, allocated clusters per region) among the clusters that
        sectors [first, end) touch."""
        per, pr = self.per, self.per_region
        data = 0
        alloc: dict[int, int] = {}
        cur = -1  # the cluster the last extent ended in, not yet counted
        cur_cls = 0
        for lo, hi, v in content.extents(first // per * per, ((end - 1) // per + 1) * per):
            cls = 2 if v >= FIRST_DATA_STAMP else 1
            c0, c1 = lo // per, (hi - 1) // per
            if c0 == cur:
                if cls > cur_cls:
                    cur_cls = cls
                if c1 == c0:
                    continue
                c0 += 1
            if cur >= 0:
                data += cur_cls == 2
                r = cur // pr
                alloc[r] = alloc.get(r, 0) + 1
            if c1 > c0:  # clusters c0 .. c1-1: this extent only
                if cls == 2:
                    data += c1 - c0
                for r in range(c0 // pr, (c1 - 1) // pr + 1):
                    alloc[r] = alloc.get(r, 0) + min(c1, (r + 1) * pr) - max(c0, r * pr)
            cur, cur_cls = c1, cls
        if cur >= 0:
            data += cur_cls == 2
            r = cur // pr
            alloc[r] = alloc.get(r, 0) + 1
        return data, alloc

    def apply(self, before: tuple[int, dict[int, int]], after: tuple[int, dict[int, int]]) -> None:
        """Replace the counts `before` (a tally) by `after` (a tally of the same range)."""
        self.data += after[0] - before[0]
        counts = self._in
        old, new = before[1], after[1]
        for r in old.keys() | new.keys():
            delta = new.get(r, 0) - old.get(r, 0)
            if delta:
                was = counts.get(r, 0)
                now = was + delta
                if now:
                    counts[r] = now
                else:
                    del counts[r]
                self.regions += (now > 0) - (was > 0)

    def change(self, cluster: int, old: int, new: int) -> None:
        """One cluster went from class `old` to `new` (0 free, 1 zeroes only, 2 data)."""
        self.data += (new == 2) - (old == 2)
        if not old or not new:
            r = cluster // self.per_region
            counts = self._in
            now = counts.get(r, 0) + (1 if new else -1)
            if now:
                counts[r] = now
                self.regions += now == 1
            else:
                del counts[r]
                self.regions -= 1


def touched_clusters(firsts: np.ndarray, ends: np.ndarray, per: int, unsorted: bool) -> np.ndarray:
    """The clusters (of `per` sectors) that writes of sectors [firsts[i], ends[i])
    touch, ascending and distinct; `firsts` ascending unless `unsorted`."""
    lo = firsts // per
    counts = (ends - 1) // per + 1 - lo
    total = int(counts.sum())
    if total != lo.size:  # some write reaches more than one cluster
        lo = np.repeat(lo, counts) + (
            np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        unsorted = True
    if unsorted:
        lo = np.sort(lo, kind="stable")
    return lo[run_heads(lo)]


def _cluster_runs(c0: np.ndarray, c1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ascending cluster runs [first, end) made of the clusters [c0, c1) that
    ascending disjoint extents touch (neighbours may share a cluster)."""
    if not c0.size:
        return c0, c1
    new = np.empty(c0.size, dtype=bool)
    new[0] = True
    np.greater(c0[1:], c1[:-1], out=new[1:])
    heads = np.flatnonzero(new)
    tails = np.empty_like(heads)
    tails[:-1] = heads[1:] - 1
    tails[-1] = c0.size - 1
    return c0[heads], c1[tails]


def _append(out: list[Extent], lo: int, hi: int, stamp: int) -> None:
    if out and out[-1][1] == lo and out[-1][2] == stamp:
        out[-1] = (out[-1][0], hi, stamp)
    else:
        out.append((lo, hi, stamp))


def merged_runs(extents: list[Extent]) -> list[tuple[int, int]]:
    """(first, end) sector runs covered by ascending extents, touching ones joined."""
    runs: list[tuple[int, int]] = []
    for lo, hi, _ in extents:
        if runs and runs[-1][1] == lo:
            runs[-1] = (runs[-1][0], hi)
        else:
            runs.append((lo, hi))
    return runs


def new_content(size_bytes: int) -> Content:
    """An empty (unallocated) content for a disk of this size."""
    return Content(size_bytes)


def chain_extents(chain: list[Content], first_sector: int, end_sector: int) -> list[Extent]:
    """(first, end, stamp) runs a read through a backing chain (top first) sees in
    [first, end), ascending; sectors no layer has allocated are left out."""
    if not chain:
        return []
    end_sector = min(end_sector, chain[0].nsectors)
    if len(chain) == 1:
        return chain[0].extents(first_sector, end_sector)
    found: list[Extent] = []
    holes = [(first_sector, end_sector)]
    for depth, layer in enumerate(chain):
        if depth and layer.nsectors <= first_sector:
            break
        limit = layer.nsectors
        next_holes: list[tuple[int, int]] = []
        for hlo, hhi in holes:
            if hlo >= limit:
                next_holes.append((hlo, hhi))
                continue
            cur = hlo
            for lo, hi, s in layer.extents(hlo, min(hhi, limit)):
                if lo > cur:
                    next_holes.append((cur, lo))
                found.append((lo, hi, s))
                cur = hi
            if cur < hhi:
                next_holes.append((cur, hhi))
        holes = next_holes
        if not holes:
            break
    found.sort()
    return found


def chain_next_data(chain: list[Content], sector: int) -> int:
    """The first sector at or after `sector` where any layer of a backing chain (top
    first) holds data, or the top's `nsectors` (a layer's zeroes over data below
    still count as data: the answer errs towards data)."""
    if not chain:
        return sector
    top = chain[0].nsectors
    return min(top, min(layer.next_data(sector) for layer in chain))


def read_through(chain: list[Content], first_sector: int, end_sector: int) -> np.ndarray:
    """Stamps a read sees through a backing chain (top first); 0 = reads as zeroes."""
    if chain:
        end_sector = min(end_sector, chain[0].nsectors)
    out = np.zeros(max(end_sector - first_sector, 0), dtype=np.int32)
    for lo, hi, s in chain_extents(chain, first_sector, end_sector):
        out[lo - first_sector : hi - first_sector] = s
    return out


class WindowContent(Content):
    """A raw node's view of its file with `offset` / `size` (block/raw-format.c): the
    sectors [first, first + nsectors) of `base`, the file's own content, at 0.  Writes
    and reads go to `base` shifted; nothing is stored here."""

    __slots__ = ("base", "first")
    logs_writes: ClassVar[bool] = False  # writes go to `base` at once

    def __init__(self, base: Content, offset_bytes: int, size_bytes: int) -> None:
        self.base = base
        self.first = offset_bytes >> SECTOR_SHIFT
        self.size_bytes = size_bytes
        self.nsectors = -(-size_bytes // SECTOR)
        self._derived = (-1, {})
        self._log = None  # writes go to `base` at once

    @property  # type: ignore[override]
    def version(self) -> int:  # the file's: a write through another node changes it too
        return self.base.version

    @version.setter
    def version(self, value: int) -> None:
        pass

    def write(self, offset: int, length: int, stamp: int) -> None:
        first, end = sector_span(offset, length)
        self.write_sectors(first, end, stamp)

    def write_sectors(self, first: int, end: int, stamp: int) -> None:
        end = min(end, self.nsectors)
        if first < end:
            self.base.write_sectors(first + self.first, end + self.first, stamp)

    def extents(self, first: int = 0, end: int | None = None) -> list[Extent]:
        end = self.nsectors if end is None else min(end, self.nsectors)
        shift = self.first
        return [
            (lo - shift, hi - shift, s)
            for lo, hi, s in self.base.extents(first + shift, end + shift)
        ]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        starts, stamps = [0], [UNALLOCATED]
        for lo, hi, s in self.extents():
            if starts[-1] == lo:
                stamps[-1] = s
            else:
                starts.append(lo)
                stamps.append(s)
            starts.append(hi)
            stamps.append(UNALLOCATED)
        if starts[-1] >= self.nsectors and len(starts) > 1:
            starts.pop()
            stamps.pop()
        return np.array(starts, dtype=np.int64), np.array(stamps, dtype=np.int64)

    def derived(self) -> dict[Any, Any]:
        version, memo = self._derived
        if version != self.version:
            memo = {}
            self._derived = (self.version, memo)
        return memo

    def stamp_at(self, sector: int) -> int:
        return self.base.stamp_at(sector + self.first)

    def next_data(self, sector: int) -> int:
        if sector >= self.nsectors:
            return self.nsectors
        return min(self.base.next_data(sector + self.first) - self.first, self.nsectors)

    def allocated_runs(self) -> list[tuple[int, int]]:
        return merged_runs(self.extents())

    def resize(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.nsectors = -(-size_bytes // SECTOR)

    def clone(self) -> Content:
        """A plain content holding what the window shows now."""
        copy = Content(self.size_bytes)
        copy.write_extents(self.extents())
        return copy
