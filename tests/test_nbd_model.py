"""Block exports in the model: what the recorded scenarios cannot show."""

from __future__ import annotations

from sim.replay import replay
from sim.trace import parse_lines

HEADER = (
    '{"trace": 1, "drives": [{"id": "drive0", "node-name": "fmt0", '
    '"file-node-name": "proto0", "size": 67108864}]}'
)
START = '{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "n.sock"}}}}'  # noqa: E501


def _run(*steps: str):  # type: ignore[no-untyped-def]
    return replay(parse_lines([HEADER, START, *steps]))


def test_pivot_dropping_an_exported_bitmap_warns_that_qemu_aborts() -> None:
    result = _run(
        '{"execute": "block-dirty-bitmap-add", "arguments": {"node": "fmt0", "name": "b0", "disabled": true}}',  # noqa: E501
        '{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e0", "node-name": "fmt0", "bitmaps": ["b0"]}}',  # noqa: E501
        '{"execute": "blockdev-snapshot-sync", "arguments": {"device": "drive0", "snapshot-file": "ov.qcow2", "snapshot-node-name": "ov0"}}',  # noqa: E501
        '{"execute": "drive-mirror", "arguments": {"device": "drive0", "sync": "full", "target": "m.qcow2", "job-id": "m"}}',  # noqa: E501
        '{"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "m"}}}',
        '{"execute": "block-job-complete", "arguments": {"device": "m"}}',
        '{"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "m"}}}',
        '{"execute": "query-block-exports"}',
    )
    assert any("real QEMU 7.2 aborts" in w and "'b0'" in w for w in result.warnings)
    # the export moved with drive0's root: the snapshot put ov0 under it, the pivot the target
    exports = result.steps[-1].response["return"]
    assert len(exports) == 1 and exports[0]["node-name"] not in ("fmt0", "ov0")


def test_no_warning_without_an_exported_bitmap() -> None:
    result = _run(
        '{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e0", "node-name": "fmt0"}}',  # noqa: E501
        '{"execute": "drive-mirror", "arguments": {"device": "drive0", "sync": "full", "target": "m.qcow2", "job-id": "m"}}',  # noqa: E501
        '{"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "m"}}}',
        '{"execute": "block-job-complete", "arguments": {"device": "m"}}',
        '{"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "m"}}}',
        '{"execute": "query-block-exports"}',
        '{"execute": "block-export-del", "arguments": {"id": "e0"}}',
    )
    assert not result.warnings
    assert result.ok
    assert [e.name for e in result.machine.events.history][-1] == "BLOCK_EXPORT_DELETED"
