"""The qemu-io subset of HMP, as `human-monitor-command` runs it in QEMU 7.2.

Theory of operation
-------------------
A command line goes through three parsers in QEMU, and this module replays
all three without touching any state:

1. HMP (monitor/hmp.c): the command name, then `qemu-io`'s arguments
   `[-d] device "command"` (get_str: a word, or a double-quoted string with
   the escapes \\n \\r \\\\ \\' \\" only, at most 1023 bytes), then nothing
   else.  HMP's own errors are the QMP reply (`\\n` sent as `\\r\\n`).
2. hmp_qemu_io: `-d` wants a qdev device (blocksim has none), otherwise the
   *caller* resolves the name (BlockBackend first, then node name) with
   `device_not_found_reply()` on failure.
3. qemu-io (qemu-io-cmds.c): words split on single spaces, the command looked
   up by name or alias, the argument count checked; then a command that needs
   write permission on a read-only node is refused with `READ_ONLY_REPLY`
   (the caller's check) before its options are parsed; then GNU getopt (with
   argument permutation) and per-command checks; numbers go through qemu_strtosz
   (util/cutils.c), patterns through strtol(base 0).  Everything qemu-io
   prints goes to QEMU's stdout, and the QMP reply stays "" -- except the
   deprecation warning for a hex number with a suffix (`0x10k`), which goes
   to the monitor.

`parse_command_line(line)` returns an immutable `QemuIoCommand`.  The caller's
contract, in QEMU's order:

- `target is None`: HMP answered by itself (`op` "hmp"), or the line is
  another HMP command (`op` "unsupported"): reply `reply`; no lookup.
- otherwise look `target` up; not found: `device_not_found_reply(target)`.
- `requires_write` and the node is read-only: `READ_ONLY_REPLY`, nothing
  printed, nothing done.
- otherwise reply `reply` (normally ""), and: `op` "error" prints `output`
  and does nothing else; "write"/"read"/"discard"/"flush" do the I/O and print
  `output` on success or `cmd.failed(strerror)` on failure (past the end of
  the disk: "Input/output error"); a read with `pattern` that finds other data
  prints `cmd.mismatch_line()` first, and still `output`.  `verbose` asks for
  `hexdump(data, offset)` before `output`.  "unsupported" is a valid qemu-io
  command blocksim does not simulate (see `detail`).

`output` never contains qemu-io's timing line ("64 KiB, 1 ops; 00.00 sec
(...)") nor the all-timing line of `-C`.

Verified on qemu-system-x86_64 7.2.22 by the author of this module (stdout
read through a pty): every message below, the permutation (`write 0 64k -P 5`
works), `-P 010` = 8 (octal), `-P 5x`/`0x`/`256`/`-1`/`1k` invalid, sizes
`1k 1K 1m 1G 1T 1P 1E 1b 1B 0x10 0X10 010(=10) 1.5k 0.5k 1.k 1. 1.0 +5
1.0005k(=1025) 1.0004k(=1024)` and refusals `1s 1.5 1e3 64kB 64KiB .5k 0x1.5k
00x10 1kk`, "argument too large" for 2^63, 8E, 16E and 0x10000000000000000,
the read-only reply (also for `write -P 300 0 1`, but not for a wrong
argument count), aliases w r d f, `-d` replies, the 1023-byte truncation of
HMP strings, and every HMP reply in the tests; 6000 generated lines replayed
on the binary agreed.  `aio_discard` does not exist in 7.2
(`command "aio_discard" not found`).  Not reproduced: sizes whose fraction
underflows a double (`1.5e-999k`), where QEMU reads past the string's end.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

# BDRV_REQUEST_MAX_BYTES in QEMU 7.2.
MAX_REQUEST_BYTES = 2147483136
READ_ONLY_REPLY = "Block node is read-only\r\n"
_INT64_MAX = 2**63 - 1
_U64 = 2**64


class QemuIoCommand(NamedTuple):
    """One parsed `human-monitor-command` line (see the module docstring).

    op: "write" | "read" | "discard" | "flush" | "error" (qemu-io refused or
    did nothing) | "hmp" (HMP answered itself) | "unsupported".

    An immutable NamedTuple rather than a frozen dataclass: it is built on
    the guest-I/O hot path, where a frozen dataclass costs 1.5 us to build
    and a NamedTuple 0.3 us.
    """

    op: str
    target: str | None = None
    offset: int = 0
    length: int = 0
    pattern: int | None = None  # byte written (0xcd default, None for -z); read: -P or None
    zero: bool = False  # write -z
    pattern_offset: int = 0  # read -s: where the -P check starts, relative to offset
    pattern_length: int = 0  # read: how many bytes -P checks (-l, default to the end)
    verbose: bool = False  # read -v
    quiet: bool = False  # -q
    requires_write: bool = False
    reply: str = ""  # QMP return string (when target is found, for qemu-io ops)
    output: str = ""  # what QEMU prints on stdout
    detail: str = ""  # why an op is "unsupported"
    unmap: bool = False  # write -z -u (BDRV_REQ_MAY_UNMAP)

    def failed(self, strerror: str = "Input/output error") -> str:
        """What qemu-io prints when this op's I/O fails."""
        return f"{self.op} failed: {strerror}\n"

    def mismatch_line(self) -> str:
        """What `read -P` prints when the data does not match."""
        return (
            f"Pattern verification failed at offset {self.offset + self.pattern_offset}, "
            f"{self.pattern_length} bytes\n"
        )


def device_not_found_reply(name: str) -> str:
    """The reply when `qemu-io NAME` names neither a BlockBackend nor a node."""
    return _hmp_text(f"Error: Cannot find device='' nor node-name='{name}'\n")


def hexdump(data: bytes, offset: int) -> str:
    """qemu-io's dump_buffer() (read -v): 16 bytes a line."""
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        hexes = "".join(f"{b:02x} " for b in chunk)
        text = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "." for b in chunk)
        lines.append(f"{offset + i:08x}:  {hexes} {text}\n")
    return "".join(lines)


def parse_command_line(line: object) -> QemuIoCommand:
    """Parse the `command-line` of human-monitor-command.  Never raises."""
    if not isinstance(line, str):
        return QemuIoCommand("hmp", detail="command-line is not a string")
    return _parse_cached(line)


@lru_cache(maxsize=4096)
def _parse_cached(line: str) -> QemuIoCommand:
    fast = _fast_path(line)
    return fast if fast is not None else _parse_hmp(line)


# ---------------------------------------------------------------------------
# Fast path: `qemu-io NAME "write [-P n | -z] OFF LEN"` and friends with plain
# numbers.  Anything unusual falls through to the full parser.

_FAST = re.compile(
    r'qemu-io ([A-Za-z0-9_#][A-Za-z0-9_#.:+-]{0,1022}) "(write|read|discard|flush)'
    r"(?: -P (0[xX][0-9a-fA-F]{1,2}|[1-9][0-9]{0,2}|0)| (-z))?"
    r'(?: ([0-9]{1,15})([kKmMgG]?) ([0-9]{1,15})([kKmMgG]?))?"'
)
_MUL = {"": 1, "k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20, "g": 1 << 30, "G": 1 << 30}


def _fast_path(line: str) -> QemuIoCommand | None:
    m = _FAST.fullmatch(line)
    if m is None:
        return None
    target, op, pat, zflag, off, off_sfx, length, len_sfx = m.groups()
    if op == "flush":
        return (
            QemuIoCommand("flush", target)
            if pat is None and zflag is None and off is None
            else None
        )
    if off is None or (pat is not None and op == "discard") or (zflag and op != "write"):
        return None
    offset, count = int(off) * _MUL[off_sfx], int(length) * _MUL[len_sfx]
    pattern = int(pat, 0) if pat is not None else None
    if offset > _INT64_MAX or count > MAX_REQUEST_BYTES or (pattern is not None and pattern > 255):
        return None
    if op == "write" and not zflag and pattern is None:
        pattern = 0xCD
    output = f"{'wrote' if op == 'write' else op} {count}/{count} bytes at offset {offset}\n"
    # Positional: keyword construction costs twice as much on this hot path.
    return QemuIoCommand(
        op, target, offset, count, pattern, bool(zflag), 0, count if op == "read" else 0, False,
        False, op != "read",
        "", output, "",
    )  # fmt: skip


# ---------------------------------------------------------------------------
# HMP (monitor/hmp.c), on bytes as QEMU sees them.

_SPACE = b" \t\n\v\f\r"
# Every HMP command name (and alias) of this QEMU 7.2 build, from `help`.
# `info` sub-commands of qemu-system-x86_64 7.2 (its `help info`).
_INFO_COMMANDS = frozenset(
    """balloon block block-jobs blockstats capture chardev cpus dirty_rate dump history
    hotpluggable-cpus iothreads irq jit kvm lapic mem memdev memory-devices memory_size_summary
    mice migrate migrate_capabilities migrate_parameters mtree name network numa opcount pci pic
    profile qdm qom-tree qtree ramblock rdma registers replay rocker rocker-of-dpa-flows
    rocker-of-dpa-groups rocker-ports roms sev sgx snapshots spice stats status sync-profile tlb
    tpm trace-events usb usbhost usernet uuid vcpu_dirty_limit version virtio
    virtio-queue-element virtio-queue-status virtio-status virtio-vhost-queue-status
    vm-generation-id vnc""".split()
)
_HMP_COMMANDS = frozenset(
    """announce_self balloon block_job_cancel block_job_complete block_job_pause block_job_resume
    block_job_set_speed block_resize block_set_io_throttle block_stream boot_set calc_dirty_rate
    cancel_vcpu_dirty_limit change chardev-add chardev-change chardev-remove chardev-send-break
    client_migrate_info closefd commit cont c cpu delvm device_add device_del drive_add
    drive_backup drive_del drive_mirror dump-guest-memory dumpdtb eject exit_preconfig
    expire_password gdbserver getfd gpa2hpa gpa2hva gva2gpa help ? hostfwd_add hostfwd_remove i
    info loadvm log logfile mce memsave migrate migrate_cancel migrate_continue migrate_incoming
    migrate_pause migrate_recover migrate_set_capability migrate_set_parameter
    migrate_start_postcopy mouse_button mouse_move mouse_set nbd_server_add nbd_server_remove
    nbd_server_start nbd_server_stop netdev_add netdev_del nmi o object_add object_del
    pcie_aer_inject_error pmemsave print p qemu-io qom-get qom-list qom-set quit q replay_break
    replay_delete_break replay_seek ringbuf_read ringbuf_write savevm screendump sendkey set_link
    set_password set_vcpu_dirty_limit singlestep snapshot_blkdev snapshot_blkdev_internal
    snapshot_delete_blkdev_internal stopcapture stop s sum sync-profile system_powerdown
    system_reset system_wakeup trace-event watchdog_action wavcapture x x_colo_lost_heartbeat xp
    """.split()
)
# QOM paths that exist under `-M none` with a -qmp chardev: `-d` on one of
# them finds an object that is not a device.
_QOM_OBJECTS = frozenset(
    {
        (), ("machine",), ("machine", "peripheral"), ("machine", "peripheral-anon"),
        ("machine", "unattached"), ("machine", "unattached", "io[0]"),
        ("machine", "unattached", "system[0]"), ("machine", "unattached", "sysbus"),
        ("chardevs",), ("chardevs", "compat_monitor0"),
    }
)  # fmt: skip


def _hmp_text(text: str) -> str:
    """monitor_puts(): every \\n goes out as \\r\\n."""
    return text.replace("\n", "\r\n")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _skip_space(s: bytes, p: int) -> int:
    while p < len(s) and s[p] in _SPACE:
        p += 1
    return p


def _get_str(s: bytes, p: int) -> tuple[bytes | None, int, str]:
    """monitor/hmp.c get_str(): (value or None, new position, stdout text)."""
    p = _skip_space(s, p)
    if p >= len(s):
        return None, p, ""
    out = bytearray()
    if s[p] == 0x22:  # '"'
        p += 1
        while p < len(s) and s[p] != 0x22:
            c = s[p]
            if c == 0x5C:  # backslash
                esc = s[p + 1] if p + 1 < len(s) else 0
                p += 2
                if esc in b"nr":
                    c = 10 if esc == 0x6E else 13
                elif esc in b"\\'\"":
                    c = esc
                else:
                    return None, p, f"unsupported escape code: '\\{_decode(bytes([esc]))}'\n"
            else:
                p += 1
            if len(out) < 1023:
                out.append(c)
        if p >= len(s):
            return None, p, "unterminated string\n"
        p += 1
    else:
        while p < len(s) and s[p] not in _SPACE:
            if len(out) < 1023:
                out.append(s[p])
            p += 1
    return bytes(out), p, ""


def _parse_hmp(line: str) -> QemuIoCommand:
    s = line.encode("utf-8", "surrogatepass")
    start = _skip_space(s, 0)
    if start >= len(s):
        return QemuIoCommand("hmp")
    end = start
    while end < len(s) and s[end] not in _SPACE and s[end] != 0x2F:  # '/'
        end += 1
    name = _decode(s[start:end])
    if name not in _HMP_COMMANDS:
        return QemuIoCommand("hmp", reply=_hmp_text(f"unknown command: '{_decode(s[:end])}'\n"))
    if name == "info":
        sub_start = _skip_space(s, end)
        sub_end = sub_start
        while sub_end < len(s) and s[sub_end] not in _SPACE and s[sub_end] != 0x2F:
            sub_end += 1
        sub = _decode(s[sub_start:sub_end])
        if sub and sub not in _INFO_COMMANDS:
            reply = _hmp_text(f"unknown command: '{_decode(s[:sub_end])}'\n")
            return QemuIoCommand("hmp", reply=reply)
        return QemuIoCommand("unsupported", detail=f"HMP command 'info {sub}'".rstrip())
    if name != "qemu-io":
        return QemuIoCommand("unsupported", detail=f"HMP command {name!r}")
    try_help = _decode(s[:end])
    return _parse_qemu_io_args(s, _skip_space(s, end), try_help)


def _hmp_fail(message: str, try_help: str, stdout: str = "") -> QemuIoCommand:
    reply = f'{message}Try "help {try_help}" for more information\n'
    return QemuIoCommand("hmp", reply=_hmp_text(reply), output=stdout)


def _parse_qemu_io_args(s: bytes, p: int, try_help: str) -> QemuIoCommand:
    qdev = False
    p = _skip_space(s, p)
    if p < len(s) and s[p] == 0x2D:  # '-': the only option is -d
        p += 1
        if p >= len(s) or s[p] != 0x64:
            # `%c` of a NUL ends monitor_printf's string, newline included.
            opt = "" if p >= len(s) else _decode(s[p : p + 1]) + "\n"
            return _hmp_fail(f"qemu-io: unsupported option -{opt}", try_help)
        qdev, p = True, p + 1
    device, p, stdout = _get_str(s, p)
    if device is None:
        return _hmp_fail("qemu-io: block device name expected\n", try_help, stdout)
    command, p, stdout = _get_str(s, p)
    if command is None:
        return _hmp_fail("qemu-io: string expected\n", try_help, stdout)
    if _skip_space(s, p) < len(s):
        return _hmp_fail("qemu-io: extraneous characters at the end of line\n", try_help)
    target = _decode(device)
    if qdev:
        return QemuIoCommand("hmp", reply=_hmp_text(f"Error: {_qdev_error(target)}\n"))
    return _parse_qemu_io(target, _decode(command))


def _qdev_error(device_id: str) -> str:
    """blk_by_qdev_id() under -M none: there is no device at all."""
    parts = tuple(p for p in device_id.split("/") if p)
    absolute = device_id.startswith("/")
    if (absolute and parts in _QOM_OBJECTS) or (not absolute and not parts):
        return f"{device_id} is not a hotpluggable device"
    return f"Device '{device_id}' not found"


# ---------------------------------------------------------------------------
# qemu-io (qemu-io-cmds.c).

# name -> (argmin, argmax, needs write permission); aliases map to names.
_COMMANDS = {
    "abort": (0, 0, False), "aio_flush": (0, 0, False), "aio_read": (2, -1, False),
    "aio_write": (2, -1, True), "alloc": (1, 2, False), "break": (2, 2, False),
    "discard": (2, -1, True), "flush": (0, 0, False), "help": (0, 1, False),
    "info": (0, 0, False), "length": (0, 0, False), "map": (0, 0, False),
    "read": (2, -1, False), "readv": (2, -1, False), "remove_break": (1, 1, False),
    "reopen": (0, -1, False), "resume": (1, 1, False), "sigraise": (1, 1, False),
    "sleep": (1, 1, False), "truncate": (1, 3, True), "wait_break": (1, 1, False),
    "write": (2, -1, True), "writev": (2, -1, True),
}  # fmt: skip
_ALIASES = {"a": "alloc", "d": "discard", "f": "flush", "?": "help", "i": "info",
            "l": "length", "r": "read", "t": "truncate", "w": "write"}  # fmt: skip
_USAGE = {
    "write": "write [-bcCfnquz] [-P pattern | -s source_file] off len -- "
    "writes a number of bytes at a specified offset\n",
    "read": "read [-abCqv] [-P pattern [-s off] [-l len]] off len -- "
    "reads a number of bytes at a specified offset\n",
    "discard": "discard [-Cq] off len -- discards a number of bytes at a specified offset\n",
}


class _Refused(Exception):
    """qemu-io printed `output` and gave up (internal to this module)."""

    def __init__(self, output: str) -> None:
        self.output = output


def _parse_qemu_io(target: str, command: str) -> QemuIoCommand:
    words = [w for w in command.split(" ") if w]
    if not words:
        return QemuIoCommand("error", target)
    name = _ALIASES.get(words[0], words[0])
    if name not in _COMMANDS:
        return QemuIoCommand("error", target, output=f'command "{words[0]}" not found\n')
    argmin, argmax, needs_write = _COMMANDS[name]
    nargs = len(words) - 1
    if nargs < argmin or (argmax != -1 and nargs > argmax):
        if argmax == -1:
            expected = f"at least {argmin}"
        elif argmin == argmax:
            expected = f"{argmin}"
        else:
            expected = f"between {argmin} and {argmax}"
        # Checked before the write permission: no read-only refusal here.
        text = f"bad argument count {nargs} to {words[0]}, expected {expected} arguments\n"
        return QemuIoCommand("error", target, output=text)
    parse = _PARSERS.get(name)
    if parse is None:
        return QemuIoCommand(
            "unsupported", target, requires_write=needs_write, detail=f"qemu-io {name}"
        )
    warnings: list[str] = []
    try:
        cmd = parse(target, words[0], words[1:], warnings)
    except _Refused as refused:
        cmd = QemuIoCommand("error", target, requires_write=needs_write, output=refused.output)
    if warnings:
        return cmd._replace(reply=_hmp_text("".join(warnings)))
    return cmd


def _getopt(argv0: str, args: list[str], optstring: str) -> tuple[list[tuple[str, str]], list[str]]:
    """GNU getopt with permutation: (options in order, operands in order).
    An invalid option ends the option list with ("?", message)."""
    with_arg = {c: optstring[i + 1 : i + 2] == ":" for i, c in enumerate(optstring) if c != ":"}
    opts: list[tuple[str, str]] = []
    operands: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        if word == "--":
            operands.extend(args[i:])
            break
        if len(word) < 2 or word[0] != "-":
            operands.append(word)
            continue
        for j, c in enumerate(word[1:], start=2):
            if c not in with_arg:
                opts.append(("?", f"{argv0}: invalid option -- '{c}'\n"))
                return opts, operands
            if not with_arg[c]:
                opts.append((c, ""))
                continue
            if j < len(word):
                opts.append((c, word[j:]))
            elif i < len(args):
                opts.append((c, args[i]))
                i += 1
            else:
                opts.append(("?", f"{argv0}: option requires an argument -- '{c}'\n"))
                return opts, operands
            break
    return opts, operands


def _parse_pattern(arg: str) -> int:
    """parse_pattern(): strtol(arg, &end, 0) must be a whole byte."""
    value, end, _ = _strtox(arg, 0, 0)
    if end != len(arg) or not 0 <= value <= 255:
        raise _Refused(f"{arg} is not a valid pattern byte\n")
    return value


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _strtox(s: str, i0: int, base: int) -> tuple[int, int, bool]:
    """glibc strtoull/strtol in the C locale: (signed value, end, overflowed).
    The value is unbounded here; callers apply their own range."""
    i = i0
    while i < len(s) and s[i] in " \t\n\v\f\r":
        i += 1
    negative = i < len(s) and s[i] == "-"
    if i < len(s) and s[i] in "+-":
        i += 1
    hex_prefix = (
        s[i : i + 2] in ("0x", "0X") and i + 2 < len(s) and s[i + 2] in "0123456789abcdefABCDEF"
    )
    if base in (0, 16) and hex_prefix:
        base, i = 16, i + 2
    elif base == 0:
        base = 8 if s[i : i + 1] == "0" else 10
    start, value = i, 0
    while i < len(s) and s[i].isascii() and s[i].lower() in _DIGITS[:base]:
        value = value * base + int(s[i], base)
        i += 1
    if i == start:
        return 0, i0, False
    return (-value if negative else value), i, value >= _U64


def _strtou64(s: str, i: int, base: int) -> tuple[int, int, str | None]:
    """qemu_strtou64(): (value, end, error)."""
    value, end, overflow = _strtox(s, i, base)
    if overflow:
        return _U64 - 1, end, "ERANGE"
    if end == i:
        return 0, end, "EINVAL"
    return value % _U64, end, None


_FRACTION = re.compile(r"\.[0-9]+(?:[eE][+-]?[0-9]+)?")
_SUFFIX = {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}


def _strtosz(s: str, warnings: list[str]) -> tuple[int, str | None]:
    """qemu_strtosz() of QEMU 7.2 (util/cutils.c do_strtosz): (value, error)."""
    val, end, err = _strtou64(s, 0, 10)
    valf, is_hex = 0, False
    if err is None and "-" in s[:end]:
        end, err = 0, "EINVAL"
    elif err is None and val == 0 and s[end : end + 1] in ("x", "X"):
        val, end, err = _strtou64(s, 0, 16)
        if err is None and s[end : end + 1] == ".":
            end, err = 0, "EINVAL"
        is_hex = True
    elif err is None and s[end : end + 1] == ".":
        m = _FRACTION.match(s, end)
        if m is None:
            end += 1  # "1." and "1.k": no fraction digits
        elif "e" in m.group().lower():
            end, err = 0, "EINVAL"
        else:
            fraction = float(m.group())
            end = m.end()
            valf = int(fraction * 2.0**64) % _U64
    if err is None:
        c = s[end : end + 1]
        shift = _SUFFIX.get(c.upper()) if c.isascii() else None
        if shift is not None:
            if is_hex:
                warnings.append(
                    f"warning: Using a multiplier suffix on hex numbers is deprecated: {s}\n"
                )
            end += 1
        if not shift:
            if valf:
                end, err = 0, "EINVAL"
        else:
            low = valf << shift
            val = (val << shift) + (low >> 64) + ((low % _U64) >> 63)
            if val >= _U64:
                err = "ERANGE"
    if end < len(s):
        err = "EINVAL"
    return val, err


def _cvtnum(arg: str, warnings: list[str]) -> int:
    """qemu-io cvtnum() + print_cvtnum_err()."""
    value, err = _strtosz(arg, warnings)
    if err is None and value > _INT64_MAX:
        err = "ERANGE"
    if err == "ERANGE":
        raise _Refused(f"Parsing error: argument too large -- {arg}\n")
    if err is not None:
        raise _Refused(
            f"Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {arg}\n"
        )
    return value


def _check_aligned(offset: int, count: int) -> None:
    if offset % 512:
        raise _Refused(f"{offset} is not a sector-aligned value for 'offset'\n")
    if count % 512:
        raise _Refused(f"{count} is not a sector-aligned value for 'count'\n")


def _report(verb: str, offset: int, count: int, flags: set[str]) -> str:
    if "q" in flags or "C" in flags:
        return ""
    return f"{verb} {count}/{count} bytes at offset {offset}\n"


def _write(target: str, argv0: str, args: list[str], warnings: list[str]) -> QemuIoCommand:
    """write_f(): getopt "bcCfnpP:qs:uz"."""
    flags: set[str] = set()
    pattern = 0xCD
    opts, operands = _getopt(argv0, args, "bcCfnpP:qs:uz")
    for c, arg in opts:
        if c == "?":
            raise _Refused(arg + _USAGE["write"])
        if c == "P":
            pattern = _parse_pattern(arg)
        flags.add(c)
    if len(operands) != 2:
        raise _Refused(_USAGE["write"])
    if {"b", "z"} <= flags:
        raise _Refused("-b and -z cannot be specified at the same time\n")
    if "f" in flags and flags & {"b", "c"}:
        raise _Refused("-f and -b or -c cannot be specified at the same time\n")
    for opt in "nu":
        if opt in flags and "z" not in flags:
            raise _Refused(f"-{opt} requires -z to be specified\n")
    if len(flags & {"z", "P", "s"}) > 1:
        raise _Refused("Only one of -z, -P, and -s can be specified at the same time\n")
    offset = _cvtnum(operands[0], warnings)
    count = _cvtnum(operands[1], warnings)
    if count > MAX_REQUEST_BYTES and "n" not in flags:
        raise _Refused(
            f"length cannot exceed {MAX_REQUEST_BYTES} without -n, given {operands[1]}\n"
        )
    if flags & {"b", "c"}:
        _check_aligned(offset, count)
    odd = sorted(flags & {"b", "c", "n", "s"})
    if odd:
        return QemuIoCommand("unsupported", target, offset, count, requires_write=True,
                             detail=f"write -{''.join(odd)}")  # fmt: skip
    zero = "z" in flags
    return QemuIoCommand(
        "write", target, offset, count, None if zero else pattern, zero=zero,
        unmap="u" in flags, quiet="q" in flags, requires_write=True,
        output=_report("wrote", offset, count, flags),
    )  # fmt: skip


def _read(target: str, argv0: str, args: list[str], warnings: list[str]) -> QemuIoCommand:
    """read_f(): getopt "bCl:pP:qs:v"."""
    flags: set[str] = set()
    pattern: int | None = None
    pattern_offset = pattern_count = 0
    opts, operands = _getopt(argv0, args, "bCl:pP:qs:v")
    for c, arg in opts:
        if c == "?":
            raise _Refused(arg + _USAGE["read"])
        if c == "P":
            pattern = _parse_pattern(arg)
        elif c == "l":
            pattern_count = _cvtnum(arg, warnings)
        elif c == "s":
            pattern_offset = _cvtnum(arg, warnings)
        flags.add(c)
    if len(operands) != 2:
        raise _Refused(_USAGE["read"])
    offset = _cvtnum(operands[0], warnings)
    count = _cvtnum(operands[1], warnings)
    if count > MAX_REQUEST_BYTES:
        raise _Refused(f"length cannot exceed {MAX_REQUEST_BYTES}, given {operands[1]}\n")
    if "P" not in flags and flags & {"l", "s"}:
        raise _Refused(_USAGE["read"])
    if "l" not in flags:
        pattern_count = count - pattern_offset
    if pattern_count < 0 or pattern_count + pattern_offset > count:
        raise _Refused("pattern verification range exceeds end of read data\n")
    if "b" in flags:
        _check_aligned(offset, count)
        return QemuIoCommand("unsupported", target, offset, count, detail="read -b")
    return QemuIoCommand(
        "read", target, offset, count, pattern, pattern_offset=pattern_offset,
        pattern_length=pattern_count, verbose="v" in flags, quiet="q" in flags,
        output=_report("read", offset, count, flags),
    )  # fmt: skip


def _discard(target: str, argv0: str, args: list[str], warnings: list[str]) -> QemuIoCommand:
    """discard_f(): getopt "Cq"."""
    flags: set[str] = set()
    opts, operands = _getopt(argv0, args, "Cq")
    for c, arg in opts:
        if c == "?":
            raise _Refused(arg + _USAGE["discard"])
        flags.add(c)
    if len(operands) != 2:
        raise _Refused(_USAGE["discard"])
    offset = _cvtnum(operands[0], warnings)
    count = _cvtnum(operands[1], warnings)
    if count > MAX_REQUEST_BYTES:
        raise _Refused(f"length cannot exceed {MAX_REQUEST_BYTES}, given {operands[1]}\n")
    return QemuIoCommand(
        "discard", target, offset, count, quiet="q" in flags, requires_write=True,
        output=_report("discard", offset, count, flags),
    )  # fmt: skip


def _flush(target: str, argv0: str, args: list[str], warnings: list[str]) -> QemuIoCommand:
    return QemuIoCommand("flush", target)


_PARSERS = {"write": _write, "read": _read, "discard": _discard, "flush": _flush}
