"""Fuzz rules for dirty bitmaps and guest I/O (groups `bitmap` and `io`).

Bitmap commands address a bitmap as (node, name) where `node` is a device
or a node-name, exactly the ambiguity the 2016 thread is about, so every
rule draws both kinds of address.  The argument builders (`*_args`) are
shared with transactions (sim/fuzz/rules_graph.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from sim.fuzz.choices import Choices, choices, group
from sim.model.graph import BlockBackend, has_descendant

if TYPE_CHECKING:
    from sim.fuzz.machine import MachineCore as _Base
else:
    _Base = object

KiB = 1 << 10
MiB = 1 << 20
GOOD_GRANULARITIES = (512, 4096, 65536, 131072, 1 << 20)
BAD_GRANULARITIES = (0, 256, 1000, 196608, 4294967295)
IO_LENGTHS = ("512", "4k", "64k", "128k", "1M")
BAD_NAMES = ("nosuch", "")
BITMAP_VERBS = (
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "x-debug-block-dirty-bitmap-sha256",
)


class StorageRules(_Base):
    """Bitmap add/remove/clear/enable/disable/merge/sha256 and qemu-io write/discard/read."""

    # -- argument builders -----------------------------------------------------------------
    def bitmap_address(self, c: Choices, made_up: int = 4) -> tuple[str, str]:
        """(node, name) of a bitmap: mostly one that exists, by node or by device; one
        time in `made_up` any node with any name (mostly one that does not exist)."""
        known = self.bitmap_addresses()
        if known and not c.rarely(made_up):
            return self.pick(c, known)
        return self.pick(c, self.targets(), BAD_NAMES), self.pick(
            c, self.bitmap_names(), ("nosuch",)
        )

    def bitmap_add_args(self, c: Choices) -> dict[str, Any]:
        args: dict[str, Any] = {
            "node": self.pick(c, self.targets(), BAD_NAMES),
            "name": self.pick(c, ["b0", "b1", "b2", *self.bitmap_names()], ("",)),
        }
        if c.rarely(4):
            args["granularity"] = self.pick(c, GOOD_GRANULARITIES, BAD_GRANULARITIES)
        if c.rarely(6):
            args["persistent"] = c.boolean()
        if c.rarely(6):
            args["disabled"] = c.boolean()
        return args

    def bitmap_args(self, c: Choices, made_up: int = 4) -> dict[str, Any]:
        node, name = self.bitmap_address(c, made_up)
        return {"node": node, "name": name}

    def bitmap_merge_args(self, c: Choices, made_up: int = 4) -> dict[str, Any]:
        node, target = self.bitmap_address(c, made_up)
        sources: list[Any] = []
        for _ in range(c.between(1 if not self.invalid else 0, 3)):
            # sources mostly exist: one made-up name refuses the whole merge
            src_node, src_name = self.bitmap_address(c, 4 if self.invalid else max(made_up, 16))
            if src_node == node and c.boolean():
                sources.append(src_name)  # the plain-string form: a bitmap of `node`
            else:
                sources.append({"node": src_node, "name": src_name})
        return {"node": node, "target": target, "bitmaps": sources}

    # -- rules -----------------------------------------------------------------------------
    @group("bitmap")
    @rule(c=choices())
    def bitmap_add(self, c: Choices) -> None:
        self.qmp("block-dirty-bitmap-add", self.bitmap_add_args(c))

    @group("bitmap")
    @rule(c=choices(), verb=st.sampled_from(BITMAP_VERBS))
    def bitmap_verb(self, c: Choices, verb: str) -> None:
        self.qmp(verb, self.bitmap_args(c))

    @group("bitmap")
    @rule(c=choices(32))
    def bitmap_merge(self, c: Choices) -> None:
        self.qmp("block-dirty-bitmap-merge", self.bitmap_merge_args(c))

    @group("bitmap")
    @precondition(lambda self: self.has_bitmaps())
    @rule(c=choices(), chunk=st.integers(0, 1023), length=st.sampled_from(IO_LENGTHS))
    def bitmap_dirty(self, c: Choices, chunk: int, length: str) -> None:
        """The guest writes where a bitmap looks (what a dirty bitmap exists to record)."""
        self.dirty_bitmaps(c, chunk, length)

    def dirty_bitmaps(self, c: Choices, chunk: int, length: str) -> None:
        """A guest write through the device above a bitmap's node, so a bitmap left below
        a snapshot's overlay sees the write pass over it and must not record it."""
        where, _ = c.pick(self.bitmap_addresses())
        target = self.device_above(where) or where
        if target not in self.devices() and target not in self.io_nodes():
            target = self.io_target(c)
        self.qemu_io(
            target, f"write -P {1 + c.below(255)} {self.io_offset(target, chunk)} {length}"
        )

    @group("bitmap")
    @rule(c=choices())
    def checkpoint(self, c: Choices) -> None:
        """libvirt's checkpoints, each one transaction.  checkpoint-create disables the
        bitmaps that recorded so far on a device's top node and adds the new checkpoint's
        bitmap there, so each checkpoint's bitmap holds the writes of its own interval
        (what a backup since an older checkpoint later merges); checkpoint-delete (half
        the time, when a node has two bitmaps) folds one into the next older."""
        delete = self.checkpoint_delete(c) if c.boolean() else []
        if delete:
            self.qmp("transaction", {"actions": delete})
            return
        device = self.pick(c, self.devices(), ("nosuch",))
        node = self.machine.state.graph.lookup_bs(device)
        top = node.node_name if node is not None and not node.auto_named else device
        recording = [bm.name for bm in node.bitmaps if bm.name and bm.enabled] if node else []
        actions: list[dict[str, Any]] = [
            {"type": "block-dirty-bitmap-disable", "data": {"node": top, "name": name}}
            for name in recording[-2:]
        ]
        add: dict[str, Any] = {"node": top, "name": self.fresh("cp")}
        actions.append({"type": "block-dirty-bitmap-add", "data": add})
        self.qmp("transaction", {"actions": actions})

    def checkpoint_delete(self, c: Choices) -> list[dict[str, Any]]:
        """The actions of libvirt's checkpoint-delete: the deleted checkpoint's bitmap is
        merged into its parent's (the next older bitmap of its node: QEMU lists the newest
        first), then removed; the parent records again if the deleted one did.  None when
        the node (or device) drawn has no checkpoint chain: two named bitmaps, the older
        one disabled."""
        g = self.machine.state.graph
        chains: list[tuple[str, list[str], list[bool]]] = []
        for owner in [*g.backends.values(), *g.nodes]:
            named = [bm for bm in owner.bitmaps if bm.name]
            if len(named) < 2:
                continue
            if isinstance(owner, BlockBackend):
                where = owner.name
            elif not owner.auto_named:
                where = owner.node_name
            else:
                continue
            chains.append((where, [str(bm.name) for bm in named], [bm.enabled for bm in named]))
        if not chains:
            return []
        where, names, enabled = c.pick(chains)
        older = [i for i in range(len(names) - 1) if not enabled[i + 1]]
        if not older:
            return []  # not a checkpoint chain: every bitmap of it records
        i = c.pick(older)
        deleted, parent = names[i], names[i + 1]
        actions: list[dict[str, Any]] = []
        if enabled[i] and not enabled[i + 1]:
            actions.append(
                {"type": "block-dirty-bitmap-enable", "data": {"node": where, "name": parent}}
            )
        merge = {"node": where, "target": parent, "bitmaps": [deleted]}
        actions.append({"type": "block-dirty-bitmap-merge", "data": merge})
        actions.append(
            {"type": "block-dirty-bitmap-remove", "data": {"node": where, "name": deleted}}
        )
        return actions

    def has_bitmaps(self) -> bool:
        """Is there a named bitmap (a job's own bitmaps have no name)?"""
        g = self.machine.state.graph
        owners = [*g.nodes, *g.backends.values()]
        return any(bm.name for owner in owners for bm in owner.bitmaps)

    def device_above(self, where: str) -> str | None:
        """The device whose graph holds node `where` (below its root through any child:
        filters, backing files, protocol nodes), or `where` itself when it names one."""
        g = self.machine.state.graph
        if where in g.backends:
            return where
        node = g.lookup_bs(where)
        if node is None:
            return None
        for name, bb in g.backends.items():
            if bb.root is not None and (bb.root is node or has_descendant(bb.root, node)):
                return name
        return None

    @group("io")
    @rule(
        c=choices(),
        chunk=st.integers(0, 1023),
        length=st.sampled_from(IO_LENGTHS),
        pattern=st.integers(1, 255),
        zero=st.integers(0, 7),
    )
    def guest_write(self, c: Choices, chunk: int, length: str, pattern: int, zero: int) -> None:
        """qemu-io write at a 64 KiB-aligned offset (sometimes past the end, when invalid)."""
        target = self.io_target(c)
        offset = self.io_offset(target, chunk)
        sub = (
            f"write -z {offset} {length}" if zero == 0 else f"write -P {pattern} {offset} {length}"
        )
        self.qemu_io(target, sub)

    @group("io")
    @rule(
        c=choices(),
        chunk=st.integers(0, 1023),
        length=st.sampled_from(IO_LENGTHS),
        verb=st.sampled_from(("discard", "read", "flush")),
    )
    def guest_other_io(self, c: Choices, chunk: int, length: str, verb: str) -> None:
        target = self.io_target(c)
        if verb == "flush":
            self.qemu_io(target, "flush")
        else:
            self.qemu_io(target, f"{verb} {self.io_offset(target, chunk)} {length}")

    def io_target(self, c: Choices) -> str:
        """Mostly a device (the guest's view), sometimes a node (qemu-io allows both)."""
        devices = self.devices()
        if devices and not c.rarely(4):
            return self.pick(c, devices, ("nosuch",))
        nodes = self.targets() if self.invalid else devices + self.io_nodes()
        return self.pick(c, nodes, ("nosuch",))

    def io_offset(self, target: str, chunk: int) -> int:
        size = self.size_of(target)
        step = 64 * KiB
        slots = max(size // step, 1)
        if self.invalid and chunk == 1023:
            return size  # past the end: qemu-io's I/O error
        return (chunk % slots) * step
