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
it, and job chunks whose source or target is at or above it (a job reading
through a throttle node is throttled like the guest).  qemu-io over HMP is
answered at once and is not throttled (it takes no simulated time at all).
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
