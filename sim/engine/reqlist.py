"""Block-copy requests in flight (block/reqlist.c as block/block-copy.c uses it).

Each block-copy state (a copy-before-write filter's, a backup job's) lists the
requests its calls have in flight: a task is listed from its creation, when its
clusters leave the copy bitmap (block_copy_task_create), until it completes
(block_copy_task_end).  A guest write through the filter first copies the
clusters it touches that are still to be copied, then waits for every listed
request that intersects them (block_copy_common's reqlist_wait_one, again until
none does): so a write to a cluster a backup task is copying completes after
that task.  The model's copy of a task is done when the task is created (the
target already holds the old data); what waits here is the write's time only.

The lists live on the `Machine` (`copy_reqs`), keyed by the model's
`CopyBeforeWrite`; a request is a simpy event fired when it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import simpy

from sim.engine.faults import mark_failed_write
from sim.engine.timing import NS_PER_S
from sim.model.cbw import CopyBeforeWrite
from sim.model.graph import BlockBackend, BlockNode
from sim.model.io import write_path

if TYPE_CHECKING:
    from sim.engine.machine import Machine

# a request: first byte, end (whole clusters), fired when it ends
Req = tuple[int, int, simpy.Event]


def _clusters(cbw: CopyBeforeWrite, offset: int, length: int) -> tuple[int, int]:
    """The request's range in whole clusters of the state (cbw_do_copy_before_write
    and block_copy_task_create align to the cluster size)."""
    cluster = cbw.cluster
    return offset // cluster * cluster, -(-(offset + length) // cluster) * cluster


def add(m: Machine, cbw: CopyBeforeWrite, offset: int, length: int) -> simpy.Event:
    """reqlist_init_req: a task (or a write's own copy) of `cbw`'s block-copy state is
    in flight over [offset, offset + length); fire the returned event when it ends."""
    lo, hi = _clusters(cbw, offset, length)
    done = m.env.event()
    m.copy_reqs.setdefault(cbw, []).append((lo, hi, done))
    return done


def end(done: simpy.Event) -> None:
    """block_copy_task_end: the request leaves the list (waiters resume)."""
    if not done.triggered:
        done.succeed()


def conflicts(m: Machine, cbw: CopyBeforeWrite, offset: int, length: int) -> list[simpy.Event]:
    """reqlist_find_conflict over the whole range: the requests in flight that a write
    of [offset, offset + length) through `cbw`'s filter waits for."""
    reqs = m.copy_reqs.get(cbw)
    if not reqs:
        return []
    live = [r for r in reqs if not r[2].triggered]
    if live:
        m.copy_reqs[cbw] = live
    else:
        del m.copy_reqs[cbw]
    lo, hi = _clusters(cbw, offset, length)
    return [done for a, b, done in live if a < hi and lo < b]


def write_filters(m: Machine, root: BlockNode) -> list[BlockNode]:
    """The filters a write entering at `root` passes before its data node, top down
    (the head of `write_path`): where copy-before-write copies and waits for the
    requests in flight, and a write-blocking mirror copies."""
    out: list[BlockNode] = []
    for node in write_path(m.state.graph, root):
        if not node.is_filter:
            break
        out.append(node)
    return out


def _holding_cbw(node: BlockNode) -> CopyBeforeWrite | None:
    """A copy-before-write filter's block-copy state while its snapshot holds
    (cbw_do_copy_before_write returns at once once it broke)."""
    cbw = node.cbw if node.driver == "copy-before-write" else None
    return cbw if cbw is not None and not cbw.snapshot_error else None


def write_waits(m: Machine, root: BlockNode, offset: int, length: int) -> list[simpy.Event]:
    """What a guest write (or discard) entering at `root` waits for: the intersecting
    requests in flight of each copy-before-write filter it passes whose snapshot
    holds."""
    if not m.copy_reqs:
        return []
    out: list[simpy.Event] = []
    for node in write_filters(m, root):
        cbw = _holding_cbw(node)
        if cbw is not None:
            out += conflicts(m, cbw, offset, length)
    return out


def monitor_write_wait(
    m: Machine, bb: BlockBackend | None, root: BlockNode, offset: int, length: int
) -> str | None:
    """A qemu-io write entering at `root` waits, filter by filter, for the block-copy
    requests in flight over its clusters: simulated time runs meanwhile (the
    monitor's nested event loop runs the jobs), at most `cbw-timeout` seconds when
    the filter has one (block_copy's qemu_co_timeout).  When that passes first, the
    filter's on-cbw-error decides: the strerror the write fails with
    (break-guest-write), or None (the snapshot breaks; the write goes on)."""
    if not m.copy_reqs:
        return None
    filters = write_filters(m, root)
    for i, node in enumerate(filters):
        cbw = _holding_cbw(node)
        waits = conflicts(m, cbw, offset, length) if cbw is not None else []
        if cbw is None or not waits:
            continue
        error = wait_for_copy(m, cbw, m.env.all_of(waits), bb, filters[: i + 1], offset, length)
        if error is not None:
            return error
    return None


def wait_for_copy(
    m: Machine,
    cbw: CopyBeforeWrite,
    copied: simpy.Event,
    bb: BlockBackend | None,
    reached: list[BlockNode],
    offset: int,
    length: int,
) -> str | None:
    """A write through `cbw`'s filter runs simulated time until the copy it waits for
    (`copied`) is done, at most `cbw-timeout` seconds when the filter has one
    (block_copy's qemu_co_timeout).  When that passes first, the filter's
    on-cbw-error decides: the strerror the write fails with (break-guest-write; the
    nodes it `reached` still mark it), or None (the snapshot breaks; the write goes on)."""
    if not cbw.cbw_timeout:
        m.env.run(until=copied)
        return None
    m.env.run(until=m.env.any_of([copied, m.env.timeout(cbw.cbw_timeout * NS_PER_S)]))
    if copied.triggered or cbw.copy_timed_out(offset, length):
        return None
    mark_failed_write(bb, reached, offset, length)
    return "Connection timed out"
