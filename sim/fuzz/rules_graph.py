"""Fuzz rules that change the graph: snapshots, blockdev-add/del, transactions, queries.

Groups `snapshot`, `blockdev`, `transaction`, `query` and `invalid`.  New
files and node names come from a per-example counter (`ov3.qcow2`, `ov3`),
so a shrunk trace keeps telling its nodes apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from sim.fuzz.choices import Choices, choices, group
from sim.fuzz.rules_storage import IO_LENGTHS

if TYPE_CHECKING:
    from sim.fuzz.machine import MachineCore as _Base
else:
    _Base = object

MiB = 1 << 20
QUERIES = ("query-block", "query-named-block-nodes", "query-jobs", "query-block-jobs")
TRANSACTION_ACTIONS = (
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "block-dirty-bitmap-merge",
    "blockdev-snapshot-sync",
    "blockdev-snapshot",
    "drive-backup",
    "blockdev-backup",
    "abort",
)
# the actions that change an existing bitmap (what an abort must undo)
BITMAP_ACTIONS = TRANSACTION_ACTIONS[1:6]
# Commands and argument values QEMU must refuse in its own words.
BAD_VALUES: tuple[Any, ...] = (None, True, -1, 0, 1 << 40, "", "drive0", [], {})
BAD_KEYS = ("node", "name", "device", "job-id", "id", "target", "sync", "speed", "x")


class GraphRules(_Base):
    """blockdev-snapshot(-sync), blockdev-add/del, transaction, query-*, raw bad requests."""

    # -- argument builders -----------------------------------------------------------------
    def snapshot_sync_args(self, c: Choices) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if not c.rarely(4):
            args["device"] = self.pick(c, self.devices(), ("nosuch",))
        else:
            args["node-name"] = self.pick(c, self.node_names(), ("nosuch",))
        name = self.fresh("ov")
        args["snapshot-file"] = f"{name}.qcow2"
        if self.invalid and c.rarely(5):
            args["snapshot-file"] = self.pick(c, self.image_files(), ("",))
        if not c.rarely(4):
            args["snapshot-node-name"] = self.pick(c, [name], ("fmt0", "drive0", "1bad"))
        args["format"] = "qcow2"
        if self.invalid and c.rarely(6):
            args["mode"] = "existing"
        return args

    def snapshot_args(self, c: Choices) -> dict[str, Any]:
        return {
            "node": self.pick(c, self.targets(), ("nosuch",)),
            "overlay": self.pick(c, self.overlay_nodes(), ("nosuch", "fmt0")),
        }

    def blockdev_add_args(self, c: Choices) -> dict[str, Any]:
        kind = c.between(0, 3)
        name = self.pick(c, [self.fresh("n")], self.node_names()[:2] or ["fmt0"])
        images = self.image_files() if self.invalid else self.free_images()
        if kind <= 1 and images:
            args: dict[str, Any] = {
                "driver": "qcow2",
                "node-name": name,
                "file": {"driver": "file", "filename": self.pick(c, images, ("nosuch.qcow2",))},
            }
            if kind == 0:
                args["backing"] = None  # an overlay for blockdev-snapshot
            return args
        size = self.pick(c, [64 * MiB], (32 * MiB, 1 << 30))
        if kind == 2:
            return {"driver": "null-co", "node-name": name, "size": size}
        return {"driver": "raw", "node-name": name, "file": {"driver": "null-co", "size": size}}

    # -- rules -----------------------------------------------------------------------------
    @group("snapshot")
    @rule(c=choices())
    def snapshot_sync(self, c: Choices) -> None:
        self.qmp("blockdev-snapshot-sync", self.snapshot_sync_args(c))

    @group("snapshot")
    @rule(c=choices())
    def snapshot(self, c: Choices) -> None:
        """blockdev-snapshot onto a node added for it (a qcow2 overlay without backing,
        over an image nobody has open); blockdev-snapshot-sync when there is none."""
        overlays = self.overlay_nodes()
        if not overlays and not self.invalid:
            g = self.machine.state.graph
            images = [i for i in self.free_images() if not g.images[i].content.allocated_runs()]
            if not images:
                self.qmp("blockdev-snapshot-sync", self.snapshot_sync_args(c))
                return
            name, file = self.fresh("n"), {"driver": "file", "filename": c.pick(images)}
            self.qmp(
                "blockdev-add",
                {"driver": "qcow2", "node-name": name, "file": file, "backing": None},
            )
        self.qmp("blockdev-snapshot", self.snapshot_args(c))

    def overlay_nodes(self) -> list[str]:
        """Free qcow2 nodes without a backing child and without data: what blockdev-snapshot
        takes as management software creates it (an image with data, such as a finished
        backup's target, would show its data over the device's: the guest's writes
        there read back as the image's, which no-lost-guest-data rightly reports)."""
        g = self.machine.state.graph
        return [
            n.node_name
            for n in g.nodes
            if n.driver == "qcow2"
            and n.backing is None
            and not n.auto_named
            and not g.has_users(n)
            and (n.content is None or not n.content.allocated_runs())
        ]

    def block_api(self, c: Choices) -> None:
        """One block API operation; sim/fuzz/rules_blockapi.py provides it."""
        raise NotImplementedError

    @group("blockdev")
    @rule(c=choices())
    def blockdev_add(self, c: Choices) -> None:
        if "blockapi" in self.enabled and c.below(3) != 1:
            self.block_api(c)  # sim/fuzz/rules_blockapi.py: create, reopen, resize, ...
            return
        self.qmp("blockdev-add", self.blockdev_add_args(c))

    @group("blockdev")
    @rule(c=choices())
    def blockdev_del(self, c: Choices) -> None:
        g = self.machine.state.graph
        owned = [n.node_name for n in g.nodes if n.monitor_owned]
        self.qmp("blockdev-del", {"node-name": self.pick(c, owned or self.node_names())})

    @group("query")
    @rule(command=st.sampled_from(QUERIES))
    def query(self, command: str) -> None:
        self.qmp(command)

    @group("transaction")
    @rule(c=choices(64))
    def transaction(self, c: Choices) -> None:
        """1-3 actions, half of them on the bitmaps there are (when there are some),
        sometimes ending in an action that fails (see `rollback`)."""
        bitmaps = self.has_bitmaps()
        count = c.between(0 if self.invalid else 1, 3)
        actions = []
        for _ in range(count):
            kind = c.pick(BITMAP_ACTIONS if bitmaps and c.boolean() else TRANSACTION_ACTIONS)
            if kind == "abort" and not self.invalid:
                kind = "block-dirty-bitmap-add"
            actions.append({"type": kind, "data": self.action_args(c, kind)})
        if actions and c.rarely(4):
            actions.append(self.failing_action(c))
        args: dict[str, Any] = {"actions": actions}
        if c.rarely(4):
            args["properties"] = {"completion-mode": c.pick(("individual", "grouped"))}
        self.qmp("transaction", args)

    @group("transaction")
    @precondition(lambda self: self.has_bitmaps())
    @rule(c=choices(64))
    def rollback(self, c: Choices) -> None:
        """A rollback test as iotest 124 and 236 run one: the guest dirties the bitmaps,
        then a transaction changes them (1-3 bitmap actions, libvirt's checkpoint-delete
        a quarter of the time, a merge that adds bits to its target another quarter, an
        external snapshot of a device or a clear of a bitmap with bits before the bitmap
        actions the other quarters) and ends in an action that fails, so
        QEMU aborts every prepared action in reverse order and the bitmaps (and the
        graph) must be as before."""
        self.dirty_bitmaps(c, c.below(1024), c.pick(IO_LENGTHS))
        what = c.below(4)
        actions = self.checkpoint_delete(c) if what == 0 else []
        full = self.dirty_bitmap_addresses() if what == 3 else []
        if full:  # iotest 124's transaction failure: a clear of a bitmap with bits
            node, name = c.pick(full)
            actions.append(
                {"type": "block-dirty-bitmap-clear", "data": {"node": node, "name": name}}
            )
        merge = self.changing_merge(c, grows=True) if what == 1 else None
        if merge is not None:
            actions.append({"type": "block-dirty-bitmap-merge", "data": merge})
        if what == 2 and self.devices():
            name = self.fresh("ov")
            snap = {"device": c.pick(self.devices()), "snapshot-file": f"{name}.qcow2"}
            snap |= {"snapshot-node-name": name, "format": "qcow2"}
            actions.append({"type": "blockdev-snapshot-sync", "data": snap})
        for _ in range(0 if actions and what in (0, 1) else c.between(1, 3)):
            kind = c.pick(BITMAP_ACTIONS)
            # bitmaps that exist and may change: every action must prepare for the abort
            # to undo it
            data = self.action_args(c, kind, made_up=16, usable=True)
            actions.append({"type": kind, "data": data})
        actions.append(self.failing_action(c))
        self.qmp("transaction", {"actions": actions})

    def failing_action(self, c: Choices) -> dict[str, Any]:
        """A last action that fails once the others are prepared, so QEMU aborts them in
        reverse order (iotests' way to test a rollback): `abort`, the action made for it,
        or adding a bitmap under a name its node already has."""
        known = self.bitmap_addresses()
        if known and c.boolean():
            node, name = c.pick(known)
            return {"type": "block-dirty-bitmap-add", "data": {"node": node, "name": name}}
        return {"type": "abort", "data": {}}

    def action_args(
        self, c: Choices, kind: str, made_up: int = 4, usable: bool = False
    ) -> dict[str, Any]:
        """The data of a `kind` action; a bitmap it names is made up one time in
        `made_up`, and `usable` (see StorageRules.bitmap_address)."""
        if kind == "abort":
            return {}
        if kind in ("drive-backup", "blockdev-backup"):
            return self.backup_args(c, drive=kind == "drive-backup")
        if kind == "block-dirty-bitmap-merge":
            return self.bitmap_merge_args(c, made_up, usable)
        builders: dict[str, Callable[[Choices], dict[str, Any]]] = {
            "block-dirty-bitmap-add": self.bitmap_add_args,
            "blockdev-snapshot-sync": self.snapshot_sync_args,
            "blockdev-snapshot": self.snapshot_args,
        }
        if kind in builders:
            return builders[kind](c)
        return self.bitmap_args(c, made_up, usable)

    @group("invalid")
    @rule(
        c=choices(),
        arguments=st.dictionaries(
            st.sampled_from(BAD_KEYS), st.sampled_from(BAD_VALUES), max_size=3
        ),
    )
    def bad_request(self, c: Choices, arguments: dict[str, Any]) -> None:
        """A known command with arguments of the wrong shape (or an unknown command)."""
        from sim.qmp.dispatch import command_table

        # the table in one order whatever module imported the handlers first
        names = [cmd.name for cmd in command_table()] + ["no-such-command"]
        self.qmp(c.pick(names), arguments)

    # provided by StorageRules / JobRules (declared for the type checker)
    if TYPE_CHECKING:

        def has_bitmaps(self) -> bool: ...
        def checkpoint_delete(self, c: Choices) -> list[dict[str, Any]]: ...
        def changing_merge(self, c: Choices, grows: bool = False) -> dict[str, Any] | None: ...
        def dirty_bitmap_addresses(self) -> list[tuple[str, str]]: ...
        def dirty_bitmaps(self, c: Choices, chunk: int, length: str) -> None: ...
        def bitmap_add_args(self, c: Choices) -> dict[str, Any]: ...
        def bitmap_merge_args(
            self, c: Choices, made_up: int = 4, usable: bool = False
        ) -> dict[str, Any]: ...
        def bitmap_args(
            self, c: Choices, made_up: int = 4, usable: bool = False
        ) -> dict[str, Any]: ...
        def backup_args(self, c: Choices, drive: bool) -> dict[str, Any]: ...
