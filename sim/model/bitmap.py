"""Dirty bitmaps: QEMU's BdrvDirtyBitmap, one bit per `granularity` bytes.

Bits live in a little-endian `bitarray`: bit i is chunk i, packed LSB first,
which is exactly the layout of QEMU's bitmap words serialised little-endian,
so `sha256()` equals `x-debug-block-dirty-bitmap-sha256` (QEMU 7.2,
block/dirty-bitmap.c `bdrv_dirty_bitmap_sha256` hashes `ceil(nbits/64)`
64-bit words).  numpy is used only for merges across granularities of bitmaps with many bits set.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from bitarray import bitarray
from bitarray.util import intervals

from sim.errors import QMPError

if TYPE_CHECKING:
    import numpy as np
else:
    from sim.lazy import numpy as np

MIN_GRANULARITY = 512
MAX_NAME_BYTES = 1023  # BDRV_BITMAP_MAX_NAME_SIZE
# Bits are held densely, as QEMU's HBitmap holds them.  The simulator's own
# limits (QEMU has none but memory): one bitmap at most MAX_BITMAP_BITS bits
# (256 MiB), all named bitmaps of a machine together at most MAX_TOTAL_BITS (1 GiB).
MAX_BITMAP_BITS = 1 << 31
MAX_TOTAL_BITS = 1 << 33


def check_bits(size_bytes: int, granularity: int, what: str = "a dirty bitmap") -> int:
    """The bit count of a bitmap over `size_bytes`; QMPError past MAX_BITMAP_BITS."""
    nbits = -(-size_bytes // granularity)
    if nbits > MAX_BITMAP_BITS:
        raise QMPError(
            f"blocksim limit: {what} over {size_bytes} bytes at granularity {granularity} "
            f"needs {nbits} bits, more than the {MAX_BITMAP_BITS} (2^31) the simulator "
            "holds per bitmap; use a larger granularity or a smaller disk"
        )
    return nbits


class DirtyBitmap:
    """A QEMU dirty bitmap (BdrvDirtyBitmap) on one node.

    Flags mirror QEMU's: `enabled` (records writes), `persistent` (to be stored
    in a qcow2 image), `readonly` (a persistent bitmap of a read-only image),
    `inconsistent` (loaded from an image left in use).  `successor` is the
    anonymous child that records writes while the bitmap is frozen by a backup
    job; `abdicated_to` is that successor once it has taken over the bitmap's name
    and place at the end of the job (the frozen bitmap itself is released); `txn_hold` is set while a transaction's `remove` holds it;
    `export_hold` counts the block exports that serve it.
    """

    __slots__ = (
        "name",
        "granularity",
        "size_bytes",
        "bits",
        "enabled",
        "persistent",
        "readonly",
        "inconsistent",
        "successor",
        "abdicated_to",
        "txn_hold",
        "export_hold",
        "_shift",
        "stale_head",
        "freed",
        "stored",
    )

    def __init__(
        self,
        name: str | None,
        granularity: int,
        size_bytes: int,
        *,
        enabled: bool = True,
        persistent: bool = False,
    ) -> None:
        self.name = name
        self.granularity = granularity
        self.size_bytes = size_bytes
        self._shift = granularity.bit_length() - 1
        nbits = check_bits(size_bytes, granularity)
        self.bits = bitarray(nbits, endian="little")
        self.bits.setall(0)
        self.enabled = enabled
        self.persistent = persistent
        self.readonly = False
        self.inconsistent = False
        self.successor: DirtyBitmap | None = None
        self.abdicated_to: DirtyBitmap | None = None
        self.txn_hold = False
        self.export_hold = 0  # block exports serving this bitmap
        self.stale_head: object | None = None  # qemu-2.5 list-head bug (policy.py)
        self.freed = False  # released while still listed somewhere (qemu-2.5 bug)
        self.stored = False  # written to its qcow2 header (persistent, node reopened read-only)

    # -- state, as QEMU reports it -------------------------------------------------
    @property
    def busy(self) -> bool:
        """`busy` in query output: frozen with a successor, held by a transaction, or
        exported over NBD."""
        return self.successor is not None or self.txn_hold or self.export_hold > 0

    @property
    def recording(self) -> bool:
        """`recording`: this bitmap, or while frozen its successor, records writes."""
        if self.successor is not None:
            return self.successor.enabled
        return self.enabled and not self.inconsistent

    @property
    def nbits(self) -> int:
        return len(self.bits)

    def count_bytes(self) -> int:
        """`count`: dirty bits times granularity (a partial last chunk counts whole)."""
        return 0 if self.inconsistent else self.bits.count() * self.granularity

    def sha256(self) -> str:
        """The hash `x-debug-block-dirty-bitmap-sha256` returns."""
        if self.inconsistent:
            data = bytes(-(-self.nbits // 64) * 8)
        else:
            data = self.bits.tobytes()
            pad = (-len(data)) % 8
            if pad:
                data += bytes(pad)
        return hashlib.sha256(data).hexdigest()

    # -- writes ----------------------------------------------------------------------
    def record_write(self, offset: int, length: int) -> None:
        """A write of [offset, offset+length) reached this bitmap's node."""
        target = self.successor or self
        if target.enabled and length > 0:
            shift = target._shift
            first = offset >> shift
            last = (offset + length - 1) >> shift
            if first != last or first < 0:
                target.bits[first : last + 1] = 1
                return
            try:  # one granule (the usual write): an index is cheaper than a slice
                target.bits[first] = 1
            except IndexError:  # past the end of a shorter node's bitmap: as the slice
                pass

    def clear(self) -> None:
        self.bits.setall(0)

    def resize(self, size_bytes: int) -> None:
        """bdrv_dirty_bitmap_truncate: bits past a shrink are dropped, growth is clean;
        a frozen bitmap's successor follows."""
        nbits = -(-size_bytes // self.granularity)
        if nbits < len(self.bits):
            del self.bits[nbits:]
        else:
            grown = bitarray(nbits - len(self.bits), endian="little")
            grown.setall(0)
            self.bits.extend(grown)
        self.size_bytes = size_bytes
        if self.successor is not None:
            self.successor.resize(size_bytes)

    def get(self, offset: int) -> bool:
        return bool(self.bits[offset >> self._shift])

    # -- whole-bitmap operations -------------------------------------------------------
    def copy_bits(self) -> bitarray:
        return self.bits.copy()

    def restore_bits(self, saved: bitarray) -> None:
        self.bits = saved.copy()

    def merge_from(self, source: DirtyBitmap) -> None:
        """self |= source, converting granularity as QEMU's hbitmap_merge does."""
        self.bits |= bits_at_granularity(source, self.granularity)


# Up to this many set bits, a change of granularity goes run by run (no array of
# every bit); beyond, numpy converts the whole bitmap at once.
_RUNWISE_MAX_BITS = 4096


def bits_at_granularity(source: DirtyBitmap, granularity: int) -> bitarray:
    """The source's dirty set expressed at another granularity (same disk size)."""
    if source.granularity == granularity:
        return source.bits
    nbits = -(-source.size_bytes // granularity)
    bits = source.bits
    if bits.count() <= _RUNWISE_MAX_BITS:
        out = bitarray(nbits, endian="little")
        out.setall(0)
        if source.granularity < granularity:
            coarser = granularity // source.granularity
            for value, start, stop in intervals(bits):
                if value:
                    out[start // coarser : (stop - 1) // coarser + 1] = 1
        else:
            finer = source.granularity // granularity
            for value, start, stop in intervals(bits):
                if value:
                    out[start * finer : stop * finer] = 1
        return out
    src = np.unpackbits(np.frombuffer(bits.tobytes(), dtype=np.uint8), bitorder="little")[
        : source.nbits
    ].astype(bool)
    if source.granularity < granularity:
        ratio = granularity // source.granularity
        padded = np.zeros(nbits * ratio, dtype=bool)
        padded[: src.size] = src
        dst = padded.reshape(nbits, ratio).any(axis=1)
    else:
        ratio = source.granularity // granularity
        dst = np.repeat(src, ratio)[:nbits]
    out = bitarray(endian="little")
    out.frombytes(np.packbits(dst, bitorder="little").tobytes())
    del out[nbits:]
    return out


def valid_granularity(granularity: int) -> bool:
    """QEMU: a power of two, at least 512 (and it must fit uint32)."""
    return MIN_GRANULARITY <= granularity < (1 << 32) and granularity & (granularity - 1) == 0
