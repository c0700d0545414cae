"""Fuzz operations for the block API beyond jobs and bitmaps (group `blockapi`).

blockdev-create (file and qcow2, valid and refused options) with the
job-dismiss that every create job needs, blockdev-reopen (read-only toggles,
backing replaced or detached, the options QEMU refuses), block_resize (with
the bitmaps on the node growing and shrinking), change-backing-file,
block-set-write-threshold, raw windows (offset / size) over a raw file,
blkdebug rules and states under a raw node or a qcow2 node (its metadata events),
copy-on-read and throttle filters (with
object-add / qom-set / object-del of their throttle groups), HMP lines that
are not qemu-io, and QEMU 7.x fleecing (copy-before-write + snapshot-access
by blockdev-add).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.fuzz.choices import Choices
from sim.model.cbw import ON_CBW_ERRORS

if TYPE_CHECKING:
    from sim.fuzz.machine import MachineCore as _Base
else:
    _Base = object

MiB = 1 << 20
CREATE_SIZES = (0, 16 * MiB, 64 * MiB, 96 * MiB)
BAD_CREATE_SIZES = (1000, 513)
CLUSTER_SIZES = (4096, 65536, 2 * MiB)
BAD_CLUSTER_SIZES = (1000, 4 * MiB)
RESIZE_SIZES = (32 * MiB, 64 * MiB, 80 * MiB, 128 * MiB)
BAD_RESIZE_SIZES = (-1, 1000)
HMP_LINES = ("frobnicate", "info foo", "", "qemu-io")
OPERATIONS = (
    "create_file", "create_qcow2", "add_created_image", "reopen", "resize",
    "change_backing_file", "write_threshold", "hmp_other", "copy_on_read", "throttle",
    "blockstats", "raw_window", "blkdebug", "fleecing",
)  # fmt: skip
BLKDEBUG_EVENTS = ("read_aio", "write_aio", "flush_to_os", "flush_to_disk", "l2_update")
# what a qcow2 node raises on a blkdebug node below it (and the block layer on every
# write reaching it); cluster_alloc_bytes (compressed writes) is refused
QCOW2_BLKDEBUG_EVENTS = (
    "read_aio", "write_aio", "flush_to_os", "flush_to_disk", "l2_load", "l2_update",
    "l2_alloc_write", "l1_update", "cluster_alloc", "cluster_alloc_space", "refblock_load",
    "refblock_update_part", "refblock_alloc", "cow_read", "cow_write", "read_backing_aio",
    "pwritev", "pwritev_zero", "pwritev_done", "cluster_alloc_bytes",
)  # fmt: skip
# offsets of a 1 GiB qcow2 node: whole and partial clusters under its first L2
# table, and one under its second
QCOW2_IO = ("0 64k", "4k 4k", "64k 8k", "60k 8k", "600M 64k", "600M 4k")
THROTTLE_LIMITS = (
    {"iops-total": 100}, {"bps-total": MiB}, {"iops-read": 50, "iops-write": 20},
    {"bps-write": MiB, "bps-write-max": 4 * MiB, "bps-write-max-length": 2},
    {"iops-total": 100, "iops-size": 4096},
)  # fmt: skip
BAD_THROTTLE_LIMITS = (
    {"iops-total": 100, "iops-read": 5}, {"bps-total-max": 100}, {"bps-total": -1},
    {"iops-total": 10, "iops-total-max-length": 0}, {"iops-size": 512},
)  # fmt: skip


class BlockApiRules(_Base):
    """blockdev-create, blockdev-reopen, block_resize, change-backing-file,
    block-set-write-threshold, copy-on-read filters, fleecing filters and HMP beyond
    qemu-io."""

    def block_api(self, c: Choices) -> None:
        """One block API operation.  Not a rule of its own: the `blockdev` group's
        blockdev-add rule runs it when the swarm also enabled `blockapi`, so a machine
        without the group draws exactly as before (seeded campaigns keep finding
        what they found)."""
        getattr(self, "api_" + c.pick(OPERATIONS))(c)

    def create(self, c: Choices, job: str, options: dict[str, Any]) -> None:
        """blockdev-create, its concluded event waited for as libvirt does (mostly), then
        job-dismiss (sometimes at once, which finds the job still running)."""
        if not self.succeeds("blockdev-create", {"job-id": job, "options": options}):
            return
        if c.below(8) < 7:  # (spent choices read 0: wait)
            self.run(
                {"wait": {"event": "JOB_STATUS_CHANGE", "data": {"id": job, "status": "concluded"}}}
            )
        self.qmp("job-dismiss", {"id": job})

    def format_nodes(self) -> list[str]:
        g = self.machine.state.graph
        return [n.node_name for n in g.nodes if n.driver == "qcow2" and not n.auto_named]

    def file_nodes(self) -> list[str]:
        g = self.machine.state.graph
        return [n.node_name for n in g.nodes if n.driver == "file" and not n.auto_named]

    def api_create_file(self, c: Choices) -> None:
        """blockdev-create driver=file: a new image, or an existing one (locked or not)."""
        name = self.pick(c, [self.fresh("img") + ".qcow2"], self.image_files())
        job = self.fresh("cr")
        size = self.pick(c, (0,), BAD_CREATE_SIZES)
        self.qmp(
            "blockdev-create",
            {"job-id": job, "options": {"driver": "file", "filename": name, "size": size}},
        )
        self.qmp("job-dismiss", {"id": job})

    def api_create_qcow2(self, c: Choices) -> None:
        """blockdev-create driver=qcow2 on a file node (a fresh one, or one in use)."""
        files = [n for n in self.file_nodes() if n in self.free_nodes()]
        file = self.pick(c, files, [*self.file_nodes(), "nosuch"])
        opts: dict[str, Any] = {
            "driver": "qcow2",
            "file": file,
            "size": self.pick(c, CREATE_SIZES, BAD_CREATE_SIZES),
        }
        if c.rarely(3):
            opts["cluster-size"] = self.pick(c, CLUSTER_SIZES, BAD_CLUSTER_SIZES)
        if c.rarely(4):
            opts["backing-file"] = self.pick(c, self.image_files(), ("nosuch.qcow2",))
            opts["backing-fmt"] = "qcow2"
        if c.rarely(6):
            opts["version"] = c.pick(("v2", "v3"))
            opts["lazy-refcounts"] = c.boolean()
        self.create(c, self.fresh("cr"), opts)

    def api_add_created_image(self, c: Choices) -> None:
        """blockdev-add a file node over a free image and create a qcow2 in it."""
        images = self.free_images()
        if not images:
            return
        image = c.pick(images)
        node = self.fresh("cf")
        self.qmp("blockdev-add", {"driver": "file", "filename": image, "node-name": node})
        job = self.fresh("cr")
        self.qmp(
            "blockdev-create",
            {"job-id": job, "options": {"driver": "qcow2", "file": node, "size": 64 * MiB}},
        )
        self.qmp("job-dismiss", {"id": job})
        self.qmp(
            "blockdev-add",
            {"driver": "qcow2", "file": node, "node-name": self.fresh("cq"), "backing": None},
        )

    def api_reopen(self, c: Choices) -> None:
        """blockdev-reopen of a qcow2 node: read-only toggled, backing kept, detached or
        replaced; sometimes an option QEMU refuses."""
        g = self.machine.state.graph
        name = self.pick(c, self.format_nodes(), ("nosuch",))
        node = g.node(name)
        opts: dict[str, Any] = {"driver": "qcow2", "node-name": name, "read-only": c.boolean()}
        if node is not None and node.file is not None:
            opts["file"] = node.file.node_name
        if node is not None and (node.backing is not None or c.rarely(3)):
            choice = c.between(0, 3)
            if choice == 0:
                opts["backing"] = None
            elif choice == 1 and self.format_nodes():
                opts["backing"] = c.pick(self.format_nodes())
            elif choice == 2 and self.invalid:
                pass  # omitted: "backing is missing for ..."
            else:
                opts["backing"] = node.backing.node_name if node.backing is not None else None
        if self.invalid and c.rarely(6):
            opts["driver"] = "raw"
        self.qmp("blockdev-reopen", {"options": [opts]})

    def api_resize(self, c: Choices) -> None:
        args: dict[str, Any] = {"size": self.pick(c, RESIZE_SIZES, BAD_RESIZE_SIZES)}
        if c.boolean():
            args["device"] = self.pick(c, self.devices(), ("nosuch",))
        else:
            args["node-name"] = self.pick(c, self.node_names(), ("nosuch",))
        self.qmp("block_resize", args)

    def api_change_backing_file(self, c: Choices) -> None:
        self.qmp(
            "change-backing-file",
            {
                "device": self.pick(c, self.devices(), ("nosuch",)),
                "image-node-name": self.pick(c, self.format_nodes(), ("nosuch",)),
                "backing-file": self.pick(c, self.image_files(), ("other.qcow2",)),
            },
        )

    def api_write_threshold(self, c: Choices) -> None:
        self.qmp(
            "block-set-write-threshold",
            {
                "node-name": self.pick(c, self.node_names(), ("nosuch", *self.devices())),
                "write-threshold": c.pick((0, 65536, MiB, 8 * MiB)),
            },
        )

    def api_hmp_other(self, c: Choices) -> None:
        self.qmp("human-monitor-command", {"command-line": c.pick(HMP_LINES)})

    def api_copy_on_read(self, c: Choices) -> None:
        """A copy-on-read filter over a qcow2 node (sometimes with a bottom), a read
        through it, and the filter deleted again."""
        nodes = self.format_nodes()
        file = self.pick(c, nodes, ("nosuch",))
        name = self.fresh("cor")
        args: dict[str, Any] = {"driver": "copy-on-read", "node-name": name, "file": file}
        if nodes and c.rarely(3):
            args["bottom"] = self.pick(c, nodes, ("nosuch",))
        if not self.succeeds("blockdev-add", args):
            return
        offset = c.between(0, 1023) * 65536 % max(self.size_of(file), 65536)
        self.qemu_io(name, f"read {offset} {c.pick(('4k', '64k', '1M'))}")
        self.qmp("blockdev-del", {"node-name": name})

    def api_throttle(self, c: Choices) -> None:
        """A throttle-group (valid or refused limits), a throttle filter over a qcow2
        node in it, I/O through the filter, sometimes new limits by qom-set, then the
        group deleted (while in use: refused) and the filter."""
        group = self.fresh("tg")
        limits = self.pick(c, THROTTLE_LIMITS, BAD_THROTTLE_LIMITS)
        self.qmp("object-add", {"qom-type": "throttle-group", "id": group, "limits": limits})
        name = self.fresh("thr")
        args = {
            "driver": "throttle",
            "node-name": name,
            "throttle-group": self.pick(c, [group], ("nosuch",)),
            "file": self.pick(c, self.format_nodes(), ("nosuch",)),
        }
        added = self.succeeds("blockdev-add", args)
        if added:  # a second write may have to wait for the group (time runs on)
            for _ in range(c.between(1, 2)):
                size = c.pick(("64k", "1M"))
                self.qemu_io(name, f"write -P 0x5a {c.between(0, 63) * 65536} {size}")
        if c.rarely(3):
            value = self.pick(c, THROTTLE_LIMITS, BAD_THROTTLE_LIMITS)
            self.qmp("qom-set", {"path": group, "property": "limits", "value": value})
        if c.boolean():
            self.qmp("object-del", {"id": group})
        if added:
            self.qmp("blockdev-del", {"node-name": name})
        self.qmp("object-del", {"id": group})

    def api_blockstats(self, c: Choices) -> None:
        args = {} if c.boolean() else {"query-nodes": c.boolean()}
        self.qmp("query-blockstats", args)

    def api_raw_window(self, c: Choices) -> None:
        """A raw file created and opened, raw windows (offset / size, valid or refused)
        over it, a write through one and a read of the whole file, then all deleted.
        Sometimes the windows are over a qcow2 node instead (raw over a format node),
        or the file node has a bitmap (raw writes it at offset + the request's)."""
        formats = self.format_nodes()
        if formats and c.rarely(3):
            self._raw_windows(c, c.pick(formats))
            return
        image = self.fresh("win") + ".img"
        self.created({"driver": "file", "filename": image, "size": 4 * MiB})
        file = self.fresh("wf")
        if not self.succeeds(
            "blockdev-add", {"driver": "file", "filename": image, "node-name": file}
        ):
            return
        if c.boolean():
            self.qmp("block-dirty-bitmap-add", {"node": file, "name": self.fresh("wb")})
        self._raw_windows(c, file)
        self.qmp("blockdev-del", {"node-name": file})

    def _raw_windows(self, c: Choices, file: str) -> None:
        """Raw windows over `file` (offset / size, valid or refused), a write through
        one, then the windows deleted."""
        windows = []
        for _ in range(c.between(1, 3)):
            name = self.fresh("rw")
            args: dict[str, Any] = {"driver": "raw", "node-name": name, "file": file}
            if c.boolean():
                args["offset"] = self.pick(c, (0, 64 * 1024, MiB, 4 * MiB), (4 * MiB + 512, -1))
            if c.boolean():
                args["size"] = self.pick(c, (0, 512, MiB), (1000, 8 * MiB))
            if self.succeeds("blockdev-add", args):
                windows.append(name)
        if windows:
            target = c.pick(windows)
            self.qemu_io(target, f"write -P 0x6b {c.pick((0, 4096, MiB - 4096))} 8k")
            if c.rarely(3):
                self.qmp("block_resize", {"node-name": target, "size": 2 * MiB})
        for name in windows:
            self.qmp("blockdev-del", {"node-name": name})

    def api_blkdebug(self, c: Choices) -> None:
        """A raw file under blkdebug (inject-error and set-state rules, some bound to a
        state, some refused), a raw node over it, guest I/O and a flush through it,
        and the nodes deleted; one time in three a qcow2 image instead (`blkdebug_qcow2`)."""
        if c.rarely(3):
            self.blkdebug_qcow2(c)
            return
        image = self.fresh("dbg") + ".img"
        self.created({"driver": "file", "filename": image, "size": MiB})
        debug = self.blkdebug_options(c, image, BLKDEBUG_EVENTS)
        name = self.fresh("rd")
        if not self.succeeds("blockdev-add", {"driver": "raw", "node-name": name, "file": debug}):
            return
        self.io_then_delete(c, name, 4, 0x3C, ("0 4k", "4096 4k", "65536 4k"))

    def io_then_delete(
        self, c: Choices, name: str, most: int, pattern: int, ranges: tuple[str, ...]
    ) -> None:
        """1 to `most` qemu-io requests on node `name` (a write of `pattern`, a read or a
        zero write of one of `ranges`, or a flush), then the node deleted."""
        for _ in range(c.between(1, most)):
            op = c.pick((f"write -P {pattern:#x}", "read", "write -z", "flush"))
            if op == "flush":
                self.qemu_io(name, "flush")
            else:
                self.qemu_io(name, f"{op} {c.pick(ranges)}")
        self.qmp("blockdev-del", {"node-name": name})

    def blkdebug_options(self, c: Choices, image: str, events: tuple[str, ...]) -> dict[str, Any]:
        """A blkdebug node over `image` with 1-2 inject-error rules on `events` (some bound
        to a state, a sector, once, an iotype) and sometimes a set-state rule."""
        inject = []
        for _ in range(c.between(1, 2)):
            rule: dict[str, Any] = {"event": c.pick(events)}
            if c.boolean():
                rule["state"] = c.between(1, 3)
            if c.rarely(3):
                rule["sector"] = c.pick((0, 8, 128))
            if c.rarely(3):
                rule["once"] = True
            if c.rarely(4):
                rule["iotype"] = c.pick(("read", "write", "flush", "write-zeroes"))
            inject.append(rule)
        debug: dict[str, Any] = {
            "driver": "blkdebug",
            "node-name": self.fresh("bd"),
            "image": {"driver": "file", "filename": image, "node-name": self.fresh("bf")},
            "inject-error": inject,
        }
        if c.boolean():
            debug["set-state"] = [{"event": c.pick(events[:4]), "new_state": c.between(1, 3)}]
        return debug

    def blkdebug_qcow2(self, c: Choices) -> None:
        """A 1 GiB qcow2 image (sometimes written by an earlier open, so its L2 table
        is not cached) under blkdebug rules on qcow2's metadata events, guest writes
        (whole clusters, partial ones: zeroed or copied from nothing, a second L2
        table), reads, zero writes and flushes through it, and the nodes deleted."""
        image = self.fresh("dq") + ".qcow2"
        if not self.created({"driver": "file", "filename": image, "size": 0}):
            return
        file = self.fresh("dqf")
        self.qmp("blockdev-add", {"driver": "file", "filename": image, "node-name": file})
        self.created({"driver": "qcow2", "file": file, "size": 1 << 30})
        self.qmp("blockdev-del", {"node-name": file})
        name = self.fresh("dqn")
        if c.rarely(3):  # data and L2 tables from an earlier open
            plain = {"driver": "file", "filename": image, "node-name": self.fresh("dqp")}
            if self.succeeds("blockdev-add", {"driver": "qcow2", "node-name": name, "file": plain}):
                self.qemu_io(name, f"write -P 0x5a {c.pick(QCOW2_IO)}")
                self.qmp("blockdev-del", {"node-name": name})
        debug = self.blkdebug_options(c, image, QCOW2_BLKDEBUG_EVENTS)
        if not self.succeeds("blockdev-add", {"driver": "qcow2", "node-name": name, "file": debug}):
            return
        self.io_then_delete(c, name, 5, 0x3D, QCOW2_IO)

    def api_fleecing(self, c: Choices, source: str | None = None) -> None:
        """QEMU 7.x fleecing: a copy-before-write filter over a qcow2 node (`source`, or
        one drawn) with another free qcow2 node as its target (sometimes over blkdebug
        failing a write, or behind a throttle node whose group holds copies back;
        sometimes a bitmap of the source, an error policy, a timeout, or a reference
        QEMU refuses), a snapshot-access node over it, guest writes through the filter,
        reads of the point-in-time view (and a snapshot discard); sometimes left in
        place, mostly torn down."""
        nodes = self.format_nodes()
        src = source if source is not None else self.pick(c, nodes, ("nosuch",))
        own = self.fleece_target(c, self.size_of(src))
        target = own if own is not None else self.pick(c, [], (*nodes, "nosuch"))
        throttle: tuple[str, str] | None = None
        if own is not None and c.rarely(4):  # copies wait for the group (cbw-timeout)
            group, node = self.fresh("tg"), self.fresh("thr")
            limits = {"bps-write": c.pick((64 * 1024, 300 * 1024, MiB))}
            self.qmp("object-add", {"qom-type": "throttle-group", "id": group, "limits": limits})
            throttle = (group, node)
            over = {"driver": "throttle", "node-name": node, "throttle-group": group, "file": own}
            if self.succeeds("blockdev-add", over):
                target = node
        flt = self.fresh("cbw")
        args: dict[str, Any] = {
            "driver": "copy-before-write", "node-name": flt, "file": src, "target": target,
        }  # fmt: skip
        bitmaps = [(n, b) for n, b in self.bitmap_addresses() if n == src]
        if c.rarely(3) and (bitmaps or self.invalid):
            node, name = self.pick(c, bitmaps, ((src, "nosuch"), ("nosuch", "b0")))
            args["bitmap"] = {"node": node, "name": name}
        if c.rarely(4):
            args["on-cbw-error"] = c.pick(ON_CBW_ERRORS)
        if c.rarely(6):
            args["cbw-timeout"] = c.pick((0, 1, 60))
        if not self.succeeds("blockdev-add", args):
            self.drop_fleece_target(own, throttle)
            return
        view = self.fresh("acc")
        access: dict[str, Any] = {"driver": "snapshot-access", "node-name": view, "file": flt}
        if c.boolean():
            access["discard"] = "unmap"
        has_view = self.succeeds("blockdev-add", access)
        size = max(self.size_of(flt), 65536)
        for _ in range(c.between(1, 3)):
            offset = c.between(0, 1023) * 65536 % size
            length = c.pick(("4k", "64k", "512k"))
            self.qemu_io(flt, f"write -P {c.between(1, 255)} {offset} {length}")
        if has_view:
            offset = c.between(0, 1023) * 65536 % size
            self.qemu_io(view, f"read {offset} {c.pick(('4k', '64k', '1M'))}")
            if c.rarely(3):
                self.qemu_io(view, f"discard {offset} 64k")
        if c.rarely(4):
            return  # left in place: later operations meet the filter
        if has_view:
            self.qmp("blockdev-del", {"node-name": view})
        self.qmp("blockdev-del", {"node-name": flt})
        self.drop_fleece_target(own, throttle)

    def fleece_source(self, c: Choices) -> str | None:
        """A fresh qcow2 node with data as a fleecing source: a node no drive writes to
        (the filter unshares write on its source, so over a drive's root, once the guest
        wrote there, QEMU 7.2 refuses the snapshot-access node with a permission
        conflict: the guest device must be moved onto the filter first)."""
        node = self.fleece_target(c, 64 * MiB, "fs", faults=False)
        if node is not None:
            amount = c.pick((MiB, 8 * MiB, 64 * MiB))
            self.qemu_io(node, f"write -P {1 + c.below(250)} 0 {amount}")
        return node

    def fleece_target(
        self, c: Choices, size: int, prefix: str = "fl", faults: bool = True
    ) -> str | None:
        """A fresh, empty qcow2 node as fleecing target (blockdev-create'd file and
        qcow2), so no other operation later finds the copies in an image it opens as
        if it were empty; None (a bad target instead) sometimes when invalid input is on.
        `faults`: sometimes over blkdebug failing a write."""
        if self.invalid and c.rarely(8):
            return None
        image = self.fresh(prefix) + ".qcow2"
        if not self.created({"driver": "file", "filename": image, "size": 0}):
            return None
        file = self.fresh("flf")
        self.qmp("blockdev-add", {"driver": "file", "filename": image, "node-name": file})
        self.created({"driver": "qcow2", "file": file, "size": size})
        node = self.fresh("flt")
        below: Any = file
        if faults and c.rarely(5):  # a copy's write fails (the filter's on-cbw-error decides)
            # at the data write, or at the target's metadata (its L2 table's allocation)
            event = c.pick(("write_aio", "write_aio", "cluster_alloc", "l2_update", "l1_update"))
            inject: dict[str, Any] = {"event": event, "errno": 5, "once": c.boolean(),
                                      "immediately": c.boolean()}  # fmt: skip
            below = {"driver": "blkdebug", "image": file, "inject-error": [inject]}
        added = self.succeeds("blockdev-add", {"driver": "qcow2", "file": below, "node-name": node})
        return node if added else None

    def created(self, options: dict[str, Any]) -> bool:
        """blockdev-create, its concluded event waited for (the image exists only once the
        job concluded: a blockdev-add before that finds no file), then job-dismiss."""
        job = self.fresh("cr")
        if not self.succeeds("blockdev-create", {"job-id": job, "options": options}):
            return False
        self.run(
            {"wait": {"event": "JOB_STATUS_CHANGE", "data": {"id": job, "status": "concluded"}}}
        )
        return self.succeeds("job-dismiss", {"id": job})

    def drop_fleece_target(self, node: str | None, throttle: tuple[str, str] | None = None) -> None:
        """blockdev-del the throttle node and group in front of the fleecing target, the
        target, (its blkdebug node goes with it) and its file node."""
        if throttle is not None:
            self.qmp("blockdev-del", {"node-name": throttle[1]})
            self.qmp("object-del", {"id": throttle[0]})
        if node is None:
            return
        graph = self.machine.state.graph
        target = graph.node(node)
        file = target.file if target is not None else None
        if file is not None and file.driver == "blkdebug":
            file = file.file
        self.qmp("blockdev-del", {"node-name": node})
        if file is not None:
            self.qmp("blockdev-del", {"node-name": file.node_name})
