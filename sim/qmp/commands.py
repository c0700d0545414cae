"""Importing this module registers every QMP command in the one command table
(`sim.qmp.dispatch.COMMANDS`), and checks that every declared command has a handler."""

from sim.errors import SimulatorBug
from sim.qmp import (  # noqa: F401
    cmd_bitmap,
    cmd_blockdev,
    cmd_create,
    cmd_hmp,
    cmd_image,
    cmd_job,
    cmd_nbd,
    cmd_object,
    cmd_query,
    introspect,
    transaction,
)
from sim.qmp.dispatch import unhandled

if unhandled():
    raise SimulatorBug(f"QMP commands declared without a handler: {unhandled()}")
