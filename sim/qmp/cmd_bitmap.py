"""block-dirty-bitmap-* and x-debug-block-dirty-bitmap-sha256 (qapi/block-core.json, 7.2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.model import bitmap_ops
from sim.qmp.dispatch import command

if TYPE_CHECKING:
    from sim.engine.machine import Machine

MERGE_CRASH_WARNING = (
    "real QEMU 7.2 crashes (SIGSEGV) on block-dirty-bitmap-merge with an empty "
    "'bitmaps' list; blocksim refuses it instead"
)


def bitmap_add(m: Machine, a: dict[str, Any]) -> bitmap_ops.Undo:
    s = m.state
    _, _, undo = bitmap_ops.add(
        s.graph,
        s.policy,
        a["node"],
        a["name"],
        a.get("granularity"),
        bool(a.get("persistent", False)),
        bool(a.get("disabled", False)),
    )
    return undo


def bitmap_remove(m: Machine, a: dict[str, Any], *, release: bool = True) -> bitmap_ops.Undo:
    s = m.state
    _, undo = bitmap_ops.remove(s.graph, s.policy, a["node"], a["name"], release=release)
    return undo


def bitmap_clear(m: Machine, a: dict[str, Any]) -> bitmap_ops.Undo:
    return bitmap_ops.clear(m.state.graph, m.state.policy, a["node"], a["name"])


def bitmap_enable(m: Machine, a: dict[str, Any]) -> bitmap_ops.Undo:
    return bitmap_ops.set_enabled(m.state.graph, m.state.policy, a["node"], a["name"], True)


def bitmap_disable(m: Machine, a: dict[str, Any]) -> bitmap_ops.Undo:
    return bitmap_ops.set_enabled(m.state.graph, m.state.policy, a["node"], a["name"], False)


def bitmap_merge(m: Machine, a: dict[str, Any]) -> bitmap_ops.Undo:
    if not a["bitmaps"]:
        m.state.warnings.append(MERGE_CRASH_WARNING)
        raise QMPError(
            "blocksim: refusing block-dirty-bitmap-merge with an empty 'bitmaps' "
            "list (real QEMU 7.2 crashes with SIGSEGV here)"
        )
    return bitmap_ops.merge(m.state.graph, m.state.policy, a["node"], a["target"], a["bitmaps"])


def _register(name: str, fn: Callable[[Machine, dict[str, Any]], bitmap_ops.Undo]) -> None:
    """The QMP command runs the operation and drops its undo (no transaction)."""

    def handler(m: Machine, a: dict[str, Any]) -> None:
        fn(m, a)

    command(name)(handler)


_register("block-dirty-bitmap-add", bitmap_add)
_register("block-dirty-bitmap-remove", bitmap_remove)
_register("block-dirty-bitmap-clear", bitmap_clear)
_register("block-dirty-bitmap-enable", bitmap_enable)
_register("block-dirty-bitmap-disable", bitmap_disable)
_register("block-dirty-bitmap-merge", bitmap_merge)


@command("x-debug-block-dirty-bitmap-sha256")
def _sha256(m: Machine, a: dict[str, Any]) -> dict[str, str]:
    return {"sha256": bitmap_ops.sha256(m.state.graph, m.state.policy, a["node"], a["name"])}
