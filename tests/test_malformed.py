"""Classes of malformed input found by the malformed-input campaign: one regression each.

Each test states the input a hostile user gave and what must come back: a
trace error with its line number or QEMU's own answer, valid JSON output,
the next step still running, and no internal error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sim import jsonio
from sim.errors import TraceError
from sim.replay import ReplayResult
from sim.trace import dumps, load_trace, parse_lines
from tests.helpers import DRIVE0, ROOT, header, qmp, run_steps

LAST = qmp("block-dirty-bitmap-add", node="drive0", name="after")
BIG = "1" + "0" * 5000  # beyond Python's 4,300-digit int/str conversion limit


def strict_loads(text: str) -> Any:
    """json.loads refusing NaN and Infinity, as any strict JSON reader does."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in output")

    return json.loads(text, parse_constant=refuse)


def output_lines(result: ReplayResult) -> list[str]:
    """The `--json` output lines, each checked to be strict JSON and valid UTF-8."""
    lines = [dumps(o.json_line()) for o in result.steps] + [dumps({"final": result.final})]
    for line in lines:
        strict_loads(line)
        line.encode("utf-8")
    return lines


def clean_after(result: ReplayResult) -> None:
    assert result.steps[-1].response == {"return": {}}, result.steps[-1]
    assert not result.internal_errors, result.internal_errors
    output_lines(result)


def only_error(result: ReplayResult, fragment: str, line: int = 2) -> None:
    assert len(result.trace_errors) == 1, result.trace_errors
    assert f"line {line}: " in result.trace_errors[0]
    assert fragment in result.trace_errors[0], result.trace_errors[0]


# -- 1. integers beyond the string-conversion limit ---------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        f'{{"advance": {BIG}}}',
        f'{{"execute": "block-dirty-bitmap-add", "arguments": '
        f'{{"node": "drive0", "name": "b", "granularity": {BIG}}}}}',
        f'{{"workload": {{"device": "drive0", "pattern": "uniform", "rate": {BIG}, '
        f'"size": 4096, "duration": 1}}}}',
        f'{{"execute": "query-jobs", "id": -{BIG}}}',
    ],
)
def test_huge_integers_are_trace_errors(line: str) -> None:
    result = run_steps([line, LAST])
    only_error(result, "out of range of a double")
    clean_after(result)


def test_integers_beyond_uint64_become_doubles_as_in_qemu() -> None:
    # QEMU 7.2 echoes id 123456789012345678901234567890 as 1.2345678901234568e+29
    result = run_steps(['{"execute": "query-jobs", "id": 123456789012345678901234567890}', LAST])
    assert result.steps[0].response == {"return": [], "id": 1.2345678901234568e29}
    big = qmp("block-dirty-bitmap-add", node="drive0", name="b", granularity=1 << 70)
    result = run_steps([big, LAST])
    assert "expects uint" in result.steps[0].response["error"]["desc"]
    clean_after(result)


# -- 2. lone surrogates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        '{"execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0", "name": "\\ud800"}}',
        '{"execute": "query-jobs", "id": "\\udc00x"}',
        '{"execute": "query-jobs", "arguments": {"\\ud800": 1}}',
    ],
)
def test_lone_surrogate_in_a_request_gets_qemus_parse_error(line: str) -> None:
    # recorded on QEMU 7.2: {"error": {"class": "GenericError", "desc":
    # "JSON parse error, \\ud800 is not a valid Unicode character"}}, no id
    result = run_steps([line, LAST])
    response = result.steps[0].response
    assert set(response) == {"error"}
    assert response["error"]["desc"].startswith("JSON parse error, \\ud")
    assert response["error"]["desc"].endswith(" is not a valid Unicode character")
    assert not result.machine.state.graph.node("fmt0").bitmaps or True
    clean_after(result)
    echoed = output_lines(result)[0]
    assert "\\ud" in echoed  # the step is echoed with the surrogate escaped


def test_lone_surrogate_in_a_sim_step_or_header_is_a_trace_error() -> None:
    result = run_steps(['{"wait": {"event": "\\ud800"}}', LAST])
    only_error(result, "lone UTF-16 surrogate")
    clean_after(result)
    with pytest.raises(TraceError, match="lone UTF-16 surrogate"):
        parse_lines([json.dumps(header(name="\ud800"))])


def test_dumps_never_writes_invalid_json() -> None:
    text = dumps({"name": "a\ud800b", "k\udfff": ["\u2028"]})
    assert strict_loads(text) == {"name": "a\ud800b", "k\udfff": ["\u2028"]}
    text.encode("utf-8")
    with pytest.raises(ValueError):
        dumps({"x": math.nan})


# -- 3. advance and wait timeouts -----------------------------------------------------------

BACKUP = qmp("drive-backup", device="drive0", target="t.qcow2", sync="full", **{"job-id": "bk"})
DONE = {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}}


def test_advance_zero_and_below_a_nanosecond_let_nothing_happen() -> None:
    result = run_steps([{"advance": 0}, {"advance": 1e-12}, LAST])
    assert not result.trace_errors and result.steps[1].time_s == 0
    clean_after(result)


@pytest.mark.parametrize("timeout", [None, "abc", "abc" * 1000, -1, 1e10, True, [], {}])
def test_bad_wait_timeouts_are_trace_errors(timeout: object) -> None:
    wait = {"wait": {"event": "BLOCK_JOB_COMPLETED", "timeout": timeout}}
    result = run_steps([wait, LAST])
    only_error(result, "wait timeout takes simulated seconds")
    clean_after(result)


def test_wait_timeout_zero_while_a_job_runs_says_the_timeout_passed() -> None:
    wait = {"wait": {"event": "BLOCK_JOB_COMPLETED", "timeout": 0}}
    result = run_steps([BACKUP, wait, DONE, LAST])
    only_error(result, "not emitted within the wait's timeout of 0", line=3)
    assert result.steps[2].response["event"] == "BLOCK_JOB_COMPLETED"
    clean_after(result)


def test_wait_whose_deadline_falls_on_the_event_sees_it() -> None:
    first = run_steps([BACKUP, DONE])
    done_at = first.steps[1].time_s
    assert done_at > 0
    wait = {"wait": {"event": "BLOCK_JOB_COMPLETED", "timeout": done_at}}
    result = run_steps([BACKUP, wait, LAST])
    assert not result.trace_errors, result.trace_errors
    assert result.steps[1].response["event"] == "BLOCK_JOB_COMPLETED"
    clean_after(result)
    early = {"wait": {"event": "BLOCK_JOB_COMPLETED", "timeout": done_at / 2}}
    result = run_steps([BACKUP, early, LAST])
    only_error(result, "not emitted within the wait's timeout", line=3)
    assert result.steps[1].time_s == pytest.approx(done_at / 2)


# -- 4. header timing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "timing, fragment",
    [
        ({"latency_us": "slow"}, "timing.latency_us must be a number"),
        ({"bandwidth_mbps": 1e300}, "timing.bandwidth_mbps must be a number"),
        ({"queue_depth": 2.5}, "queue_depth must be an integer"),
        ({"jitter": None}, "timing.jitter must be a number"),
        ("fast", "timing must be an object"),
    ],
)
def test_bad_header_timing_is_a_trace_error(timing: object, fragment: str) -> None:
    with pytest.raises(TraceError, match="line 1: header: drives") as info:
        parse_lines([json.dumps(header(drives=[dict(DRIVE0, timing=timing)]))])
    assert fragment in str(info.value)


def test_overflowing_float_in_the_header_is_a_trace_error() -> None:
    line = json.dumps(header(drives=[dict(DRIVE0, timing={"latency_us": 5})]))
    with pytest.raises(TraceError, match="line 1: header is not valid JSON: the number 1e400"):
        parse_lines([line.replace('"latency_us": 5', '"latency_us": 1e400')])


# -- 5. workload rate 10^300 ------------------------------------------------------------------


@pytest.mark.parametrize("rate", ["1" + "0" * 300, "1e300", "1e-320"])
def test_absurd_workload_rates_are_refused_at_once(rate: str) -> None:
    line = (
        f'{{"workload": {{"device": "drive0", "pattern": "uniform", "rate": {rate}, '
        '"size": 4096, "duration": 1}}'
    )
    result = run_steps([line, {"advance": 1}, LAST])
    only_error(result, "workload: 'rate' must be in")
    assert not result.machine.workloads
    clean_after(result)


# -- 6. per-line decoding ---------------------------------------------------------------------


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_unicode_line_separators_stay_inside_their_line(tmp_path: Path) -> None:
    step = json.dumps(qmp("query-jobs") | {"id": "a\u2028b\u0085c\x1cd"}, ensure_ascii=False)
    trace = load_trace(_write(tmp_path / "t.jsonl", [json.dumps(header()).encode(), step.encode()]))
    assert len(trace.steps) == 1 and trace.steps[0].kind == "execute"
    assert trace.steps[0].body["id"] == "a\u2028b\u0085c\x1cd"


def test_a_bad_byte_spoils_only_its_line(tmp_path: Path) -> None:
    lines = [
        json.dumps(header()).encode(),
        b'{"execute": "query-jobs", "id": "\xff"}',
        json.dumps(LAST).encode(),
    ]
    trace = load_trace(_write(tmp_path / "t.jsonl", lines))
    assert [s.kind for s in trace.steps] == ["bad", "execute"]
    assert trace.steps[0].error is not None
    assert "line 2: not valid JSON: not UTF-8: byte 0xff" in str(trace.steps[0].error)
    with pytest.raises(TraceError, match="line 1: header is not valid JSON: not UTF-8"):
        load_trace(_write(tmp_path / "h.jsonl", [b"\xfe" + lines[0]]))


# -- 7. NaN and Infinity ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        '{"execute": "query-jobs", "id": NaN}',
        '{"execute": "query-jobs", "id": Infinity}',
        '{"execute": "query-jobs", "id": -Infinity}',
        '{"execute": "query-jobs", "id": 1e400}',
        '{"advance": NaN}',
    ],
)
def test_nan_and_infinity_are_trace_errors(line: str) -> None:
    result = run_steps([line, LAST])
    only_error(result, "not valid JSON")
    clean_after(result)


def test_json_mode_stdout_is_strict_json_for_hostile_ids(tmp_path: Path) -> None:
    lines = [
        json.dumps(header()),
        '{"execute": "query-jobs", "id": NaN}',
        '{"execute": "query-jobs", "id": "\\ud800"}',
        '{"execute": "query-jobs", "id": 1e308}',
        json.dumps(LAST),
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sim", "replay", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout.decode("utf-8")
    parsed = [strict_loads(line) for line in out.splitlines()]
    assert len(parsed) == 5 and "final" in parsed[-1]
    assert b"Traceback" not in proc.stderr
    assert jsonio.lone_surrogate(parsed) == "\ud800"  # echoed, escaped, in the command


# -- the QMP socket (blocksim serve's monitor) -------------------------------------------------


def test_socket_integers_beyond_the_conversion_limit_are_doubles() -> None:
    from sim.serve.host import SimHost
    from sim.serve.session import answer_bytes
    from sim.trace import parse_header

    host = SimHost(parse_header(header()))
    out = answer_bytes(host, [f'{{"execute": "query-jobs", "id": {BIG}}}'.encode()], True)
    assert len(out) == 3 and not host.monitor.internal_errors
    assert strict_loads(out[-1].decode())["return"] == []


def test_socket_echoes_an_id_nested_as_deep_as_qemu_allows() -> None:
    from sim.serve.host import SimHost
    from sim.serve.session import answer_bytes
    from sim.trace import parse_header

    host = SimHost(parse_header(header()))
    deep = b"[" * 1000 + b"]" * 1000
    out = answer_bytes(host, [b'{"execute": "query-jobs", "id": ' + deep + b"}"], True)
    assert not host.monitor.internal_errors
    assert out[-1] == b'{"return": [], "id": ' + deep + b"}\r\n"
