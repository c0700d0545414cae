"""blockdev-create (qapi/block-core.json, QEMU 7.2): image creation as a job.

block/create.c `qmp_blockdev_create`: the driver must have a create
callback ("Driver does not support blockdev-create"), then a `create` job is
made (job_create: id checks) with auto-finalize on and auto-dismiss off, and
started.  Its coroutine runs the driver's create function; on QEMU 7.2 it is
usually, not always, concluded when the monitor reads the next command, so
the model gives it 1 ms of simulated time (a `wait` for its event gets it):
created, running, then waiting, pending, concluded on success, or aborting,
concluded with the driver's error in query-jobs.  Progress is 1 of 1 either
way.  Not a block job: no BLOCK_JOB_* events, not in query-block-jobs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.engine.jobs import start_oneshot_job
from sim.errors import QMPError
from sim.model import job_flow
from sim.model.graph import BlockNode, id_wellformed
from sim.model.image_create import (
    Qcow2CreateOptions,
    check_file_lock,
    create_file,
    create_qcow2,
    validate_qcow2,
)
from sim.model.job_driver import JobDriver
from sim.model.jobs import Job
from sim.model.snapshot import check_new_node_name
from sim.qmp.dispatch import command
from sim.qmp.schema import BLOCKDEV_CREATE_OPTIONS, STR, members

if TYPE_CHECKING:
    from sim.engine.machine import Machine

CREATE_DRIVERS = ("file", "qcow2")
# How long the create coroutine runs.  On QEMU 7.2 a create job has usually, not
# always, concluded by the next command (a job-dismiss right after a file or a
# qcow2 create was refused as 'running' on the binary, in some runs): the model
# gives it 1 ms, which a `wait` for its event covers; traces should wait.
CREATE_DELAY_NS = {"file": 1_000_000, "qcow2": 1_000_000}


class CreateKind(JobDriver):
    """The create job's JobDriver: no nodes held, nothing to commit or abort."""

    block_job = False


@command("blockdev-create", members(("job-id", STR), ("options", BLOCKDEV_CREATE_OPTIONS)))
def _blockdev_create(m: Machine, a: dict[str, Any]) -> None:
    opts = a["options"]
    if opts["driver"] not in CREATE_DRIVERS:
        raise QMPError("Driver does not support blockdev-create")
    job_id = a["job-id"]
    if not id_wellformed(job_id):
        raise QMPError(f"Invalid job ID '{job_id}'")
    if m.state.find_job(job_id) is not None:
        raise QMPError(f"Job ID '{job_id}' already in use")
    job = Job(job_id, "create", m.emit, auto_finalize=True, auto_dismiss=False)
    job.kind = CreateKind()
    m.state.register_job(job)
    job_flow.create(job)

    def work() -> None:
        try:
            _run_create(m, opts)
        except QMPError as exc:
            job.error = exc.desc
        job.len = job.offset = 1

    start_oneshot_job(m, job, CREATE_DELAY_NS[opts["driver"]], work)


def _run_create(m: Machine, opts: dict[str, Any]) -> None:
    g = m.state.graph
    if opts["driver"] == "file":
        create_file(g, opts["filename"], opts["size"])
        return
    q = Qcow2CreateOptions(
        size_bytes=opts["size"],
        version=opts.get("version", "v3"),
        cluster_size=opts.get("cluster-size", 65536),
        backing_file=opts.get("backing-file"),
        backing_fmt=opts.get("backing-fmt"),
        lazy_refcounts=opts.get("lazy-refcounts", False),
        refcount_bits=opts.get("refcount-bits", 16),
        preallocation=opts.get("preallocation", "off"),
        extended_l2=opts.get("extended-l2", False),
    )
    validate_qcow2(q)
    file, temporary = _open_file_ref(m, opts["file"])
    try:
        create_qcow2(g, file, q)
    finally:
        if temporary:
            g.delete_unreferenced(file)


def _open_file_ref(m: Machine, ref: Any) -> tuple[BlockNode, bool]:
    """bdrv_open_blockdev_ref: a node by name, or a new node from inline options."""
    g = m.state.graph
    if isinstance(ref, str):
        node = g.lookup_bs(ref)
        if node is None:
            raise QMPError(f"Cannot find device='{ref}' nor node-name='{ref}'")
        return node, False
    if ref["driver"] != "file":
        raise QMPError(f"blocksim does not model qcow2 images on a '{ref['driver']}' node")
    image = g.existing_image(ref["filename"])
    check_file_lock(g, image)
    if "node-name" in ref:
        check_new_node_name(g, ref["node-name"])
    node = g.new_node("file", image.size_bytes, ref.get("node-name"), image=image)
    return node, True
