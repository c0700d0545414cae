"""A qcow2 header's backing file name: its length limit as QEMU counts it, and the
cost of working out json:{...} names down a deep chain."""

from __future__ import annotations

import pytest

from sim.model.graph import backing_name_fits, qemu_name_bytes
from sim.qmp import cmd_query
from tests.helpers import qmp, responses, run_steps


@pytest.mark.parametrize(
    ("name", "fits"),
    [
        # recorded on QEMU 7.2 by change-backing-file (scenario qcow2-backing-name-length)
        ("x" * 993, True),
        ("x" * 994, False),
        ("/" + "x" * 1022, True),
        ("/" + "x" * 1023, False),
    ],
)
def test_the_limit_counts_a_bare_name_in_the_scratch_folder(name: str, fits: bool) -> None:
    assert backing_name_fits(name) is fits


def test_each_bare_filename_inside_a_json_name_is_counted_as_a_path() -> None:
    bare = 'json:{"file": {"driver": "file", "filename": "a.qcow2"}, "backing": {"filename": "b"}}'
    absolute = bare.replace('"a.qcow2"', '"/a.qcow2"')
    assert qemu_name_bytes(bare) == len(bare) + 2 * 30
    assert qemu_name_bytes(absolute) == len(absolute) + 30
    assert qemu_name_bytes("null-co://") == len("null-co://")


def _chain_steps(depth: int) -> list[dict[str, object]]:
    steps = [
        qmp(
            "blockdev-snapshot-sync",
            device="drive0",
            **{"snapshot-file": f"ov{i}.qcow2", "snapshot-node-name": f"ov{i}"},
        )
        for i in range(depth)
    ]
    # an overlay under the format node makes every name above it json:{...}
    steps.append(
        qmp(
            "blockdev-snapshot-sync",
            **{"node-name": "proto0", "snapshot-file": "p.qcow2", "snapshot-node-name": "p"},
        )
    )
    return steps


def test_a_json_name_down_a_deep_chain_costs_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    unfiltered = cmd_query._unfiltered

    def counting(node):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return unfiltered(node)

    monkeypatch.setattr(cmd_query, "_unfiltered", counting)
    counts = []
    for depth in (4, 8, 16):
        result = run_steps(_chain_steps(depth))
        assert all("return" in r for r in responses(result))
        calls = 0
        graph = result.machine.state.graph
        top = graph.backends["drive0"].root
        name = cmd_query.node_filename(graph, top)
        assert name.startswith("json:") and name.count('"filename"') == depth + 1
        counts.append(calls)
    # twice the chain, about twice the work (it was exponential)
    assert counts[1] <= 2.5 * counts[0] and counts[2] <= 2.5 * counts[1]
