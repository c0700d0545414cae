"""sim.qmp.schema: QAPI argument checking, against answers of real QEMU 7.2.

Every expected `desc` below was copied from a reply of qemu-system-x86_64
7.2.22 (-M none, drive0 = qcow2 fmt0 over file proto0).  The `qemu`-marked
tests at the end compare the table and the checker with a live binary.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

from sim.errors import QMPError
from sim.qmp import (
    commands,  # noqa: F401  (registers every command)
    schema,
)
from sim.qmp.dispatch import COMMANDS as TABLE
from sim.qmp.dispatch import unhandled
from sim.qmp.schema import check_arguments
from tests.helpers import qmp, qmp_exchange, responses, run_steps

COMMANDS = {name: c.args for name, c in TABLE.items()}
COMMAND_NAMES = tuple(COMMANDS)


def error_of(command: str, *args: Any) -> tuple[str, str] | None:
    try:
        check_arguments(command, *args)
    except QMPError as exc:
        return exc.cls, exc.desc
    return None


def desc_of(command: str, arguments: Any) -> str | None:
    err = error_of(command, arguments)
    return None if err is None else err[1]


BDA = "block-dirty-bitmap-add"
MERGE = "block-dirty-bitmap-merge"
TX = "transaction"
BACKUP = "drive-backup"
ADD = "blockdev-add"

# (command, arguments, desc) -- all GenericError, all verified on the binary.
VERIFIED = [
    ("qmp_capabilities", {"enable": ["x"]}, "Parameter 'null' does not accept value 'x'"),
    ("qmp_capabilities", {"enable": "x"}, "Invalid parameter type for 'enable', expected: array"),
    ("qmp_capabilities", {"enable": [5]}, "Invalid parameter type for 'enable[0]', expected: string"),
    ("qmp_capabilities", {"foo": 1}, "Parameter 'foo' is unexpected"),
    ("query-block", {"a": 1}, "Parameter 'a' is unexpected"),
    ("query-version", {"x": 1}, "Parameter 'x' is unexpected"),
    ("query-named-block-nodes", {"flat": "x"}, "Invalid parameter type for 'flat', expected: boolean"),
    (BDA, {}, "Parameter 'node' is missing"),
    (BDA, {"node": "drive0"}, "Parameter 'name' is missing"),
    (BDA, {"name": 5}, "Parameter 'node' is missing"),
    (BDA, {"node": 5, "name": "x"}, "Invalid parameter type for 'node', expected: string"),
    (BDA, {"node": None, "name": "x"}, "Invalid parameter type for 'node', expected: string"),
    (BDA, {"node": "a", "name": 5, "granularity": "x"}, "Invalid parameter type for 'name', expected: string"),
    (BDA, {"node": "a", "granularity": "x"}, "Parameter 'name' is missing"),
    (BDA, {"node": "d", "name": "x", "granularity": "a"}, "Parameter 'granularity' expects uint64"),
    (BDA, {"node": "d", "name": "x", "granularity": None}, "Parameter 'granularity' expects uint64"),
    (BDA, {"node": "d", "name": "x", "granularity": 1.0}, "Parameter 'granularity' expects uint64"),
    (BDA, {"node": "d", "name": "x", "granularity": True}, "Parameter 'granularity' expects uint64"),
    (BDA, {"node": "d", "name": "x", "granularity": 2**64}, "Parameter 'granularity' expects uint64"),
    (BDA, {"node": "d", "name": "x", "granularity": 2**64 - 1}, "Parameter 'granularity' expects uint32_t"),
    (BDA, {"node": "d", "name": "x", "granularity": 2**32}, "Parameter 'granularity' expects uint32_t"),
    (BDA, {"node": "d", "name": "x", "granularity": -1}, "Parameter 'granularity' expects uint32_t"),
    (BDA, {"node": "d", "name": "x", "granularity": -(2**63)}, "Parameter 'granularity' expects uint32_t"),
    (BDA, {"node": "d", "name": "x", "granularity": -(2**63) - 1}, "Parameter 'granularity' expects uint64"),
    (BDA, {"node": "d", "name": "x", "granularity": -(2**32) + 65536}, "Parameter 'granularity' expects uint32_t"),
    (BDA, {"node": "d", "name": "x", "persistent": "yes"}, "Invalid parameter type for 'persistent', expected: boolean"),
    (BDA, {"node": "d", "name": "x", "persistent": 1}, "Invalid parameter type for 'persistent', expected: boolean"),
    (BDA, {"node": "d", "name": "x", "persistent": None}, "Invalid parameter type for 'persistent', expected: boolean"),
    (BDA, {"node": "d", "name": "y", "foo": 1, "granularity": "x"}, "Parameter 'granularity' expects uint64"),
    (BDA, {"foo": 1, "bar": 2}, "Parameter 'node' is missing"),
    (BDA, {"node": "d", "name": "y1", "foo": 1, "bar": 2}, "Parameter 'bar' is unexpected"),
    (BDA, {"node": "d", "name": "y2", "zzz": 1, "aaa": 2}, "Parameter 'zzz' is unexpected"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": [{"node": "fmt0"}]}, "Parameter 'bitmaps[0].name' is missing"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": ["a", {"node": "f"}]}, "Parameter 'bitmaps[1].name' is missing"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": ["a", 5]}, "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": ["a", None]}, "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": ["a", []]}, "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": ["a", {"node": 5, "name": "x"}]}, "Invalid parameter type for 'bitmaps[1].node', expected: string"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": ["a", {"node": "a", "name": "x", "q": 1}]}, "Parameter 'bitmaps[1].q' is unexpected"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": "a"}, "Invalid parameter type for 'bitmaps', expected: array"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": {}}, "Invalid parameter type for 'bitmaps', expected: array"),
    (MERGE, {"node": "d", "target": "x", "bitmaps": None}, "Invalid parameter type for 'bitmaps', expected: array"),
    ("x-debug-block-dirty-bitmap-sha256", {"node": "x"}, "Parameter 'name' is missing"),
    (BACKUP, {"device": "d", "target": "x", "sync": "foo"}, "Parameter 'sync' does not accept value 'foo'"),
    (BACKUP, {"device": "d", "target": "x", "sync": 5}, "Invalid parameter type for 'sync', expected: string"),
    (BACKUP, {"device": "d", "target": "x", "sync": "full", "speed": "a"}, "Invalid parameter type for 'speed', expected: integer"),
    (BACKUP, {"device": "d", "target": "x", "sync": "full", "speed": 2**63}, "Invalid parameter type for 'speed', expected: integer"),
    (BACKUP, {"device": "d", "sync": "full"}, "Parameter 'target' is missing"),
    (BACKUP, {"sync": "foo"}, "Parameter 'device' is missing"),
    (BACKUP, {"device": "d", "sync": "full", "speed": -5, "bitmap-mode": "x"}, "Parameter 'bitmap-mode' does not accept value 'x'"),
    (BACKUP, {"device": "d", "target": "t", "sync": "full", "x-perf": {"max-chunk": "a"}}, "Invalid parameter type for 'x-perf.max-chunk', expected: integer"),
    (BACKUP, {"device": "d", "target": "t", "sync": "full", "x-perf": {"foo": 1}}, "Parameter 'x-perf.foo' is unexpected"),
    (BACKUP, {"device": "d", "target": "t", "sync": "full", "x-perf": 5}, "Invalid parameter type for 'x-perf', expected: object"),
    ("drive-mirror", {"device": "d", "target": "t", "sync": "full", "copy-mode": "x"}, "Parameter 'copy-mode' does not accept value 'x'"),
    ("drive-mirror", {"device": "d", "target": "t", "sync": "full", "filter-node-name": "x"}, "Parameter 'filter-node-name' is unexpected"),
    ("drive-mirror", {"device": "d", "target": "t", "sync": "full", "granularity": 2**32}, "Parameter 'granularity' expects uint32_t"),
    ("blockdev-mirror", {"device": "d", "target": "t", "sync": "full", "buf-size": "x"}, "Invalid parameter type for 'buf-size', expected: integer"),
    ("block-commit", {"device": "d", "on-error": "x"}, "Parameter 'on-error' does not accept value 'x'"),
    ("block-stream", {"device": "d", "on-error": "x"}, "Parameter 'on-error' does not accept value 'x'"),
    ("block-stream", {"device": "d", "bottom": 5}, "Invalid parameter type for 'bottom', expected: string"),
    ("blockdev-del", {"node-name": 5}, "Invalid parameter type for 'node-name', expected: string"),
    ("blockdev-snapshot-sync", {}, "Parameter 'snapshot-file' is missing"),
    ("blockdev-snapshot-sync", {"device": 5}, "Invalid parameter type for 'device', expected: string"),
    ("blockdev-snapshot-sync", {"snapshot-file": "x", "mode": "x"}, "Parameter 'mode' does not accept value 'x'"),
    ("block-job-set-speed", {"device": "x"}, "Parameter 'speed' is missing"),
    ("block-job-cancel", {"device": "x", "force": "y"}, "Invalid parameter type for 'force', expected: boolean"),
    ("block-job-cancel", {}, "Parameter 'device' is missing"),
    ("job-cancel", {}, "Parameter 'id' is missing"),
    ("human-monitor-command", {"command-line": "x", "cpu-index": "a"}, "Invalid parameter type for 'cpu-index', expected: integer"),
    (TX, {}, "Parameter 'actions' is missing"),
    (TX, {"actions": None}, "Invalid parameter type for 'actions', expected: array"),
    (TX, {"actions": [5]}, "Invalid parameter type for 'actions[0]', expected: object"),
    (TX, {"actions": [{"type": "foo"}]}, "Parameter 'type' does not accept value 'foo'"),
    (TX, {"actions": [{"type": 5, "data": {}}]}, "Invalid parameter type for 'actions[0].type', expected: string"),
    (TX, {"actions": [{"type": None, "data": {}}]}, "Invalid parameter type for 'actions[0].type', expected: string"),
    (TX, {"actions": [{"data": {}}]}, "Parameter 'actions[0].type' is missing"),
    (TX, {"actions": [{"type": BDA}]}, "Parameter 'actions[0].data' is missing"),
    (TX, {"actions": [{"type": BDA, "data": {}}]}, "Parameter 'actions[0].data.node' is missing"),
    (TX, {"actions": [{"type": "abort", "data": {}}, {"type": BDA, "data": {"node": "x"}}]}, "Parameter 'actions[1].data.name' is missing"),
    (TX, {"actions": [{"type": "abort", "data": {"x": 1}}]}, "Parameter 'actions[0].data.x' is unexpected"),
    (TX, {"actions": [{"type": "abort", "data": {}, "x": 1}]}, "Parameter 'actions[0].x' is unexpected"),
    (TX, {"actions": [{"type": "abort", "data": None}]}, "Invalid parameter type for 'actions[0].data', expected: object"),
    (TX, {"actions": [{"type": "abort", "data": []}]}, "Invalid parameter type for 'actions[0].data', expected: object"),
    (TX, {"actions": [{"type": BDA, "data": {"node": "d", "name": "x", "granularity": 2**33}}]}, "Parameter 'granularity' expects uint32_t"),
    (TX, {"actions": [{"type": MERGE, "data": {"node": "d", "target": "x", "bitmaps": ["a", {}]}}]}, "Parameter 'actions[0].data.bitmaps[1].node' is missing"),
    (TX, {"actions": [{"type": MERGE, "data": {"node": "d", "target": "x", "bitmaps": ["a", 1]}}]}, "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr"),
    (TX, {"actions": [{"type": BACKUP, "data": {"device": "d", "target": "t", "sync": "full", "x-perf": {"max-chunk": "x"}}}]}, "Invalid parameter type for 'actions[0].data.x-perf.max-chunk', expected: integer"),
    (TX, {"actions": [{"type": BACKUP, "data": {"device": "d", "target": "t", "sync": "full", "bitmap-mode": "x"}}]}, "Parameter 'bitmap-mode' does not accept value 'x'"),
    (TX, {"actions": [{"type": "blockdev-snapshot-internal-sync", "data": {}}]}, "Parameter 'actions[0].data.device' is missing"),
    (TX, {"actions": [{"type": BDA, "data": {"node": "x", "name": "y", "qq": 1, "aa": 2, "zz": 3}}]}, "Parameter 'actions[0].data.aa' is unexpected"),
    (TX, {"actions": [], "properties": {"completion-mode": "x"}}, "Parameter 'completion-mode' does not accept value 'x'"),
    (TX, {"actions": [], "properties": {"completion-mode": 1}}, "Invalid parameter type for 'properties.completion-mode', expected: string"),
    (TX, {"actions": [], "properties": {"x": 1}}, "Parameter 'properties.x' is unexpected"),
    (TX, {"actions": [], "properties": None}, "Invalid parameter type for 'properties', expected: object"),
    (ADD, {}, "Parameter 'driver' is missing"),
    (ADD, {"node-name": "x"}, "Parameter 'driver' is missing"),
    (ADD, {"node-name": 5}, "Parameter 'driver' is missing"),
    (ADD, {"node-name": "a", "zzz": 1}, "Parameter 'driver' is missing"),
    (ADD, {"driver": "foo"}, "Parameter 'driver' does not accept value 'foo'"),
    (ADD, {"driver": 5}, "Invalid parameter type for 'driver', expected: string"),
    (ADD, {"driver": None}, "Invalid parameter type for 'driver', expected: string"),
    (ADD, {"driver": "qcow2"}, "Parameter 'file' is missing"),
    (ADD, {"driver": "qcow2", "node-name": 5, "file": "x"}, "Invalid parameter type for 'node-name', expected: string"),
    (ADD, {"driver": "qcow2", "node-name": "a", "file": "x", "read-only": "x"}, "Invalid parameter type for 'read-only', expected: boolean"),
    (ADD, {"driver": "qcow2", "node-name": "n1", "file": 5}, "Invalid parameter type for 'file', expected: BlockdevRef"),
    (ADD, {"driver": "qcow2", "node-name": "n1", "file": None}, "Invalid parameter type for 'file', expected: BlockdevRef"),
    (ADD, {"driver": "qcow2", "node-name": "n1", "file": []}, "Invalid parameter type for 'file', expected: BlockdevRef"),
    (ADD, {"driver": "qcow2", "node-name": "n1", "file": {}}, "Parameter 'file.driver' is missing"),
    (ADD, {"driver": "qcow2", "file": {"driver": "file"}}, "Parameter 'file.filename' is missing"),
    (ADD, {"driver": "qcow2", "file": {"driver": "file", "filename": 5}}, "Invalid parameter type for 'file.filename', expected: string"),
    (ADD, {"driver": "qcow2", "file": {"driver": "file", "filename": "a", "x": 1}}, "Parameter 'file.x' is unexpected"),
    (ADD, {"driver": "qcow2", "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "a", "x": 1}}}, "Parameter 'file.file.x' is unexpected"),
    (ADD, {"driver": "qcow2", "file": {"driver": "qcow2", "file": 5}}, "Invalid parameter type for 'file', expected: BlockdevRef"),
    (ADD, {"driver": "qcow2", "file": "n", "backing": 5}, "Invalid parameter type for 'backing', expected: BlockdevRefOrNull"),
    (ADD, {"driver": "qcow2", "file": "n", "backing": {"driver": "raw"}}, "Parameter 'backing.file' is missing"),
    (ADD, {"driver": "qcow2", "file": "n", "overlap-check": "foo"}, "Parameter 'overlap-check' does not accept value 'foo'"),
    (ADD, {"driver": "qcow2", "file": "n", "overlap-check": 5}, "Invalid parameter type for 'overlap-check', expected: Qcow2OverlapChecks"),
    (ADD, {"driver": "qcow2", "file": "n", "overlap-check": {"template": "x"}}, "Parameter 'template' does not accept value 'x'"),
    (ADD, {"driver": "qcow2", "file": "n", "overlap-check": {"foo": 1}}, "Parameter 'overlap-check.foo' is unexpected"),
    (ADD, {"driver": "qcow2", "file": "n", "encrypt": {}}, "Parameter 'encrypt.format' is missing"),
    (ADD, {"driver": "qcow2", "file": "n", "encrypt": {"format": "x"}}, "Parameter 'format' does not accept value 'x'"),
    (ADD, {"driver": "qcow2", "file": "n", "encrypt": {"format": "luks", "key-secret": 5}}, "Invalid parameter type for 'encrypt.key-secret', expected: string"),
    (ADD, {"driver": "qcow2", "file": "n", "data-file": 5}, "Invalid parameter type for 'data-file', expected: BlockdevRef"),
    (ADD, {"driver": "qcow2", "file": "n", "cache": {"direct": 1}}, "Invalid parameter type for 'cache.direct', expected: boolean"),
    (ADD, {"driver": "qcow2", "file": "n", "cache": 5}, "Invalid parameter type for 'cache', expected: object"),
    (ADD, {"driver": "qcow2", "file": "n", "discard": "x"}, "Parameter 'discard' does not accept value 'x'"),
    (ADD, {"driver": "qcow2", "file": "n", "detect-zeroes": "x"}, "Parameter 'detect-zeroes' does not accept value 'x'"),
    (ADD, {"driver": "qcow2", "file": "n", "foo": 1}, "Parameter 'foo' is unexpected"),
    (ADD, {"driver": "qcow2", "file": "n", "filename": "x"}, "Parameter 'filename' is unexpected"),
    (ADD, {"driver": "qcow2", "file": "n", "cache-size": 2**63}, "Invalid parameter type for 'cache-size', expected: integer"),
    (ADD, {"driver": "file", "node-name": "n1"}, "Parameter 'filename' is missing"),
    (ADD, {"driver": "file", "filename": "f", "locking": "x"}, "Parameter 'locking' does not accept value 'x'"),
    (ADD, {"driver": "file", "filename": "f", "aio": "x"}, "Parameter 'aio' does not accept value 'x'"),
    (ADD, {"driver": "file", "filename": "f", "aio-max-batch": "x"}, "Invalid parameter type for 'aio-max-batch', expected: integer"),
    (ADD, {"driver": "null-co", "node-name": "n1", "size": "x"}, "Invalid parameter type for 'size', expected: integer"),
    (ADD, {"driver": "null-co", "latency-ns": "x"}, "Parameter 'latency-ns' expects uint64"),
    (ADD, {"driver": "raw", "file": "n", "offset": "x"}, "Invalid parameter type for 'offset', expected: integer"),
    (ADD, {"driver": "raw", "file": "n", "size": "x"}, "Invalid parameter type for 'size', expected: integer"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "arguments", "desc"), VERIFIED)
def test_verified_messages(command: str, arguments: Any, desc: str) -> None:
    assert error_of(command, arguments) == ("GenericError", desc)


# Accepted by the visitor on the binary (the command itself then ran or failed).
ACCEPTED = [
    (BDA, {"node": "d", "name": "x", "granularity": 2**31}),
    (BDA, {"node": "d", "name": "x", "granularity": 4294967295}),
    (BACKUP, {"device": "d", "target": "x", "sync": "full", "speed": -1}),
    (BACKUP, {"device": "d", "target": "x", "sync": "full", "speed": 2**63 - 1}),
    ("block-job-set-speed", {"device": "x", "speed": -1}),
    ("human-monitor-command", {"command-line": "x", "cpu-index": 5}),
    (
        TX,
        {"actions": [{"type": "abort", "data": {}}], "properties": {"completion-mode": "grouped"}},
    ),
    (TX, {"actions": []}),
    (ADD, {"driver": "qcow2", "node-name": "n1", "file": "nosuch", "backing": None}),
    (ADD, {"driver": "null-co", "node-name": "nul1", "size": 1048576, "latency-ns": -1}),
    (ADD, {"driver": "raw", "node-name": "r1", "file": {"driver": "null-co"}}),
    ("qmp_capabilities", {"enable": ["oob"]}),
]


@pytest.mark.parametrize(("command", "arguments"), ACCEPTED)
def test_accepted(command: str, arguments: Any) -> None:
    assert error_of(command, arguments) is None


def test_returns_new_dict_and_wraps_uint64() -> None:
    args = {"driver": "null-co", "latency-ns": -1, "cache": {"direct": True}}
    out = check_arguments(ADD, args)
    assert out == {"driver": "null-co", "cache": {"direct": True}, "latency-ns": 2**64 - 1}
    assert out is not args and out["cache"] is not args["cache"]
    assert "read-only" not in out  # no defaults added


def test_arguments_not_an_object() -> None:
    for bad in ([], None, "x", 5, [1]):
        assert error_of("query-block", bad) == (
            "GenericError",
            "QMP input member 'arguments' must be an object",
        )
    # checked before the command name, as QEMU's dispatcher does
    assert error_of("nosuch", []) == (
        "GenericError",
        "QMP input member 'arguments' must be an object",
    )
    assert check_arguments("query-block") == {}


def test_unknown_command() -> None:
    assert error_of("nosuch", {}) == ("CommandNotFound", "The command nosuch has not been found")
    assert error_of("query-status") == (
        "CommandNotFound",
        "The command query-status has not been found",
    )


def test_one_command_table() -> None:
    # every command whose arguments are checked has a handler, and query-commands
    # answers from that same table (it used to pass the check, then be "not found")
    assert unhandled() == []
    assert set(schema.ARGUMENTS) == set(TABLE)
    [reply] = responses(run_steps([qmp("query-commands")]))
    names = [c["name"] for c in reply["return"]]
    assert names == sorted(TABLE) and "query-commands" in names and "transaction" in names


def test_unmodelled_driver_is_refused_after_the_common_members() -> None:
    assert desc_of(ADD, {"driver": "nbd", "node-name": 5}) == (
        "Invalid parameter type for 'node-name', expected: string"
    )
    desc = desc_of(ADD, {"driver": "nbd", "node-name": "x"})
    assert desc is not None and desc.startswith("blocksim does not model driver 'nbd'")
    desc = desc_of(ADD, {"driver": "qcow2", "file": {"driver": "throttle"}})
    assert desc is not None and "throttle" in desc


# (keys in JSON order, QEMU's reply) for block-dirty-bitmap-add with junk keys.
UNEXPECTED_ORDER = json.loads(
    """[[["name", "9d4ncf", "node", "jzde6g"], "9d4ncf"], [["7_", "node", "8", "name"], "8"],
    [["name", "6h8", "doc7is-", "node", "7lg98"], "7lg98"],
    [["node", "36_u", "name", "91xtplpf", "\u20ac"], "36_u"],
    [["\u00e9eh4-", "name", "node", "vj3", "ce78uvw", "91efr2ed"], "vj3"],
    [["k\u20ach3dn", "node", "yojflj", "k0", "name", "7ri_7r-", "ipzz3"], "7ri_7r-"],
    [["v\u00e9", "zzzg2zd", "i4\u20acd17", "name", "-6x", "node", "g", "en0k"], "g"],
    [["n", "tfjgvq2k", "53wb", "2hh312", "j6b5tf", "name", "node", "qw\u00e9", "o\u20acmpzo", "5xkwo"],
     "5xkwo"],
    [["q", "node", "vfz1zfk", "_mn", "name", "fhym2l", "n2\u20ac\u20aca2", "bag", "s4p9",
      "j\u20ac\u00e92wj77", "ibj"], "j\u20ac\u00e92wj77"],
    [["r046", "5572g7", "jx", "l\u00e9ajlj2\u20ac", "p", "4p5q7m0i", "node", "7be0u\u20ac4\u00e9",
      "name", "nt", "7d", "hz0uep_", "qi1", "rcg4"], "5572g7"],
    [["i_qzj", "v5\u20acs4eh", "s04l", "42p0", "1a", "f", "hkqd", "mtt", "wbqca", "4", "name", "gfqr",
      "f\u00e9oeq", "node", "l", "ufrdl_er", "7-r\u20acic"], "gfqr"],
    [["gy07db", "3qa1", "node", "548", "fbci", "e2sc\u20acme", "f", "a2d", "aqxv7upc", "5e", "f2r4mp4",
      "js\u20acjc4_4", "name", "\u00e9yu", "qeqpno13", "bttof95", "fjz9c", "c1lkr", "9", "nwlav",
      "vqt", "46"], "9"],
    [["8xi45", "et", "tj-wyuh", "k2-", "name", "33zb", "pflv", "stqqzp", "0_tbic_", "a", "iq5_h",
      "o8c", "node", "pr_", "mx_bz7", "fd-0", "1rup2", "7o0v0_i7", "a30", "up", "5nyrvd3",
      "yqo\u00e9", "gojj", "s3d", "auvzhm", "1f", "27zhk", "drgds", "s", "x_", "xezy9", "93aez510",
      "q8mb-y", "en4", "frpy"], "93aez510"],
    [["8rxqq", "ng", "1x\u00e9f4m", "ta\u00e9eb", "2", "ex4l", "0plp", "c372", "x2b-pz", "au-x",
      "ezqp45", "\u00e9pu", "kp-ec27", "t", "g21y", "hdm\u00e9", "z0u", "d2", "name",
      "k_geq\u20ac", "y", "\u00e9qag\u00e9\u20acwn", "fk", "fw-h7", "6hss", "\u20acte",
      "jcnq\u00e9", "e\u00e9vx", "ml51ct", "_3i3l", "dq", "ywt_", "1", "js9m", "g1cg", "v\u20accqu",
      "0xcs", "x", "30loi-1", "xv0kgaf", "node", "x60m"], "d2"]]"""
)


@pytest.mark.parametrize(("keys", "first"), UNEXPECTED_ORDER)
def test_which_unexpected_member_is_named(keys: list[str], first: str) -> None:
    args = {k: "nosuch" if k in ("node", "name") else 1 for k in keys}
    assert desc_of(BDA, args) == f"Parameter '{first}' is unexpected"


def test_json_nesting_limit() -> None:
    def nested(depth: int) -> Any:
        value: Any = []
        for _ in range(depth - 1):
            value = [value]
        return value

    # request = level 1, arguments = level 2: 1022 more levels pass, 1023 fail
    assert desc_of("query-block", {"x": nested(1022)}) == "Parameter 'x' is unexpected"
    assert desc_of("query-block", {"x": nested(1023)}) == "JSON nesting depth limit exceeded"
    assert desc_of("nosuch", {"x": nested(1023)}) == "JSON nesting depth limit exceeded"


def test_deep_blockdev_ref_nesting_is_checked_fully() -> None:
    inner: dict[str, Any] = {"driver": "file", "filename": "f", "bogus": 1}
    for _ in range(400):  # far beyond Python's default recursion limit
        inner = {"driver": "raw", "file": inner}
    desc = desc_of(ADD, inner)
    assert desc == "Parameter '" + "file." * 400 + "bogus' is unexpected"


# -- every table entry --------------------------------------------------------


def _sample(t: Any) -> Any:
    """A valid value of QAPI type `t` (required members only)."""
    if isinstance(t, schema.Scalar):
        return {"str": "s", "bool": True, "int": -1, "uint64": 1, "uint32": 512, "any": 0}[t.kind]
    if isinstance(t, schema.Enum):
        return t.values[-1]
    if isinstance(t, schema.List):
        return [_sample(t.element)]
    if isinstance(t, schema.Alternate):
        return _sample(t.string_branch) if t.string_branch is not None else {}
    if isinstance(t, schema.Union):
        tag = next(m for m in t.base if m.name == t.tag)
        value = next(v for v in tag.type.values if t.variants.get(v) is not None)
        return {
            **{m.name: _sample(m.type) for m in t.base if not m.optional and m.name != t.tag},
            t.tag: value,
            **{m.name: _sample(m.type) for m in t.variants[value] or () if not m.optional},
        }
    return {m.name: _sample(m.type) for m in t.members if not m.optional}


def _required(command: str) -> list[str]:
    t = COMMANDS[command]
    if isinstance(t, schema.Union):
        return [t.tag]
    return [m.name for m in t.members if not m.optional]


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_every_command_smoke(command: str) -> None:
    args = _sample(COMMANDS[command])
    assert check_arguments(command, args) == args
    assert desc_of(command, {**args, "bogus-member": 1}) == "Parameter 'bogus-member' is unexpected"
    for name in _required(command):
        rest = {k: v for k, v in args.items() if k != name}
        assert desc_of(command, rest) == f"Parameter '{name}' is missing"


def _all_optionals(t: Any, depth: int = 0) -> Any:
    """A valid value with every optional member present (shallow for refs)."""
    if isinstance(t, schema.Struct):
        return {m.name: _all_optionals(m.type, depth + 1) for m in t.members}
    if isinstance(t, schema.Union):
        value = _sample(t)
        variant = t.variants[value[t.tag]] or ()
        members = (*t.base, *variant)
        return {**{m.name: _all_optionals(m.type, depth + 1) for m in members}, t.tag: value[t.tag]}
    if isinstance(t, schema.Alternate) and depth > 3:
        return _sample(t.string_branch)
    if isinstance(t, schema.Alternate) and t.object_branch is not None:
        return _all_optionals(t.object_branch, depth + 1)
    return _sample(t)


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_every_member_accepts_its_type_and_refuses_others(command: str) -> None:
    args = _all_optionals(COMMANDS[command])
    assert error_of(command, args) is None
    t = COMMANDS[command]
    members = t.members if isinstance(t, schema.Struct) else t.base
    for m in members:
        if m.type == schema.Scalar("any"):
            assert error_of(command, {**args, m.name: {"any": ["thing"]}}) is None
            continue
        err = desc_of(
            command, {**args, m.name: {"not": "right"} if m.type is not schema.BOOL else 7}
        )
        if isinstance(m.type, schema.Struct | schema.Union):
            assert err is not None and err.startswith(f"Parameter '{m.name}.")
        else:
            assert err is not None and m.name in err


def test_transaction_action_types() -> None:
    assert schema.TRANSACTION_ACTION_TYPES == (
        "abort", "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
        "block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge",
        "blockdev-backup", "blockdev-snapshot", "blockdev-snapshot-internal-sync",
        "blockdev-snapshot-sync", "drive-backup",
    )  # fmt: skip


def test_qdict_order_is_bucket_order() -> None:
    keys = ["execute", "arguments", "id"]
    assert sorted(schema.qdict_order(keys)) == sorted(keys)
    assert schema.qdict_order(["a"]) == ["a"]


# -- nasty inputs never raise anything but QMPError ---------------------------


def _garbage(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randrange(10)
    if k == 0:
        return rng.choice(["", "é", "\ud800", "\x00", "node", "drive0", "a" * 3000])
    if k == 1:
        return rng.choice([0, -1, 2**64, -(2**200), 2**1000, 3.5, float("nan"), float("inf")])
    if k == 2:
        return rng.choice([True, False, None])
    if k == 3 and depth < 4:
        return [_garbage(rng, depth + 1) for _ in range(rng.randrange(4))]
    if k == 4 and depth < 4:
        keys = ["node", "name", "driver", "file", "type", "data", "actions", "bitmaps", "é", ""]
        return {rng.choice(keys): _garbage(rng, depth + 1) for _ in range(rng.randrange(5))}
    if k == 5:
        return rng.choice([(1, 2), b"bytes", object(), {1: 2}, {None: 1}])
    return rng.choice(["qcow2", "raw", "file", "null-co", "abort", "full", "oob", "x"])


def test_garbage_only_raises_qmperror() -> None:
    rng = random.Random(1)
    names = [*COMMAND_NAMES, "nosuch", ""]
    for _ in range(3000):
        command = rng.choice(names)
        args = _garbage(rng) if rng.random() < 0.2 else _sample_or_garbage(rng, command)
        try:
            check_arguments(command, args)
        except QMPError as exc:
            assert isinstance(exc.desc, str) and exc.cls in ("GenericError", "CommandNotFound")


def _sample_or_garbage(rng: random.Random, command: str) -> Any:
    if command not in COMMANDS:
        return {}
    args = dict(_all_optionals(COMMANDS[command]))
    for _ in range(rng.randrange(3)):
        key = rng.choice([*args, "zz", "é"]) if args else "zz"
        args[key] = _garbage(rng)
    return args


def test_non_string_command_name() -> None:
    assert error_of(5, {}) == ("CommandNotFound", "The command 5 has not been found")  # type: ignore[arg-type]


# -- against a live QEMU 7.2 -----------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")


class _Qmp:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        json.loads(self.file.readline())

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def cmd(self, name: str, arguments: Any = None) -> Any:
        return qmp_exchange(self.file, name, arguments)


@pytest.fixture(scope="module")
def qemu() -> Any:
    if QEMU is None or QEMU_IMG is None:
        pytest.skip("qemu-system-x86_64 not installed")
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    if "version 7.2." not in version:
        pytest.skip(f"not QEMU 7.2: {version.splitlines()[0]}")
    tmp = tempfile.mkdtemp(prefix="blocksim-schema-")
    image, sock = os.path.join(tmp, "d.qcow2"), os.path.join(tmp, "qmp.sock")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", image, "64M"], check=True)
    proc = subprocess.Popen(
        [QEMU, "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg", "-drive",
         f"if=none,id=drive0,file={image},format=qcow2,node-name=fmt0,file.node-name=proto0",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        client = _Qmp(sock)
        client.cmd("qmp_capabilities")
        yield client
        client.close()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.qemu
def test_table_matches_introspection(qemu: _Qmp) -> None:
    """Member names, order, optionality, enum values and alternates of every
    table entry equal QEMU's query-qmp-schema (which has no integer widths:
    those were probed one by one)."""
    entities = {e["name"]: e for e in qemu.cmd("query-qmp-schema")["return"]}
    seen: set[tuple[int, str]] = set()

    def compare(mine: Any, name: str, where: str) -> None:
        if (id(mine), name) in seen:
            return
        seen.add((id(mine), name))
        ent = entities[name]
        if isinstance(mine, schema.Scalar):
            assert name == ("int" if mine.kind.startswith(("int", "uint")) else mine.kind), where
        elif isinstance(mine, schema.Enum):
            assert tuple(ent["values"]) == mine.values, where
        elif isinstance(mine, schema.List):
            compare(mine.element, ent["element-type"], where + "[]")
        elif isinstance(mine, schema.Alternate):
            branches = {entities[m["type"]]["meta-type"]: m["type"] for m in ent["members"]}
            if "enum" in branches:
                branches["builtin"] = branches.pop("enum")
            assert set(branches) == {
                *(["object"] if mine.object_branch is not None else []),
                *(["builtin"] if mine.string_branch is not None else []),
                *(["builtin"] if mine.null_branch else []),
            }, where
            if mine.object_branch is not None:
                compare(mine.object_branch, branches["object"], where)
        elif isinstance(mine, schema.Struct):
            members(mine.members, ent["members"], where)
        elif isinstance(mine, schema.NotModelled):
            pass  # refused whatever its value: only the member's name and place matter
        else:
            assert ent.get("tag") == mine.tag, where
            members(mine.base, ent["members"], where)
            cases = {v["case"]: v["type"] for v in ent["variants"]}
            assert set(cases) == set(mine.variants), where
            for case, variant in mine.variants.items():
                if variant is not None:
                    members(variant, entities[cases[case]]["members"], f"{where}/{case}")

    def members(mine: tuple[schema.Member, ...], theirs: list[Any], where: str) -> None:
        assert [(m.name, m.optional) for m in mine] == [(t["name"], "default" in t) for t in theirs]
        for m, t in zip(mine, theirs, strict=True):
            compare(m.type, t["type"], f"{where}.{m.name}")

    for command in COMMAND_NAMES:
        compare(COMMANDS[command], entities[command]["arg-type"], command)


def _plain_json(value: Any) -> bool:
    """True if QEMU would receive exactly `value` (no tuples, int keys, NaN,
    lone surrogates or NUL, which Python's json accepts or rewrites)."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (TypeError, ValueError):
        return False
    return "\\u0000" not in text and "\x00" not in text and json.loads(text) == value


_VISITOR = (
    "is missing", "is unexpected", "expects uint64", "expects uint32_t", "does not accept value",
    "Invalid parameter type", "must be an object", "has not been found",
)  # fmt: skip


@pytest.mark.qemu
def test_differential_against_qemu(qemu: _Qmp) -> None:
    """Seeded mutations of valid arguments: where blocksim refuses, QEMU gives
    the same error; where blocksim accepts, QEMU's error (if any) is not a
    visitor error.  All names are unknown, so no command changes QEMU."""
    rng = random.Random(5)
    for _ in range(150):
        command = rng.choice([c for c in COMMAND_NAMES if c != "human-monitor-command"])
        args: Any = dict(_all_optionals(COMMANDS[command]))
        for _ in range(rng.randrange(3)):
            if args and rng.random() < 0.4:
                del args[rng.choice(list(args))]
            else:
                key = rng.choice([*args, "zz", "é"]) if args else "zz"
                args[key] = _garbage(rng)
        if command == TX and "block-dirty-bitmap-enable" in json.dumps(args, default=str):
            continue  # a failing enable action crashes QEMU 7.2 (SIGSEGV)
        if not _plain_json(args):
            continue
        ours = error_of(command, args)
        if ours is not None and ours[1].startswith("blocksim"):
            continue
        reply = qemu.cmd(command, args)
        if ours is not None:
            assert reply.get("error") == {"class": ours[0], "desc": ours[1]}, (command, args)
        elif "error" in reply:
            assert not any(s in reply["error"]["desc"] for s in _VISITOR), (command, args, reply)
