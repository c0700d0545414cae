"""raw with offset / size: a window of its file (block/raw-format.c)."""

from __future__ import annotations

from typing import Any

from sim.model.content import Content, WindowContent
from tests.helpers import io, qmp, responses, run_steps

MiB = 1 << 20


def _file() -> list[dict[str, Any]]:
    return [
        qmp("blockdev-create", **{"job-id": "c0",
            "options": {"driver": "file", "filename": "w.img", "size": 4 * MiB}}),
        {"advance": 0.01},
        qmp("job-dismiss", id="c0"),
        qmp("blockdev-add", driver="file", filename="w.img", **{"node-name": "fw"}),
    ]  # fmt: skip


def _window(name: str, **opts: int) -> dict[str, Any]:
    return qmp("blockdev-add", driver="raw", **{"node-name": name, "file": "fw", **opts})


def test_window_writes_land_at_the_offset_and_stop_at_the_size() -> None:
    r = run_steps(
        [*_file(), _window("r1", offset=MiB, size=MiB), _window("all"),
         io("write -P 0x11 0 64k", "r1"), io("write -P 0x12 1M 512", "r1"),
         io("read -P 0x11 1M 64k", "all"), io("read -P 0 0 64k", "all"),
         io("read -P 0 2M 512", "all")]
    )  # fmt: skip
    assert all("return" in s.response for s in r.steps if "execute" in s.command)
    outputs = [s.output for s in r.steps[-5:]]
    assert outputs[1] is not None and "write failed: Input/output error" in outputs[1]
    assert "Pattern verification failed" not in "".join(o or "" for o in outputs[2:])
    image = r.machine.state.graph.images["w.img"]
    assert image.content.stamp_at(MiB // 512) != 0 and image.content.stamp_at(0) == 0


def test_window_size_and_queries() -> None:
    r = run_steps(
        [*_file(), _window("r1", offset=3 * MiB), _window("r2", size=MiB),
         qmp("query-named-block-nodes", flat=True), qmp("block_resize", **{"node-name": "r2",
             "size": 2 * MiB}), qmp("blockdev-del", **{"node-name": "r1"}),
         qmp("block_resize", **{"node-name": "r2", "size": 2 * MiB})]
    )  # fmt: skip
    nodes = {n["node-name"]: n for n in responses(r)[-4]["return"]}
    assert nodes["r1"]["image"]["virtual-size"] == MiB
    assert nodes["r2"]["image"]["virtual-size"] == MiB
    assert '"offset": 3145728' in nodes["r1"]["image"]["filename"]
    # a window unshares resize on the file for the others; alone, a fixed size refuses it
    assert "unshared by node 'r1'" in responses(r)[-3]["error"]["desc"]
    assert responses(r)[-1]["error"]["desc"] == "Cannot resize fixed-size raw disks"


def test_window_refusals() -> None:
    r = run_steps(
        [*_file(), _window("b0", offset=4 * MiB + 1), _window("b1", size=1000),
         _window("b2", offset=512, size=4 * MiB), _window("b3", offset=-1),
         _window("b4", offset=100)]
    )  # fmt: skip
    descs = [resp["error"]["desc"] for resp in responses(r)[-5:]]
    assert (
        descs[0] == "Offset (4194305) cannot be greater than size of the containing file (4194304)"
    )
    assert descs[1] == "Specified size is not multiple of 512"
    assert descs[2].startswith("The sum of offset (512) and size (4194304)")
    assert descs[3] == "Parameter 'offset' expects a non-negative number below 2^64"
    assert descs[4].startswith("blocksim does not model a raw offset")


def test_window_content_shifts_and_clones() -> None:
    base = Content(8 * MiB)
    win = WindowContent(base, MiB, 2 * MiB)
    win.write(0, 4096, 7)
    win.write(2 * MiB - 512, 4096, 8)  # clipped at the window's end
    assert base.extents() == [(2048, 2056, 7), (6143, 6144, 8)]
    assert win.extents() == [(0, 8, 7), (4095, 4096, 8)]
    starts, stamps = win.arrays()
    assert starts.tolist() == [0, 8, 4095] and stamps.tolist() == [7, 0, 8]
    copy = win.clone()
    base.write(MiB, 512, 9)
    assert copy.stamp_at(0) == 7 and win.stamp_at(0) == 9


def test_checkers_follow_writes_below_a_raw_window_and_over_a_qcow2_node() -> None:
    """Every checker on the two recorded raw scenarios: a write through a raw window
    reaches its file node's bitmap at offset + its own, one through raw over the
    device's qcow2 node is a write to the device there; neither is a violation."""
    from sim.check import make_checkers
    from sim.replay import replay
    from sim.trace import load_trace
    from tests.helpers import SCENARIOS

    for name in ("raw-window-file-bitmap", "raw-over-qcow2-node"):
        result = replay(
            load_trace(SCENARIOS / "blockapi" / f"{name}.jsonl"), checkers=make_checkers()
        )
        assert result.ok, result.mismatches
        assert result.final["violations"] == [], (name, result.final["violations"])


def _window_bitmaps(record_write: Any = None) -> tuple[Any, dict[str, list[int]], Any]:
    """raw-window-file-bitmap replayed with bitmap-precision up to its blockdev-del: the
    replay's result, the clusters each bitmap marks (the model's), and the checker."""
    from sim.check import make_checkers
    from sim.replay import Replayer
    from sim.trace import load_trace
    from tests.helpers import SCENARIOS

    trace = load_trace(SCENARIOS / "blockapi" / "raw-window-file-bitmap.jsonl")
    (checker,) = make_checkers(["bitmap-precision"])
    r = Replayer(trace, checkers=[checker])
    steps = trace.steps[:-1]  # the bitmaps of node w go with its blockdev-del
    for n, step in enumerate(steps, start=1):
        r.run_step(n, step)
    graph = r.machine.state.graph
    marked = {
        f"{name}/{bm.name}": list(bm.bits.search(1))
        for name in ("rf", "w")
        for bm in graph.node(name).bitmaps  # type: ignore[union-attr]
    }
    return r.finish(), marked, checker


def test_a_write_through_a_raw_window_marks_the_files_bitmap_at_offset_plus_its_own() -> None:
    """The window is at 1 MiB of its file: writes at the window's 0 and 192 KiB dirty the
    window's own bitmap at clusters 0 and 3 and the file's at 16 and 19 (64 KiB clusters);
    bitmap-precision's reference marks the same clusters, so it reports nothing."""
    result, marked, checker = _window_bitmaps()
    assert marked == {"rf/b": [16, 19], "w/bw": [0, 3]}
    refs = {f"{e.address}/{e.name}": list(ref.lo.search(1)) for e, ref in checker.refs.items()}
    assert refs["rf/b"] == [16, 19] and refs["w/bw"] == [0, 3]
    assert result.final["violations"] == []


def test_a_file_bitmap_marked_at_the_windows_own_offset_is_flagged() -> None:
    """The companion: a model that marked the file's bitmap at the write's offset in the
    window, not at the window's offset plus it, is what bitmap-precision must flag."""
    from sim.model.bitmap import DirtyBitmap

    real = DirtyBitmap.record_write

    def skips_raw_offset(self: DirtyBitmap, offset: int, length: int) -> None:
        real(self, offset - MiB if self.name == "b" and offset >= MiB else offset, length)

    DirtyBitmap.record_write = skips_raw_offset  # type: ignore[method-assign]
    try:
        result, marked, _ = _window_bitmaps()
    finally:
        DirtyBitmap.record_write = real  # type: ignore[method-assign]
    assert marked["rf/b"] == [0, 3]
    messages = [v["message"] for v in result.final["violations"]]
    assert any("marks 131072 byte(s) that no guest write" in m and "first at offset 0" in m
               for m in messages), messages  # fmt: skip
    assert any("lacks 131072 byte(s)" in m and "first at offset 1048576" in m
               for m in messages), messages  # fmt: skip


def test_what_blocksim_cannot_hold_is_refused_with_the_reason() -> None:
    """QEMU 7.2 accepts an unaligned window (it merges bytes: a write of 512 bytes at the
    window's 0 reads back at the file's 100) and raw over a qcow2 image's file, whose
    disk is the host bytes: blocksim refuses the window and I/O through such a node
    clearly rather than answer from contents it cannot hold; the node itself is as
    long as the host file, as in QEMU (it was the qcow2 node's guest view)."""
    over = {"driver": "file", "filename": "drive0.qcow2", "node-name": "qf"}
    r = run_steps(
        [*_file(), _window("odd", offset=100, size=4096),
         qmp("blockdev-add", driver="raw", **{"node-name": "q"}, file=over),
         qmp("blockdev-add", driver="raw", **{"node-name": "qw", "offset": 512}, file="qf"),
         io("read 0 512", "q"), qmp("query-named-block-nodes", flat=True)]
    )  # fmt: skip
    odd, opened, window, read, query = responses(r)[-5:]
    assert odd["error"]["desc"] == (
        "blocksim does not model a raw offset that is not a multiple of 512 (100): "
        "its contents are kept per 512-byte sector"
    )
    assert opened == {"return": {}}
    assert window["error"]["desc"].startswith(
        "blocksim does not model a raw window over the bytes of a 'qcow2' image file"
    )
    assert read["error"]["desc"] == (
        "blocksim does not model I/O through raw node 'q' over the bytes of a 'qcow2' image file"
    )
    sizes = {n["node-name"]: n["image"]["virtual-size"] for n in query["return"]}
    assert sizes["q"] == sizes["qf"] < sizes["fmt0"]


def test_jobs_through_raw_over_a_qcow2_files_bytes_are_refused() -> None:
    """A job reading or writing through raw over a qcow2 image's file would copy the
    image's host bytes, which blocksim does not hold: refused with the reason, as its
    source or its target (before, it copied the guest contents: a silent wrong answer)."""
    over = {"driver": "file", "filename": "drive0.qcow2", "node-name": "qf"}
    add = qmp("blockdev-add", driver="raw", **{"node-name": "q", "read-only": True},
              file={**over, "read-only": True})  # fmt: skip
    size = run_steps([add]).machine.state.graph.node("q").size_bytes  # type: ignore[union-attr]
    r = run_steps(
        [add,
         qmp("blockdev-add", driver="null-co", **{"node-name": "sink", "size": size}),
         qmp("blockdev-backup", device="q", target="sink", sync="full", **{"job-id": "b"}),
         qmp("blockdev-mirror", device="drive0", target="q", sync="full", **{"job-id": "m"}),
         qmp("blockdev-mirror", device="q", target="sink", sync="full", **{"job-id": "m2"})]
    )  # fmt: skip
    backup, mirror, mirror_from = responses(r)[-3:]
    reason = "through raw node 'q' over the bytes of a 'qcow2' image file"
    assert backup["error"]["desc"] == f"blocksim does not model a backup job {reason}"
    assert mirror["error"]["desc"] == f"blocksim does not model a mirror job {reason}"
    assert mirror_from["error"]["desc"] == f"blocksim does not model a mirror job {reason}"
