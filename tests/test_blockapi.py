"""blockdev-create, blockdev-reopen and the rest of the block API beyond jobs and bitmaps."""

from __future__ import annotations

from typing import Any

import pytest

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


def _create(m: Machine, mon: Monitor, job: str, **options: Any) -> None:
    """blockdev-create and let the create job run (it takes 1 ms of simulated time)."""
    _ok(mon, "blockdev-create", **{"job-id": job, "options": options})
    m.advance(0.002)


def _create_qcow2(m: Machine, mon: Monitor, filename: str, node: str, **opts: Any) -> None:
    _create(m, mon, "f", driver="file", filename=filename, size=0)
    _ok(mon, "job-dismiss", id="f")
    _ok(mon, "blockdev-add", driver="file", filename=filename, **{"node-name": node + "p"})
    _create(m, mon, "q", driver="qcow2", file=node + "p", **opts)
    _ok(mon, "job-dismiss", id="q")


def _snapshot_fmt0(mon: Monitor) -> None:
    """blockdev-snapshot-sync of node fmt0: overlay node `o` (o.qcow2) on top, fmt0 read-only."""
    _ok(
        mon,
        "blockdev-snapshot-sync",
        **{"node-name": "fmt0", "snapshot-file": "o.qcow2", "snapshot-node-name": "o"},
    )


def test_create_job_concludes_with_its_events_and_no_block_job_events() -> None:
    m, mon = _machine()
    _ok(
        mon,
        "blockdev-create",
        **{"job-id": "c0", "options": {"driver": "file", "filename": "t.qcow2", "size": 0}},
    )
    assert _err(mon, "job-dismiss", id="c0") == (
        "Job 'c0' in state 'running' cannot accept command verb 'dismiss'"
    )
    m.advance(0.002)
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
    _create(m, mon, "c6", driver="qcow2", file="proto0", size=1000)
    assert _ok(mon, "query-jobs")[0]["error"] == "Image size must be a multiple of 512 bytes"
    _create(m, mon, "c7", driver="qcow2", file="proto0", size=1 << 20)
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
        m,
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


def test_a_json_backing_name_is_opened_from_its_options() -> None:
    """A header naming the json:{...} name of a qcow2 node over an image file: blockdev-add
    opens that image read-only below, and a `backing` option replaces its header's."""
    import json

    m, mon = _machine()
    _create_qcow2(m, mon, "mid.qcow2", "mid", size=64 << 20, **{"backing-file": "drive0.qcow2"})
    mid = {"driver": "qcow2", "file": {"driver": "file", "filename": "mid.qcow2"}}
    for name, options in (("a", {**mid, "backing": None}), ("b", mid)):
        backing = "json:" + json.dumps(options)
        _create_qcow2(m, mon, f"{name}.qcow2", name, size=64 << 20, **{"backing-file": backing})
    _ok(mon, "blockdev-add", driver="qcow2", file="ap", **{"node-name": "a"})
    below = m.state.graph.node("a").backing  # type: ignore[union-attr]
    assert below is not None and below.image is not None and below.read_only
    assert (below.image.filename, below.backing) == ("mid.qcow2", None)
    # no backing option: mid.qcow2's header names drive0.qcow2, which drive0 writes
    desc = _err(mon, "blockdev-add", driver="qcow2", file="bp", **{"node-name": "b"})
    assert desc == (
        'Could not open backing file: Could not open backing file: Failed to get shared "write" lock'
    )


def test_reopen_toggles_read_only_and_persistent_bitmaps() -> None:
    m, mon = _machine()
    _ok(mon, "block-dirty-bitmap-add", node="fmt0", name="p", persistent=True)
    _snapshot_fmt0(mon)
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
    _snapshot_fmt0(mon)
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
    _snapshot_fmt0(mon)
    ov = m.state.graph.node("o")
    assert ov is not None and ov.file is not None
    _ok(
        mon,
        "blockdev-reopen",
        options=[{"driver": "qcow2", "node-name": "o", "file": ov.file.node_name, "backing": None}],
    )
    assert m.state.graph.node("fmt0") is None and m.state.graph.node("proto0") is None
    assert ov.backing is None


def test_resize_truncates_bitmaps_and_content() -> None:
    m, mon = _machine()
    _ok(mon, "block-dirty-bitmap-add", node="fmt0", name="b0")
    _ok(mon, "block_resize", device="drive0", size=128 << 20)
    _ok(mon, "human-monitor-command", **{"command-line": 'qemu-io drive0 "write -P 0x22 100M 1M"'})
    bm = m.state.graph.node("fmt0").bitmaps[0]  # type: ignore[union-attr]
    assert (bm.size_bytes, bm.count_bytes()) == (128 << 20, 1 << 20)
    _ok(mon, "block_resize", device="drive0", size=60 << 20)
    assert (bm.size_bytes, bm.nbits, bm.count_bytes()) == (60 << 20, 960, 0)
    _ok(mon, "block_resize", device="drive0", size=128 << 20)
    assert bm.count_bytes() == 0  # growth is clean, the data past 60M is gone
    _ok(mon, "human-monitor-command", **{"command-line": 'qemu-io drive0 "read -P 0 100M 1M"'})
    assert m.hmp_output is not None and "Pattern verification failed" not in m.hmp_output
    assert _err(mon, "block_resize", device="drive0", size=1000) == (
        "The new size must be a multiple of 512"
    )
    assert "permissions 'resize'" in _err(mon, "block_resize", **{"node-name": "proto0"}, size=0)


def test_write_threshold_fires_once_past_the_threshold() -> None:
    m, mon = _machine()
    _ok(mon, "block-set-write-threshold", **{"node-name": "fmt0", "write-threshold": 1 << 20})
    _ok(mon, "human-monitor-command", **{"command-line": 'qemu-io drive0 "write 0 512k"'})
    assert not [e for e in m.events.history if e.name == "BLOCK_WRITE_THRESHOLD"]
    _ok(mon, "human-monitor-command", **{"command-line": 'qemu-io drive0 "write 1020k 8k"'})
    _ok(mon, "human-monitor-command", **{"command-line": 'qemu-io drive0 "write 2M 8k"'})
    hits = [e.data for e in m.events.history if e.name == "BLOCK_WRITE_THRESHOLD"]
    assert hits == [{"node-name": "fmt0", "amount-exceeded": 4096, "write-threshold": 1 << 20}]
    assert _err(
        mon, "block-set-write-threshold", **{"node-name": "drive0", "write-threshold": 1}
    ) == ("Device 'drive0' not found")


def test_unknown_and_unmodelled_hmp_commands() -> None:
    m, mon = _machine()
    r = _ok(mon, "human-monitor-command", **{"command-line": "info foo"})
    assert r == "unknown command: 'info foo'\r\n"
    assert "does not model" in _err(
        mon, "human-monitor-command", **{"command-line": "info version"}
    )


def test_blkdebug_rules_arm_faults_and_unmodelled_rules_are_refused() -> None:
    m, mon = _machine()
    _create(m, mon, "f", driver="file", filename="s.qcow2", size=0)
    _ok(mon, "blockdev-add", driver="file", filename="s.qcow2", **{"node-name": "sp"})
    _create(m, mon, "q", driver="qcow2", file="sp", size=64 << 20)
    _ok(mon, "blockdev-del", **{"node-name": "sp"})

    def add(rule: dict[str, Any], **extra: Any) -> dict[str, Any]:
        dbg = {"driver": "blkdebug", "node-name": "dbg", "inject-error": [rule], **extra}
        dbg["image"] = {"driver": "file", "filename": "s.qcow2", "node-name": "sf"}
        return mon.execute(
            {
                "execute": "blockdev-add",
                "arguments": {"driver": "qcow2", "node-name": "s", "file": dbg},
            }
        )

    refused = add({"event": "cluster_alloc_bytes"})  # compressed writes only
    assert "does not model blkdebug event 'cluster_alloc_bytes'" in refused["error"]["desc"]
    assert m.state.graph.node("dbg") is None and m.state.graph.node("sf") is None
    assert (
        "event 'none'"
        in add({"event": "read_aio"}, **{"set-state": [{"event": "none", "new_state": 2}]})[
            "error"
        ]["desc"]
    )
    assert "errno 7" in add({"event": "read_aio", "errno": 7})["error"]["desc"]
    assert "return" in add({"event": "read_aio", "errno": 28, "sector": 8, "once": True})
    ((node, debug),) = m.faults.blkdebug.items()
    (rule,) = debug.rules["read_aio"]
    assert (node.node_name, rule.action, rule.errno, rule.offset, rule.once, debug.state) == (
        "dbg", "inject-error", "ENOSPC", 4096, True, 1
    )  # fmt: skip


def test_blockapi_fuzz_group_runs_the_block_api(tmp_path: Any) -> None:
    from sim.fuzz.campaign import CampaignConfig, run_campaign

    # few groups: the swarm then draws blockdev-add, which runs the block API operations,
    # in most examples (with five groups, some seeds ran it once in 80 examples)
    groups = ("blockapi", "blockdev", "io")
    config = CampaignConfig(
        examples=80, steps=20, seed=1, groups=groups, out=tmp_path, shrink=False,
        invariants=["graph-well-formed", "job-state-legality"],
    )  # fmt: skip
    result = run_campaign(config)
    assert not [f for f in result.failures if f.kind == "internal-error"], result.summary()
    import json

    seen = json.loads((tmp_path / "coverage.json").read_text())["commands"]
    api = ("blockdev-create", "blockdev-reopen", "block_resize", "change-backing-file",
           "block-set-write-threshold", "job-dismiss")  # fmt: skip
    succeeded = [c for c in api if seen.get(c, {}).get("return", 0) > 0]
    assert succeeded, {c: seen.get(c) for c in api}  # which ones depends on the draws


@pytest.mark.parametrize("op", ["throttle", "raw_window", "blockstats", "blkdebug"])
def test_blockapi_fuzz_operations_run_clean(op: str) -> None:
    """The blockapi fuzz operations of this module's features, over many seeded
    choice strings, with every checker: no internal error, no violation."""
    import random

    from sim.fuzz.choices import Choices
    from sim.fuzz.machine import BlockMachine
    from tests.helpers import DRIVE0

    rng = random.Random(op)
    commands: set[str] = set()
    for _ in range(12):
        fm = BlockMachine()
        fm.open([dict(DRIVE0)], 0)
        for _ in range(3):
            getattr(fm, "api_" + op)(Choices(bytes(rng.randrange(256) for _ in range(24))))
        assert not fm.replayer.monitor.internal_errors
        for outcome in fm.outcomes:
            assert not outcome.violations, outcome.violations
            if "return" in outcome.response:
                commands.add(outcome.command.get("execute", ""))
    expected = {"throttle": "object-add", "raw_window": "blockdev-add", "blkdebug": "blockdev-add"}
    expected_command = expected.get(op, "query-blockstats")
    assert expected_command in commands, commands


def test_a_filter_keeps_a_read_only_file_child_read_only_for_commits_base_reopen() -> None:
    # the snapshot reopened fmt0 and proto0 read-only; a backup's copy-before-write
    # filter between them keeps proto0 so, and commit_start's reopen of fmt0 read-write
    # fails on the write permission passed down through the filter
    m, mon = _machine()
    _ok(mon, "blockdev-snapshot-sync", device="drive0", **{"snapshot-file": "o1.qcow2"})
    _ok(mon, "blockdev-snapshot-sync", device="drive0", **{"snapshot-file": "o2.qcow2"})
    _ok(mon, "blockdev-add", driver="null-co", **{"node-name": "t", "size": 197120})
    proto0 = m.state.graph.node("proto0")
    assert proto0 is not None and not proto0.read_only and m.state.graph.is_read_only(proto0)
    _ok(mon, "blockdev-backup", device="proto0", target="t", sync="none", **{"job-id": "b"})
    assert proto0.read_only
    commit = {"device": "drive0", "base-node": "fmt0", "job-id": "c"}
    assert _err(mon, "block-commit", **commit) == "Block node is read-only"
    _ok(mon, "block-job-cancel", device="b")
    m.advance(0.01)
    # back under fmt0, proto0 follows it again: the commit's reopen reaches it
    assert not proto0.read_only and m.state.graph.is_read_only(proto0)
    _ok(mon, "block-commit", **commit)
