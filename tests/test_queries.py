"""sim.qmp.cmd_query: query-named-block-nodes, query-block and the host-file sizes.

Every number below was read from qemu-system-x86_64 7.2.22 (the oracle, images
on ext4 with 4 KiB blocks); the recorded traces scenarios/recorded/queries-*
replay the same cases end to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.model.bitmap import DirtyBitmap
from sim.model.content import SECTOR_SHIFT, Content
from sim.model.graph import BlockNode
from sim.model.host_file import (
    HostFile,
    _backing_has_data,
    _covered_units,
    _HostMap,
    _l2_span,
    _overlaps,
    _runs_where,
    _written_blocks,
    host_file,
    stored_bitmaps,
)
from sim.model.state import BlockState
from sim.qmp.cmd_query import node_filename
from tests.helpers import DRIVE0, io, qmp, responses, run_steps, snapshot_sync

MIB = 1 << 20
EMPTY_QCOW2 = HostFile(196616, 200704)  # 3 whole clusters + the 8-byte L1 table


def _drive(fmt: str = "qcow2", size: int = 64 * MIB) -> tuple[BlockState, BlockNode]:
    state = BlockState()
    bb = state.add_drive("drive0", "fmt0", "proto0", fmt, size)
    assert bb.root is not None
    return state, bb.root


def _write(node: BlockNode, offset: int, length: int, stamp: int = 2) -> None:
    assert node.content is not None
    node.content.write(offset, length, stamp)
    for bm in node.bitmaps:
        bm.record_write(offset, length)


def _host(state: BlockState, node: BlockNode) -> HostFile:
    assert node.image is not None
    return host_file(state.graph, node.image)


def _settle(node: BlockNode) -> None:
    """What a snapshot on top does to the old node: reopened read-only, bitmaps stored."""
    node.read_only = True
    for bm in node.bitmaps:
        bm.readonly = bm.stored = bm.persistent


# -- host-file formulas ---------------------------------------------------------------


@pytest.mark.parametrize(
    "size, expected",
    [(MIB, EMPTY_QCOW2), (64 * MIB, EMPTY_QCOW2), (1 << 30, HostFile(196624, 200704))],
)
def test_empty_qcow2(size: int, expected: HostFile) -> None:
    state, node = _drive(size=size)
    assert _host(state, node) == expected


def test_empty_raw_has_its_first_block() -> None:
    state, node = _drive("raw", MIB)
    assert _host(state, node) == HostFile(MIB, 4096)


def test_whole_cluster_takes_an_l2_table_and_a_cluster() -> None:
    state, node = _drive()
    _write(node, 0, 65536)
    assert _host(state, node) == HostFile(6 * 65536, 200704 + 2 * 65536)


def test_partial_write_over_zeroes_allocates_the_whole_cluster() -> None:
    state, node = _drive()
    _write(node, 0, 65536)
    _write(node, 128 << 10, 512)
    assert _host(state, node) == HostFile(7 * 65536, 397312)


def test_zero_writes_are_zero_flags() -> None:
    state, node = _drive()
    _write(node, 0, 65536)
    _write(node, MIB, 65536, stamp=1)  # ZERO_STAMP: write -z
    assert _host(state, node) == HostFile(6 * 65536, 331776)


def test_three_fallocated_clusters_need_an_extent_index_block() -> None:
    # queries-image-sizes drive4: create + L2 + 2 unwritten extents fit the inode,
    # a third does not (598016 = 200704 + 6 clusters + one 4 KiB index block)
    state, node = _drive(size=16 * MIB)
    for offset, length in ((8 << 10, 4096), (64 << 10, 65536), (200 << 10, 8192)):
        _write(node, offset, length)
    assert _host(state, node).allocated_bytes == 462848
    _write(node, 320 << 10, 65536)
    _write(node, 400 << 10, 512)
    assert _host(state, node) == HostFile(655360, 598016)


def test_raw_blocks_and_fallocated_zeroes() -> None:
    state, node = _drive("raw")
    _write(node, 0, 4096)
    _write(node, MIB, 65536)
    _write(node, 3 * MIB, 512)
    assert _host(state, node) == HostFile(64 * MIB, 73728)
    _write(node, 2 * MIB, 65536, stamp=1)
    assert _host(state, node).allocated_bytes == 139264


def test_stored_dirty_bitmap_and_partial_cluster() -> None:
    # 1 MiB + 4 KiB at 40M, one dirty persistent bitmap, then a snapshot
    state, node = _drive()
    node.bitmaps.insert(0, DirtyBitmap("b0", 65536, 64 * MIB, persistent=True))
    _write(node, 0, MIB)
    _write(node, 40 * MIB, 4096)
    assert _host(state, node) == HostFile(1441792, 1380352)
    _settle(node)
    # bitmap data cluster, table, 32-byte directory; six extents: an index block
    assert _host(state, node) == HostFile(24 * 65536 + 32, 1458176)


def test_stored_clean_bitmap_has_no_data_cluster() -> None:
    state, node = _drive()
    _write(node, 0, MIB)
    _write(node, 40 * MIB, 4096)
    node.bitmaps.insert(0, DirtyBitmap("late", 65536, 64 * MIB, persistent=True))
    _settle(node)
    assert _host(state, node).allocated_bytes == 1392640


def test_bitmap_directory_entries_are_padded_to_8_bytes() -> None:
    state, node = _drive(size=MIB)
    node.bitmaps.insert(0, DirtyBitmap("c0", 65536, MIB, persistent=True))
    _settle(node)
    assert _host(state, node) == HostFile(5 * 65536 + 32, 208896)
    state, node = _drive()
    for name, gran in (("b0", 65536), ("b1", 512), ("longer-bitmap-name-here", 131072)):
        node.bitmaps.insert(0, DirtyBitmap(name, gran, 64 * MIB, persistent=True))
    node.bitmaps[1].enabled = False  # b1 is added disabled: the write leaves it clean
    _write(node, 0, 65536)
    _settle(node)
    assert [b.name for b in stored_bitmaps(node)] == ["longer-bitmap-name-here", "b1", "b0"]
    assert _host(state, node) == HostFile(11 * 65536 + 48 + 32 + 32, 483328)


def test_large_image_has_one_l2_table_per_512_mib() -> None:
    state, node = _drive(size=1 << 30)
    _write(node, 0, 65536)
    _write(node, 600 * MIB, 65536)
    _write(node, 1000 * MIB, 4096)
    assert _host(state, node) == HostFile(589824, 528384)


# -- shapes -----------------------------------------------------------------------------


def _returns(*steps: Any, drives: list[dict[str, Any]] | None = None) -> list[Any]:
    result = run_steps(list(steps), drives=drives or [DRIVE0])
    assert result.ok, result.mismatches + result.trace_errors + result.internal_errors
    return [r.get("return") for r in responses(result)]


def test_query_block_of_an_if_none_drive() -> None:
    (blocks,) = _returns(qmp("query-block"))
    assert set(blocks[0]) == {"device", "locked", "removable", "type", "inserted"}
    inserted = blocks[0]["inserted"]
    assert inserted["image"] == {
        "virtual-size": 64 * MIB,
        "filename": "drive0.qcow2",
        "cluster-size": 65536,
        "format": "qcow2",
        "actual-size": 200704,
        "format-specific": {
            "type": "qcow2",
            "data": {
                "compat": "1.1",
                "compression-type": "zlib",
                "lazy-refcounts": False,
                "refcount-bits": 16,
                "corrupt": False,
                "extended-l2": False,
            },
        },
        "dirty-flag": False,
    }
    assert "dirty-bitmaps" not in inserted and "backing_file" not in inserted


def test_file_node_reports_the_host_file() -> None:
    (nodes,) = _returns(qmp("query-named-block-nodes"))
    assert [n["node-name"] for n in nodes] == ["fmt0", "proto0"]
    assert nodes[1]["image"] == {
        "virtual-size": 197120,
        "filename": "drive0.qcow2",
        "format": "file",
        "actual-size": 200704,
        "dirty-flag": False,
    }


def test_depth_and_nesting_with_and_without_flat() -> None:
    snap = snapshot_sync("ov0.qcow2", "ov0")
    _, _, flat, nested, blocks = _returns(
        io("write 0 64k"),
        snap,
        qmp("query-named-block-nodes", flat=True),
        qmp("query-named-block-nodes"),
        qmp("query-block"),
    )
    assert flat[0]["backing_file_depth"] == 0 and "backing-image" not in flat[0]["image"]
    for top in (nested[0], blocks[0]["inserted"]):
        assert top["backing_file_depth"] == 1 and top["backing_file"] == "drive0.qcow2"
        image = top["image"]
        assert image["backing-filename"] == image["full-backing-filename"] == "drive0.qcow2"
        assert image["backing-filename-format"] == "qcow2"
        assert image["backing-image"]["actual-size"] == 331776
    assert [n["ro"] for n in flat] == [False, False, True, True]


def test_snapshot_stores_persistent_bitmaps_in_format_specific() -> None:
    add = qmp("block-dirty-bitmap-add", node="drive0", name="b0", persistent=True)
    snap = snapshot_sync("ov0.qcow2", "ov0")
    _, before, _, after = _returns(
        add, qmp("query-named-block-nodes", flat=True), snap, qmp("query-named-block-nodes")
    )
    assert "bitmaps" not in before[0]["image"]["format-specific"]["data"]
    base = after[0]["image"]["backing-image"]
    bitmaps = base["format-specific"]["data"]["bitmaps"]
    assert bitmaps == [{"flags": ["auto"], "name": "b0", "granularity": 65536}]


def test_backup_filter_is_inserted_and_the_target_detects_zeroes() -> None:
    backup = qmp(
        "drive-backup",
        device="drive0",
        sync="full",
        target="bk.qcow2",
        format="qcow2",
        **{"job-id": "bk", "auto-finalize": False},
    )
    _, _, blocks, nodes, jobs = _returns(
        backup,
        {"wait": {"event": "BLOCK_JOB_PENDING", "data": {"id": "bk"}}},
        qmp("query-block"),
        qmp("query-named-block-nodes", flat=True),
        qmp("query-block-jobs"),
    )
    inserted = blocks[0]["inserted"]
    assert inserted["drv"] == "copy-before-write" and inserted["backing_file_depth"] == 1
    assert inserted["image"]["filename"] == "drive0.qcow2"
    assert "format-specific" not in inserted["image"]
    assert [n["detect_zeroes"] for n in nodes] == ["off", "unmap", "off", "off", "off"]
    assert jobs[0]["status"] == "pending" and "error" not in jobs[0]


def test_null_co_names_and_sizes() -> None:
    _, _, nodes = _returns(
        qmp("blockdev-add", driver="null-co", **{"node-name": "n0"}),
        qmp("blockdev-add", driver="null-co", size=MIB, **{"node-name": "n1"}),
        qmp("query-named-block-nodes"),
    )
    assert [n["image"] for n in nodes[:2]] == [
        {
            "virtual-size": MIB,
            "filename": 'json:{"driver": "null-co", "size": 1048576}',
            "format": "null-co",
            "actual-size": 0,
        },
        {"virtual-size": 1 << 30, "filename": "null-co://", "format": "null-co", "actual-size": 0},
    ]


def test_named_copy_on_read_filter_shows_json_and_implicit_one_is_skipped() -> None:
    state = BlockState()
    bb = state.add_drive("drive0", "fmt0", "proto0", "qcow2", MIB)
    assert bb.root is not None
    flt = state.graph.new_node("copy-on-read", MIB, "cor", file=bb.root)
    assert node_filename(state.graph, flt) == (
        'json:{"driver": "copy-on-read", "file": {"driver": "qcow2", '
        '"file": {"driver": "file", "filename": "drive0.qcow2"}}}'
    )
    flt.implicit = True
    assert node_filename(state.graph, flt) == "drive0.qcow2"


def test_commit_base_made_writable_flags_its_stored_bitmaps_in_use() -> None:
    snap = snapshot_sync("ov1.qcow2", "ov1")
    *_, nodes = _returns(
        qmp("block-dirty-bitmap-add", node="fmt0", name="b0", persistent=True),
        io("write 0 64k"),
        snap,
        qmp("block-commit", device="drive0", **{"job-id": "c0"}),
        {"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "c0"}}},
        qmp("query-named-block-nodes", flat=True),
    )
    assert [n["drv"] for n in nodes] == ["mirror_top", "qcow2", "file", "qcow2", "file"]
    flags = nodes[3]["image"]["format-specific"]["data"]["bitmaps"][0]["flags"]
    assert flags == ["in-use", "auto"] and nodes[3]["ro"] is False


def test_intermediate_commit_filter_is_read_only_and_skipped_by_query_block() -> None:
    steps: list[Any] = [io("write 0 64k")]
    for name in ("ov1", "ov2"):
        steps.append(
            qmp(
                "blockdev-snapshot-sync",
                device="drive0",
                **{"snapshot-file": f"{name}.qcow2", "snapshot-node-name": name},
            )
        )
    steps += [
        qmp(
            "block-commit",
            device="drive0",
            **{"job-id": "c1", "top-node": "ov1", "base-node": "fmt0", "auto-finalize": False},
        ),
        {"wait": {"event": "BLOCK_JOB_PENDING", "data": {"id": "c1"}}},
        qmp("query-named-block-nodes"),
        qmp("query-block"),
    ]
    *_, nodes, blocks = _returns(*steps)
    top = nodes[0]
    assert top["drv"] == "commit_top" and top["ro"] is True and top["backing_file_depth"] == 2
    assert top["image"]["filename"] == "ov1.qcow2" and "backing_file" not in top
    inserted = blocks[0]["inserted"]
    assert inserted["node-name"] == "ov2" and inserted["backing_file_depth"] == 2
    assert inserted["image"]["backing-image"]["filename"] == "ov1.qcow2"


def _numpy_layout(graph: Any, image: Any, node: BlockNode) -> HostFile:
    """A reference for the qcow2 layout: every cluster classified with numpy (holds
    data, written whole), then laid out one by one (what host_file did before it
    walked runs)."""
    from sim.model.host_file import _created_qcow2, _store_bitmaps

    hmap = _created_qcow2(node.cluster_size, node.read_only, image.size_bytes)
    _lay_out_all(hmap, image.content, graph.backing_chain(node)[1:], node.cluster_size)
    _store_bitmaps(hmap, stored_bitmaps(node))
    return hmap.host_file()


def _lay_out_all(hmap: _HostMap, content: Content, backing: list[BlockNode], cluster: int) -> None:
    per = cluster >> SECTOR_SHIFT
    index, has_data, whole = _classify(content, per)
    if index.size:
        region_of = index // (_l2_span(cluster) // cluster)
        new_region = np.empty(index.size, dtype=bool)
        new_region[0] = True
        new_region[1:] = region_of[1:] != region_of[:-1]
        _lay_out_clusters(hmap, content, backing, per, index, has_data, whole, new_region)


def _lay_out_clusters(
    hmap: _HostMap,
    content: Content,
    backing: list[BlockNode],
    per: int,
    index: np.ndarray,
    has_data: np.ndarray,
    whole: np.ndarray,
    new_region: np.ndarray,
) -> None:
    """L2 tables and data clusters in guest order; once the extent tree is crowded the
    rest is counted (numpy), not walked."""
    arrays = (index, has_data, whole, new_region)
    n = int(index.size)
    i = 0
    pending = 0  # whole data clusters not yet handed to hmap (they merge)
    step = 256  # clusters turned into Python values at a time
    while i < n:
        idx, data, full, region = (a[i : i + step].tolist() for a in arrays)
        for k in range(len(idx)):
            if hmap.crowded:
                rest = slice(i + k, n)
                hmap.count_clusters(
                    pending + int(new_region[rest].sum()) + int(has_data[rest].sum())
                )
                return
            if region[k]:
                hmap.write_clusters(pending)
                pending = 0
                hmap.write(hmap.cluster_bytes, hmap.new_group())  # the L2 table
            if data[k]:
                if full[k] or _backing_has_data(backing, content, idx[k], per):
                    pending += 1
                else:
                    hmap.write_clusters(pending)
                    pending = 0
                    hmap.fallocate(_written_blocks(content, idx[k], per))
        i += step
    hmap.write_clusters(pending)


def _classify(content: Content, per: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, holds data, written whole) of each cluster holding a stamp, ascending."""
    lo, hi = _runs_where(content, data_only=False)
    if not lo.size:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.astype(bool), empty.astype(bool)
    index = _covered_units(lo, hi, per)
    starts = index * per
    k = np.searchsorted(lo, starts, side="right") - 1
    whole = (k >= 0) & (hi[np.maximum(k, 0)] >= starts + per)
    d_lo, d_hi = _runs_where(content, data_only=True)
    return index, _overlaps(d_lo, d_hi, starts, per), whole


@pytest.mark.parametrize("seed", range(8))
def test_walk_over_the_cluster_summary_lays_out_what_numpy_does(seed: int) -> None:
    """The layout walked run by run and read from the cluster counts equals the one
    laid out cluster by cluster over numpy's classification, for writable and
    settled images, over a backing file with data and without, and for a settled
    image written in long sequential runs (whose extent tree never crowds)."""
    import random

    from sim.model import io as model_io
    from sim.model.host_file import _host_file
    from sim.model.policy import get_policy
    from sim.model.snapshot import snapshot_sync

    rng = random.Random(seed)
    state, base = _drive(size=3 << 30)  # six L2 regions
    graph = state.graph
    bb = graph.backends["drive0"]

    def scribble(n: int) -> None:
        for _ in range(n):
            size = rng.choice([512, 4096, 65536, 3 * 65536 + 512, 40 << 20])
            off = rng.randrange(0, (3 << 30) - size) // 512 * 512
            stamp = rng.choice([0, 1, 2, 2, 2]) and state.new_stamp(rng.randrange(1, 256))
            assert bb.root is not None
            model_io.guest_write(graph, bb, bb.root, off, size, stamp or rng.choice([1, 0]))

    def same(node: BlockNode) -> None:
        assert node.image is not None
        walked = _host_file(graph, node.image, node)
        assert walked == _numpy_layout(graph, node.image, node)

    for n in (0, 1, 3, 40, 400):
        scribble(n)
        same(base)
    snapshot_sync(graph, get_policy("qemu-7.2"), "drive0", None, "ov.qcow2", "ov").commit()
    same(base)  # settled: read-only, flushed
    scribble(300)
    assert bb.root is not None and bb.root.node_name == "ov"
    same(bb.root)  # over a backing file with data
    seq_state, seq = _drive(size=2 << 30)
    seq_bb = seq_state.graph.backends["drive0"]
    assert seq_bb.root is not None
    for i in range(rng.choice([2, 3, 300])):  # whole clusters in order, some not whole
        length = rng.choice([1 << 20, 1 << 20, 3 << 20, 65536 + 512])
        off = i * (3 << 20) + rng.choice([0, 0, 32768])  # some begin inside a cluster
        model_io.guest_write(
            seq_state.graph, seq_bb, seq_bb.root, off, length, seq_state.new_stamp(5)
        )
    snapshot_sync(
        seq_state.graph, get_policy("qemu-7.2"), "drive0", None, "seq-ov.qcow2", "seq-ov"
    ).commit()
    assert seq.image is not None and seq.read_only
    assert _host_file(seq_state.graph, seq.image, seq) == _numpy_layout(
        seq_state.graph, seq.image, seq
    )
