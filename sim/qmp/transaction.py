"""`transaction` and the commands QEMU 7.2 runs as one-action transactions.

blockdev.c (7.2): `qmp_transaction` drains all nodes, prepares each action in
list order (each prepare already changes state), and on the first failure
aborts every prepared action in reverse order, then cleans up; on success it
commits them in order, then cleans up.  `blockdev-snapshot-sync`,
`blockdev-snapshot`, `drive-backup` and `blockdev-backup` go through
`blockdev_do_action`, i.e. this same path with a single action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.model import drain, perms, snapshot
from sim.qmp import cmd_bitmap
from sim.qmp.cmd_query import node_filename
from sim.qmp.dispatch import command

if TYPE_CHECKING:
    from sim.engine.machine import Machine
    from sim.model.bitmap import DirtyBitmap


def _nothing() -> None:
    return None


@dataclass
class Prepared:
    """A prepared action: what to run on abort, commit and clean."""

    abort: Callable[[], None] = _nothing
    commit: Callable[[], None] = _nothing
    clean: Callable[[], None] = _nothing


@dataclass
class TxnContext:
    """What actions of one transaction share."""

    grouped: bool = False
    new_jobs: list[Any] = field(default_factory=list)
    index: int = 0  # the action being prepared
    drain_ends: list[tuple[int, Callable[[], None]]] = field(default_factory=list)


Action = Callable[["Machine", dict[str, Any], TxnContext], Prepared]
ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn

    return register


def check_completion_mode(name: str, ctx: TxnContext) -> None:
    """action_check_completion_mode: only backups may run grouped."""
    if ctx.grouped:
        raise QMPError(
            f"Action '{name}' does not support Transaction property completion-mode = grouped"
        )


def drain_all(m: Machine) -> None:
    """bdrv_drain_all: every active job pauses and resumes (JOB_STATUS_CHANGE pairs)."""
    drain.drain(m.state)


def drained_begin(m: Machine, ctx: TxnContext, node: Any) -> None:
    """bdrv_drained_begin(node), paired with the action's clean: every active job
    that has `node` among its job nodes pauses (its child_job parent is drained)."""
    ctx.drain_ends.append((ctx.index, drain.begin(m.state, [node]).end))


def _clean(ctx: TxnContext, prepared: list[Prepared], attempted: int) -> None:
    """Every attempted action's clean, in order (the failing one included)."""
    for i in range(attempted):
        if i < len(prepared):
            prepared[i].clean()
        for idx, end in ctx.drain_ends:
            if idx == i:
                end()


def _failed_enable_bitmap(
    m: Machine, kind: str, data: dict[str, Any], ctx: TxnContext
) -> DirtyBitmap | None:
    """The bitmap a failed block-dirty-bitmap-enable action had found: its prepare keeps
    it when bdrv_dirty_bitmap_check fails after the lookup (busy, inconsistent), with
    `was_enabled` still false; None when the action failed before (completion mode,
    lookup)."""
    if kind != "block-dirty-bitmap-enable" or ctx.grouped:
        return None
    try:
        _, bm = cmd_bitmap.bitmap_ops.lookup(
            m.state.graph, m.state.policy, data["node"], data["name"]
        )
    except QMPError:
        return None
    return bm


def _warn_if_qemu_crashes(
    m: Machine, actions: list[tuple[str, dict[str, Any]]], failed: int, ctx: TxnContext
) -> None:
    """Failures that kill a real QEMU 7.2 (verified on the binary)."""
    kind, data = actions[failed]
    if kind == "block-dirty-bitmap-enable" and _failed_enable_bitmap(m, kind, data, ctx) is None:
        m.state.warnings.append(
            "real QEMU 7.2 crashes (SIGSEGV) when a block-dirty-bitmap-enable action of a "
            "transaction fails; blocksim rolls the transaction back instead"
        )
    if kind == "blockdev-snapshot-sync" and any(
        k == "blockdev-snapshot-sync" for k, _ in actions[:failed]
    ):
        m.state.warnings.append(
            "real QEMU 7.2 aborts (bdrv_do_drained_end assertion) when a second "
            "blockdev-snapshot-sync of a transaction fails; blocksim rolls it back instead"
        )


def run_transaction(
    m: Machine, actions: list[tuple[str, dict[str, Any]]], grouped: bool = False
) -> None:
    """Prepare all, then commit all; any failure aborts everything prepared so far."""
    ctx = TxnContext(grouped=grouped)
    drain_all(m)
    prepared: list[Prepared] = []
    try:
        for index, (kind, data) in enumerate(actions):
            ctx.index = index
            prepared.append(ACTIONS[kind](m, data, ctx))
    except QMPError:
        failed = len(prepared)
        _warn_if_qemu_crashes(m, actions, failed, ctx)
        # the failing action is aborted too, first: a block-dirty-bitmap-enable whose
        # check failed disables the bitmap it found (its abort reads was_enabled false)
        bm = _failed_enable_bitmap(m, *actions[failed], ctx)
        if bm is not None:
            bm.enabled = False
        for p in reversed(prepared):
            p.abort()
        _clean(ctx, prepared, len(prepared) + 1)
        raise
    if ctx.grouped:
        group = list(ctx.new_jobs)
        for job in group:
            job.txn = group
    for p in prepared:
        p.commit()
    _clean(ctx, prepared, len(prepared))


@command("transaction")
def _transaction(m: Machine, a: dict[str, Any]) -> None:
    props = a.get("properties") or {}
    grouped = props.get("completion-mode", "individual") == "grouped"
    run_transaction(m, [(x["type"], x.get("data", {})) for x in a["actions"]], grouped)


# -- actions ---------------------------------------------------------------------------------


@action("abort")
def _abort(m: Machine, data: dict[str, Any], ctx: TxnContext) -> Prepared:
    raise QMPError("Transaction aborted using Abort action")


def _bitmap_action(name: str, fn: Callable[[Machine, dict[str, Any]], Callable[[], None]]) -> None:
    def prepare(m: Machine, data: dict[str, Any], ctx: TxnContext) -> Prepared:
        check_completion_mode(name, ctx)
        return Prepared(abort=fn(m, data))

    ACTIONS[name] = prepare


_bitmap_action("block-dirty-bitmap-add", cmd_bitmap.bitmap_add)
_bitmap_action("block-dirty-bitmap-clear", cmd_bitmap.bitmap_clear)
_bitmap_action("block-dirty-bitmap-enable", cmd_bitmap.bitmap_enable)
_bitmap_action("block-dirty-bitmap-disable", cmd_bitmap.bitmap_disable)
_bitmap_action("block-dirty-bitmap-merge", cmd_bitmap.bitmap_merge)


@action("block-dirty-bitmap-remove")
def _remove(m: Machine, data: dict[str, Any], ctx: TxnContext) -> Prepared:
    check_completion_mode("block-dirty-bitmap-remove", ctx)
    s = m.state
    owner, bm = cmd_bitmap.bitmap_ops.lookup(s.graph, s.policy, data["node"], data["name"])
    undo = cmd_bitmap.bitmap_remove(m, data, release=False)

    def commit() -> None:
        bm.txn_hold = False
        cmd_bitmap.bitmap_ops.release_bitmap(owner, bm)

    return Prepared(abort=undo, commit=commit)


@action("blockdev-snapshot-sync")
def _snapshot_sync(m: Machine, data: dict[str, Any], ctx: TxnContext) -> Prepared:
    check_completion_mode("blockdev-snapshot-sync", ctx)
    s = m.state
    appended = snapshot.snapshot_sync(
        s.graph,
        s.policy,
        data.get("device"),
        data.get("node-name"),
        data["snapshot-file"],
        data.get("snapshot-node-name"),
        data.get("format", "qcow2"),
        data.get("mode", "absolute-paths"),
        on_lookup=lambda node: drained_begin(m, ctx, node),
        filename_of=lambda node: node_filename(s.graph, node),
    )

    overlay = appended.overlay

    def commit() -> None:
        appended.commit()
        # the overlay of a node nobody uses has no user either: external_snapshot_clean
        # drops the action's reference and the new node goes (its backing link too)
        if not s.graph.has_users(overlay) and not overlay.monitor_owned:
            s.graph.delete_unreferenced(overlay)

    return Prepared(abort=appended.undo, commit=commit)


@action("blockdev-snapshot")
def _snapshot(m: Machine, data: dict[str, Any], ctx: TxnContext) -> Prepared:
    check_completion_mode("blockdev-snapshot", ctx)
    s = m.state
    # bdrv_append refreshes the permissions of the overlay and everything below it:
    # the old node's parents now use the overlay (a device's BlockBackend wants
    # consistent read, which a mirror target's BlockBackend does not share)
    before: dict[int, list[perms.Parent]] = {}
    for name in (data["overlay"], data["node"]):
        found = s.graph.lookup_bs(name)
        if found is not None:
            before.update(perms.edges_below(s, found))
    appended = snapshot.blockdev_snapshot(
        s.graph,
        s.policy,
        data["node"],
        data["overlay"],
        on_lookup=lambda node: drained_begin(m, ctx, node),
        jobs=s.jobs,
    )
    if s.policy.permissions:
        overlay = s.graph.lookup_or_fail(data["overlay"])
        conflict = perms.refresh_conflict(s, overlay, before)
        if conflict is not None:
            appended.undo()
            raise QMPError(conflict)
    return Prepared(abort=appended.undo, commit=appended.commit)


@action("blockdev-snapshot-internal-sync")
def _internal_snapshot(m: Machine, data: dict[str, Any], ctx: TxnContext) -> Prepared:
    check_completion_mode("blockdev-snapshot-internal-sync", ctx)
    node = m.state.graph.lookup_or_fail(data["device"])
    raise QMPError(f"blocksim does not model internal snapshots (device '{node.node_name}')")


def _single(kind: str) -> None:
    command(kind)(lambda m, a: run_transaction(m, [(kind, a)]))


for _kind in ("blockdev-snapshot-sync", "blockdev-snapshot"):
    _single(_kind)
