"""The `blocksim` process entry point (console script and `python -m sim`).

SIGINT is handled from the first instant: the command line is imported only
after `sim.interrupt` makes an early Ctrl-C a quiet exit 130.
"""

from __future__ import annotations


def run() -> None:
    """Start `blocksim`: Ctrl-C handling first, then the command line."""
    from sim import interrupt

    interrupt.exit_while_loading()
    from sim.cli import run as cli_run

    cli_run()
