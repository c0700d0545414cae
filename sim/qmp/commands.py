"""Importing this module registers every QMP command handler in the dispatch table."""

from sim.qmp import (  # noqa: F401
    cmd_bitmap,
    cmd_blockdev,
    cmd_hmp,
    cmd_job,
    cmd_query,
    transaction,
)
