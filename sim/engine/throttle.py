"""Throttling in simulated time: requests through a `throttle` filter node wait.

block/throttle-groups.c throttle_group_co_io_limits_intercept of QEMU 7.2: a
request that finds its group over its limits (or others of its direction
already queued) waits in FIFO order until the group's buckets have leaked
enough, then is accounted and goes on down the graph.  Here each group has
one FIFO per direction (a simpy resource of one slot): the request at its
head sleeps for the time `ThrottleGroup.wait_ns` says, rechecks, and once it
may pass pours itself into the buckets and leaves the queue.  A request
through several throttle nodes waits at each, top down.  Cost: a few simpy
events per request and throttle node, whatever the request's size.

Who passes through a throttle node: workload requests entering at or above
it, job chunks whose source or target is at or above it (a job reading
through a throttle node is throttled like the guest), and qemu-io over HMP
(`monitor_request`): QEMU's monitor waits for the request (qemu-io's
synchronous block calls poll the main loop), so a request the group holds
back keeps the command from answering while simulated time runs on (jobs
progress, events are emitted); qemu-io's own I/O takes no device time.  So
does a qemu-io write's copy-before-write copy into a throttled target
(`monitor_cbw_copies`), up to the filter's `cbw-timeout`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import simpy

from sim.engine.faults import cbw_runs
from sim.engine.reqlist import wait_for_copy
from sim.model.graph import BlockBackend, BlockNode
from sim.model.io import write_path
from sim.model.throttle import ThrottleGroup

if TYPE_CHECKING:
    from sim.engine.machine import Machine

Proc = Generator[simpy.Event, Any, None]


def groups_on_path(node: BlockNode | None) -> list[ThrottleGroup]:
    """The groups of the throttle nodes a request entering at `node` passes, top down
    (the filters above the first non-filter node)."""
    out: list[ThrottleGroup] = []
    cur = node
    while cur is not None and cur.is_filter:
        if cur.throttle_group is not None:
            out.append(cur.throttle_group)
        cur = cur.filtered_child()
    return out


def throttled(m: Machine, groups: list[ThrottleGroup], is_write: bool, size: int) -> Proc:
    """A process step (`yield from`): wait in each group's queue until it lets the
    request of `size` bytes pass, and account it there."""
    env = m.env
    for group in groups:
        queue = m.throttle_queues.get((group, is_write))
        if queue is None:
            queue = m.throttle_queues[(group, is_write)] = simpy.Resource(env, capacity=1)
        with queue.request() as turn:
            yield turn
            while True:
                wait = group.wait_ns(int(env.now), is_write)
                if wait <= 0:
                    break
                yield env.timeout(wait)
            group.account(is_write, size)


def monitor_request(m: Machine, node: BlockNode, is_write: bool, size: int) -> None:
    """A qemu-io request entering at `node` passes its throttle groups: accounted at
    once when no group holds it back (nothing else runs meanwhile), else simulated
    time runs until the groups let it pass (throttle_group_co_io_limits_intercept
    under the monitor's nested event loop)."""
    groups = groups_on_path(node)
    if not groups:
        return
    now = int(m.env.now)
    free = all(
        group.wait_ns(now, is_write) <= 0
        and not _queue_busy(m.throttle_queues.get((group, is_write)))
        for group in groups
    )
    if free:
        for group in groups:
            group.account(is_write, size)
        return
    passed = m.env.process(throttled(m, groups, is_write, size))
    m.env.run(until=passed)


def _queue_busy(queue: simpy.Resource | None) -> bool:
    return queue is not None and (queue.count > 0 or bool(queue.queue))


def monitor_cbw_copies(
    m: Machine, bb: BlockBackend | None, root: BlockNode, offset: int, length: int
) -> str | None:
    """A qemu-io write (or discard) entering at `root` passes copy-before-write filters
    whose copy must first reach a target behind a throttle node: the copy waits for
    the target's groups and the guest write waits for the copy
    (cbw_do_copy_before_write), at most `cbw-timeout` seconds when the filter has
    one.  A copy still held then goes on in the background and the filter's
    on-cbw-error decides: the strerror the write fails with (break-guest-write), or
    None (the snapshot breaks; the write goes on)."""
    graph = m.state.graph
    path = write_path(graph, root)
    for i, node in enumerate(path):
        if not node.is_filter:
            break
        for _source, target, runs in cbw_runs(m, node, offset, length):
            groups = groups_on_path(target)
            if not groups:
                continue
            size = sum(n for _, n in runs)
            now = int(m.env.now)
            if all(
                g.wait_ns(now, True) <= 0 and not _queue_busy(m.throttle_queues.get((g, True)))
                for g in groups
            ):
                for g in groups:
                    g.account(True, size)
                continue
            passed = m.env.process(throttled(m, groups, True, size))
            cbw = node.cbw
            assert cbw is not None
            error = wait_for_copy(m, cbw, passed, bb, path[: i + 1], offset, length)
            if error is not None:
                return error
    return None
