"""sim.qmp.qemu_io: the qemu-io subset of HMP, against answers of QEMU 7.2.

Every expectation below was observed on qemu-system-x86_64 7.2.22 (-M none,
drive0 = qcow2 fmt0 over file proto0, 64 MiB; stdout read through a pty).
The `qemu`-marked test at the end replays generated lines on a live binary.
"""

from __future__ import annotations

import os
import pty
import random
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
import tty
from typing import Any

import pytest

from sim.qmp import qemu_io
from sim.qmp.qemu_io import (
    READ_ONLY_REPLY,
    QemuIoCommand,
    device_not_found_reply,
    hexdump,
    parse_command_line,
)
from tests.helpers import qmp_exchange

WRITE_USAGE = (
    "write [-bcCfnquz] [-P pattern | -s source_file] off len -- "
    "writes a number of bytes at a specified offset\n"
)
READ_USAGE = (
    "read [-abCqv] [-P pattern [-s off] [-l len]] off len -- "
    "reads a number of bytes at a specified offset\n"
)
DISCARD_USAGE = "discard [-Cq] off len -- discards a number of bytes at a specified offset\n"
PARSE = "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- "
TOO_LARGE = "Parsing error: argument too large -- "
NO_N = "length cannot exceed 2147483136 without -n, given "
TRY = 'Try "help qemu-io" for more information\r\n'


def io(sub: str, target: str = "drive0") -> QemuIoCommand:
    return parse_command_line(f'qemu-io {target} "{sub}"')


def wrote(offset: int, length: int) -> str:
    return f"wrote {length}/{length} bytes at offset {offset}\n"


# sub-command -> (op, offset, length, pattern, output)
IO_CASES: list[tuple[str, str, int, int, int | None, str]] = [
    ("write -P 0x5 0 64k", "write", 0, 65536, 5, wrote(0, 65536)),
    ("write 0 1", "write", 0, 1, 0xCD, wrote(0, 1)),
    ("write -P 5 0 1", "write", 0, 1, 5, wrote(0, 1)),
    ("write -P 255 0 1", "write", 0, 1, 255, wrote(0, 1)),
    ("write -P 010 0 1", "write", 0, 1, 8, wrote(0, 1)),
    ("write -P 0xff 0 1", "write", 0, 1, 255, wrote(0, 1)),
    ("write -P 0XFF 0 1", "write", 0, 1, 255, wrote(0, 1)),
    ("write -P5 0 64k", "write", 0, 65536, 5, wrote(0, 65536)),
    ("write 0 64k -P 5", "write", 0, 65536, 5, wrote(0, 65536)),
    ("write -P 0x5 -P 0x6 0 1", "write", 0, 1, 6, wrote(0, 1)),
    ("write -p 0 512", "write", 0, 512, 0xCD, wrote(0, 512)),
    ("write -f 0 512", "write", 0, 512, 0xCD, wrote(0, 512)),
    ("write -- 0 1", "write", 0, 1, 0xCD, wrote(0, 1)),
    ("write 0 5 ", "write", 0, 5, 0xCD, wrote(0, 5)),
    ("write  0  5", "write", 0, 5, 0xCD, wrote(0, 5)),
    ("w 0 1", "write", 0, 1, 0xCD, wrote(0, 1)),
    ("w -P 5 0 1", "write", 0, 1, 5, wrote(0, 1)),
    ("write -z 0 64k", "write", 0, 65536, None, wrote(0, 65536)),
    ("write -zu 0 64k", "write", 0, 65536, None, wrote(0, 65536)),
    ("write -z -- 0 1", "write", 0, 1, None, wrote(0, 1)),
    ("write -z 100 3", "write", 100, 3, None, wrote(100, 3)),
    ("write -q 0 20", "write", 0, 20, 0xCD, ""),
    ("write 0 1 -q", "write", 0, 1, 0xCD, ""),
    ("write -C 0 20", "write", 0, 20, 0xCD, ""),
    ("write 0 0", "write", 0, 0, 0xCD, wrote(0, 0)),
    ("write 0 1G", "write", 0, 1 << 30, 0xCD, wrote(0, 1 << 30)),
    ("write 0 2147483136", "write", 0, 2147483136, 0xCD, wrote(0, 2147483136)),
    ("write 1M 1", "write", 1 << 20, 1, 0xCD, wrote(1 << 20, 1)),
    ("write 64M 1", "write", 64 << 20, 1, 0xCD, wrote(64 << 20, 1)),
    ("read 0 1", "read", 0, 1, None, "read 1/1 bytes at offset 0\n"),
    ("r 0 1", "read", 0, 1, None, "read 1/1 bytes at offset 0\n"),
    ("read -P 5 0 64k", "read", 0, 65536, 5, "read 65536/65536 bytes at offset 0\n"),
    ("read -P 6 -q 0 64k", "read", 0, 65536, 6, ""),
    ("read -q 0 64k", "read", 0, 65536, None, ""),
    ("read -C 0 20", "read", 0, 20, None, ""),
    ("read -P 1 -s 0 -l 0 0 0", "read", 0, 0, 1, "read 0/0 bytes at offset 0\n"),
    ("discard 0 64k", "discard", 0, 65536, None, "discard 65536/65536 bytes at offset 0\n"),
    ("d 0 1", "discard", 0, 1, None, "discard 1/1 bytes at offset 0\n"),
    ("discard -q 0 64k", "discard", 0, 65536, None, ""),
    ("discard 0 1G", "discard", 0, 1 << 30, None, "discard 1073741824/1073741824 bytes at offset 0\n"),
    ("flush", "flush", 0, 0, None, ""),
    ("f", "flush", 0, 0, None, ""),
]  # fmt: skip


@pytest.mark.parametrize(("sub", "op", "offset", "length", "pattern", "output"), IO_CASES)
def test_io_commands(
    sub: str, op: str, offset: int, length: int, pattern: int | None, output: str
) -> None:
    cmd = io(sub)
    assert (cmd.op, cmd.target, cmd.offset, cmd.length, cmd.pattern) == (
        op,
        "drive0",
        offset,
        length,
        pattern,
    )
    assert cmd.output == output
    assert cmd.reply == ""
    assert cmd.zero == ("-z" in sub)
    assert cmd.requires_write == (op in ("write", "discard"))


SIZES = [
    ("1k", 1024), ("1K", 1024), ("1M", 1 << 20), ("1m", 1 << 20), ("1b", 1), ("1B", 1),
    ("0x10", 16), ("0X10", 16), ("010", 10), ("1.5k", 1536), ("0.5k", 512), ("1.k", 1024),
    ("1.", 1), ("1.0", 1), ("+5", 5), ("1.0005k", 1025), ("1.0004k", 1024),
]  # fmt: skip


@pytest.mark.parametrize(("text", "value"), SIZES)
def test_sizes(text: str, value: int) -> None:
    cmd = io(f"write 0 {text}")
    assert (cmd.op, cmd.length, cmd.output) == ("write", value, wrote(0, value))


# sub-command -> what qemu-io prints (nothing is done)
ERRORS = [
    ("write -P 0x105 0 1", "0x105 is not a valid pattern byte\n"),
    ("write -P 300 0 1", "300 is not a valid pattern byte\n"),
    ("write -P 256 0 1", "256 is not a valid pattern byte\n"),
    ("write -P -1 0 1", "-1 is not a valid pattern byte\n"),
    ("write -P abc 0 1", "abc is not a valid pattern byte\n"),
    ("write -P 0x 0 1", "0x is not a valid pattern byte\n"),
    ("write -P 5x 0 1", "5x is not a valid pattern byte\n"),
    ("write -P 1k 0 1", "1k is not a valid pattern byte\n"),
    ("write -P -- 0 1", "-- is not a valid pattern byte\n"),
    ("write -Pz 0 1", "z is not a valid pattern byte\n"),
    ("write -P 300 -x 0 1", "300 is not a valid pattern byte\n"),
    ("write 0 1T", NO_N + "1T\n"),
    ("write 0 1P", NO_N + "1P\n"),
    ("write 0 1E", NO_N + "1E\n"),
    ("write 0 3G", NO_N + "3G\n"),
    ("write -z 0 3G", NO_N + "3G\n"),
    ("write -b 0 3G", NO_N + "3G\n"),
    ("write 0 2147483137", NO_N + "2147483137\n"),
    ("write 0 9223372036854775807", NO_N + "9223372036854775807\n"),
    ("read 0 2147483137", "length cannot exceed 2147483136, given 2147483137\n"),
    ("read -l 5 0 3G", "length cannot exceed 2147483136, given 3G\n"),
    ("read -P 5 0 3G", "length cannot exceed 2147483136, given 3G\n"),
    ("discard 0 3G", "length cannot exceed 2147483136, given 3G\n"),
    ("write 0 1s", PARSE + "1s\n"),
    ("write 0 1.5", PARSE + "1.5\n"),
    ("write 0 1e3", PARSE + "1e3\n"),
    ("write 0 64kB", PARSE + "64kB\n"),
    ("write 0 64KiB", PARSE + "64KiB\n"),
    ("write 0 abc", PARSE + "abc\n"),
    ("write 0 1kk", PARSE + "1kk\n"),
    ("write 0 0x1.5k", PARSE + "0x1.5k\n"),
    ("write 0 0x", PARSE + "0x\n"),
    ("write 0 00x10", PARSE + "00x10\n"),
    ("write 0 .5k", PARSE + ".5k\n"),
    ("write 0 1.5e3k", PARSE + "1.5e3k\n"),
    ("write -- -5 1", PARSE + "-5\n"),
    ("write - 1", PARSE + "-\n"),
    ('write \\"0\\" 1', PARSE + '"0"\n'),
    ("write -P 5 0x 1", PARSE + "0x\n"),
    ("read -P 1 -l abc 0 1", PARSE + "abc\n"),
    ("read -P 1 -s -1 0 1", PARSE + "-1\n"),
    ("write 0 99999999999999999999", TOO_LARGE + "99999999999999999999\n"),
    ("write 0 9223372036854775808", TOO_LARGE + "9223372036854775808\n"),
    ("write 0 16E", TOO_LARGE + "16E\n"),
    ("write 0 8E", TOO_LARGE + "8E\n"),
    ("write 0 0x10000000000000000", TOO_LARGE + "0x10000000000000000\n"),
    ("write 0 -1", "write: invalid option -- '1'\n" + WRITE_USAGE),
    ("write -1 1", "write: invalid option -- '1'\n" + WRITE_USAGE),
    ("write -1 2 3", "write: invalid option -- '1'\n" + WRITE_USAGE),
    ("write -x -P 300 0 1", "write: invalid option -- 'x'\n" + WRITE_USAGE),
    ("write --foo 0 1", "write: invalid option -- '-'\n" + WRITE_USAGE),
    ("w -x 0 1", "w: invalid option -- 'x'\n" + WRITE_USAGE),
    ("write 0 1 -P", "write: option requires an argument -- 'P'\n" + WRITE_USAGE),
    ("read -x 0 1", "read: invalid option -- 'x'\n" + READ_USAGE),
    ("read -a 0 512", "read: invalid option -- 'a'\n" + READ_USAGE),
    ("discard -x 0 64k", "discard: invalid option -- 'x'\n" + DISCARD_USAGE),
    ("write 0 1 2", WRITE_USAGE),
    ("write 0 1 extra", WRITE_USAGE),
    ("write 0 ' 5'", WRITE_USAGE),
    ("write 0 1 -- -x", WRITE_USAGE),
    ("read 0 1 extra", READ_USAGE),
    ("read -l 5 0 1", READ_USAGE),
    ("read -s 512 0 64k", READ_USAGE),
    ("discard 0 1 2", DISCARD_USAGE),
    ("d 0 1 2", DISCARD_USAGE),
    ("write", "bad argument count 0 to write, expected at least 2 arguments\n"),
    ("write 0", "bad argument count 1 to write, expected at least 2 arguments\n"),
    ("write -P", "bad argument count 1 to write, expected at least 2 arguments\n"),
    ("write -1", "bad argument count 1 to write, expected at least 2 arguments\n"),
    ("w", "bad argument count 0 to w, expected at least 2 arguments\n"),
    ("read", "bad argument count 0 to read, expected at least 2 arguments\n"),
    ("r 0", "bad argument count 1 to r, expected at least 2 arguments\n"),
    ("discard", "bad argument count 0 to discard, expected at least 2 arguments\n"),
    ("flush 1", "bad argument count 1 to flush, expected 0 arguments\n"),
    ("flush -q", "bad argument count 1 to flush, expected 0 arguments\n"),
    ("f 1", "bad argument count 1 to f, expected 0 arguments\n"),
    ("frobnicate 1 2", 'command "frobnicate" not found\n'),
    ("WRITE 0 1", 'command "WRITE" not found\n'),
    ("aio_discard 0 64k", 'command "aio_discard" not found\n'),
    ('wr\\"ite 0 1', 'command "wr"ite" not found\n'),
    ("", ""),
    ("   ", ""),
    ("write -z -P 5 0 64k", "Only one of -z, -P, and -s can be specified at the same time\n"),
    ("write -zP5 0 64k", "Only one of -z, -P, and -s can be specified at the same time\n"),
    ("write -z -P 5 abc 1", "Only one of -z, -P, and -s can be specified at the same time\n"),
    ("write -P 0x5 -z -P 6 0 1", "Only one of -z, -P, and -s can be specified at the same time\n"),
    ("write -P 5 -s x 0 5", "Only one of -z, -P, and -s can be specified at the same time\n"),
    ("write -u 0 1", "-u requires -z to be specified\n"),
    ("write -n 0 1", "-n requires -z to be specified\n"),
    ("write -n -u 0 1", "-n requires -z to be specified\n"),
    ("write -b -z 0 1", "-b and -z cannot be specified at the same time\n"),
    ("write -b -z -f -n 0 512", "-b and -z cannot be specified at the same time\n"),
    ("write -f -c 0 512", "-f and -b or -c cannot be specified at the same time\n"),
    ("write -b -f 0 512", "-f and -b or -c cannot be specified at the same time\n"),
    ("write -c 1 512", "1 is not a sector-aligned value for 'offset'\n"),
    ("write -c 0 511", "511 is not a sector-aligned value for 'count'\n"),
    ("write -c -b 1 512", "1 is not a sector-aligned value for 'offset'\n"),
    ("read -b 1 512", "1 is not a sector-aligned value for 'offset'\n"),
    ("read -b 0 511", "511 is not a sector-aligned value for 'count'\n"),
    ("read -P 5 -s 65537 0 64k", "pattern verification range exceeds end of read data\n"),
    ("read -P 5 -l 65537 0 64k", "pattern verification range exceeds end of read data\n"),
    ("read -P 5 -s 3 -l 5 0 6", "pattern verification range exceeds end of read data\n"),
    ("write 0 1\\n", PARSE + "1\n\n"),
    ("write 0 1\\r", PARSE + "1\r\n"),
]  # fmt: skip


@pytest.mark.parametrize(("sub", "output"), ERRORS)
def test_qemu_io_errors(sub: str, output: str) -> None:
    cmd = io(sub)
    assert (cmd.op, cmd.target, cmd.output, cmd.reply) == ("error", "drive0", output, "")


# whole command line -> (reply, stdout); HMP answers these itself
HMP_CASES = [
    ("qemu-io drive0 write 0 1", "qemu-io: extraneous characters at the end of line\r\n" + TRY, ""),
    ('qemu-io drive0 "write 0 1" extra', "qemu-io: extraneous characters at the end of line\r\n" + TRY, ""),
    ('qemu-io drive0 "write 0 1"x', "qemu-io: extraneous characters at the end of line\r\n" + TRY, ""),
    ('qemu-io drive0 "write 0 1" ""', "qemu-io: extraneous characters at the end of line\r\n" + TRY, ""),
    ("qemu-io drive0 'write 0 1'", "qemu-io: extraneous characters at the end of line\r\n" + TRY, ""),
    ('qemu-io/x drive0 "write 0 1"', "qemu-io: extraneous characters at the end of line\r\n" + TRY, ""),
    ('qemu-io drive0 "write 0 1', "qemu-io: string expected\r\n" + TRY, "unterminated string\n"),
    ('qemu-io drive0 "write\\t0 1"', "qemu-io: string expected\r\n" + TRY, "unsupported escape code: '\\t'\n"),
    ('qemu-io drive0 "write \\q 0 1"', "qemu-io: string expected\r\n" + TRY, "unsupported escape code: '\\q'\n"),
    ('qemu-io "write 0 1"', "qemu-io: string expected\r\n" + TRY, ""),
    ("qemu-io drive0", "qemu-io: string expected\r\n" + TRY, ""),
    ('qemu-io -d ""', "qemu-io: string expected\r\n" + TRY, ""),
    ("qemu-io", "qemu-io: block device name expected\r\n" + TRY, ""),
    ("qemu-io -d", "qemu-io: block device name expected\r\n" + TRY, ""),
    ("  qemu-io", 'qemu-io: block device name expected\r\nTry "help   qemu-io" for more information\r\n', ""),
    ('qemu-io -x drive0 "write 0 1"', "qemu-io: unsupported option -x\r\n" + TRY, ""),
    ("qemu-io -", 'qemu-io: unsupported option -Try "help qemu-io" for more information\r\n', ""),
    ('qemu-io - drive0 "w 0 1"', "qemu-io: unsupported option - \r\n" + TRY, ""),
    ('qemu-io -d drive0 "write 0 1"', "Error: Device 'drive0' not found\r\n", ""),
    ('qemu-io -ddrive0 "write 0 1"', "Error: Device 'drive0' not found\r\n", ""),
    ('qemu-io -d x "read 0 1"', "Error: Device 'x' not found\r\n", ""),
    ('qemu-io -d "" "w"', "Error:  is not a hotpluggable device\r\n", ""),
    ("foo", "unknown command: 'foo'\r\n", ""),
    ("  foo bar", "unknown command: '  foo'\r\n", ""),
    ("", "", ""),
    ("   ", "", ""),
]  # fmt: skip


@pytest.mark.parametrize(("line", "reply", "output"), HMP_CASES)
def test_hmp_level(line: str, reply: str, output: str) -> None:
    cmd = parse_command_line(line)
    assert (cmd.op, cmd.target, cmd.reply, cmd.output) == ("hmp", None, reply, output)


@pytest.mark.parametrize(
    ("line", "target"),
    [
        ('qemu-io "drive0" "write 0 1"', "drive0"),
        ('qemu-io  drive0   "write 0 1"   ', "drive0"),
        ('qemu-io nosuch "frob"', "nosuch"),
        ('qemu-io "" "write 0 1"', ""),
        ('qemu-io fmt0 "write 0 1"', "fmt0"),
        ('qemu-io "#block123" "write 0 1"', "#block123"),
    ],
)
def test_target_is_left_to_the_caller(line: str, target: str) -> None:
    assert parse_command_line(line).target == target


def test_hex_suffix_warnings_go_to_the_monitor() -> None:
    warn = "warning: Using a multiplier suffix on hex numbers is deprecated: {}\r\n"
    cmd = io("write 0x10k 0x1k")
    assert (cmd.op, cmd.offset, cmd.length) == ("write", 16384, 1024)
    assert cmd.reply == warn.format("0x10k") + warn.format("0x1k")
    cmd = io("write 0x10k abc")
    assert (cmd.op, cmd.output, cmd.reply) == ("error", PARSE + "abc\n", warn.format("0x10k"))
    cmd = io("read -s 0x1k -P 5 0 64k")
    assert (cmd.pattern_offset, cmd.pattern_length, cmd.reply) == (1024, 64512, warn.format("0x1k"))
    assert cmd.mismatch_line() == "Pattern verification failed at offset 1024, 64512 bytes\n"


def test_read_pattern_range_and_helpers() -> None:
    cmd = io("read -P 6 -s 512 -l 1k 0 64k")
    assert (cmd.pattern, cmd.pattern_offset, cmd.pattern_length) == (6, 512, 1024)
    assert cmd.mismatch_line() == "Pattern verification failed at offset 512, 1024 bytes\n"
    assert io("read -P 6 0 64k").mismatch_line() == (
        "Pattern verification failed at offset 0, 65536 bytes\n"
    )
    assert io("read -v 0 20").verbose
    assert io("write 64M 1").failed() == "write failed: Input/output error\n"
    assert io("read 64M 1").failed() == "read failed: Input/output error\n"
    assert io("discard 0 1G").failed() == "discard failed: Input/output error\n"
    assert io("write 0 1").failed("Operation not supported") == (
        "write failed: Operation not supported\n"
    )


def test_hexdump() -> None:
    assert hexdump(b"\x05" * 20, 0) == (
        "00000000:  05 05 05 05 05 05 05 05 05 05 05 05 05 05 05 05  ................\n"
        "00000010:  05 05 05 05  ....\n"
    )
    assert hexdump(b"aZ9 \xff", 0x200) == "00000200:  61 5a 39 20 ff  aZ9..\n"


def test_replies_for_the_caller() -> None:
    assert device_not_found_reply("nodrive") == (
        "Error: Cannot find device='' nor node-name='nodrive'\r\n"
    )
    assert READ_ONLY_REPLY == "Block node is read-only\r\n"
    # the write permission is checked after the argument count, before the rest
    assert io("write -P 300 0 1", "fmt0").requires_write
    assert io("discard 0 1", "fmt0").requires_write
    assert not io("write -b", "fmt0").requires_write
    assert not io("read 0 1", "fmt0").requires_write
    assert not io("flush", "fmt0").requires_write
    assert not io("frob", "fmt0").requires_write


@pytest.mark.parametrize(
    "line",
    [
        'qemu-io drive0 "write -c 0 512"',
        'qemu-io drive0 "write -b -c 0 512"',
        'qemu-io drive0 "write -zn 0 64k"',
        'qemu-io drive0 "write -s /nonexist 0 512"',
        'qemu-io drive0 "read -b 0 512"',
        'qemu-io drive0 "length"',
        'qemu-io drive0 "help"',
        'qemu-io drive0 "aio_write -P 5 0 64k"',
        "info version",
        "help",
        "q",
    ],
)
def test_unsupported(line: str) -> None:
    cmd = parse_command_line(line)
    assert cmd.op == "unsupported" and cmd.detail


def test_non_string_line() -> None:
    assert parse_command_line(None).op == "hmp"
    assert parse_command_line(5).op == "hmp"


# -- fast path, robustness ----------------------------------------------------


def _random_line(rng: random.Random) -> str:
    nums = ["0", "1", "512", "64k", "1M", "0x10", "010", "1.5k", "abc", "-1", "3G", "2147483137",
            "99999999999999999999", "1E", "0x1k", "65536", "67108864", "\t5", ""]  # fmt: skip
    opts = [
        "-P 5",
        "-P 0x5",
        "-P 300",
        "-P",
        "-z",
        "-q",
        "-C",
        "-v",
        "-f",
        "-u",
        "-x",
        "--",
        "-zP5",
    ]
    verb = rng.choice(["write", "read", "discard", "flush", "w", "r", "frob", ""])
    words = [verb] + [rng.choice(nums + opts) for _ in range(rng.randrange(5))]
    sub = (" " * rng.choice([1, 1, 2])).join(words)
    target = rng.choice(["drive0", "fmt0", "#block1", "a.b-c:d", '"drive0"', "-d"])
    quote = rng.choice(['"', '"', '"', "", "'"])
    return f"qemu-io {target} {quote}{sub}{quote}"


def _common_line(rng: random.Random) -> str:
    """Lines shaped like the fast path's, valid or nearly so."""
    verb = rng.choice(["write", "read", "discard", "flush"])
    opt = rng.choice(["", "", " -P 5", " -P 0x5", " -P 0XfF", " -P 255", " -P 256", " -P 0",
                      " -P 010", " -z", " -P 0x100"])  # fmt: skip
    size = rng.choice(["0", "512", "64k", "64K", "1m", "2G", "3G", "007", "999999999999999",
                       "2147483136", "2147483137", "9223372036854775807", "1g"])  # fmt: skip
    off = rng.choice(["0", "1", "512", "64M", "1T", "999999999999999G"])
    tail = "" if rng.random() < 0.1 else f" {off} {size}"
    return f'qemu-io {rng.choice(["drive0", "fmt0", "#block7"])} "{verb}{opt}{tail}"'


def test_fast_path_agrees_with_full_parser() -> None:
    rng = random.Random(3)
    fast = 0
    for i in range(3000):
        line = _random_line(rng) if i % 2 else _common_line(rng)
        hit = qemu_io._fast_path(line)
        if hit is not None:
            fast += 1
            assert hit == qemu_io._parse_hmp(line), line
    assert fast > 150


def test_garbage_never_raises() -> None:
    rng = random.Random(9)
    alphabet = "qemu-io drive0 write read -P 0x5 64k \"\\'\t\n\x00é\ud800€/"
    for _ in range(3000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        if rng.random() < 0.5:
            line = "qemu-io drive0 " + line
        cmd = parse_command_line(line)
        assert isinstance(cmd, QemuIoCommand) and isinstance(cmd.output, str)
    assert parse_command_line("qemu-io d " + '"' + "x" * 5000 + '"').op == "error"


def test_long_strings_are_truncated_to_1023_bytes() -> None:
    name = "n" * 2000
    assert parse_command_line(f'qemu-io {name} "flush"').target == "n" * 1023
    # bytes, not characters: 511 "é" and half of one (QEMU's JSON shows U+FFFD)
    assert parse_command_line('qemu-io "' + "é" * 600 + '" "flush"').target == "é" * 511 + "\ufffd"
    cmd = parse_command_line('qemu-io drive0 "' + "x" * 1500 + '"')
    assert cmd.output == 'command "' + "x" * 1023 + '" not found\n'


# -- against a live QEMU 7.2 -----------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")
DISK = 64 << 20
_TIMING = re.compile(r"^(\S.* ops; (\d+:)*\d+\.\d\d sec \(.*\)|\d+,\d+,\d+:\d\d:\d\d\.\d\d,.*)$")


class _Live:
    """QEMU with stdout on a pty, so that qemu-io's printf output can be read."""

    def __init__(self, tmp: str) -> None:
        assert QEMU is not None and QEMU_IMG is not None
        image, sock = os.path.join(tmp, "d.qcow2"), os.path.join(tmp, "qmp.sock")
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", image, "64M"], check=True)
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.proc = subprocess.Popen(
            [QEMU, "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg", "-drive",
             f"if=none,id=drive0,file={image},format=qcow2,node-name=fmt0,file.node-name=proto0",
             "-qmp", f"unix:{sock},server=on,wait=off"],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        )  # fmt: skip
        os.close(slave)
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock)
        self.file = self.sock.makefile("rwb")
        self.file.readline()
        self.cmd("qmp_capabilities")
        snap = os.path.join(tmp, "ov.qcow2")
        self.cmd("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": snap,
                                            "snapshot-node-name": "ov0", "format": "qcow2"})  # fmt: skip
        self.hmp('qemu-io drive0 "flush"')

    def cmd(self, name: str, arguments: Any = None) -> Any:
        return qmp_exchange(self.file, name, arguments)

    def hmp(self, line: str) -> tuple[str, str]:
        """(QMP return, stdout) of one line; a marker command ends the output."""
        reply = self.cmd("human-monitor-command", {"command-line": line})["return"]
        self.cmd("human-monitor-command", {"command-line": 'qemu-io drive0 "zzmark"'})
        marker, buf = b'command "zzmark" not found\n', b""
        while marker not in buf:
            ready, _, _ = select.select([self.master], [], [], 5)
            assert ready, f"no output from QEMU after {line!r}"
            buf += os.read(self.master, 65536)
            buf = buf.replace(b"\r\n", b"\n")
        out = buf[: buf.index(marker)].decode("utf-8", "replace")
        return reply, out

    def close(self) -> None:
        self.file.close()
        self.sock.close()
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def _expected(cmd: QemuIoCommand) -> tuple[str, str]:
    """What the caller contract of the module docstring produces, with drive0
    (= overlay ov0, writable) and fmt0 (its read-only backing file)."""
    if cmd.target is None:
        return cmd.reply, cmd.output
    if cmd.target not in ("drive0", "ov0", "fmt0", "proto0"):
        return device_not_found_reply(cmd.target), ""
    if cmd.requires_write and cmd.target == "fmt0":
        return READ_ONLY_REPLY, ""
    if cmd.op in ("write", "read", "discard") and (
        cmd.offset > DISK or DISK - cmd.offset < cmd.length
    ):
        return cmd.reply, cmd.failed()
    return cmd.reply, cmd.output


@pytest.mark.qemu
def test_differential_against_qemu() -> None:
    if QEMU is None or QEMU_IMG is None:
        pytest.skip("qemu-system-x86_64 not installed")
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    if "version 7.2." not in version:
        pytest.skip(f"not QEMU 7.2: {version.splitlines()[0]}")
    tmp = tempfile.mkdtemp(prefix="blocksim-qemu-io-")
    live = _Live(tmp)
    try:
        rng = random.Random(11)
        for _ in range(120):
            line = _random_line(rng)
            cmd = parse_command_line(line)
            if cmd.op == "unsupported":
                continue
            reply, out = live.hmp(line)
            kept = [
                s
                for s in out.split("\n")
                if not _TIMING.match(s)
                and not s.startswith("Pattern verification failed")
                and not re.match(r"^[0-9a-f]{8}:  ", s)
            ]
            assert (reply, "\n".join(kept)) == _expected(cmd), line
    finally:
        live.close()
        shutil.rmtree(tmp, ignore_errors=True)
