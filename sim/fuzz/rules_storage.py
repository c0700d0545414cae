"""Fuzz rules for dirty bitmaps and guest I/O (groups `bitmap` and `io`).

Bitmap commands address a bitmap as (node, name) where `node` is a device
or a node-name, exactly the ambiguity the 2016 thread is about, so every
rule draws both kinds of address.  The argument builders (`*_args`) are
shared with transactions (sim/fuzz/rules_graph.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st
from hypothesis.stateful import rule

from sim.fuzz.choices import Choices, choices, group

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
    def bitmap_address(self, c: Choices) -> tuple[str, str]:
        """(node, name) of a bitmap: mostly one that exists, by node or by device."""
        known = self.bitmap_addresses()
        if known and not c.rarely(4):
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

    def bitmap_args(self, c: Choices) -> dict[str, Any]:
        node, name = self.bitmap_address(c)
        return {"node": node, "name": name}

    def bitmap_merge_args(self, c: Choices) -> dict[str, Any]:
        node, target = self.bitmap_address(c)
        sources: list[Any] = []
        for _ in range(c.between(1 if not self.invalid else 0, 3)):
            src_node, src_name = self.bitmap_address(c)
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
