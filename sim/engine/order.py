"""The order of events due at the same simulated instant.

Default order (no `tie-break` step): simpy's heap key (time, priority,
insertion counter).  Interrupts and process starts (URGENT) come first; then
every other event in the order it was scheduled: the process that asked first
runs first.  Job processes are created in job-creation order, so at equal
times the older job's chunk completes before the newer one's, a job's chunk
before a guest request scheduled after it, and a rate-limit wake-up in the
order the sleeps began.

A `tie-break` step (sim-only, see docs/sim-only-steps.md) switches to a
PCT-style order from then on: every *actor* gets a priority drawn from the
step's seed and its name (each job by id, `guest` for workload requests and
everything else), and events due at the same instant run by ascending
priority, then in scheduling order.  Times never change, only who goes first
among equals, so a fuzzer can explore interleavings of one command sequence
and the trace still replays exactly.  `{"tie-break": {"seed": null}}` goes back
to the default.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import simpy
from simpy.events import NORMAL

PRIORITY_SPAN = 1000


class TieBreakEnvironment(simpy.Environment):
    """A simpy Environment whose same-instant order can be drawn from a seed."""

    def __init__(self, actor_of: Callable[[Any], str]) -> None:
        super().__init__()
        self.actor_of = actor_of  # a process -> the name of the actor it belongs to
        self.tie_seed: int | None = None
        self._ranks: dict[str, int] = {}

    def set_tie_seed(self, seed: int | None) -> None:
        self.tie_seed = seed
        self._ranks = {}

    def rank(self, actor: str) -> int:
        """The actor's priority under the current seed (1 .. PRIORITY_SPAN)."""
        rank = self._ranks.get(actor)
        if rank is None:
            rank = random.Random(f"{self.tie_seed}/{actor}").randint(1, PRIORITY_SPAN)
            self._ranks[actor] = rank
        return rank

    def schedule(self, event: Any, priority: Any = NORMAL, delay: Any = 0) -> None:
        if self.tie_seed is not None and priority == NORMAL:
            proc = self.active_process
            priority = self.rank(self.actor_of(proc) if proc is not None else "guest")
        super().schedule(event, priority, delay)
