"""sim.model.io: the one guest I/O path tells its observers every write and discard."""

from __future__ import annotations

from typing import Any

import pytest

from sim.model import io
from sim.model.content import ZERO_STAMP
from sim.model.state import BlockState


def _observed(discard_mode: str) -> tuple[BlockState, list[tuple[Any, ...]]]:
    state = BlockState()
    state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 20, discard_mode)
    seen: list[tuple[Any, ...]] = []
    state.write_observers.append(lambda bb, root, off, n, stamp: seen.append(("w", off, n, stamp)))
    state.discard_observers.append(lambda bb, root, off, n, z: seen.append(("d", off, n, z)))
    return state, seen


def test_writes_and_zero_writes_are_reported() -> None:
    state, seen = _observed("ignore")
    bb = state.graph.backends["drive0"]
    stamp = state.new_stamp(0x11)
    assert io.write(state, bb, bb.root, 0, 4096, stamp).ok  # type: ignore[arg-type]
    assert io.write(state, None, state.graph.node("fmt0"), 4096, 512, ZERO_STAMP).ok  # type: ignore[arg-type]
    assert seen == [("w", 0, 4096, stamp), ("w", 4096, 512, ZERO_STAMP)]


def test_a_discard_through_a_node_name_is_reported() -> None:
    # discard=unmap zeroes data: a zero-write for the write observers, and a discard
    state, seen = _observed("unmap")
    fmt0 = state.graph.node("fmt0")
    assert fmt0 is not None
    assert io.discard(state, None, fmt0, 0, 65536).ok
    assert seen == [("w", 0, 65536, ZERO_STAMP), ("d", 0, 65536, True)]


def test_a_discard_that_zeroes_nothing_is_still_a_discard() -> None:
    state, seen = _observed("ignore")
    bb = state.graph.backends["drive0"]
    assert io.discard(state, bb, bb.root, 0, 65536).ok  # type: ignore[arg-type]
    assert seen == [("d", 0, 65536, False)]


def test_a_failed_request_is_not_reported() -> None:
    state, seen = _observed("unmap")
    bb = state.graph.backends["drive0"]
    assert not io.write(state, bb, bb.root, 1 << 20, 512, state.new_stamp()).ok  # type: ignore[arg-type]
    assert not io.discard(state, bb, bb.root, -512, 512).ok  # type: ignore[arg-type]
    assert seen == []


def _batch_state(
    threshold: bool, file_bitmap: bool = True
) -> tuple[BlockState, list[tuple[Any, ...]]]:
    """A 1 GiB qcow2 drive with dirty bitmaps of several granularities on its backend,
    its format node (one disabled, one frozen with a successor) and (`file_bitmap`)
    its protocol node, which sees qcow2's host offsets: a batch goes one by one."""
    from sim.model.bitmap import DirtyBitmap

    state = BlockState()
    bb = state.add_drive("drive0", "fmt0", "proto0", "qcow2", 1 << 30)
    root = bb.root
    assert root is not None and root.file is not None
    size = root.size_bytes
    bb.bitmaps.append(DirtyBitmap("on-bb", 65536, size))
    for g in (512, 4096, 65536, 1 << 20):
        root.bitmaps.append(DirtyBitmap(f"g{g}", g, size))
    root.bitmaps.append(DirtyBitmap("off", 4096, size, enabled=False))
    frozen = DirtyBitmap("frozen", 65536, size)
    frozen.successor = DirtyBitmap(None, 65536, size)
    root.bitmaps.append(frozen)
    if file_bitmap:
        root.file.bitmaps.append(DirtyBitmap("on-file", 8192, root.file.size_bytes))  # small
    if threshold:
        root.write_threshold = 600 << 20
    seen: list[tuple[Any, ...]] = []
    state.write_observers.append(lambda *args: seen.append(args[2:]))
    return state, seen


def _batch_outcome(state: BlockState) -> Any:
    bb = state.graph.backends["drive0"]
    root = bb.root
    assert root is not None and root.file is not None and root.content is not None
    bitmaps = [*bb.bitmaps, *root.bitmaps, *root.file.bitmaps]
    bitmaps += [b.successor for b in bitmaps if b.successor is not None]
    summary = root.content.cluster_summary(65536)
    return (
        root.content.extents(),
        [b.bits.tobytes() for b in bitmaps],
        root.wr_highest_offset,
        root.file.host_written,
        (summary.data, summary.regions),
        list(state.stamps._patterns),
    )


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_of_writes_is_the_writes_one_by_one(seed: int) -> None:
    """Random batches (overlapping, repeated, unaligned offsets or at multiples of the
    length; lengths within and across granules) give the contents, bitmaps, high-water marks, cluster counts,
    stamps and observer calls of the same writes made one by one."""
    import random

    rng = random.Random(seed)
    at_multiples = random.Random(-seed)
    threshold = seed % 4 == 3  # a write threshold on the path: the batch goes one by one
    file_bitmap = seed % 2 == 1  # without one, the batch marks the bitmaps at once
    batched, seen_b = _batch_state(threshold, file_bitmap)
    single, seen_s = _batch_state(threshold, file_bitmap)
    for _ in range(20):
        length = rng.choice([512, 4096, 4096, 65536, 3 * 65536 + 512])
        n = rng.choice([1, 2, 16, 300])
        blocks = ((1 << 30) - length) // 512
        offsets = [rng.randrange(blocks) * 512 for _ in range(n)]
        if at_multiples.random() < 0.4:  # at multiples of the length (granules may be smaller)
            offsets = [o // length * length for o in offsets]
        if rng.random() < 0.3:
            offsets += offsets[: n // 2]  # the same places again, later in the batch
        pattern = rng.randrange(1, 256)
        stamps = batched.stamps.new_many(pattern, len(offsets))
        results = io.write_batch(
            batched, batched.graph.backends["drive0"], _root(batched), offsets, length, stamps
        )
        assert results == [io.OK] * len(offsets)
        for off in offsets:
            stamp = single.new_stamp(pattern)
            assert io.write(
                single, single.graph.backends["drive0"], _root(single), off, length, stamp
            ).ok
    assert _batch_outcome(batched) == _batch_outcome(single)
    assert seen_b == seen_s
    assert len(seen_b) > 1000


def _root(state: BlockState) -> Any:
    return state.graph.backends["drive0"].root


@pytest.mark.parametrize("window", [{}, {"offset": 1 << 20, "size": 32 << 20}])
def test_a_batch_through_raw_over_qcow2_is_the_writes_one_by_one(window: dict[str, int]) -> None:
    """Writes through raw over a qcow2 node land in the qcow2 node (at raw's offset
    plus theirs): a bitmap on the qcow2 node's file sees host offsets, one on the
    qcow2 node sees the shifted guest offsets.  A burst through the raw node must
    give the bitmaps and high-water marks of the same writes one by one."""
    import sim.qmp.commands  # noqa: F401
    from sim.engine.machine import Machine
    from sim.qmp.dispatch import Monitor

    def machine() -> Machine:
        m = Machine(seed=0)
        m.state.add_drive("drive0", "fmt0", "proto0", "qcow2", 64 << 20)
        mon = Monitor(m)
        for node, name in (("proto0", "host"), ("fmt0", "guest")):
            args = {"node": node, "name": name, "granularity": 65536}
            assert "return" in mon.execute({"execute": "block-dirty-bitmap-add", "arguments": args})
        raw = {"driver": "raw", "node-name": "r", "file": "fmt0", **window}
        assert "return" in mon.execute({"execute": "blockdev-add", "arguments": raw})
        return m

    def outcome(m: Machine) -> Any:
        g = m.state.graph
        nodes = [g.node("fmt0"), g.node("proto0"), g.node("r")]
        return [(n.wr_highest_offset, [b.bits.tobytes() for b in n.bitmaps]) for n in nodes if n]

    offsets = [0, 5 << 20, 3 << 20, 7 << 20, 5 << 20]
    batched, single = machine(), machine()
    stamps = batched.state.stamps.new_many(9, len(offsets))
    root_b = batched.state.graph.node("r")
    assert root_b is not None
    assert io.write_batch(batched.state, None, root_b, offsets, 65536, stamps) == [io.OK] * 5
    root_s = single.state.graph.node("r")
    assert root_s is not None
    for off in offsets:
        assert io.write(single.state, None, root_s, off, 65536, single.state.new_stamp(9)).ok
    assert outcome(batched) == outcome(single)
    guest = batched.state.graph.node("fmt0")
    assert guest is not None and guest.bitmaps[0].count_bytes() == 4 * 65536
