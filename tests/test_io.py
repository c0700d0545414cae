"""sim.model.io: the one guest I/O path tells its observers every write and discard."""

from __future__ import annotations

from typing import Any

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
