"""human-monitor-command: the `qemu-io` subset guest I/O goes through (reference §10).

The QMP return is "" for everything qemu-io does, failures included; only a
target that cannot be found gives a non-empty string.  What qemu-io would
print on QEMU's stdout is kept in `Machine.hmp_output` for the `--json`
`output` field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.model import io
from sim.qmp import qemu_io
from sim.qmp.dispatch import command

if TYPE_CHECKING:
    from sim.engine.machine import Machine


@command("human-monitor-command")
def _hmp(m: Machine, a: dict[str, Any]) -> str:
    cmd = qemu_io.parse_command_line(a["command-line"])
    if cmd.reply:
        m.hmp_output = None
        return cmd.reply
    if cmd.op == "error" or cmd.target is None:
        m.hmp_output = cmd.output
        return ""
    bb, root = m.state.resolve_target(cmd.target)
    if root is None:
        return f"Error: Cannot find device='' nor node-name='{cmd.target}'\r\n"
    if cmd.op in ("write", "discard") and root.read_only:
        return "Block node is read-only\r\n"
    m.hmp_output = run_io(m, bb, root, cmd)
    return ""


def run_io(m: Machine, bb: Any, root: Any, cmd: qemu_io.QemuIoCommand) -> str:
    """Carry out one qemu-io operation; returns what qemu-io prints."""
    graph = m.state.graph
    off, length = cmd.offset, cmd.length
    if cmd.op == "write":
        stamp = 1 if cmd.zero else m.state.new_stamp(cmd.pattern)
        res = io.guest_write(graph, bb, root, off, length, stamp)
        if res.ok:
            for observer in m.state.write_observers:
                observer(bb, root, off, length, stamp)
            return f"wrote {length}/{length} bytes at offset {off}"
        return f"write failed: {res.error}"
    if cmd.op == "read":
        res = io.guest_read(graph, root, off, length, cmd.pattern, m.state.stamps.patterns_of)
        if not res.ok and res.error != "pattern":
            return f"read failed: {res.error}"
        text = f"read {length}/{length} bytes at offset {off}"
        if not res.ok:
            text = f"Pattern verification failed at offset {off}, {length} bytes\n" + text
        return text
    if cmd.op == "discard":
        res = io.guest_discard(graph, bb, root, off, length)
        if not res.ok:
            return f"discard failed: {res.error}"
        return f"discard {length}/{length} bytes at offset {off}"
    return ""  # flush
