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
progress, events are emitted); qemu-io's own I/O takes no device time.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import simpy

from sim.model.graph import BlockNode
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
