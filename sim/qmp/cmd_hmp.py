"""human-monitor-command: the `qemu-io` subset guest I/O goes through.

Parsing is sim.qmp.qemu_io's; this module follows its caller contract in
QEMU's order (lookup, permission conflict, read-only refusal, then the I/O).  The QMP return is ""
for everything qemu-io does, failures included; what qemu-io would print on
QEMU's stdout is kept in `Machine.hmp_output` for the `--json` `output` field.
An unknown HMP command answers QEMU's `unknown command: 'X'`; a real HMP
command or qemu-io sub-command blocksim does not carry out (`info version`,
`qemu-io D "aio_write ..."`) is refused with a "does not model" error, so a
replay against QEMU's recorded answer reports a difference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.engine.faults import write_landed
from sim.engine.reqlist import monitor_write_wait
from sim.engine.throttle import monitor_cbw_copies, monitor_request
from sim.errors import QMPError
from sim.model import drain, io, perms
from sim.model.content import ZERO_STAMP
from sim.model.job_stream import StreamKind
from sim.model.qcow2_host import flush_metadata
from sim.qmp import qemu_io
from sim.qmp.dispatch import command

if TYPE_CHECKING:
    from sim.engine.machine import Machine


@command("human-monitor-command")
def _hmp(m: Machine, a: dict[str, Any]) -> str:
    cmd = qemu_io.parse_command_line(a["command-line"])
    if cmd.op == "unsupported":
        # QEMU would run it; answering "" would pass a comparison it never earned
        raise QMPError(
            f"blocksim does not model {cmd.detail} (modelled HMP: qemu-io read, write "
            f"[-P|-z], discard, flush; unknown commands answer as QEMU does)"
        )
    if cmd.target is None:
        m.hmp_output = cmd.output or None
        return cmd.reply
    bb, root = m.state.resolve_target(cmd.target)
    if root is None:
        return qemu_io.device_not_found_reply(cmd.target)
    if bb is None:
        _local_backend_drains(m, root)
        if m.state.policy.permissions:
            # blk_insert_bs: the new parent (no permissions, shares all) can change what
            # the node takes below it (a copy-before-write filter with a parent unshares
            # write on its source)
            before = perms.edges_below(m.state, root)
            conflict = perms.refresh_conflict(m.state, root, before, perms.QEMU_IO_BACKEND)
            if conflict is not None:
                return f"Error: {conflict}\r\n"
    if cmd.requires_write and bb is None and m.state.policy.permissions:
        # qemu-io on a node name inserts an unnamed BlockBackend that takes write for
        # a write command: every parent of the node must share it (checked before the
        # node's own read-only flag, as bdrv_list_refresh_perms does)
        conflict = perms.new_user_conflict(m.state, root, perms.WRITE)
        if conflict is not None:
            return conflict + ".\r\n"
    if cmd.requires_write and root.read_only:
        return qemu_io.READ_ONLY_REPLY
    if cmd.requires_write and bb is not None:
        bb.took_write = True
    _warn_if_qemu_hangs(m, root, cmd)
    _refuse_snapshot_discard_abort(m, root, cmd)
    _refuse_host_bytes(m, root, cmd)
    if cmd.op in ("write", "read", "discard", "flush"):
        in_range = 0 <= cmd.offset and 0 < cmd.length and cmd.offset + cmd.length <= root.size_bytes
        if m.state.throttle_groups and cmd.op != "flush" and in_range:
            # discards and zero writes count as writes (throttle_co_pdiscard)
            monitor_request(m, root, cmd.op != "read", cmd.length)
            if cmd.op != "read":
                error = monitor_cbw_copies(m, bb, root, cmd.offset, cmd.length)
                if error is not None:
                    m.hmp_output = cmd.failed(error)
                    return cmd.reply
        if cmd.op == "write" and in_range:
            # the copy-before-write waits for block-copy tasks over the same clusters
            error = monitor_write_wait(m, bb, root, cmd.offset, cmd.length)
            if error is not None:
                m.hmp_output = cmd.failed(error)
                return cmd.reply
        m.hmp_output = run_io(m, bb, root, cmd)
    else:
        m.hmp_output = cmd.output
    return cmd.reply


def _local_backend_drains(m: Machine, node: Any) -> None:
    """qemu-io on a node name inserts a BlockBackend of its own and removes it after the
    command: each is a drained section of the node (sim/model/drain.py), which pauses
    and resumes every job holding that node or a node above it (two JOB_STATUS_CHANGE
    pairs each, recorded on QEMU 7.2, whether the command succeeds or not)."""
    for _ in range(2):
        drain.drain(m.state, [node])


def _warn_if_qemu_hangs(m: Machine, root: Any, cmd: qemu_io.QemuIoCommand) -> None:
    """qemu-io cases that crash or hang a real QEMU 7.2 (found recording traces)."""
    graph = m.state.graph
    touched = graph.backing_chain(root)
    for job, node in drain.held_by_jobs(m.state):
        if node in touched:  # the request would wait for a finalize the monitor cannot take
            m.state.warnings.append(
                f"real QEMU 7.2 hangs its monitor on qemu-io through a drive whose "
                f"mirror/commit job '{job.id}' is {job.status.value} after complete or soft "
                "cancel (its source stays drained until job-finalize)"
            )
    for job in m.state.jobs:
        kind = job.kind
        if job.status != "pending" or not any(n in touched for n in kind.nodes if not n.is_filter):
            continue
        if isinstance(kind, StreamKind) and kind.nothing_to_do and cmd.op == "read":
            m.state.warnings.append(
                f"real QEMU 7.2 crashes (SIGSEGV) on a qemu-io read through a node whose "
                f"stream job '{job.id}' had nothing to stream and is held pending"
            )


def _refuse_snapshot_discard_abort(m: Machine, root: Any, cmd: qemu_io.QemuIoCommand) -> None:
    """A discard through a snapshot-access node (discard=unmap) not aligned to the
    copy-before-write cluster aborts QEMU 7.2 (hbitmap_reset: assertion
    `QEMU_IS_ALIGNED(count, gran)`, recorded): refused, with a warning."""
    node = m.state.graph.data_node(root)
    if cmd.op != "discard" or node.driver != "snapshot-access" or not node.discard_unmap:
        return
    cbw = node.file.cbw if node.file is not None else None
    off, length = cmd.offset, cmd.length
    if cbw is None or off < 0 or off + length > root.size_bytes:
        return
    if cbw.discard_aborts(off, length):
        m.state.warnings.append(
            "real QEMU 7.2 aborts (hbitmap_reset: assertion QEMU_IS_ALIGNED(count, gran)) on "
            f"a discard through snapshot-access node '{node.node_name}' not aligned to "
            f"{cbw.cluster} bytes"
        )
        raise QMPError(
            "blocksim refuses a snapshot-access discard not aligned to the copy-before-write "
            "cluster: it aborts QEMU 7.2"
        )


def _write_stamp(m: Machine, cmd: qemu_io.QemuIoCommand) -> int:
    """The data of a qemu-io write: zeroes (-z) or its pattern (default 0xcd)."""
    if cmd.zero:
        return ZERO_STAMP
    return m.state.new_stamp(cmd.pattern if cmd.pattern is not None else 0xCD)


def _refuse_host_bytes(m: Machine, root: Any, cmd: qemu_io.QemuIoCommand) -> None:
    """I/O through a raw node over the file of a qcow2 image reads and writes the
    image's host bytes (header, tables, clusters), which blocksim does not hold: it
    keeps guest contents.  Refused, so a replay reports the difference."""
    if cmd.op not in ("write", "read", "discard"):
        return
    node = m.state.graph.data_node(root)
    if node.host_bytes_of:
        raise QMPError(
            f"blocksim does not model I/O through raw node '{node.node_name}' over the "
            f"bytes of a '{node.host_bytes_of}' image file"
        )


def run_io(m: Machine, bb: Any, root: Any, cmd: qemu_io.QemuIoCommand) -> str:
    """Carry out one qemu-io operation; returns what qemu-io prints."""
    graph = m.state.graph
    off, length = cmd.offset, cmd.length
    if cmd.op in ("write", "read", "flush"):
        # sim-only `fault` steps and blkdebug rules
        op = "write-zeroes" if cmd.op == "write" and cmd.zero else cmd.op
        error = m.guest_io_error(bb, root, op, off, length)
        if error is not None:
            if cmd.op == "write" and m.faults.landed:  # qcow2 pieces written all the same
                write_landed(m, _write_stamp(m, cmd))
            return cmd.failed(error)
    if cmd.op == "write":
        stamp = _write_stamp(m, cmd)
        res = io.write(m.state, bb, root, off, length, stamp, unmap=cmd.unmap)
        return cmd.output if res.ok else cmd.failed(res.error)
    if cmd.op == "read":
        if 0 <= off and off + length <= root.size_bytes:
            refused = io.snapshot_read_error(graph, root, off, length)
            if refused is not None:
                return cmd.failed(refused.error)
            io.copy_on_read(graph, root, off, length)
        if cmd.pattern is None:
            res = io.guest_read(graph, root, off, length, None, m.state.stamps)
            return cmd.output if res.ok else cmd.failed(res.error)
        p_off = off + cmd.pattern_offset
        p_len = cmd.pattern_length
        if off < 0 or off + length > root.size_bytes:
            return cmd.failed(io.IO_ERROR.error)
        res = io.guest_read(graph, root, p_off, p_len, cmd.pattern, m.state.stamps)
        return (cmd.mismatch_line() if not res.ok else "") + cmd.output
    if cmd.op == "discard":
        res = io.discard(m.state, bb, root, off, length)
        return cmd.output if res.ok else cmd.failed(res.error)
    flush_metadata(graph.data_node(root))  # bdrv_flush: qcow2 writes its caches back
    return cmd.output
