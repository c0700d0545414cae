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
    def bitmap_address(self, c: Choices, made_up: int = 4, usable: bool = False) -> tuple[str, str]:
        """(node, name) of a bitmap: mostly one that exists (`usable`: one a command may
        change), by node or by device; one time in `made_up` any node with any name
        (mostly one that does not exist)."""
        known = self.usable_bitmap_addresses() if usable else self.bitmap_addresses()
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

    def bitmap_args(self, c: Choices, made_up: int = 4, usable: bool = False) -> dict[str, Any]:
        node, name = self.bitmap_address(c, made_up, usable)
        return {"node": node, "name": name}

    def bitmap_merge_args(
        self, c: Choices, made_up: int = 4, usable: bool = False
    ) -> dict[str, Any]:
        node, target = self.bitmap_address(c, made_up, usable)
        sources: list[Any] = []
        for _ in range(c.between(1 if not self.invalid else 0, 3)):
            # sources mostly exist: one made-up name refuses the whole merge
            src_node, src_name = self.bitmap_address(
                c, 4 if self.invalid else max(made_up, 16), usable
            )
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

    def changing_merge(self, c: Choices, grows: bool = False) -> dict[str, Any] | None:
        """The arguments of a merge whose sources and target differ: into a bitmap of a
        named node, one or two bitmaps of that node (same size and granularity), the last
        of them with bits other than the target's, mostly after a first one adding nothing (`grows`: bits the target lacks, so the
        merge changes it) (what libvirt's checkpoint-delete and
        backup-begin merge: intervals the target did not record).  Without such a pair,
        one made by `merge_partner`."""
        g = self.machine.state.graph
        options: list[tuple[str, str, list[str], list[str]]] = []
        for node in g.nodes:
            if node.auto_named:
                continue
            named = [
                bm
                for bm in node.bitmaps
                if bm.name and not (bm.busy or bm.readonly or bm.inconsistent)
            ]
            for dst in named:
                others = [
                    bm
                    for bm in named
                    if bm is not dst
                    and len(bm.bits) == len(dst.bits)
                    and bm.granularity == dst.granularity
                ]
                differ = [
                    str(bm.name)
                    for bm in others
                    if ((bm.bits & ~dst.bits).any() if grows else bm.bits != dst.bits)
                ]
                if differ:
                    # sources that add nothing to the target (a merge list that starts
                    # with one, as libvirt's since an old, empty checkpoint)
                    quiet = [str(bm.name) for bm in others if not (bm.bits & ~dst.bits).any()]
                    options.append((node.node_name, str(dst.name), differ, quiet))
        if not options:
            return self.merge_partner(c, grows)
        node, target, differ, quiet = c.pick(options)
        last = c.pick(differ)
        first = c.pick(quiet) if quiet and not c.rarely(4) else last
        sources = [first, last] if first != last else [last]
        return {"node": node, "target": target, "bitmaps": sources}

    def dirty_bitmap_addresses(self) -> list[tuple[str, str]]:
        """(node name, name) of the bitmaps with bits that a command may change."""
        g = self.machine.state.graph
        return [
            (node.node_name, str(bm.name))
            for node in g.nodes
            if not node.auto_named
            for bm in node.bitmaps
            if bm.name and bm.bits.any() and not (bm.busy or bm.readonly or bm.inconsistent)
        ]

    def merge_partner(self, c: Choices, grows: bool = False) -> dict[str, Any] | None:
        """No two bitmaps of a node differ: add an empty one next to a bitmap with bits (by
        node name, as iotest 124 prepares its merges) and merge between the two, either
        way (`grows`: into the new one).  None when no named node has a usable bitmap
        with bits."""
        full = self.dirty_bitmap_addresses()
        if not full:
            return None
        node, name = c.pick(full)
        new = self.fresh("mb")
        if not self.succeeds("block-dirty-bitmap-add", {"node": node, "name": new}):
            return None
        target, source = (new, name) if grows or c.boolean() else (name, new)
        return {"node": node, "target": target, "bitmaps": [source]}

    @group("bitmap")
    @rule(c=choices(32))
    def bitmap_merge(self, c: Choices) -> None:
        """A merge; half the time one whose sources and target differ (`changing_merge`;
        two in three of those add bits to the target)."""
        merge = self.changing_merge(c, grows=not c.rarely(3)) if c.boolean() else None
        self.qmp("block-dirty-bitmap-merge", merge or self.bitmap_merge_args(c))

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
        bitmap there, so each checkpoint's bitmap holds the writes of its own interval;
        checkpoint-delete (when a node has two bitmaps) folds one into the next older;
        backup-begin since a checkpoint merges every checkpoint since into a new one
        (`backup_since`); an external snapshot carries the recording checkpoints over to
        the new overlay (`snapshot_checkpoints`).  A quarter of the time each, when there
        is something to work on and the swarm enabled the backup resp. snapshot group
        (else a checkpoint-create)."""
        what = c.below(4)
        delete = self.checkpoint_delete(c) if what == 1 else []
        if delete:
            self.qmp("transaction", {"actions": delete})
            return
        if what == 2 and "backup" in self.enabled and self.backup_since(c):
            return
        if what == 3 and "snapshot" in self.enabled and self.snapshot_checkpoints(c):
            return
        device = self.pick(c, self.devices(), ("nosuch",))
        # the active layer by node name (below a job's filter, which goes away with the
        # job and every bitmap on it), as libvirt names it
        chain = self.chain_nodes(device)
        top = chain[0] if chain else device
        node = self.machine.state.graph.lookup_bs(top)
        recording = (
            [bm.name for bm in node.bitmaps if bm.name and bm.enabled and not bm.busy]
            if node
            else []
        )
        actions: list[dict[str, Any]] = [
            {"type": "block-dirty-bitmap-disable", "data": {"node": top, "name": name}}
            for name in recording[-2:]
        ]
        add: dict[str, Any] = {"node": top, "name": self.fresh("cp")}
        actions.append({"type": "block-dirty-bitmap-add", "data": add})
        self.qmp("transaction", {"actions": actions})

    def snapshot_checkpoints(self, c: Choices) -> bool:
        """libvirt's external snapshot of a disk with checkpoints: blockdev-snapshot-sync
        of the device onto a new overlay, then a bitmap of the same name on the overlay
        for every one that records on the old active layer (which keeps its bitmaps, now
        below the overlay, where guest writes no longer reach them); then the guest
        writes.  False when no device's active layer has a bitmap."""
        g = self.machine.state.graph
        options: list[tuple[str, list[tuple[str, int]]]] = []
        for device in g.backends:
            chain = self.chain_nodes(device)
            node = g.node(chain[0]) if chain else None
            if node is not None:
                named = [(str(bm.name), bm.granularity) for bm in node.bitmaps if bm.name]
                if named:
                    options.append((device, named))
        if not options:
            return False
        device, named = c.pick(options)
        overlay = self.fresh("sn")
        args = {"device": device, "snapshot-file": f"{overlay}.qcow2", "format": "qcow2"}
        if not self.succeeds("blockdev-snapshot-sync", {**args, "snapshot-node-name": overlay}):
            return True
        actions = [
            {
                "type": "block-dirty-bitmap-add",
                "data": {"node": overlay, "name": name, "granularity": granularity},
            }
            for name, granularity in named
        ]
        self.qmp("transaction", {"actions": actions})
        self.qemu_io(device, f"write -P {1 + c.below(255)} {c.below(64) * MiB} 64k")
        return True

    def backup_since(self, c: Choices) -> bool:
        """libvirt's backup-begin of an incremental backup since an older checkpoint: the
        guest writes (into the newest checkpoint), then one transaction adds a disabled
        temporary bitmap, merges every checkpoint bitmap from the chosen one to the newest
        into it and starts drive-backup sync=incremental with it (libvirt removes it once
        the job ended); sometimes the transaction also creates a new checkpoint.  False
        when a job runs or no device's active layer has two bitmaps."""
        g = self.machine.state.graph
        if any(j.status not in ("concluded", "null") for j in self.machine.state.jobs):
            return False  # libvirt starts no backup while a block job runs
        chains: list[tuple[str, str, list[str], list[bool]]] = []
        for device in g.backends:
            chain = self.chain_nodes(device)
            node = g.node(chain[0]) if chain else None
            named = [bm for bm in node.bitmaps if bm.name] if node is not None else []
            if node is not None and len(named) >= 2:
                names, enabled = [str(bm.name) for bm in named], [bm.enabled for bm in named]
                chains.append((device, node.node_name, names, enabled))
        if not chains:
            return False
        device, node, names, enabled = c.pick(chains)
        self.qemu_io(device, f"write -P {1 + c.below(255)} {c.below(64) * MiB} 64k")
        # QEMU lists the newest bitmap first: the chosen checkpoint and every newer one,
        # merged oldest first
        since = names[: 2 + c.below(len(names) - 1)][::-1]
        temp = self.fresh("backup-")
        add = {"node": node, "name": temp, "persistent": False, "disabled": True}
        merge = {
            "node": node,
            "target": temp,
            "bitmaps": [{"node": node, "name": n} for n in since],
        }
        actions: list[dict[str, Any]] = [
            {"type": "block-dirty-bitmap-add", "data": add},
            {"type": "block-dirty-bitmap-merge", "data": merge},
        ]
        if c.boolean():  # a checkpoint with the backup: the recording ones stop, a new one
            actions += [
                {"type": "block-dirty-bitmap-disable", "data": {"node": node, "name": name}}
                for name, on in zip(names, enabled, strict=True)
                if on
            ]
            actions.append(
                {"type": "block-dirty-bitmap-add", "data": {"node": node, "name": self.fresh("cp")}}
            )
        backup = {
            "device": device,
            "job-id": self.fresh("job"),
            "target": f"{self.fresh('bk')}.qcow2",
            "format": "qcow2",
            "sync": "incremental",
            "bitmap": temp,
        }
        actions.append({"type": "drive-backup", "data": backup})
        self.qmp("transaction", {"actions": actions})
        return True

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
