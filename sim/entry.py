"""The `blocksim` process entry point (console script and `python -m sim`).

SIGINT is handled from the first instant: the command line is imported only
after `sim.interrupt` makes an early Ctrl-C a quiet exit 130.
"""

from __future__ import annotations

import gc

# CPython examines its youngest generation every 700 net allocations of container
# objects.  A blocksim command allocates many short-lived ones (answers, events,
# argument paths) and few reference cycles, so those collections mostly find
# nothing (a replay of the 145 recorded QEMU traces spent 15-20 ms of its ~270 ms of
# CPU in them, and more with numpy's objects loaded); a first threshold of 100,000
# makes them rare.  Cycles are still collected; memory grows by a few MiB at most.
GC_THRESHOLDS = (100_000, 10, 10)


def tune_collector() -> None:
    """Set the garbage collector's thresholds of a blocksim process (GC_THRESHOLDS)."""
    gc.set_threshold(*GC_THRESHOLDS)


def run() -> None:
    """Start `blocksim`: Ctrl-C handling first, then the command line."""
    from sim import interrupt

    interrupt.exit_while_loading()
    tune_collector()
    from sim.cli import run as cli_run

    cli_run()
