"""blockdev-create, blockdev-reopen and the rest of the block API beyond jobs and bitmaps."""

from __future__ import annotations

from typing import Any

from sim.engine.machine import Machine
from sim.qmp.dispatch import Monitor


def _machine() -> tuple[Machine, Monitor]:
    import sim.qmp.commands  # noqa: F401

    m = Machine(seed=0)
    m.state.add_drive("drive0", "fmt0", "proto0", "qcow2", 64 << 20)
    return m, Monitor(m)


def _ok(mon: Monitor, cmd: str, **args: Any) -> Any:
    r = mon.execute({"execute": cmd, "arguments": args})
    assert "return" in r, r
    return r["return"]


def _err(mon: Monitor, cmd: str, **args: Any) -> str:
    r = mon.execute({"execute": cmd, "arguments": args})
    assert "error" in r, r
    return str(r["error"]["desc"])


def _create_qcow2(mon: Monitor, filename: str, node: str, **opts: Any) -> None:
    _ok(
        mon,
        "blockdev-create",
        **{"job-id": "f", "options": {"driver": "file", "filename": filename, "size": 0}},
    )
    _ok(mon, "job-dismiss", id="f")
    _ok(mon, "blockdev-add", driver="file", filename=filename, **{"node-name": node + "p"})
    _ok(
        mon,
        "blockdev-create",
        **{"job-id": "q", "options": {"driver": "qcow2", "file": node + "p", **opts}},
    )
    _ok(mon, "job-dismiss", id="q")


def test_create_job_concludes_with_its_events_and_no_block_job_events() -> None:
    m, mon = _machine()
    _ok(
        mon,
        "blockdev-create",
        **{"job-id": "c0", "options": {"driver": "file", "filename": "t.qcow2", "size": 0}},
    )
    names = [(e.name, e.data.get("status")) for e in m.events.history]
    assert names == [
        ("JOB_STATUS_CHANGE", s) for s in ("created", "running", "waiting", "pending", "concluded")
    ]
    assert _ok(mon, "query-jobs") == [
        {
            "current-progress": 1,
            "status": "concluded",
            "total-progress": 1,
            "type": "create",
            "id": "c0",
        }
    ]
    assert _ok(mon, "query-block-jobs") == []
    assert _err(mon, "block-job-dismiss", id="c0") == "Block job 'c0' not found"
    _ok(mon, "job-dismiss", id="c0")
    assert m.state.graph.images["t.qcow2"].format == "raw"


def test_qcow2_create_errors_land_in_query_jobs() -> None:
    m, mon = _machine()
    _ok(
        mon,
        "blockdev-create",
        **{"job-id": "c6", "options": {"driver": "qcow2", "file": "proto0", "size": 1000}},
    )
    assert _ok(mon, "query-jobs")[0]["error"] == "Image size must be a multiple of 512 bytes"
    _ok(
        mon,
        "blockdev-create",
        **{"job-id": "c7", "options": {"driver": "qcow2", "file": "proto0", "size": 1 << 20}},
    )
    assert "Permission conflict on node 'proto0'" in _ok(mon, "query-jobs")[0]["error"]
    assert (
        _err(mon, "blockdev-create", **{"job-id": "r", "options": {"driver": "raw"}})
        == "Driver does not support blockdev-create"
    )
    assert "does not model" in _err(
        mon,
        "blockdev-create",
        **{"job-id": "l", "options": {"driver": "luks", "file": "x", "size": 0}},
    )


def test_created_qcow2_opens_with_its_cluster_size_and_backing_file() -> None:
    m, mon = _machine()
    _create_qcow2(
        mon,
        "ov.qcow2",
        "ov",
        size=64 << 20,
        **{"cluster-size": 4096, "backing-file": "drive0.qcow2"},
    )
    image = m.state.graph.images["ov.qcow2"]
    assert (image.format, image.cluster_size, image.backing_file) == ("qcow2", 4096, "drive0.qcow2")
    _ok(mon, "blockdev-add", driver="qcow2", file="ovp", backing=None, **{"node-name": "ov"})
    _ok(mon, "block-dirty-bitmap-add", node="ov", name="b")
    assert m.state.graph.node("ov").bitmaps[0].granularity == 4096  # type: ignore[union-attr]


def test_reopen_toggles_read_only_and_persistent_bitmaps() -> None:
    m, mon = _machine()
    _ok(mon, "block-dirty-bitmap-add", node="fmt0", name="p", persistent=True)
    _ok(
        mon,
        "blockdev-snapshot-sync",
        **{"node-name": "fmt0", "snapshot-file": "o.qcow2", "snapshot-node-name": "o"},
    )
    assert "readonly" in _err(mon, "block-dirty-bitmap-remove", node="fmt0", name="p")
    _ok(
        mon,
        "blockdev-reopen",
        options=[{"driver": "qcow2", "node-name": "fmt0", "read-only": False, "file": "proto0"}],
    )
    _ok(mon, "block-dirty-bitmap-remove", node="fmt0", name="p")
    fmt0 = m.state.graph.node("fmt0")
    assert fmt0 is not None and not fmt0.read_only


def test_reopen_checks_everything_before_changing_anything() -> None:
    m, mon = _machine()
    _ok(
        mon,
        "blockdev-snapshot-sync",
        **{"node-name": "fmt0", "snapshot-file": "o.qcow2", "snapshot-node-name": "o"},
    )
    ov = m.state.graph.node("o")
    assert ov is not None and ov.file is not None
    good = {"driver": "qcow2", "node-name": "fmt0", "read-only": False, "file": "proto0"}
    bad = {"driver": "qcow2", "node-name": "o", "file": ov.file.node_name}
    assert _err(mon, "blockdev-reopen", options=[good, bad]) == "backing is missing for 'o'"
    assert m.state.graph.node("fmt0").read_only  # type: ignore[union-attr]
    cycle = {**bad, "backing": "o"}
    assert (
        _err(mon, "blockdev-reopen", options=[cycle])
        == "Making 'o' a backing child of 'o' would create a cycle"
    )


def test_reopen_detaching_backing_closes_the_old_chain() -> None:
    m, mon = _machine()
    _ok(
        mon,
        "blockdev-snapshot-sync",
        **{"node-name": "fmt0", "snapshot-file": "o.qcow2", "snapshot-node-name": "o"},
    )
    ov = m.state.graph.node("o")
    assert ov is not None and ov.file is not None
    _ok(
        mon,
        "blockdev-reopen",
        options=[{"driver": "qcow2", "node-name": "o", "file": ov.file.node_name, "backing": None}],
    )
    assert m.state.graph.node("fmt0") is None and m.state.graph.node("proto0") is None
    assert ov.backing is None
