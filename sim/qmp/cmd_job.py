"""Job-starting commands and job verbs (qapi/block-core.json, qapi/job.json, 7.2).

Argument checks follow blockdev.c of QEMU 7.2 in its order (drive_backup_prepare,
do_backup_common, backup_job_create, qmp_drive_mirror, blockdev_mirror_common,
mirror_start_job, qmp_block_commit, qmp_block_stream); every message was
verified on the 7.2 binary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sim.engine.jobs import start_job
from sim.errors import QMPError
from sim.model import drain, job_flow, perms
from sim.model.bitmap import check_bits
from sim.model.graph import BlockGraph, BlockNode, id_wellformed
from sim.model.host_file import protocol_length
from sim.model.job_backup import JOB_CLUSTER, BackupKind
from sim.model.job_commit import CommitKind
from sim.model.job_driver import JobDriver
from sim.model.job_mirror import MirrorKind
from sim.model.job_stream import StreamKind
from sim.model.jobs import Job
from sim.model.snapshot import check_new_node_name
from sim.qmp.cmd_blockdev import open_backing_chain
from sim.qmp.cmd_query import node_filename
from sim.qmp.dispatch import command
from sim.qmp.transaction import (
    Prepared,
    TxnContext,
    action,
    drained_begin,
    run_transaction,
)

if TYPE_CHECKING:
    from sim.engine.machine import Machine


# -- shared ------------------------------------------------------------------------------


def is_root(m: Machine, node: BlockNode) -> bool:
    """bdrv_is_root_node: no parent but BlockBackends (a job is a parent too)."""
    if m.state.graph.parents(node):
        return False
    return not any(node in j.kind.nodes for j in m.state.jobs)


def root_bs(m: Machine, name: str) -> BlockNode:
    """qmp_get_root_bs."""
    node = m.state.graph.lookup_or_fail(name)
    if not is_root(m, node):
        raise QMPError("Need a root block node")
    return node


def refuse_host_bytes(m: Machine, jtype: str, *nodes: BlockNode) -> None:
    """A job whose nodes reach a raw node over the file of a qcow2 image would copy that
    image's host bytes (header, tables, clusters), which blocksim does not hold (it
    keeps guest contents): refused, so a replay reports the difference."""
    for node in nodes:
        for n in m.state.graph.subtree(node):
            if n.host_bytes_of:
                raise QMPError(
                    f"blocksim does not model a {jtype} job through raw node "
                    f"'{n.node_name}' over the bytes of a '{n.host_bytes_of}' image file"
                )


def new_job(
    m: Machine,
    job_id: str | None,
    main: BlockNode,
    jtype: str,
    a: dict[str, Any],
    attach: Callable[[], None] | None = None,
    on_fail: Callable[[], None] | None = None,
) -> Job:
    """block_job_create's id checks, then the job in state created.

    `attach` raises the error block_job_add_bdrv meets attaching the main node
    (a permission conflict): the job existed (created), job_early_fail ends it;
    `on_fail` is what the start function's failure path does in between."""
    refuse_host_bytes(m, jtype, main)
    if job_id is None:
        bb = m.state.graph.backend_of_root(main)
        job_id = bb.name if bb is not None else ""
    if not id_wellformed(job_id):
        raise QMPError(f"Invalid job ID '{job_id}'")
    if m.state.find_job(job_id) is not None:
        raise QMPError(f"Job ID '{job_id}' already in use")
    if attach is not None:
        try:
            attach()
        except QMPError:
            m.emit("JOB_STATUS_CHANGE", {"status": "created", "id": job_id})
            if on_fail is not None:
                on_fail()
            m.emit("JOB_STATUS_CHANGE", {"status": "null", "id": job_id})
            raise
    if a.get("speed", 0) < 0:
        # block_job_create: the job exists (created) when block_job_set_speed fails,
        # then job_early_fail takes it straight to null
        m.emit("JOB_STATUS_CHANGE", {"status": "created", "id": job_id})
        m.emit("JOB_STATUS_CHANGE", {"status": "null", "id": job_id})
        raise QMPError("Parameter 'speed' expects a non-negative value")
    return Job(
        job_id,
        jtype,
        m.emit,
        auto_finalize=a.get("auto-finalize", True),
        auto_dismiss=a.get("auto-dismiss", True),
        speed=a.get("speed", 0),
    )


def register(m: Machine, job: Job, kind: JobDriver, nodes: list[BlockNode]) -> None:
    job.kind = kind
    m.state.register_job(job)
    job_flow.create(job)
    job_flow.block_nodes(job, nodes)
    # block_job_add_bdrv attaches its child_job links now (their place in each node's
    # parents list), and an open section may hold the job
    m.state.graph.stamp_links([(job, "job", node) for node in nodes])
    m.state.graph.links_changed()


# -- backup ------------------------------------------------------------------------------


def _backup_bitmap_checks(
    m: Machine, a: dict[str, Any], source: BlockNode
) -> tuple[Any, str, str | None]:
    """do_backup_common: sync/bitmap/bitmap-mode consistency ."""
    from sim.model.bitmap_ops import ALLOW_RO, check_bitmap

    sync = a["sync"]
    mode = a.get("bitmap-mode")
    if sync in ("incremental", "bitmap") and "bitmap" not in a:
        raise QMPError(f"must provide a valid bitmap name for '{sync}' sync mode")
    if sync == "incremental":
        if mode is not None and mode != "on-success":
            raise QMPError(
                "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"
            )
        sync, mode = "bitmap", "on-success"
    bm = None
    if "bitmap" in a:
        bm = _job_bitmap(m, a["device"], source, a["bitmap"])
        if bm is None:
            raise QMPError(f"Bitmap '{a['bitmap']}' could not be found")
        if mode is None:
            raise QMPError("Bitmap sync mode must be given when providing a bitmap")
        check_bitmap(bm, ALLOW_RO)
        if sync == "none":
            raise QMPError("sync mode 'none' does not produce meaningful bitmap outputs")
        if mode == "never" and sync != "bitmap":
            raise QMPError(
                f"Bitmap sync mode 'never' has no meaningful effect when combined "
                f"with sync mode '{sync}'"
            )
    elif mode is not None:
        raise QMPError("Cannot specify bitmap sync mode without a bitmap")
    return bm, sync, mode


def _job_bitmap(m: Machine, device: str, source: BlockNode, name: str) -> Any:
    """The sync bitmap, where the placement policy says a job finds it."""
    s = m.state
    for owner in s.policy.owners_for_job(s.graph, device, source):
        for bm in owner.bitmaps:
            if bm.name == name:
                return bm
    return None


def _create_backup(
    m: Machine,
    a: dict[str, Any],
    source: BlockNode,
    target: BlockNode,
    close_target: bool,
    bm: Any,
    sync: str,
    mode: str | None,
) -> Job:
    """backup_job_create from the same-node check on."""
    from sim.model.bitmap_ops import DEFAULT_CHECKS, check_bitmap

    g = m.state.graph
    if source is target:
        raise QMPError("Source and target cannot be the same")
    if a.get("compress") and g.data_node(target).driver != "qcow2":
        # bdrv_supports_compressed_writes: of the drivers modelled only qcow2 writes
        # compressed clusters (filters ask their child); the message names the
        # target's BlockBackend, empty for a node without one
        bb = g.backend_of_root(target)
        raise QMPError(
            f"Compression is not supported for this drive {bb.name if bb is not None else ''}"
        )
    g.check_op(source, "backup-source")
    g.check_op(target, "backup-target")
    if bm is not None and mode != "never":
        check_bitmap(bm, DEFAULT_CHECKS)
    if source.size_bytes != target.size_bytes:
        raise QMPError("Source and target image have different sizes")
    check_bits(source.size_bytes, JOB_CLUSTER, "a backup's block-copy map")
    check_full_copy(source, sync, "backup")
    if target.read_only:
        # bdrv_cbw_append, before the job exists: the copy-before-write filter takes its
        # target as a data child with write permission, which a read-only node refuses
        raise QMPError("Could not create node: Block node is read-only")
    job_id = a.get("job-id")
    # the job is named after the filter, which takes the source's place as BB root
    main_bb = g.backend_of_root(source)
    if job_id is None:
        job_id = main_bb.name if main_bb is not None else ""
    refuse_host_bytes(m, "backup", target)
    job = new_job(m, job_id, source, "backup", a)
    conflict = perms.filter_source_conflict(m.state, source)
    if conflict is not None:
        # the job's BlockBackend on the backup filter makes the filter unshare write on
        # the source: the job was created and goes straight to null (job_early_fail)
        m.emit("JOB_STATUS_CHANGE", {"status": "created", "id": job.id})
        m.emit("JOB_STATUS_CHANGE", {"status": "null", "id": job.id})
        raise QMPError(conflict)
    job.on_source_error = a.get("on-source-error", "report")
    job.on_target_error = a.get("on-target-error", "report")
    kind = BackupKind(
        g, job, source, target, sync, bm, mode, a.get("filter-node-name"), close_target
    )
    if a.get("compress"):
        kind.chunk_clusters = 1
    register(m, job, kind, [kind.filter, target])
    return job


def _backup_prepared(m: Machine, job: Job) -> Prepared:
    """The job starts at commit, inside the action's drained section, which holds it
    (sim/model/drain.py): it pauses at once and resumes when the section ends."""

    def commit() -> None:
        start_job(m, job)

    def abort() -> None:
        job_flow.abort_txn(m.state, job)

    return Prepared(abort=abort, commit=commit)


# The simulator's limit on a job that copies every cluster: contents are extents, so
# memory stays small, but the job takes one simulated step per 1 MiB chunk, so wall
# time grows with the disk (about a second per 64 GiB on a free core).
MAX_FULL_COPY_BYTES = 1 << 40


def refresh_length(graph: BlockGraph, node: BlockNode) -> None:
    """What a job's bdrv_getlength does to a protocol node (refresh_total_sectors):
    its length becomes its host file's, which the job then copies and compares."""
    length = protocol_length(graph, node)
    if length is not None:
        node.size_bytes = length


def check_full_copy(source: BlockNode, sync: str, what: str) -> None:
    """QMPError naming the limit when a sync=full job would copy more than it allows."""
    if sync == "full" and source.size_bytes > MAX_FULL_COPY_BYTES:
        raise QMPError(
            f"blocksim limit: a {what} with sync=full copies every cluster of its "
            f"{source.size_bytes}-byte source; the simulator copies at most "
            f"{MAX_FULL_COPY_BYTES} bytes (1 TiB) in one job (sync=top, incremental, "
            "commit and stream copy only what is allocated or dirty)"
        )


@action("drive-backup")
def _drive_backup(m: Machine, a: dict[str, Any], ctx: TxnContext) -> Prepared:
    g = m.state.graph
    source = g.lookup_or_fail(a["device"])
    refresh_length(g, source)
    drained_begin(m, ctx, source)
    g.check_op(source, "backup-source")
    mode = a.get("mode", "absolute-paths")
    fmt = a.get("format") if "format" in a else (None if mode == "existing" else source.driver)
    sync = a["sync"]
    data_src = g.data_node(source)
    if sync == "top" and data_src.backing is None:
        a = dict(a, sync="full")
        sync = "full"
    target = _open_target(
        m,
        a["target"],
        fmt,
        mode,
        source,
        backing=data_src.backing if sync == "top" else (source if sync == "none" else None),
    )
    if sync != "none":
        # drive_backup_prepare opens the target without BDRV_O_NO_BACKING (but for
        # sync=none): the backing file its header names opens as new read-only nodes
        try:
            open_backing_chain(m, target)
        except QMPError:
            g.delete_unreferenced(target)
            raise
    try:
        # do_backup_common's bitmap checks: the target closes without a drain pair
        # (recorded: drive-backup-bitmap-refusal-drains-nothing)
        bm, bsync, bmode = _backup_bitmap_checks(m, a, source)
    except QMPError:
        g.delete_unreferenced(target)
        raise
    try:
        job = _create_backup(m, a, source, target, True, bm, bsync, bmode)
    except QMPError:
        g.delete_unreferenced(target)  # bdrv_close drains only the target
        raise
    if sync == "none":
        g.set_backing(target, source)
    ctx.new_jobs.append(job)
    return _backup_prepared(m, job)


@action("blockdev-backup")
def _blockdev_backup(m: Machine, a: dict[str, Any], ctx: TxnContext) -> Prepared:
    g = m.state.graph
    source = g.lookup_or_fail(a["device"])
    target = g.lookup_or_fail(a["target"])
    refresh_length(g, source)
    refresh_length(g, target)
    drained_begin(m, ctx, source)
    bm, bsync, bmode = _backup_bitmap_checks(m, a, source)
    job = _create_backup(m, a, source, target, False, bm, bsync, bmode)
    ctx.new_jobs.append(job)
    return _backup_prepared(m, job)


# the filters and drivers blocksim models that QEMU 7.2 cannot create an image with
NO_CREATE_DRIVERS = frozenset({"null-co", "blkdebug", "copy-on-read", "throttle"})


def _open_target(
    m: Machine,
    filename: str,
    fmt: str | None,
    mode: str,
    source: BlockNode,
    backing: BlockNode | None,
    node_name: str | None = None,
) -> BlockNode:
    """Create (unless mode=existing) and open a job's target image."""
    g = m.state.graph
    if mode == "existing":
        image = g.existing_image(filename)
        g.check_image_lock(image, jobs=m.state.jobs)
        if fmt is not None and fmt != image.format and fmt not in ("qcow2", "raw"):
            raise QMPError(f"Unknown file format '{fmt}'")
    else:
        assert fmt is not None
        if fmt in NO_CREATE_DRIVERS:  # bdrv_img_create: a driver without create callback
            raise QMPError(f"Format driver '{fmt}' does not support image creation")
        if fmt not in ("qcow2", "raw"):
            raise QMPError(f"Unknown file format '{fmt}'")
        if backing is not None and fmt == "raw":
            raise QMPError("Backing file not supported for file format 'raw'")
        # bdrv_img_create is given the backing node's bs->filename (a protocol node's
        # is its image file)
        bfile = node_filename(g, backing) if backing is not None else None
        image = g.create_image(
            filename, fmt, source.size_bytes, bfile, backing.driver if backing else None
        )
        if backing is not None and backing.driver in ("file", "raw"):
            # with its driver as backing format (bs->drv->format_name): `file`, so the
            # image's backing is opened as a bare protocol node (the qcow2 file
            # itself), or `raw`
            image.backing_format = backing.driver
    if node_name is not None:
        check_new_node_name(g, node_name)
    return g.open_image(image, node_name, None)


command("drive-backup")(lambda m, a: run_transaction(m, [("drive-backup", a)]))
command("blockdev-backup")(lambda m, a: run_transaction(m, [("blockdev-backup", a)]))


# -- mirror ------------------------------------------------------------------------------


def _mirror_checks(a: dict[str, Any]) -> int:
    gran = a.get("granularity", 0)
    if gran and (gran < 512 or gran > 64 * 1048576):
        raise QMPError("Parameter 'granularity' expects a value in range [512B, 64MB]")
    if gran & (gran - 1):
        raise QMPError("Parameter 'granularity' expects a power of 2")
    return int(gran)


@command("drive-mirror")
def _drive_mirror(m: Machine, a: dict[str, Any]) -> None:
    g = m.state.graph
    source = root_bs(m, a["device"])
    g.check_op(source, "mirror-source")
    sync = a["sync"]
    mode = a.get("mode", "absolute-paths")
    fmt = a.get("format") if "format" in a else (None if mode == "existing" else source.driver)
    data_src = g.data_node(source)
    backing_bs = data_src.backing
    if backing_bs is None and sync == "top":
        sync = "full"
    if sync == "none":
        backing_bs = source
    if "replaces" in a and "node-name" not in a:
        raise QMPError("a node-name must be provided when replacing a named node of the graph")
    target = _open_target(
        m,
        a["target"],
        fmt,
        mode,
        source,
        None if sync == "full" else backing_bs,
        a.get("node-name"),
    )
    zero_target = sync == "full" and mode == "existing"
    try:
        _start_mirror(
            m, a, source, target, sync, zero_target, close_target=True,
            source_chain=mode == "absolute-paths",
        )  # fmt: skip
    except QMPError:
        g.delete_unreferenced(target)
        raise


@command("blockdev-mirror")
def _blockdev_mirror(m: Machine, a: dict[str, Any]) -> None:
    g = m.state.graph
    source = root_bs(m, a["device"])
    target = g.lookup_or_fail(a["target"])
    sync = a["sync"]
    _start_mirror(
        m, a, source, target, sync, sync == "full", close_target=False, leave_backing=True
    )


def _start_mirror(
    m: Machine,
    a: dict[str, Any],
    source: BlockNode,
    target: BlockNode,
    sync: str,
    zero_target: bool,
    close_target: bool,
    leave_backing: bool = False,
    source_chain: bool = False,
) -> None:
    g = m.state.graph
    refresh_length(g, target)
    gran = _mirror_checks(a)
    g.check_op(source, "mirror-source")
    g.check_op(target, "mirror-target")
    if g.data_node(source).backing is None and sync == "top":
        sync = "full"
    if "replaces" in a:
        _check_to_replace_node(m, source, a["replaces"])
    # mirror_start, then mirror_start_job
    if sync in ("incremental", "bitmap"):
        raise QMPError(f"Sync mode '{sync}' not supported")
    if a.get("buf-size", 0) < 0:
        raise QMPError("Invalid parameter 'buf-size'")
    if g.data_node(source) is g.data_node(target):
        raise QMPError("Can't mirror node into itself")
    if not gran:
        gran = g.data_node(target).default_granularity()
    check_bits(source.size_bytes, gran, "a mirror's dirty map")
    check_full_copy(source, sync, "mirror")
    refuse_host_bytes(m, "mirror", target)
    if a.get("filter-node-name") is not None:  # bdrv_new_open_driver names the filter first
        check_new_node_name(g, a["filter-node-name"])
    # mirror_start_job puts its filter above the source (a drained section) before
    # block_job_create; the job's BlockBackend on the target then asks for write,
    # which a read-only target refuses, and the filter is dropped (another section)
    if g.is_read_only(target):
        drain.drain(m.state, [source])
        try:
            new_job(m, a.get("job-id"), source, "mirror", a, attach=_refuse_read_only)
        finally:
            drain.drain(m.state, [source])
    job = new_job(m, a.get("job-id"), source, "mirror", a)
    job.on_source_error = a.get("on-source-error", "report")
    job.on_target_error = a.get("on-target-error", "report")
    if source.size_bytes != target.size_bytes:
        _fail_at_start(m, job, "Source and target image have different sizes")
        return
    kind = MirrorKind(
        g,
        job,
        source,
        target,
        sync,
        gran,
        a.get("filter-node-name"),
        zero_target=zero_target,
        close_target=close_target,
        write_blocking=a.get("copy-mode") == "write-blocking",
        leave_backing=leave_backing,
        source_chain=source_chain,
    )
    register(m, job, kind, [kind.filter, source, target])
    start_job(m, job)


def _refuse_read_only() -> None:
    raise QMPError("Block node is read-only")


def _check_to_replace_node(m: Machine, source: BlockNode, name: str) -> None:
    """check_to_replace_node: `replaces` names a node (by node-name only) that the
    mirror may take the place of.  bdrv_recurse_can_replace accepts the source itself
    only (none of the filters modelled forwards the question), so a replacement
    node is that node or refused; a node of another size is refused too."""
    g = m.state.graph
    node = g.node(name)
    if node is None:
        raise QMPError(f"Failed to find node with node-name='{name}'")
    g.check_op(node, "replace")
    if node is not source:
        raise QMPError(
            f"Cannot replace '{name}' by a node mirrored from '{source.node_name}', because "
            "it cannot be guaranteed that doing so would not lead to an abrupt change of "
            "visible data"
        )


def _fail_at_start(m: Machine, job: Job, error: str) -> None:
    """A job whose run() fails at once (mirror to a smaller target)."""

    m.state.register_job(job)
    job.kind = JobDriver()  # nothing to do: run() fails before its first chunk
    job_flow.create(job)
    job_flow.start(job)
    job.error = error
    job_flow.abort_txn(m.state, job)


# -- commit ------------------------------------------------------------------------------


def _chain_contains(m: Machine, top: BlockNode, node: BlockNode) -> bool:
    cur: BlockNode | None = top
    while cur is not None:
        if cur is node:
            return True
        cur = cur.filtered_child() if cur.is_filter else cur.backing
    return False


def _find_backing_image(m: Machine, top: BlockNode, filename: str) -> BlockNode | None:
    cur = top.backing
    while cur is not None:
        if cur.image is not None and cur.image.filename == filename:
            return cur
        cur = cur.backing
    return None


@command("block-commit")
def _block_commit(m: Machine, a: dict[str, Any]) -> None:
    g = m.state.graph
    device = a["device"]
    node = g.lookup_bs(device)
    if node is None:
        raise QMPError(f"Device '{device}' not found", "DeviceNotFound")
    bs = root_bs(m, device)
    g.check_op(bs, "commit-source")
    top = g.data_node(bs)
    if "top-node" in a and "top" in a:
        raise QMPError("'top-node' and 'top' are mutually exclusive")
    if "top-node" in a:
        top = g.lookup_device_or_node(None, a["top-node"])
        if not _chain_contains(m, bs, top):
            raise QMPError(f"'{a['top-node']}' is not in this backing file chain")
    elif a.get("top"):
        if not (top.image is not None and top.image.filename == a["top"]):
            found = _find_backing_image(m, top, a["top"])
            if found is None:
                raise QMPError(f"Top image file {a['top']} not found")
            top = found
    if "base-node" in a and "base" in a:
        raise QMPError("'base-node' and 'base' are mutually exclusive")
    if "base-node" in a:
        base = g.lookup_device_or_node(None, a["base-node"])
        if not _chain_contains(m, top, base):
            raise QMPError(f"'{a['base-node']}' is not in this backing file chain")
    elif a.get("base"):
        found = _find_backing_image(m, top, a["base"])
        if found is None:
            raise QMPError(f"Can't find '{a['base']}' in the backing chain")
        base = found
    else:
        base = g.backing_chain(top)[-1]
    cur: BlockNode | None = top
    while cur is not None and cur is not base:
        g.check_op(cur, "commit-target")
        cur = cur.backing
    if top is base:
        raise QMPError("cannot commit an image into itself")
    if top is g.data_node(bs):
        _active_commit(m, a, bs, top, base)
    else:
        _intermediate_commit(m, a, bs, top, base)


def _active_commit(
    m: Machine, a: dict[str, Any], bs: BlockNode, top: BlockNode, base: BlockNode
) -> None:
    g = m.state.graph
    if "backing-file" in a:
        raise QMPError("'backing-file' specified, but 'top' is the active layer")
    # reopening a read-only base read-write (bdrv_reopen_set_read_only: a subtree
    # section over it) comes before the job exists; when block_job_create fails the
    # base is reopened read-only again (another one)
    base_ro = base.read_only
    if base_ro:
        drain.drain(m.state, [base], subtree=True)
    g.check_reopen_rw_lock(base)  # commit_active_start's reopen fails: nothing else
    g.check_reopen_rw_perms(base)
    try:
        job = new_job(m, a.get("job-id"), bs, "commit", a)
    except QMPError:
        if base_ro:
            drain.drain(m.state, [base], subtree=True)
        raise
    job.on_source_error = job.on_target_error = a.get("on-error", "report")
    kind = MirrorKind(
        g,
        job,
        top,
        base,
        "full",
        base.default_granularity(),
        a.get("filter-node-name"),
        zero_target=False,
        close_target=False,
        base=base,
        commit=True,
    )
    intermediates = []
    cur = top.backing
    while cur is not None and cur is not base:
        intermediates.append(cur)
        cur = cur.backing
    register(m, job, kind, [kind.filter, top, base] + intermediates)
    start_job(m, job)


def _intermediate_commit(
    m: Machine, a: dict[str, Any], bs: BlockNode, top: BlockNode, base: BlockNode
) -> None:
    g = m.state.graph
    overlay = g.overlay_of(top)
    if overlay is not None:
        g.check_op(overlay, "commit-target")

    # commit_start reopens a read-only base read-write once the job exists (a subtree
    # section over it); when that fails, its failure path reopens the base read-only
    # again (another one) before job_early_fail
    def reopen_base() -> None:
        g.check_reopen_rw_lock(base)
        g.check_reopen_rw_perms(base)

    def reopen_failed() -> None:
        drain.drain(m.state, [base], subtree=True)
        drain.drain(m.state, [base], subtree=True)

    job = new_job(m, a.get("job-id"), bs, "commit", a, reopen_base, reopen_failed)
    job.on_source_error = job.on_target_error = a.get("on-error", "report")
    kind = CommitKind(g, job, bs, top, base, a.get("filter-node-name"))
    kind.filename_of = lambda n: node_filename(g, n)
    kind.backing_file = a.get("backing-file")
    between = []
    cur: BlockNode | None = top
    while cur is not None and cur is not base:
        between.append(cur)
        cur = cur.backing
    register(m, job, kind, [bs] + between + [base])
    if kind.base_ro:
        # commit_start reopens a read-only base read-write once the job exists: a
        # subtree section over the base (its filter goes above top, where no job can be)
        drain.drain(m.state, [base], subtree=True)
    start_job(m, job)


# -- stream ------------------------------------------------------------------------------


@command("block-stream")
def _block_stream(m: Machine, a: dict[str, Any]) -> None:
    g = m.state.graph
    if "base" in a and "base-node" in a:
        raise QMPError("'base' and 'base-node' cannot be specified at the same time")
    if "base" in a and "bottom" in a:
        raise QMPError("'base' and 'bottom' cannot be specified at the same time")
    if "bottom" in a and "base-node" in a:
        raise QMPError("'bottom' and 'base-node' cannot be specified at the same time")
    bs = g.lookup_or_fail(a["device"])
    node = g.data_node(bs)
    base: BlockNode | None = None
    if "base" in a:
        base = _find_backing_image(m, node, a["base"])
        if base is None:
            raise QMPError(f"Can't find '{a['base']}' in the backing chain")
    if "base-node" in a:
        base = g.lookup_device_or_node(None, a["base-node"])
        if base is bs or not _chain_contains(m, bs, base):
            raise QMPError(f"Node '{a['base-node']}' is not a backing image of '{a['device']}'")
    if "bottom" in a:
        bottom = g.lookup_device_or_node(None, a["bottom"])
        if bottom.is_filter:
            raise QMPError(f"Node '{a['bottom']}' is a filter, use a non-filter node as 'bottom'")
        if not _chain_contains(m, bs, bottom):
            raise QMPError(f"Node '{a['bottom']}' is not in a chain starting from '{a['device']}'")
        base = bottom.backing
    cur: BlockNode | None = bs
    while cur is not None and cur is not base:
        g.check_op(cur, "stream")
        cur = cur.filtered_child() if cur.is_filter else cur.backing
    if "backing-file" in a and "base" not in a and "base-node" not in a:
        # qmp_block_stream's base_bs comes from base / base-node only: with `bottom`
        # the backing file is refused too
        raise QMPError("backing file specified, but streaming the entire chain")
    if g.is_read_only(node) and node.is_format and node.file is not None and node.file.read_only:
        # stream_start reopens the node read-write first; a file child read-only by its
        # own option stays so (bdrv_reopen_queue keeps explicit options), and a
        # writable format node needs write on it
        raise QMPError("Block node is read-only")
    if a.get("filter-node-name") is not None:  # bdrv_insert_node names the filter first
        try:
            check_new_node_name(g, a["filter-node-name"])
        except QMPError as exc:
            raise QMPError(f"Could not create node: {exc.desc}") from None
    kind_job_main = bs
    # stream_start reopens a read-only node read-write (bdrv_reopen_set_read_only: a
    # subtree section over it), then inserts its copy-on-read filter
    # (bdrv_insert_node: a drained section over the node) before block_job_create;
    # when creating or attaching the job fails, dropping the filter drains the node
    # once more and the node is reopened read-only again
    read_only = g.is_read_only(node)
    if read_only:
        drain.drain(m.state, [node], subtree=True)
        g.check_reopen_rw_lock(node)  # the reopen fails: nothing else happens
    drain.drain(m.state, [node])
    try:
        job = new_job(
            m,
            a.get("job-id"),
            kind_job_main,
            "stream",
            a,
            lambda: _check_stream_filter_perms(m, node, a.get("filter-node-name")),
        )
    except QMPError:
        drain.drain(m.state, [node])
        if read_only:
            drain.drain(m.state, [node], subtree=True)
        raise
    job.on_source_error = job.on_target_error = a.get("on-error", "report")
    kind = StreamKind(g, job, node, base, a.get("filter-node-name"))
    kind.backing_file = a.get("backing-file")
    kind.filename_of = lambda n: node_filename(g, n)
    register(m, job, kind, [kind.filter, node] + kind.intermediates())
    start_job(m, job)


def _check_stream_filter_perms(m: Machine, node: BlockNode, filter_name: str | None) -> None:
    """stream_start inserts a copy-on-read filter above `node` and attaches the job's
    BlockBackend to it, sharing consistent read, write and write unchanged but not
    resize (block_job_create).  A writable format node whose `file` child `node`
    is (a protocol node streamed) needs resize there: blk_insert_bs fails with a
    permission conflict on the filter, before the job exists."""
    g = m.state.graph
    users = [p for p, role in g.parents(node) if role == "file" and p.is_format]
    writable = [p for p in users if not p.read_only]
    if not writable:
        return
    name = filter_name if filter_name is not None else g.auto_name()
    raise QMPError(
        f"Permission conflict on node '{name}': permissions 'resize' are both required by "
        f"node '{writable[0].node_name}' (uses node '{name}' as 'file' child) and unshared "
        f"by an unnamed block device (uses node '{name}' as 'root' child)."
    )


# -- verbs -------------------------------------------------------------------------------


def _verb(name: str, key: str, block_api: bool, fn: Any) -> None:
    def handler(m: Machine, a: dict[str, Any]) -> None:
        job = job_flow.find_job(m.state, a[key], block_api)
        fn(m, job, a)

    command(name)(handler)


for _api, _key, _prefix in ((True, "device", "block-job-"), (False, "id", "job-")):
    _verb(_prefix + "pause", _key, _api, lambda m, j, a: job_flow.pause(j))
    _verb(_prefix + "resume", _key, _api, lambda m, j, a: job_flow.resume(j))
    _verb(_prefix + "complete", _key, _api, lambda m, j, a: job_flow.complete(j))

_verb(
    "block-job-cancel",
    "device",
    True,
    lambda m, j, a: job_flow.cancel(m.state, j, bool(a.get("force", False))),
)
_verb("job-cancel", "id", False, lambda m, j, a: job_flow.cancel(m.state, j, True))
_verb("block-job-set-speed", "device", True, lambda m, j, a: job_flow.set_speed(j, a["speed"]))
_verb("block-job-finalize", "id", True, lambda m, j, a: job_flow.user_finalize(m.state, j))
_verb("job-finalize", "id", False, lambda m, j, a: job_flow.user_finalize(m.state, j))
_verb("block-job-dismiss", "id", True, lambda m, j, a: job_flow.user_dismiss(m.state, j))
_verb("job-dismiss", "id", False, lambda m, j, a: job_flow.user_dismiss(m.state, j))
