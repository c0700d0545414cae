"""The QMP monitor of `blocksim serve` byte for byte: QEMU 7.2's JSON reader and dispatch checks.

The same byte stream goes to real QEMU 7.2 and to `blocksim serve`; every
answer must be identical (greeting included).  In-process tests feed the
pure `answer_bytes` function.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.serve.host import SimHost
from sim.serve.jsonstream import JsonStreamer
from sim.serve.session import answer_bytes
from sim.serve.wire import to_json
from sim.trace import parse_header
from tests.serve_helpers import blocksim_serve, have_qemu, raw_session, real_qemu

HEADER = parse_header(
    {"trace": 1, "drives": [{"id": "drive0", "node-name": "fmt0", "file-node-name": "proto0",
                             "format": "qcow2", "size": 1 << 26}]}
)  # fmt: skip

# Before negotiation, negotiation with oob, then garbage and odd requests.
GARBAGE = [
    b'{"execute": "query-version"}',
    b'{"execute": "nope", "id": 7}',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}}',
    b'{"execute": "qmp_capabilities", "arguments": {"x": 1}}',
    b'{"exec-oob": "query-version", "id": 1}',
    b"[1, 2]",
    b'"just a string"',
    b"{}",
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": {"a": [1]}}',
    b'{"execute": "qmp_capabilities", "id": 2}',
    b'{"execute": "query-version", "id": "v"}',
    b'{"execute": "query-version", "id": "\\u00e9\\ud83d\\ude00"}',
    b'{"exec-oob": "query-version", "id": 3}',
    b'{"exec-oob": "no-such-command", "id": 4}',
    b'{"execute": "query-version", "exec-oob": "query-version"}',
    b'{"execute": 1}',
    b'{"execute": "query-version", "arguments": []}',
    b'{"execute": "nope", "arguments": [], "id": 5}',
    b'{"execute": "query-version", "control": {"x": 1}}',
    b'{"execute": "query-version", "zzz": 1, "aaa": 2}',
    b"garbage ",
    b"Garbage{}",
    b"}",
    b"]",
    b'{"execute" "x"}',
    b'{"execute": }',
    b"{1: 2}",
    b'{"a": 1, "a": 2}',
    b"[1 2]",
    b'{"a": -x}',
    b"\xff",
    b"\x00\x01",
    b'{"a": "\\q"}',
    b'{"a": "\\u12g4"}',
    b'{"a": "\\ud800"}',
    b'{"a": "\xc3\x28"}',
    b"{'execute': 'query-version', 'id': 'single'}",
    b'{"execute": "query-version", "id": 1.5e3}',
    b'{"execute": "query-version", "id": 123456789012345678901234567890}',
    b'{"execute": "query-version", "id": [true, false, null]}',
    b"01 ",
    b"1.x ",
    b"%d ",
    b'{"execute": "query-version"' + b" " * 3 + b"}",
    b'{"execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0"}, "id": 9}',
    b"[" * 1025 + b"]",
    b'{"execute": "query-version", "id": "after"}',
]


@pytest.mark.skipif(not have_qemu(), reason="needs qemu-system-x86_64 7.2")
def test_garbage_answered_exactly_as_qemu(tmp_path: Path) -> None:
    (tmp_path / "q").mkdir()
    (tmp_path / "b").mkdir()
    with real_qemu(tmp_path / "q") as sock:
        qemu = raw_session(sock, GARBAGE)
    with blocksim_serve(tmp_path / "b") as sock:
        sim = raw_session(sock, GARBAGE)
    assert len(qemu) == len(GARBAGE) + 1
    for i, (q, s) in enumerate(zip(qemu, sim, strict=True)):
        what = GARBAGE[i - 1][:60] if i else b"greeting"
        assert q == s, f"answers to {what!r} differ:\nqemu: {q}\nsim:  {s}"


def test_answer_bytes_never_raises_and_keeps_answering() -> None:
    host = SimHost(HEADER)
    chunks = [bytes([b]) for b in b'{"execute": "qmp_capabilities"}'] + GARBAGE
    out = answer_bytes(host, chunks)
    assert json.loads(out[0])["QMP"]["capabilities"] == ["oob"]
    assert json.loads(out[1]) == {"return": {}}  # negotiation fed one byte at a time
    last = json.loads(out[-1])
    assert last["id"] == "after" and last["return"]["qemu"]["major"] == 7


def test_requests_without_newline_and_split_anywhere() -> None:
    host = SimHost(HEADER)
    stream = b'{"execute":"qmp_capabilities"}{"execute":"query-version","id":1}' * 3
    for cut in (1, 5, 17, 64):
        pieces = [stream[i : i + cut] for i in range(0, len(stream), cut)]
        out = [json.loads(x) for x in answer_bytes(host, pieces)[1:]]
        assert [o.get("id") for o in out] == [None, 1, None, 1, None, 1]
        assert "already complete" in out[2]["error"]["desc"]


def test_oversized_and_deep_input_do_not_end_the_monitor() -> None:
    stream = JsonStreamer()
    msgs = stream.feed(b"[" * 1025)
    assert [m.error for m in msgs] == ["JSON nesting depth limit exceeded"]
    assert stream.feed(b"{}")[-1].value == {}
    big = b'{"a": "' + b"x" * (64 << 20) + b'"}'
    msgs = stream.feed(big)
    assert any(m.error == "JSON token size limit exceeded" for m in msgs)
    assert stream.feed(b'{"b": 1}')[-1].value == {"b": 1}


def test_writer_escapes_like_qemu() -> None:
    assert (
        to_json({"a": '\u00e9\U0001f600\x7f\n"\\'})
        == '{"a": "\\u00E9\\uD83D\\uDE00\\u007F\\n\\"\\\\"}'
    )
    assert to_json([1, True, None, {}, []]) == "[1, true, null, {}, []]"


TRICKY = [
    b'{"a": 1, "a": 2}',
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b'{"a": 1e400}',
    b'{"a": -1e400}',
    b'{"a": 18446744073709551616}',
    b'{"a": -9223372036854775809}',
    b'{"a": 18446744073709551615, "b": -9223372036854775808}',
    b'{"a": "\\ud800"}',
    b'{"a": "\\u0000"}',
    b'{"a": "\\u00e9\\ud83d\\ude00"}',
    b"{'a': 'b'}",
    b'{"a": "\\\'"}',
    b'{"a": "x\ty"}',
    b'{"a": 01}',
    b'{"a": -0}',
    b'{"a": 1.5E+3, "b": [true, false, null, {}, []]}',
    b'{"a": [' * 600 + b"1" + b"]}" * 600,
    b'{"a": "\xc3\xa9"}',
    b'{"a": "\xc0\x80"}',
    b'{"a": 1}}',
    b'{"a" : 1 , "b" :\r\n2}',
    b'{"execute": "query-version", "id": {"x": [1, 2, {"y": "z"}]}}',
]


@pytest.mark.parametrize("data", TRICKY + GARBAGE)
def test_fast_path_reads_exactly_as_the_qemu_exact_path(data: bytes) -> None:
    fast, exact = JsonStreamer(), JsonStreamer(fast=False)
    for cut in (len(data), 7):
        pieces = [data[i : i + cut] for i in range(0, len(data), cut)] + [b" {}"]
        got = [m for p in pieces for m in fast.feed(p)]
        want = [m for p in pieces for m in exact.feed(p)]
        assert [(repr(m.value), m.error) for m in got] == [(repr(m.value), m.error) for m in want]
