"""`python -m sim` is the `blocksim` command."""

from sim.entry import run

run()
