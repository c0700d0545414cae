"""Resource limits fail cleanly and fast: bounded memory, or a refusal naming the limit."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from sim.errors import TraceError
from sim.model.bitmap import MAX_BITMAP_BITS
from sim.trace import MAX_STEPS, load_trace
from tests.helpers import header, io, qmp, run_steps

TIB16 = 1 << 44


def big_drive(size: int) -> list[dict[str, object]]:
    return [{"id": "drive0", "node-name": "fmt0", "file-node-name": "proto0", "size": size}]


def test_a_million_step_trace_is_refused_at_the_step_limit(tmp_path: Path) -> None:
    path = tmp_path / "million.jsonl"
    with path.open("w") as fh:
        fh.write(json.dumps(header()) + "\n")
        fh.writelines('{"advance": 0.001}\n' for _ in range(1_000_000))
    with pytest.raises(TraceError, match=f"more than {MAX_STEPS} steps: the simulator's limit"):
        load_trace(path)


def test_a_16_tib_disk_runs_in_bounded_memory_and_full_copies_are_refused() -> None:
    steps = [
        qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
        io(f"write -P 5 {TIB16 - 65536} 64k"),
        qmp(
            "drive-backup",
            device="drive0",
            target="inc.qcow2",
            sync="incremental",
            bitmap="b0",
            **{"job-id": "inc"},
        ),
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "inc"}}},
        qmp("drive-backup", device="drive0", target="full.qcow2", sync="full"),
        qmp("block-dirty-bitmap-add", node="drive0", name="fine", granularity=512),
        io(f"read -P 5 {TIB16 - 65536} 64k"),
    ]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_steps(steps, drives=big_drive(TIB16))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert not result.trace_errors and not result.internal_errors
    assert result.steps[3].response["data"]["offset"] == 65536  # only the dirty cluster
    full = result.steps[4].response["error"]["desc"]
    assert full.startswith("blocksim limit: a backup with sync=full") and "1 TiB" in full
    fine = result.steps[5].response["error"]["desc"]
    assert fine.startswith("blocksim limit:") and str(MAX_BITMAP_BITS) in fine
    assert result.steps[6].output == f"read 65536/65536 bytes at offset {TIB16 - 65536}\n"
    assert grown_mib < 1024


def test_ten_thousand_bitmaps() -> None:
    steps = [qmp("block-dirty-bitmap-add", node="drive0", name=f"b{i}") for i in range(10_000)]
    result = run_steps([*steps, io("write -P 5 0 64k"), qmp("query-block")])
    assert not result.internal_errors
    bitmaps = result.steps[-1].response["return"][0]["inserted"]["dirty-bitmaps"]
    assert len(bitmaps) == 10_000 and all(b["count"] == 65536 for b in bitmaps)


def test_bitmaps_together_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # the machine-wide limit, scaled down: 2^20 bits hold eight 2^17-bit bitmaps
    from sim.model import bitmap_ops

    monkeypatch.setattr(bitmap_ops, "MAX_TOTAL_BITS", 1 << 20)
    steps = [
        qmp("block-dirty-bitmap-add", node="drive0", name=f"b{i}", granularity=512)
        for i in range(9)
    ]
    result = run_steps(steps)  # 64 MiB at 512 bytes: 2^17 bits each
    assert all(s.response == {"return": {}} for s in result.steps[:8])
    desc = result.steps[8].response["error"]["desc"]
    assert desc.startswith("blocksim limit: bitmap 'b8' needs 131072 bits")
    assert "at most 1048576" in desc


def test_a_500_deep_snapshot_chain() -> None:
    steps = [
        qmp(
            "blockdev-snapshot-sync",
            device="drive0",
            **{"snapshot-file": f"s{i}.qcow2", "snapshot-node-name": f"s{i}", "format": "qcow2"},
        )
        for i in range(500)
    ]
    steps += [
        io("write -P 7 0 64k"),
        qmp("query-block"),
        qmp("query-named-block-nodes", flat=True),
        qmp("block-stream", device="drive0", **{"job-id": "st"}),
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "st"}}},
        io("read -P 7 0 64k"),
    ]
    result = run_steps(steps)
    assert not result.trace_errors and not result.internal_errors
    assert all(s.response == {"return": {}} for s in result.steps[:500])
    assert result.steps[-1].output == "read 65536/65536 bytes at offset 0\n"
