"""Image creation as blockdev-create's drivers do it (QEMU 7.2).

`create_file` is block/file-posix.c `raw_co_create`: the file is created or
truncated to `size` bytes of zeroes, after taking the write lock on it.
`create_qcow2` is block/qcow2.c `qcow2_co_create`: options are validated
first (in that function's order), then the protocol node is opened, a
BlockBackend takes write and resize on it, and a fresh qcow2 header is
written: every guest byte reads as zero (or from the backing file the header
names).  Errors are QMPErrors whose text becomes the job's `error`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import QMPError
from sim.model.content import new_content
from sim.model.graph import BlockGraph, BlockNode, Image, backing_name_error, backing_name_fits
from sim.model.qcow2_host import new_qcow2_content

SECTOR = 512
MIN_CLUSTER, MAX_CLUSTER = 512, 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Qcow2CreateOptions:
    """BlockdevCreateOptionsQcow2 members the model acts on."""

    size_bytes: int
    version: str = "v3"
    cluster_size: int = 65536
    backing_file: str | None = None
    backing_fmt: str | None = None
    lazy_refcounts: bool = False
    refcount_bits: int = 16
    preallocation: str = "off"
    extended_l2: bool = False


def check_file_lock(graph: BlockGraph, image: Image) -> None:
    """raw_co_create's lock: the write permission must not be unshared by any
    open node on the file (a qcow2 node always unshares write on its file;
    a writable format node holds the write lock)."""
    for node in graph.nodes:
        if (
            node.image is image
            and node.is_format
            and (node.driver == "qcow2" or not node.read_only)
        ):
            raise QMPError('Failed to get "write" lock')


def create_file(graph: BlockGraph, filename: str, size_bytes: int) -> Image:
    """raw_co_create: a raw file of `size_bytes` zeroes (replacing any file of that name)."""
    old = graph.images.get(filename)
    if old is not None:
        check_file_lock(graph, old)
    image = Image(filename, "raw", size_bytes, new_content(size_bytes))
    graph.images[filename] = image
    for node in graph.nodes:  # protocol nodes already open on the file see the new one
        if node.image is old and old is not None:
            node.image = image
            node.size_bytes = size_bytes
    return image


def validate_qcow2(opts: Qcow2CreateOptions) -> None:
    """qcow2_co_create's option checks, in its order."""
    if opts.size_bytes % SECTOR:
        raise QMPError(f"Image size must be a multiple of {SECTOR} bytes")
    cs = opts.cluster_size
    if cs < MIN_CLUSTER or cs > MAX_CLUSTER or cs & (cs - 1):
        raise QMPError("Cluster size must be a power of two between 512 and 2048k")
    if opts.backing_file is not None and opts.preallocation != "off" and not opts.extended_l2:
        raise QMPError(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on"
        )
    if opts.backing_file is None and opts.backing_fmt is not None:
        raise QMPError("Backing format cannot be used without backing file")
    if opts.version == "v2" and opts.lazy_refcounts:
        raise QMPError(
            "Lazy refcounts only supported with compatibility level 1.1 and above "
            "(use version=v3 or greater)"
        )
    bits = opts.refcount_bits
    if bits > 64 or bits <= 0 or bits & (bits - 1):
        raise QMPError("Refcount width must be a power of two and may be at most 64 bits")
    if opts.version == "v2" and bits != 16:
        raise QMPError(
            "Different refcount widths than 16 bits require compatibility level 1.1 "
            "or above (use version=v3 or greater)"
        )


def check_create_permission(graph: BlockGraph, file: BlockNode) -> None:
    """blk_new_with_bs(file, WRITE | RESIZE, ALL): a format parent of the protocol
    node unshares both (bdrv_default_perms_for_storage)."""
    for parent, role in graph.parents(file):
        if role == "file" and parent.is_format:
            raise QMPError(
                f"Permission conflict on node '{file.node_name}': permissions 'write, "
                f"resize' are both required by an unnamed block device (uses node "
                f"'{file.node_name}' as 'root' child) and unshared by node "
                f"'{parent.node_name}' (uses node '{file.node_name}' as 'file' child)."
            )


def create_qcow2(graph: BlockGraph, file: BlockNode, opts: Qcow2CreateOptions) -> Image:
    """Write a fresh qcow2 header over the file under protocol node `file`."""
    check_create_permission(graph, file)
    image = file.image
    if image is None:
        raise QMPError(f"blocksim does not model qcow2 images on a '{file.driver}' node")
    image.format = "qcow2"
    image.size_bytes = opts.size_bytes
    image.content = new_qcow2_content(opts.size_bytes, opts.cluster_size)
    image.cluster_size = opts.cluster_size
    if opts.backing_file is not None and not backing_name_fits(opts.backing_file):
        # the image is formatted and sized, then the header cannot take the name
        image.backing_file = image.backing_format = None
        raise backing_name_error(opts.backing_file, opts.backing_fmt)
    image.backing_file = opts.backing_file
    # a header names a backing format only when one was given ("": it names none)
    image.backing_format = opts.backing_fmt if opts.backing_fmt is not None else ""
    return image
