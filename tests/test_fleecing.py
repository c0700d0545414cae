"""QEMU 7.x fleecing in the model: copy-before-write + snapshot-access by blockdev-add."""

from __future__ import annotations

from typing import Any

from sim.engine.machine import Machine
from sim.qmp.dispatch import Monitor

MiB = 1 << 20


def _machine() -> tuple[Machine, Monitor]:
    import sim.qmp.commands  # noqa: F401

    m = Machine(seed=0)
    m.state.add_drive("drive0", "fmt0", "proto0", "qcow2", 64 * MiB)
    return m, Monitor(m)


def _run(mon: Monitor, cmd: str, **args: Any) -> dict[str, Any]:
    return mon.execute({"execute": cmd, "arguments": args})


def _ok(mon: Monitor, cmd: str, **args: Any) -> Any:
    r = _run(mon, cmd, **args)
    assert "return" in r, r
    return r["return"]


def _io(m: Machine, mon: Monitor, target: str, cmd: str) -> str:
    _ok(mon, "human-monitor-command", **{"command-line": f'qemu-io {target} "{cmd}"'})
    return m.hmp_output or ""


def _qcow2(m: Machine, mon: Monitor, name: str, size: int = 64 * MiB, **opts: Any) -> None:
    """A blockdev-created qcow2 node `name` (no backing)."""
    for job, options in (
        (f"{name}-f", {"driver": "file", "filename": f"{name}.img", "size": 0}),
        (f"{name}-q", {"driver": "qcow2", "file": f"{name}-p", "size": size, **opts}),
    ):
        _ok(mon, "blockdev-create", **{"job-id": job, "options": options})
        m.advance(0.002)
        _ok(mon, "job-dismiss", id=job)
        if job.endswith("-f"):
            _ok(mon, "blockdev-add", driver="file", filename=f"{name}.img",
                **{"node-name": f"{name}-p"})  # fmt: skip
    _ok(mon, "blockdev-add", driver="qcow2", file=f"{name}-p", **{"node-name": name})


def _fleece(m: Machine, mon: Monitor, target: str = "temp", **cbw: Any) -> None:
    _ok(mon, "blockdev-add", driver="copy-before-write", file="fmt0", target=target,
        **{"node-name": "fl"}, **cbw)  # fmt: skip
    _ok(mon, "blockdev-add", driver="snapshot-access", file="fl", **{"node-name": "acc"})


def test_view_keeps_the_point_in_time_while_writes_go_through_the_filter() -> None:
    m, mon = _machine()
    _io(m, mon, "fmt0", "write -P 0x11 0 1M")
    _qcow2(m, mon, "temp")
    _fleece(m, mon)
    assert "wrote" in _io(m, mon, "fl", "write -P 0x22 64k 64k")
    assert "read 65536/65536" in _io(m, mon, "acc", "read -P 0x11 64k 64k")
    assert "read 65536/65536" in _io(m, mon, "fl", "read -P 0x22 64k 64k")
    assert "read 65536/65536" in _io(m, mon, "acc", "read -P 0 2M 64k")  # never written
    assert "Operation not supported" in _io(m, mon, "acc", "write -P 0x33 0 4k")
    # the filter has a parent: it unshares write on its source
    reply = _ok(mon, "human-monitor-command", **{"command-line": 'qemu-io fmt0 "write 0 4k"'})
    assert reply.startswith("Permission conflict on node 'fmt0'") and "node 'fl'" in reply


def test_bitmap_limits_what_is_copied_and_readable() -> None:
    m, mon = _machine()
    _ok(mon, "block-dirty-bitmap-add", node="fmt0", name="b0")
    _io(m, mon, "fmt0", "write -P 0x11 1M 64k")
    _qcow2(m, mon, "temp")
    _fleece(m, mon, bitmap={"node": "fmt0", "name": "b0"})
    _io(m, mon, "fl", "write -P 0x22 0 2M")
    assert "read 65536/65536" in _io(m, mon, "acc", "read -P 0x11 1M 64k")
    assert "Permission denied" in _io(m, mon, "acc", "read 0 64k")
    temp = m.state.graph.node("temp")
    assert temp is not None and temp.content is not None
    assert [(lo * 512, hi * 512) for lo, hi, _ in temp.content.extents()] == [(MiB, MiB + 65536)]


def test_failed_copy_breaks_the_write_or_the_snapshot() -> None:
    for policy, write_ok in (("break-guest-write", False), ("break-snapshot", True)):
        m, mon = _machine()
        _qcow2(m, mon, "small", size=1 * MiB)
        _fleece(m, mon, target="small", **{"on-cbw-error": policy})
        assert ("wrote" in _io(m, mon, "fl", "write -P 0x22 0 64k")) is True
        out = _io(m, mon, "fl", "write -P 0x22 8M 64k")  # past the target's end
        assert ("wrote" in out) is write_ok, (policy, out)
        assert ("Permission denied" in _io(m, mon, "acc", "read 0 64k")) is write_ok


def test_copy_cluster_follows_a_larger_target_cluster() -> None:
    m, mon = _machine()
    _qcow2(m, mon, "big", **{"cluster-size": 256 * 1024})
    _fleece(m, mon, target="big")
    flt = m.state.graph.node("fl")
    assert flt is not None and flt.cbw is not None and flt.cbw.cluster == 256 * 1024


def test_unaligned_snapshot_discard_is_refused_as_it_aborts_qemu() -> None:
    m, mon = _machine()
    _qcow2(m, mon, "temp")
    _ok(mon, "blockdev-add", driver="copy-before-write", file="fmt0", target="temp",
        **{"node-name": "fl"})  # fmt: skip
    _ok(mon, "blockdev-add", driver="snapshot-access", file="fl", discard="unmap",
        **{"node-name": "acc"})  # fmt: skip
    r = _run(mon, "human-monitor-command", **{"command-line": 'qemu-io acc "discard 0 32k"'})
    assert "error" in r and "aborts QEMU 7.2" in r["error"]["desc"]
    assert any("hbitmap_reset" in w for w in m.state.warnings)
    assert "discard 65536/65536" in _io(m, mon, "acc", "discard 0 64k")
    assert "Permission denied" in _io(m, mon, "acc", "read 0 4k")
