"""DirtyBitmap against QEMU 7.2's numbers (verified on the binary)."""

from __future__ import annotations

import pytest

from sim.model.bitmap import DirtyBitmap, bits_at_granularity, valid_granularity

MIB = 1 << 20


@pytest.mark.parametrize(
    "size, bits, sha",
    [
        (64 * MIB, [], "38723a2e5e8a17aa7950dc008209944e898f69a7bd10a23c839d341e935fd5ca"),
        (MIB + 512, [], "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"),
        (MIB + 512, [0, 1], "35be322d094f9d154a8aba4733b8497f180353bd7ae7b0a15f90b586b549f28b"),
    ],
)
def test_sha256_matches_qemu(size: int, bits: list[int], sha: str) -> None:
    bm = DirtyBitmap("b", 65536, size)
    for b in bits:
        bm.record_write(b * 65536, 1)
    assert bm.sha256() == sha


def test_bm_lifecycle_hash_from_real_qemu() -> None:
    # scenarios/qemu-7.2/bm-lifecycle-basic: writes at 0 (64k) and 1M (128k)
    bm = DirtyBitmap("b0", 65536, 64 * MIB)
    bm.record_write(0, 65536)
    bm.record_write(MIB, 131072)
    assert bm.sha256() == "669f961c990d0d3e39c6ed048f7276db5d6dc2e08dece8379934e62aeb525997"
    assert bm.count_bytes() == 3 * 65536


def test_unaligned_write_marks_every_touched_chunk() -> None:
    coarse, fine = DirtyBitmap("a", 65536, 64 * MIB), DirtyBitmap("b", 512, 64 * MIB)
    for bm in (coarse, fine):
        bm.record_write(200000, 1)
    assert coarse.count_bytes() == 65536 and fine.count_bytes() == 512
    straddle = DirtyBitmap("c", 65536, 64 * MIB)
    straddle.record_write(65535, 2)
    assert straddle.count_bytes() == 2 * 65536


def test_a_write_past_the_bitmaps_end_marks_what_is_inside() -> None:
    """A node's bitmap can be shorter than the offsets written (a protocol node's,
    marked before it grows): granules past its end are not there to mark."""
    bm = DirtyBitmap("a", 65536, MIB)
    bm.record_write(MIB, 4096)  # one granule, past the end
    bm.record_write(5 * MIB, 3 * 65536)
    assert bm.count_bytes() == 0
    bm.record_write(MIB - 4096, 8192)  # the last granule, and one past the end
    assert bm.count_bytes() == 65536 and bm.bits[-1]


def test_disabled_bitmap_records_nothing_but_successor_does() -> None:
    bm = DirtyBitmap("b", 65536, MIB, enabled=False)
    bm.record_write(0, 4096)
    assert bm.count_bytes() == 0 and not bm.recording
    bm.enabled = True
    bm.successor = DirtyBitmap(None, 65536, MIB)
    bm.record_write(0, 4096)
    assert bm.count_bytes() == 0 and bm.successor.count_bytes() == 65536
    assert bm.busy and bm.recording


def test_merge_across_granularities() -> None:
    fine = DirtyBitmap("f", 4096, 64 * MIB)
    fine.record_write(8192, 1)
    coarse = DirtyBitmap("c", 65536, 64 * MIB)
    coarse.merge_from(fine)
    assert coarse.count_bytes() == 65536
    back = DirtyBitmap("g", 4096, 64 * MIB)
    back.merge_from(coarse)
    assert back.count_bytes() == 65536  # 16 bits of 4 KiB
    assert bits_at_granularity(coarse, 65536) is coarse.bits


def test_partial_last_chunk_counts_whole() -> None:
    bm = DirtyBitmap("b", 65536, MIB + 512)
    bm.record_write(MIB, 512)
    assert bm.count_bytes() == 65536 and bm.nbits == 17


@pytest.mark.parametrize(
    "g, ok",
    [
        (512, True),
        (2**31, True),
        (0, False),
        (256, False),
        (1000, False),
        (513, False),
        (2**32 - 1, False),
    ],
)
def test_granularity_rule(g: int, ok: bool) -> None:
    assert valid_granularity(g) is ok
