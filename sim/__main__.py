"""`python -m sim` is the `blocksim` command."""

from sim.cli import run

run()
