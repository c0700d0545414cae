"""blockdev-add, blockdev-del and blockdev-reopen for the drivers blocksim models.

blockdev.c `qmp_blockdev_add` / `qmp_blockdev_del` and block.c `bdrv_open` of
QEMU 7.2: the root node of a blockdev-add is owned by the monitor (it
survives a mirror pivot and must be deleted with blockdev-del); children
given inline are created with it, children given by name are referenced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.engine.faults import blkdebug_rules
from sim.errors import QMPError
from sim.jsonio import json_filename_options
from sim.model import bitmap_ops, drain, perms, reopen
from sim.model.cbw import CopyBeforeWrite
from sim.model.content import SECTOR, Content, WindowContent
from sim.model.graph import (
    FORMAT_DRIVERS,
    QCOW2_CLUSTER,
    BlockNode,
    load_bitmaps,
)
from sim.model.host_file import host_file
from sim.model.snapshot import check_new_node_name
from sim.qmp.dispatch import command
from sim.qmp.schema import BLOCKDEV_OPTIONS, MODELLED_DRIVERS, List, check_arguments, members

if TYPE_CHECKING:
    from sim.engine.machine import Machine

NULL_CO_DEFAULT_SIZE = 1 << 30


@command("blockdev-add")
def _blockdev_add(m: Machine, a: dict[str, Any]) -> None:
    if "node-name" not in a:
        raise QMPError("'node-name' must be specified for the root node")
    created: list[BlockNode] = []
    try:
        node = _open(m, a, created)
    except QMPError:
        for n in reversed(created):
            m.state.graph.delete_unreferenced(n)
        raise
    node.monitor_owned = True


def _ref(m: Machine, ref: Any, created: list[BlockNode]) -> BlockNode:
    """A BlockdevRef: a node name to reference, or options for a new node."""
    if isinstance(ref, str):
        node = m.state.graph.lookup_bs(ref)
        if node is None:
            raise QMPError(f"Cannot find device='{ref}' nor node-name='{ref}'")
        return node
    return _open(m, ref, created)


def _open(m: Machine, a: dict[str, Any], created: list[BlockNode]) -> BlockNode:
    g = m.state.graph
    driver = a["driver"]
    if driver not in MODELLED_DRIVERS:
        raise QMPError(f"blocksim does not model block driver '{driver}'")
    name = a.get("node-name")
    read_only = bool(a.get("read-only", False))
    unmap = a.get("discard") == "unmap"
    if driver in FORMAT_DRIVERS:  # qcow2, raw: named after their file child opens
        return _open_format(m, a, driver, name, read_only, unmap, created)
    if name is not None:
        check_new_node_name(g, name)
    if driver == "file":
        image = g.existing_image(a["filename"])
        node = g.new_node("file", image.size_bytes, name, image=image, read_only=read_only)
    elif driver == "blkdebug":
        node = _open_blkdebug(m, a, name, read_only, created)
    elif driver == "copy-on-read":
        node = _open_cor(m, a, name, read_only, created)
    elif driver == "throttle":
        node = _open_throttle(m, a, name, read_only, created)
    elif driver == "copy-before-write":
        node = _open_cbw(m, a, name, read_only, created)
    elif driver == "snapshot-access":
        node = _open_snapshot_access(m, a, name, read_only, created)
    elif driver == "null-co":
        size = a.get("size", NULL_CO_DEFAULT_SIZE)
        if size < 0:
            raise QMPError("size must be non-negative")  # QEMU's own check is a visitor error
        node = g.new_node(
            "null-co",
            size,
            name,
            read_only=read_only,
            size_option="size" in a,
            read_zeroes=bool(a.get("read-zeroes", False)),
        )
    created.append(node)
    return node


def _open_cor(
    m: Machine, a: dict[str, Any], name: str | None, read_only: bool, created: list[BlockNode]
) -> BlockNode:
    """The copy-on-read filter (block/copy-on-read.c cor_open): reads through it
    populate its child (sim.model.io.copy_on_read)."""
    g = m.state.graph
    file = _ref(m, a["file"], created)
    bottom = None
    if "bottom" in a:
        bottom = g.node(a["bottom"])
        if bottom is None:
            raise QMPError(f"Bottom node '{a['bottom']}' not found")
    node = g.new_node(
        "copy-on-read", file.size_bytes, name, file=file, image=file.image, read_only=read_only
    )
    node.cor_active, node.cor_bottom = True, bottom
    return node


def _open_throttle(
    m: Machine, a: dict[str, Any], name: str | None, read_only: bool, created: list[BlockNode]
) -> BlockNode:
    """The throttle filter (block/throttle.c throttle_open): its file child is opened
    first, then it joins the group its `throttle-group` names (throttle_configure_tgm).
    I/O through it waits as the group's limits say (sim/engine/throttle.py)."""
    file = _ref(m, a["file"], created)
    group = m.state.throttle_groups.get(a["throttle-group"])
    if group is None:
        raise QMPError(f"Throttle group '{a['throttle-group']}' does not exist")
    node = m.state.graph.new_node(
        "throttle", file.size_bytes, name, file=file, image=file.image, read_only=read_only
    )
    node.throttle_group = group
    return node


def _open_cbw(
    m: Machine, a: dict[str, Any], name: str | None, read_only: bool, created: list[BlockNode]
) -> BlockNode:
    """The copy-before-write filter (block/copy-before-write.c cbw_open): its `file`,
    then its `target`, then the `bitmap` whose dirty clusters alone are copied (and
    readable through the snapshot API); bitmaps QEMU creates: sim.model.cbw."""
    g, state = m.state.graph, m.state
    file = _ref(m, a["file"], created)
    target = _ref(m, a["target"], created)
    bitmap = None
    if "bitmap" in a:
        _, bitmap = bitmap_ops.lookup(g, state.policy, a["bitmap"]["node"], a["bitmap"]["name"])
        try:  # block_copy_state_new merges it into the copy bitmap
            bitmap_ops.check_bitmap(bitmap, bitmap_ops.ALLOW_RO)
            if bitmap.size_bytes != file.size_bytes:
                raise QMPError(
                    f"Bitmaps are of different sizes (destination size is {file.size_bytes}, "
                    f"source size is {bitmap.size_bytes}) and can't be merged"
                )
        except QMPError as exc:
            raise QMPError(
                f"Cannot create block-copy-state: Failed to merge bitmap '{bitmap.name}' to "
                f"internal copy-bitmap: {exc.desc}"
            ) from None
    before = {**perms.edges_below(state, file), **perms.edges_below(state, target)}
    node = g.new_node(
        "copy-before-write", file.size_bytes, name, file=file, image=file.image,
        read_only=read_only,
    )  # fmt: skip
    node.target = target
    created.append(node)
    CopyBeforeWrite(
        g, node, file, target, bitmap, a.get("on-cbw-error", "break-guest-write"),
        a.get("cbw-timeout", 0),
    )  # fmt: skip
    _check_perms(m, node, before)
    return node


def _open_snapshot_access(
    m: Machine, a: dict[str, Any], name: str | None, read_only: bool, created: list[BlockNode]
) -> BlockNode:
    """block/snapshot-access.c: reads go to the `file` child's snapshot API (a
    copy-before-write filter's point-in-time view); writes are not supported."""
    g, state = m.state.graph, m.state
    file = _ref(m, a["file"], created)
    before = perms.edges_below(state, file)
    node = g.new_node("snapshot-access", file.size_bytes, name, file=file, read_only=read_only)
    node.discard_unmap = a.get("discard") == "unmap"
    created.append(node)
    _check_perms(m, node, before)
    return node


def _check_perms(m: Machine, node: BlockNode, before: dict[int, list[perms.Parent]]) -> None:
    """bdrv_refresh_perms after a new node attached its children."""
    if not m.state.policy.permissions:
        return
    for child in node.children():
        conflict = perms.refresh_conflict(m.state, child, before)
        if conflict is not None:
            raise QMPError(conflict)


def _open_blkdebug(
    m: Machine, a: dict[str, Any], name: str | None, read_only: bool, created: list[BlockNode]
) -> BlockNode:
    """blkdebug over a protocol node (how iotests put it under a qcow2 node): a filter
    whose rules decide which requests reaching it fail (sim.engine.faults.Blkdebug)."""
    g = m.state.graph
    # blkdebug is named before its driver opens the `image` child (bdrv_open_common,
    # then blkdebug_open), unlike a format node, whose file child is opened first
    node = g.new_node("blkdebug", 0, name, read_only=read_only)
    try:
        image = _ref(m, a["image"], created)
        if image.driver != "file":
            raise QMPError(f"blocksim does not model blkdebug over a '{image.driver}' node")
        node.file, node.image, node.size_bytes = image, image.image, image.size_bytes
        rules = blkdebug_rules(a)
    except QMPError:
        node.file = None
        g.remove_node(node)
        raise
    if rules.rules:  # a blkdebug node without rules changes no request
        m.faults.blkdebug[node] = rules
    node.blkdebug_options = _flatten(
        {k: v for k, v in a.items() if k in _BLKDEBUG_STRONG or k in ("inject-error", "set-state")}
    )
    return node


# blkdebug's strong_runtime_opts besides its rule lists
_BLKDEBUG_STRONG = (
    "config", "align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard",
    "max-discard",
)  # fmt: skip


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """qdict_flatten: nested objects and lists become dotted keys."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
    return out


def _open_format(
    m: Machine,
    a: dict[str, Any],
    driver: str,
    name: str | None,
    read_only: bool,
    unmap: bool,
    created: list[BlockNode],
) -> BlockNode:
    g = m.state.graph
    # bdrv_open_inherit opens the file child (for probing) before bdrv_open_common
    # names the format node; the image lock is taken when the driver attaches it
    file = _ref(m, a["file"], created)
    if name is not None:
        check_new_node_name(g, name)
    image = file.image
    # a format node over a format node (raw over qcow2) opens no image file of its own;
    # raw passes its parents' permissions through (bdrv_filter_default_perms): opened
    # without parents it takes none and shares all, so no image lock can refuse it
    over_format = file.is_format
    if image is not None and not over_format and driver != "raw":
        g.check_image_lock(image, read_only, m.state.jobs)
    if driver == "qcow2" and (image is None or image.format != "qcow2"):
        raise QMPError("Image is not in qcow2 format")
    content = image.content if image is not None else None
    size = image.size_bytes if image is not None else file.size_bytes
    # raw over the file of a qcow2 image: the disk is the image's host bytes, as long
    # as the host file (the model keeps guest contents: I/O through it is refused)
    host_format = ""
    if driver == "raw" and image is not None and not over_format and image.format != "raw":
        host_format = image.format
        size = -(-host_file(g, image).length_bytes // SECTOR) * SECTOR
    raw_options: dict[str, int] = {
        k: a[k] for k in ("offset", "size") if driver == "raw" and k in a
    }
    if raw_options:
        if host_format:
            raise QMPError(
                f"blocksim does not model a raw window over the bytes of a '{host_format}' "
                "image file: it keeps the image's guest contents, not its host layout's bytes"
            )
        content, size = _raw_window(file, content, size, raw_options)
    elif over_format:
        size = file.size_bytes
    node = g.new_node(
        driver,
        size,
        name,
        file=file,
        content=content,
        image=image,
        read_only=read_only,
        discard_unmap=unmap,
        cluster_size=image.cluster_size if image is not None else QCOW2_CLUSTER,
    )
    node.raw_options = raw_options
    node.raw_offset = raw_options.get("offset", 0)
    node.host_bytes_of = host_format
    if isinstance(a["file"], dict):  # opened with the node, not referenced by name
        file.inherits_from = node
    load_bitmaps(node)
    created.append(node)  # before its backing: a failing backing open deletes it too
    if driver == "qcow2":
        backing = a.get("backing", "__image__")
        if backing is None:
            return node
        if backing == "__image__":
            _open_backing_chain(m, node, created)
            return node
        try:  # bdrv_open_backing_file wraps what opening the given backing reports
            below = _ref(m, backing, created)
        except QMPError as exc:
            raise QMPError(f"Could not open backing file: {exc.desc}") from None
        g.set_backing(node, below)
    return node


def _raw_window(
    file: BlockNode, content: Content | None, length: int, options: dict[str, int]
) -> tuple[Content | None, int]:
    """raw_read_options and raw_apply_options: the window [offset, offset + size) of
    the file (`length` bytes), checked as QEMU checks it; its content and size."""
    for key in ("offset", "size"):
        if options.get(key, 0) < 0:  # QemuOpts' size parser
            raise QMPError(f"Parameter '{key}' expects a non-negative number below 2^64")
    offset = options.get("offset", 0)
    if offset > length:
        raise QMPError(
            f"Offset ({offset}) cannot be greater than size of the containing file ({length})"
        )
    size = options.get("size", length - offset)
    if "size" in options and length - offset < size:
        raise QMPError(
            f"The sum of offset ({offset}) and size ({size}) has to be smaller or equal to "
            f"the  actual size of the containing file ({length})"
        )  # sic: two spaces
    if "size" in options and size % SECTOR:
        raise QMPError(f"Specified size is not multiple of {SECTOR}")
    if offset % SECTOR:
        # QEMU 7.2 accepts it and merges bytes: every sector through the window covers
        # parts of two sectors of the file, which contents kept per sector cannot hold
        raise QMPError(
            f"blocksim does not model a raw offset that is not a multiple of {SECTOR} "
            f"({offset}): its contents are kept per {SECTOR}-byte sector"
        )
    if content is None or (offset == 0 and size == length):
        return content, size
    return WindowContent(content, offset, size), size


def _open_backing_chain(
    m: Machine, node: BlockNode, created: list[BlockNode], seen: tuple[str, ...] = ()
) -> None:
    """bdrv_open_backing_file, level by level: the file the header names is opened
    read-only (its own backing file in turn); each level's failure is wrapped in
    `Could not open backing file: `."""
    image = node.image
    if image is None or image.backing_file is None:
        return
    seen = (*seen, image.filename)
    _open_named_backing(m, node, image.backing_file, image.backing_format, created, seen)


def _open_named_backing(
    m: Machine,
    node: BlockNode,
    name: str,
    backing_format: str | None,
    created: list[BlockNode],
    seen: tuple[str, ...],
) -> None:
    """Open the backing a header names below `node`: a file name, a null-co
    pseudo-protocol name, or the json:{...} name of a qcow2 or raw node (opened from
    its options as blockdev-add opens them)."""
    g = m.state.graph
    bimage = g.images.get(name)
    pseudo = _null_co_backing(name)
    if pseudo is not None:  # a null-co pseudo-protocol name opens a null-co node
        size, size_option = pseudo
        bnode = g.new_node("null-co", size, None, read_only=True, size_option=size_option)
        created.append(bnode)
        g.set_backing(node, bnode)
        return
    try:
        if bimage is not None and bimage.filename in seen and node.read_only:
            # read-only all the way down, no lock stops the loop: QEMU 7.2 never returns
            raise QMPError(
                f"blocksim refuses to open '{bimage.filename}': its backing chain loops "
                "(real QEMU 7.2 hangs opening it read-only)"
            )
        json_options = json_filename_options(name) if bimage is None else None
        if json_options is not None and json_options.get("driver") in ("qcow2", "raw"):
            # bdrv_open parses the json: pseudo-protocol into options and opens them
            # as blockdev-add would, read-only: a `backing` option replaces the header's
            options = check_arguments("blockdev-add", _read_only_tree(json_options))
            bnode = _open_format(m, options, options["driver"], None, True, False, created)
            g.set_backing(node, bnode)
            return
        if bimage is None:
            raise QMPError(f"Could not open '{name}': No such file or directory")
        if backing_format == "file":
            # the header's backing format is the protocol driver: the backing is the
            # host file itself, opened read-only (a COW child of a node nobody uses
            # shares write, so a writer of the file does not stop it)
            length = bimage.size_bytes
            if bimage.format != "raw":
                length = -(-host_file(g, bimage).length_bytes // SECTOR) * SECTOR
            bnode = g.new_node("file", length, None, image=bimage, read_only=True)
            created.append(bnode)
            g.set_backing(node, bnode)
            return
        # opened read-only: it needs writers on the image locked out
        g.check_image_lock(bimage, read_only=True, jobs=m.state.jobs)
        bnode = g.open_image(bimage, None, None)
        bnode.read_only = True
        created.append(bnode)
        g.set_backing(node, bnode)
        _open_backing_chain(m, bnode, created, seen)
    except QMPError as exc:
        raise QMPError(f"Could not open backing file: {exc.desc}") from None


def open_backing_chain(m: Machine, node: BlockNode) -> list[BlockNode]:
    """What bdrv_open without BDRV_O_NO_BACKING opens below an image node it just
    opened: the backing file its header names, read-only, level by level (see
    `_open_backing_chain`); returns the nodes it created.  On failure the nodes it
    created that nothing uses are deleted (the caller deletes `node` and with it
    what it holds)."""
    created: list[BlockNode] = []
    try:
        _open_backing_chain(m, node, created)
    except QMPError:
        for n in reversed(created):
            m.state.graph.delete_unreferenced(n)
        raise
    return created


def _read_only_tree(options: dict[str, Any]) -> dict[str, Any]:
    """Node options opened as a backing child: read-only, and so is every child they
    open (bdrv_backing_options sets read-only, children inherit it), unless an
    option says otherwise."""
    out = {k: _read_only_tree(v) if isinstance(v, dict) else v for k, v in options.items()}
    if "driver" in out:
        out.setdefault("read-only", True)
    return out


def _null_co_backing(name: str) -> tuple[int, bool] | None:
    """The size of the null-co node a header's backing name describes, and whether
    it is given as an option: `null-co://` (its default size) or the json:{...} name
    a snapshot of a null-co node writes (bdrv_open parses both); None for any other
    name."""
    if name == "null-co://":
        return NULL_CO_DEFAULT_SIZE, False
    options = json_filename_options(name)
    if options is None or options.get("driver") != "null-co":
        return None
    size = options.get("size", NULL_CO_DEFAULT_SIZE)
    return (size, "size" in options) if isinstance(size, int) and size >= 0 else None


@command("blockdev-del")
def _blockdev_del(m: Machine, a: dict[str, Any]) -> None:
    g = m.state.graph
    name = a["node-name"]
    node = g.node(name)
    if node is None:
        raise QMPError(f"Failed to find node with node-name='{name}'")
    if (
        g.backend_of_root(node) is not None
        or _used_by_job_backend(m, node)
        or m.state.exports.uses_node(node)
    ):
        raise QMPError(f"Node {name} is in use")
    g.check_op(node, "drive-del")
    if not node.monitor_owned:
        raise QMPError(f"Node {name} is not owned by the monitor")
    if g.parents(node):
        raise QMPError(f"Block device {g.display_name(node)} is in use")
    node.monitor_owned = False
    if m.faults.qcow2:  # qcow2 nodes over blkdebug write their caches back as they close
        files = {n: n.file for n in g.nodes if n in m.faults.qcow2}
        g.delete_unreferenced(node)
        for gone, file in files.items():
            if g.node(gone.node_name) is not gone:
                m.faults.close(gone, file)
        return
    g.delete_unreferenced(node)


def _used_by_job_backend(m: Machine, node: BlockNode) -> bool:
    """A job holds its target (and an active commit its base) through a BlockBackend."""
    return any(n is node for job in m.state.jobs for n in job.kind.backend_nodes())


@command("blockdev-reopen", members(("options", List(BLOCKDEV_OPTIONS))))
def _blockdev_reopen(m: Machine, a: dict[str, Any]) -> None:
    """qmp_blockdev_reopen: queue every entry, drain, prepare all, commit all."""
    if not a["options"]:
        m.state.warnings.append(
            "real QEMU 7.2 aborts (bdrv_reopen_multiple: bs_queue != NULL) on an empty "
            "blockdev-reopen"
        )
        raise QMPError("blocksim refuses an empty blockdev-reopen: it aborts QEMU 7.2")
    g = m.state.graph
    # each node found is drained (a subtree section) before the next is looked up, and
    # stays so until the reopen is done or failed: checks that fail in
    # bdrv_reopen_prepare come inside, and a backing or file child it attaches is
    # drained too, with the jobs above it
    sections: list[drain.Drain] = []
    try:
        nodes = []
        for options in a["options"]:
            nodes.append(reopen.lookup(g, options))
            sections.append(drain.begin(m.state, [nodes[-1]], subtree=True))
        entries = [reopen.prepare(g, n, o) for n, o in zip(nodes, a["options"], strict=True)]
        if m.faults.qcow2:
            for entry in entries:
                m.faults.reopen(entry.node)
        reopen.commit(g, entries)
    finally:
        for section in reversed(sections):  # the `drained` list is prepended to
            section.end()
