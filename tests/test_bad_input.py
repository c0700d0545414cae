"""Malformed input of every kind: a clear error, never a traceback, and later steps run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sim.errors import TraceError
from sim.trace import parse_lines
from tests.helpers import ROOT, header, io, qmp, responses, run_steps

LAST = qmp("block-dirty-bitmap-add", node="drive0", name="after")


def _ok_after(result) -> None:  # type: ignore[no-untyped-def]
    """The step after the bad one still ran and succeeded."""
    assert result.steps[-1].response == {"return": {}}
    assert not result.internal_errors, result.internal_errors


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"just a string"', "must be a JSON object"),
        ('{"frobnicate": 1}', "no step key"),
        ('{"execute": "query-jobs", "wait": {"event": "X"}}', "several step keys"),
        ('{"execute": "query-jobs", "bogus": 1}', "unknown key"),
        ('{"wait": "BLOCK_JOB_READY"}', "wait must be"),
        ('{"advance": -1}', "advance takes seconds"),
        ('{"advance": "soon"}', "advance takes seconds"),
        ('{"execute": "query-jobs", "expect": 5}', "expect must be an object"),
    ],
)
def test_bad_lines_are_trace_errors_with_line_numbers(line: str, fragment: str) -> None:
    result = run_steps([line, LAST])
    assert len(result.trace_errors) == 1
    assert "line 2" in result.trace_errors[0] and fragment in result.trace_errors[0]
    _ok_after(result)


@pytest.mark.parametrize(
    "request_, desc",
    [
        (qmp("frobnicate"), "The command frobnicate has not been found"),
        (qmp("block-dirty-bitmap-add", node="drive0"), "Parameter 'name' is missing"),
        (
            qmp("block-dirty-bitmap-add", node="drive0", name="b", foo=1),
            "Parameter 'foo' is unexpected",
        ),
        (
            qmp("block-dirty-bitmap-add", node="drive0", name="b", granularity="x"),
            "Parameter 'granularity' expects uint64",
        ),
        (
            qmp("block-dirty-bitmap-add", node=5, name="b"),
            "Invalid parameter type for 'node', expected: string",
        ),
        (
            qmp("drive-backup", device="drive0", target="t.qcow2", sync="sideways"),
            "Parameter 'sync' does not accept value 'sideways'",
        ),
        (
            {"execute": "query-jobs", "arguments": [1]},
            "QMP input member 'arguments' must be an object",
        ),
        (
            qmp("block-dirty-bitmap-add", node="dr\u00efve\u2603 '\"", name="b"),
            "Cannot find device='dr\u00efve\u2603 '\"' nor node-name='dr\u00efve\u2603 '\"'",
        ),
        (
            qmp("block-dirty-bitmap-remove", node="drive0", name="\u0000\n"),
            "Dirty bitmap '\u0000\n' not found",
        ),
    ],
)
def test_bad_qmp_requests_get_qemu_errors(request_: dict, desc: str) -> None:  # type: ignore[type-arg]
    result = run_steps([request_, LAST])
    got = result.steps[0].response
    assert "error" in got, got
    assert got["error"]["desc"] == desc
    _ok_after(result)


@pytest.mark.parametrize(
    "cmd",
    [
        "write -P 5 -1 64k",
        "write -P 5 0 99999999999999999999",
        "write 64M 512",
        "write 67108352 1024",
        "read -P 5 0 0",
        "write 0 0",
        "write -P 5 100 3",
        "write -P 300 0 4k",
        "write 0 abc",
        "frobnicate 0 1",
        "write",
        "",
        "discard 1 3",
        "read -v 0 16",
    ],
)
def test_odd_qemu_io_never_crashes(cmd: str) -> None:
    result = run_steps([io(cmd), LAST])
    assert result.steps[0].response == {"return": ""}
    _ok_after(result)


def test_hex_with_suffix_warns_on_the_monitor() -> None:
    result = run_steps([io("write -P 5 0x10k 4k"), LAST])
    assert "deprecated" in result.steps[0].response["return"]
    _ok_after(result)


def test_huge_and_zero_sizes_in_bitmap_commands() -> None:
    result = run_steps(
        [
            qmp("block-dirty-bitmap-add", node="drive0", name="b", granularity=2**40),
            qmp("block-dirty-bitmap-add", node="drive0", name="b", granularity=0),
            qmp("block-dirty-bitmap-add", node="drive0", name="b", granularity=-1),
            LAST,
        ]
    )
    descs = [r["error"]["desc"] for r in responses(result)[:3]]
    assert descs == [
        "Parameter 'granularity' expects uint32_t",
        "Granularity must be power of 2 and at least 512",
        "Parameter 'granularity' expects uint32_t",
    ]
    _ok_after(result)


def test_empty_merge_is_refused_with_crash_warning() -> None:
    result = run_steps(
        [
            qmp("block-dirty-bitmap-add", node="drive0", name="t"),
            qmp("block-dirty-bitmap-merge", node="drive0", target="t", bitmaps=[]),
            LAST,
        ]
    )
    assert "SIGSEGV" in result.steps[1].response["error"]["desc"]
    assert any("crashes" in w for w in result.warnings)
    _ok_after(result)


def test_unsatisfiable_wait_is_reported_not_hung() -> None:
    result = run_steps([{"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "nope"}}}, LAST])
    assert "can never be satisfied" in result.trace_errors[0]
    _ok_after(result)


@pytest.mark.parametrize(
    "head, fragment",
    [
        ("", "empty trace"),
        ('{"trace": 2}', '"trace" must be 1'),
        ('{"trace": 1, "drives": [{"id": "d"}]}', "node-name must be"),
        ('{"trace": 1, "drives": [], "policy": "magic"}', "policy must be one of"),
        ('{"trace": 1, "drives": [{"id": "d", "node-name": "n", "size": 0}]}', "size must be"),
        (
            '{"trace": 1, "drives": [{"id": "d", "node-name": "n", "size": 1000}]}',
            "multiple of 512",
        ),
    ],
)
def test_bad_headers(head: str, fragment: str) -> None:
    with pytest.raises(TraceError) as info:
        parse_lines([head] if head else [])
    assert fragment in str(info.value)


def test_cli_bad_usage_is_one_clear_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    for args, code in (
        (["replay", str(tmp_path / "missing.jsonl")], 2),
        (["replay", str(bad)], 2),
        (["replay", "--policy", "magic", str(bad)], 2),
        (["frobnicate"], 2),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "sim", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout


def test_json_output_has_the_spec_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps(x) for x in [header(), io("write -P 5 0 64k"), LAST]))
    proc = subprocess.run(
        [sys.executable, "-m", "sim", "replay", "--json", str(trace)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [set(x) for x in lines[:2]] == [
        {"step", "command", "response", "events", "time", "output"},
        {"step", "command", "response", "events", "time"},
    ]
    assert lines[0]["output"].startswith("wrote 65536/65536 bytes at offset 0")
    assert set(lines[-1]["final"]) >= {"nodes", "backends", "jobs", "violations", "events"}
