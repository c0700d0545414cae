"""transaction-atomicity: a failed transaction leaves no trace.

QEMU 7.2's `qmp_transaction` prepares every action, and on the first failure
aborts the prepared ones in reverse order: the graph, the bitmaps and the jobs
are as they were before the command.  The same holds for the commands that run
as a one-action transaction (`blockdev-snapshot-sync`, `blockdev-snapshot`,
`drive-backup`, `blockdev-backup`) and for the `block-dirty-bitmap-*`
commands, which check everything before they change anything.

Before each such command the checker takes a fingerprint of what a user can
observe of the block layer: every node (name, driver, children), every
device's root, every named bitmap (owner, name, granularity, flags, bits) and
every live job's status.  When the command returns an error, the fingerprint
after must equal the one before.  Images are left out (a snapshot's image file
is created in prepare and stays on disk, as in QEMU), and so are anonymous
bitmaps (a job's own copy bitmap, which a drain's flush may advance), the bits
of bitmaps on nodes a live job writes to (the drain that every transaction
starts with lets a READY mirror copy, which dirties its target), job
progress, and jobs that the failed command itself created and tore down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.check.observe import BITMAP_COMMANDS, StepChecker, owners
from sim.check.precision import job_write_nodes

if TYPE_CHECKING:
    from sim.engine.view import MachineView

ATOMIC_COMMANDS = frozenset(
    {
        "transaction",
        "blockdev-snapshot-sync",
        "blockdev-snapshot",
        "drive-backup",
        "blockdev-backup",
        *BITMAP_COMMANDS,
    }
)
LIVE = ("created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting")

Fingerprint = dict[str, Any]


def fingerprint(machine: MachineView) -> Fingerprint:
    """What a user can observe of the graph, the named bitmaps and the live jobs."""
    graph = machine.state.graph
    nodes = [
        (
            n.node_name,
            n.driver,
            n.file.node_name if n.file else None,
            n.backing.node_name if n.backing else None,
            n.target.node_name if n.target else None,
            n.read_only,
        )
        for n in graph.nodes
    ]
    roots = sorted(
        (name, bb.root.node_name if bb.root else None) for name, bb in graph.backends.items()
    )
    # a drain lets a READY mirror copy what the guest dirtied: bitmaps on the nodes live
    # jobs write to may change in any command that drains
    written = [n for j in machine.state.jobs if j.status in LIVE for n in job_write_nodes(j)]
    bitmaps = []
    for owner in owners(graph):
        open_bits = any(owner is n for n in written)
        where = getattr(owner, "node_name", None) or f"device:{getattr(owner, 'name', '')}"
        for bm in owner.bitmaps:
            if bm.name is None:
                continue
            bitmaps.append(
                (
                    where,
                    bm.name,
                    bm.granularity,
                    bm.enabled,
                    bm.persistent,
                    bm.busy,
                    bm.inconsistent,
                    None if open_bits else bm.bits.tobytes(),
                )
            )
    jobs = [(j.id, j.status) for j in machine.state.jobs if j.status in LIVE]
    return {"nodes": nodes, "devices": roots, "bitmaps": bitmaps, "jobs": jobs}


def differences(before: Fingerprint, after: Fingerprint) -> list[str]:
    """Human-readable differences between two fingerprints, most telling first."""
    out: list[str] = []
    b_nodes = {n[0]: n for n in before["nodes"]}
    a_nodes = {n[0]: n for n in after["nodes"]}
    for name in a_nodes.keys() - b_nodes.keys():
        out.append(f"node '{name}' appeared")
    for name in b_nodes.keys() - a_nodes.keys():
        out.append(f"node '{name}' vanished")
    for name in sorted(a_nodes.keys() & b_nodes.keys()):
        if a_nodes[name] != b_nodes[name]:
            out.append(f"node '{name}' changed its children or flags")
    if before["devices"] != after["devices"]:
        out.append(
            "a device's root changed: "
            + ", ".join(
                f"{d}: {r0} -> {r1}"
                for (d, r0), (_, r1) in zip(before["devices"], after["devices"], strict=False)
                if r0 != r1
            )
        )
    b_bms = {(b[0], b[1]): b for b in before["bitmaps"]}
    a_bms = {(b[0], b[1]): b for b in after["bitmaps"]}
    for key in sorted(a_bms.keys() - b_bms.keys()):
        out.append(f"bitmap '{key[1]}' appeared on {key[0]}")
    for key in sorted(b_bms.keys() - a_bms.keys()):
        out.append(f"bitmap '{key[1]}' vanished from {key[0]}")
    fields = ("granularity", "enabled", "persistent", "busy", "inconsistent", "bits")
    for key in sorted(a_bms.keys() & b_bms.keys()):
        changed = [
            f for f, x, y in zip(fields, b_bms[key][2:], a_bms[key][2:], strict=True) if x != y
        ]
        if changed:
            out.append(f"bitmap '{key[1]}' on {key[0]} changed its {', '.join(changed)}")
    b_jobs, a_jobs = dict(before["jobs"]), dict(after["jobs"])
    for job_id in sorted(a_jobs):
        if job_id not in b_jobs:
            out.append(f"job '{job_id}' was left '{a_jobs[job_id]}'")
        elif a_jobs[job_id] != b_jobs[job_id]:
            out.append(f"job '{job_id}' went from '{b_jobs[job_id]}' to '{a_jobs[job_id]}'")
    for job_id in sorted(b_jobs.keys() - a_jobs.keys()):
        out.append(f"job '{job_id}' ended")
    return out


class TransactionAtomicity(StepChecker):
    """A transaction (or a command QEMU runs as one, or a bitmap command) that fails leaves the
    graph, the named bitmaps and the live jobs exactly as they were before it."""

    name = "transaction-atomicity"

    def attach(self, machine: MachineView) -> None:
        super().attach(machine)
        self._before: Fingerprint | None = None
        self._broken: list[tuple[str, list[str]]] = []
        machine.before_command_observers.append(self._on_before)
        machine.command_observers.append(self._on_after)

    def _on_before(self, request: Any) -> None:
        name = request.get("execute") if isinstance(request, dict) else None
        self._before = fingerprint(self.machine) if name in ATOMIC_COMMANDS else None

    def _on_after(self, request: Any, response: dict[str, Any]) -> None:
        before, self._before = self._before, None
        if before is None or "error" not in response:
            return
        diff = differences(before, fingerprint(self.machine))
        if diff:
            self._broken.append((str(request.get("execute")), diff))

    def check_step(self, index: int) -> None:
        for name, diff in self._broken:
            self.report(
                index,
                f"{name} failed but left the block layer changed: {'; '.join(diff[:4])}"
                + (f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""),
                command=name,
                changes=diff,
            )
        self._broken = []
