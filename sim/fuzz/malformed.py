"""The malformed-input campaign: a hostile user's inputs, run in-process, counted.

Theory of operation.  Valid inputs (trace steps, headers, sim-only steps,
qemu-io command lines, QMP requests) are mutated as a hostile user would:
a value swapped for one of another type, a huge or odd number, a unicode
edge case (lone surrogates, line separators, NUL, bidi marks), a key dropped
or added, deep nesting, and, on the serialised line, odd bytes, cut text,
`NaN`, raw U+2028, invalid UTF-8.  Every mutant goes where a user's input
goes: step lines through `sim.trace.parse_lines` and `sim.replay` after a
prefix that leaves bitmaps, a snapshot and a running job behind; headers
through the header parser and a short replay; requests straight into
`Monitor.execute`; byte streams, cut into random chunks, into a QMP monitor
as `blocksim serve` runs it (`sim.serve.session.answer_bytes`).  An input *fails* when an exception escapes, the monitor
records an internal error, or an output line is not strict JSON; it *hangs*
when its batch runs longer than `HANG_S` seconds of CPU time (the process's
own time, so a loaded machine does not make a slow batch look hung).

All randomness comes from one `random.Random(seed)`: the same seed gives
the same inputs.  `run(...)` returns a `CampaignStats`; failures keep the
input and the error so a regression test can replay them.
"""

from __future__ import annotations

import copy
import json
import math
import random
import resource
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from sim import jsonio
from sim.errors import TraceError
from sim.replay import Replayer
from sim.trace import dumps, parse_lines

HANG_S = 10.0
BATCH = 40  # mutated step lines replayed on one machine

DRIVES = [
    {"id": "drive0", "node-name": "fmt0", "file-node-name": "proto0", "size": 64 << 20},
    {"id": "drive1", "node-name": "fmt1", "format": "raw", "size": 16 << 20},
]
HEADER: dict[str, Any] = {"trace": 1, "name": "malformed", "drives": DRIVES, "seed": 0}


def _qmp(command: str, /, **arguments: Any) -> dict[str, Any]:
    return {"execute": command, "arguments": arguments} if arguments else {"execute": command}


def _io(cmd: str, device: str = "drive0") -> dict[str, Any]:
    return _qmp("human-monitor-command", **{"command-line": f'qemu-io {device} "{cmd}"'})


# a prefix that leaves something for mutants to hit: bitmaps, data, an overlay,
# a paused-able job still running
PREFIX: list[dict[str, Any]] = [
    _qmp("block-dirty-bitmap-add", node="drive0", name="b0", persistent=True),
    _qmp("block-dirty-bitmap-add", node="fmt1", name="b1", granularity=65536),
    _io("write -P 5 0 1M"),
    _qmp(
        "blockdev-snapshot-sync",
        device="drive0",
        **{"snapshot-file": "ov0.qcow2", "snapshot-node-name": "ov0", "format": "qcow2"},
    ),
    _qmp(
        "drive-backup",
        device="drive1",
        target="bk.raw",
        sync="full",
        format="raw",
        speed=1 << 20,
        **{"job-id": "bk"},
    ),
]

VALID_STEPS: list[dict[str, Any]] = [
    _qmp("block-dirty-bitmap-add", node="drive0", name="b2", granularity=512, disabled=True),
    _qmp("block-dirty-bitmap-remove", node="fmt0", name="b0"),
    _qmp("block-dirty-bitmap-clear", node="fmt0", name="b0"),
    _qmp(
        "block-dirty-bitmap-merge",
        node="fmt0",
        target="b0",
        bitmaps=["b0", {"node": "fmt1", "name": "b1"}],
    ),
    _qmp("block-dirty-bitmap-enable", node="fmt1", name="b1"),
    _qmp("x-debug-block-dirty-bitmap-sha256", node="fmt1", name="b1"),
    _qmp("query-block"),
    _qmp("query-named-block-nodes", flat=True),
    _qmp("query-jobs"),
    _qmp("query-block-jobs"),
    _qmp("job-pause", id="bk"),
    _qmp("job-resume", id="bk"),
    _qmp("job-cancel", id="bk"),
    _qmp("block-job-set-speed", device="bk", speed=0),
    _qmp("block-job-cancel", device="bk", force=True),
    _qmp("job-dismiss", id="bk"),
    _qmp(
        "drive-mirror",
        device="drive0",
        target="m.qcow2",
        sync="full",
        format="qcow2",
        **{"job-id": "m0"},
    ),
    _qmp(
        "blockdev-mirror",
        device="drive0",
        target="fmt1",
        sync="top",
        **{"job-id": "m1", "granularity": 65536},
    ),
    _qmp(
        "block-commit", device="drive0", **{"job-id": "c0", "top-node": "ov0", "base-node": "fmt0"}
    ),
    _qmp("block-stream", device="drive0", **{"job-id": "s0", "base-node": "fmt0"}),
    _qmp(
        "blockdev-backup",
        device="drive0",
        target="fmt1",
        sync="incremental",
        bitmap="b0",
        **{"job-id": "b9"},
    ),
    _qmp("blockdev-add", driver="null-co", **{"node-name": "null0", "size": 1 << 20}),
    _qmp(
        "blockdev-add",
        driver="qcow2",
        **{"node-name": "q9", "file": {"driver": "file", "filename": "x.qcow2"}},
    ),
    _qmp("blockdev-del", **{"node-name": "null0"}),
    _qmp(
        "blockdev-create",
        **{"job-id": "cr", "options": {"driver": "qcow2", "file": "proto0", "size": 1 << 20}},
    ),
    _qmp("blockdev-snapshot", node="fmt1", overlay="null0"),
    _qmp(
        "transaction",
        actions=[
            {"type": "block-dirty-bitmap-add", "data": {"node": "fmt0", "name": "t0"}},
            {"type": "block-dirty-bitmap-clear", "data": {"node": "fmt0", "name": "b0"}},
            {
                "type": "drive-backup",
                "data": {"device": "drive0", "target": "t.qcow2", "sync": "full"},
            },
        ],
        properties={"completion-mode": "grouped"},
    ),
    _io("write -P 0x7 64k 128k"),
    _io("read -P 5 0 4k"),
    _io("write -z 1M 512", "fmt1"),
    _io("discard 0 64k"),
    _io("flush"),
    _io("read -v 0 16", "ov0"),
    {"execute": "human-monitor-command", "arguments": {"command-line": "info block"}},
    {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}, "timeout": 5}},
    {"wait": {"event": "JOB_STATUS_CHANGE", "data": {"id": "bk", "status": "running"}}},
    {"advance": 0.01},
    {"advance": 1},
    {
        "workload": {
            "device": "drive0",
            "pattern": "uniform",
            "rate": 200,
            "size": 4096,
            "duration": 0.05,
            "read-ratio": 0.5,
            "fill": 9,
        }
    },
    {
        "workload": {
            "device": "fmt1",
            "pattern": "zipf",
            "rate": 1000,
            "size": 65536,
            "duration": 0.02,
        }
    },
    {
        "workload": {
            "device": "drive0",
            "pattern": "burst",
            "rate": 400,
            "size": 512,
            "duration": 0.05,
        }
    },
    {
        "fault": {
            "node": "fmt1",
            "op": "write",
            "errno": "ENOSPC",
            "offset": 0,
            "length": 65536,
            "count": 2,
        }
    },
    {"fault": {"node": "drive0", "op": "read"}},
    {"execute": "query-jobs", "id": "req-1", "expect": {"return": []}},
]

IO_COMMANDS = [
    "write -P 5 0 64k", "write -z 1M 4k", "read -P 0x5 0 512", "read -v 0 16",
    "discard 0 1M", "flush", "write -P 255 63M 1M", "read 4k 4k",
]  # fmt: skip

HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 512, 65535, 65536, 2**31, 2**32, 2**53 + 1, 2**63 - 1,
    2**63, 2**64 - 1, -(2**63), 0.5, -0.0, 1e-320, 1e308, 3.0, 1e300,
    "", " ", "0", "-1", "abc", "drive0", "fmt0", "ov0", "bk", "b0", "#block123", "null-co",
    "\x00", "\n", "\r\n", "\u2028", "\u2029", "\u0085", "\ufeff", "\u202e", "e\u0301",
    "\U0001f600", "\ud800", "\udfff", "a" * 1024, "x" * 5000, "%s%n", "../../etc/passwd",
    [], {}, [1, "two", None], {"a": {"b": [{}]}},
]  # fmt: skip

TEXT_TOKENS = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, "1" + "0" * 5000,
    "\u2028", "\ufeff", "\x00", "}", "{", "[", "]", ",", ":", '"', "\\", "\\ud800", "\\u0000",
    "null", "true", "tru", "//", "\t", "\r",
]  # fmt: skip
ODD_BYTES = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x80", b"\x00", b"\r", b"\x1b[2J"]

IO_TOKENS = [
    "-1", "0", "512", "0x10k", "1e3", "99999999999999999999999", "18446744073709551616",
    "64M", "63M", "1T", "1P", "1E", "4k1", "k", "-P", "-z", "-v", "-q", "-C", "-u", "--",
    "-P 300", "-P -1", "-P 0xff", "-s", "\"", "'", "\\", "\u2028", "\x00", "write",
    "read", "discard", "aio_write", "alloc", "map", "", " ", "0x", "1.5k", "+5", "5 ",
]  # fmt: skip


@dataclass
class Failure:
    """One input that crashed, hung or produced invalid output."""

    kind: str  # "traceback" | "hang" | "invalid-output"
    surface: str
    input: str
    error: str


@dataclass
class CampaignStats:
    """What a malformed-input campaign did."""

    seed: int
    inputs: int = 0
    batches: int = 0
    by_surface: dict[str, int] = field(default_factory=dict)
    tracebacks: int = 0
    hangs: int = 0
    invalid_output: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    slowest_batch_s: float = 0.0
    peak_rss_mib: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.tracebacks or self.hangs or self.invalid_output)

    def lines(self) -> list[str]:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        surfaces = ", ".join(f"{k} {v}" for k, v in sorted(self.by_surface.items()))
        out = [
            f"inputs tried:  {self.inputs} ({surfaces})",
            f"tracebacks:    {self.tracebacks}",
            f"hangs (>{HANG_S:g} s CPU): {self.hangs}",
            f"invalid JSON output: {self.invalid_output}",
            f"peak memory:   {self.peak_rss_mib:.0f} MiB (max RSS)",
            f"wall time:     {self.seconds:.1f} s ({rate:.0f} inputs/s, slowest batch "
            f"{self.slowest_batch_s:.2f} s CPU), seed {self.seed}",
        ]
        for f in self.failures[:20]:
            out.append(f"  {f.kind} [{f.surface}] {f.error}\n    input: {f.input[:300]}")
        return out


# -- mutation -----------------------------------------------------------------------------


def _paths(value: Any, max_depth: int = 12) -> list[tuple[Any, ...]]:
    """Every path into `value` down to `max_depth` (iterative: mutants nest deeply)."""
    out: list[tuple[Any, ...]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, prefix = stack.pop()
        out.append(prefix)
        if len(prefix) >= max_depth:
            continue
        if isinstance(item, dict):
            stack.extend((v, (*prefix, k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, (*prefix, i)) for i, v in reversed(list(enumerate(item))))
    return out


def _hostile(rng: random.Random, old: Any) -> Any:
    roll = rng.random()
    if roll < 0.55:
        return copy.deepcopy(rng.choice(HOSTILE_VALUES))
    if roll < 0.7 and isinstance(old, int | float) and not isinstance(old, bool):
        scaled = rng.choice([old * 2**k for k in (10, 30, 64)] + [-old, old + 0.5, str(old)])
        # JSON carries no infinity: a double past the range is the largest one
        return 1.7976931348623157e308 if scaled in (math.inf, -math.inf) else scaled
    if roll < 0.8 and isinstance(old, str):
        cut = rng.randrange(len(old) + 1)
        return old[:cut] + rng.choice(HOSTILE_VALUES[22:44]) + old[cut:]
    if roll < 0.9:
        nest: Any = old
        for _ in range(rng.choice([2, 50, 200])):
            nest = [nest] if rng.random() < 0.5 else {"k": nest}
        return nest
    return {"execute": "query-jobs"} if rng.random() < 0.5 else [old, old]


def mutate_value(rng: random.Random, value: Any, rounds: int = 0) -> Any:
    """`value` (a JSON object) with one to three structural mutations."""
    value = json.loads(json.dumps(value))
    for _ in range(rounds or rng.choice([1, 1, 1, 2, 3])):
        paths = _paths(value)
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.2:
                value = _hostile(rng, value)
            elif isinstance(value, dict):
                value[rng.choice(["expect", "id", "arguments", "wait", "execute", "x", ""])] = (
                    copy.deepcopy(rng.choice(HOSTILE_VALUES))
                )
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        roll = rng.random()
        if roll < 0.15 and isinstance(parent, dict):
            del parent[last]
        elif roll < 0.25 and isinstance(parent, dict):
            parent[str(last) + rng.choice(["", "-", "_x", "\ud800"])] = parent.pop(last)
        else:
            parent[last] = _hostile(rng, parent[last])
    return value


def mutate_text(rng: random.Random, line: str) -> bytes:
    """`line` (a JSON text) with token- or byte-level damage."""
    data = line
    for _ in range(rng.choice([1, 1, 2])):
        roll = rng.random()
        pos = rng.randrange(len(data) + 1)
        if roll < 0.45:
            data = data[:pos] + rng.choice(TEXT_TOKENS) + data[pos:]
        elif roll < 0.6:
            data = data[:pos]
        elif roll < 0.75:
            digits = [i for i, c in enumerate(data) if c.isdigit()]
            if digits:
                i = rng.choice(digits)
                data = data[:i] + rng.choice(TEXT_TOKENS[:7]) + data[i + 1 :]
        else:
            end = min(len(data), pos + rng.randrange(1, 8))
            data = data[:pos] + data[end:]
    raw = data.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        pos = rng.randrange(len(raw) + 1)
        raw = raw[:pos] + rng.choice(ODD_BYTES) + raw[pos:]
    return raw


def mutate_io(rng: random.Random) -> dict[str, Any]:
    """A qemu-io command line, valid or damaged, inside its HMP command."""
    words = rng.choice(IO_COMMANDS).split()
    for _ in range(rng.choice([1, 1, 2, 3])):
        roll = rng.random()
        pos = rng.randrange(len(words) + 1)
        if roll < 0.4 and words:
            words[rng.randrange(len(words))] = rng.choice(IO_TOKENS)
        elif roll < 0.7:
            words.insert(pos, rng.choice(IO_TOKENS))
        elif words:
            del words[rng.randrange(len(words))]
    device = rng.choice(["drive0", "fmt1", "ov0", "proto0", "nope", "", "drive0 extra"])
    quote = rng.choice(['"', '"', "'", ""])
    line = f"qemu-io {device} {quote}{' '.join(words)}{quote}"
    if rng.random() < 0.1:
        line = rng.choice(["qemu-io", "qemu-io drive0", "info", "", 'qemu-io -d drive0 "read 0 1"'])
    return _qmp("human-monitor-command", **{"command-line": line})


def mutate_header(rng: random.Random) -> bytes:
    header = json.loads(json.dumps(HEADER))
    roll = rng.random()
    if roll < 0.3:
        drive = header["drives"][0]
        drive["timing"] = {
            "latency_us": 100, "bandwidth_mbps": 500, "jitter": 0.1, "queue_depth": 4,
        }  # fmt: skip
    if roll < 0.85:
        header = mutate_value(rng, header)
    else:
        return mutate_text(rng, json.dumps(header))
    if rng.random() < 0.1 and isinstance(header, dict):
        header["drives"] = [dict(DRIVES[0], size=rng.choice([1 << 44, 1 << 50, 512]))]
    return _encode(header)


def _encode(obj: Any) -> bytes:
    # json.dumps (not jsonio.dumps): hostile inputs may hold lone surrogates and
    # floats the strict encoder refuses; this is the user's text, not our output
    return json.dumps(obj, ensure_ascii=True).encode()


# -- running ------------------------------------------------------------------------------


class _Hang(BaseException):
    pass


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _Hang


def _check_output(result: Any) -> str | None:
    for outcome in result.steps:
        try:
            text = dumps(outcome.json_line())
            _strict_loads(text)
            text.encode("utf-8")
        except (ValueError, UnicodeError) as exc:
            return f"step {outcome.index}: {type(exc).__name__}: {exc}"
    try:
        dumps({"final": result.final}).encode("utf-8")
    except (ValueError, UnicodeError) as exc:
        return f"final: {type(exc).__name__}: {exc}"
    return None


def _strict_loads(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in output")

    return json.loads(text, parse_constant=refuse)


def _summary(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {tb[0].filename.rsplit('/', 1)[-1]}:{tb[0].lineno}" if tb else ""
    return f"{type(exc).__name__}: {str(exc)[:200]}{where}"


class Campaign:
    """One seeded campaign; `run()` until `max_inputs` or `seconds` is reached."""

    def __init__(self, seed: int = 0, batch: int = BATCH) -> None:
        self.rng = random.Random(seed)
        self.stats = CampaignStats(seed)
        self.batch = batch
        self.prefix = [_encode(HEADER)] + [_encode(s) for s in PREFIX]

    def run(
        self,
        max_inputs: int,
        seconds: float | None = None,
        progress: Callable[[CampaignStats], None] | None = None,
    ) -> CampaignStats:
        start = time.monotonic()
        old = signal.signal(signal.SIGPROF, _alarm)
        try:
            while self.stats.inputs < max_inputs:
                if seconds is not None and time.monotonic() - start >= seconds:
                    break
                self.one_batch()
                if progress is not None and self.stats.batches % 50 == 0:
                    self.stats.seconds = time.monotonic() - start
                    progress(self.stats)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGPROF, old)
        self.stats.seconds = time.monotonic() - start
        self.stats.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self.stats

    def one_batch(self) -> None:
        roll = self.rng.random()
        if roll < 0.12:
            self._headers()
        elif roll < 0.25:
            self._requests()
        elif roll < 0.35:
            self._socket()
        else:
            self._steps()
        self.stats.batches += 1

    def _count(self, surface: str, n: int) -> None:
        self.stats.inputs += n
        self.stats.by_surface[surface] = self.stats.by_surface.get(surface, 0) + n

    def _guarded(self, surface: str, shown: str, fn: Callable[[], str | None]) -> None:
        """Run `fn` under the hang alarm; record what went wrong."""
        t0 = time.process_time()
        signal.setitimer(signal.ITIMER_PROF, HANG_S)
        try:
            problem = fn()
        except _Hang:
            self.stats.hangs += 1
            self._fail("hang", surface, shown, f"still running after {HANG_S:g} s")
            return
        except Exception as exc:  # noqa: BLE001 - what the campaign looks for
            self.stats.tracebacks += 1
            self._fail("traceback", surface, shown, _summary(exc))
            return
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            self.stats.slowest_batch_s = max(self.stats.slowest_batch_s, time.process_time() - t0)
        if problem is not None:
            kind, detail = (
                problem.split(":", 1)
                if problem.startswith("internal:")
                else ("invalid-output", problem)
            )
            if kind == "internal":
                self.stats.tracebacks += 1
                self._fail("traceback", surface, shown, detail.strip())
            else:
                self.stats.invalid_output += 1
                self._fail("invalid-output", surface, shown, detail)

    def _fail(self, kind: str, surface: str, shown: str, error: str) -> None:
        if len(self.stats.failures) < 1000:
            self.stats.failures.append(Failure(kind, surface, shown, error))

    def _steps(self) -> None:
        rng = self.rng
        lines: list[bytes] = []
        surfaces: dict[str, int] = {}
        for _ in range(self.batch):
            roll = rng.random()
            base = rng.choice(VALID_STEPS)
            if roll < 0.1:
                line, surface = _encode(base), "valid-step"
            elif roll < 0.5:
                line, surface = _encode(mutate_value(rng, base)), "step"
            elif roll < 0.65:
                line, surface = mutate_text(rng, json.dumps(base)), "step-text"
            elif roll < 0.85:
                line, surface = _encode(mutate_io(rng)), "qemu-io"
            else:
                sim_only = [s for s in VALID_STEPS if "workload" in s or "fault" in s]
                line, surface = _encode(mutate_value(rng, rng.choice(sim_only))), "sim-only"
            lines.append(line)
            surfaces[surface] = surfaces.get(surface, 0) + 1
        for surface, n in surfaces.items():
            self._count(surface, n)
        shown = "\n".join(line.decode("utf-8", "replace") for line in lines)

        def go() -> str | None:
            trace = parse_lines([*self.prefix, *lines])
            result = Replayer(trace).run()
            if result.internal_errors:
                return "internal:" + result.internal_errors[0]
            return _check_output(result)

        self._guarded("step", shown, go)
        if self.stats.failures and self.stats.failures[-1].input is shown:
            self._narrow(lines)

    def _narrow(self, lines: list[bytes]) -> None:
        """Replace the batch's failure record by the first single line that fails."""
        batch_failure = self.stats.failures.pop()
        for line in lines:
            try:
                trace = parse_lines([*self.prefix, line])
                result = Replayer(trace).run()
                problem = result.internal_errors[0] if result.internal_errors else None
            except Exception as exc:  # noqa: BLE001
                problem = _summary(exc)
            if problem is not None:
                shown = line.decode("utf-8", "replace")
                self.stats.failures.append(Failure(batch_failure.kind, "step", shown, problem))
                return
        self.stats.failures.append(batch_failure)

    def _headers(self) -> None:
        for _ in range(8):
            line = mutate_header(self.rng)
            self._count("header", 1)

            def go(line: bytes = line) -> str | None:
                try:
                    trace = parse_lines([line, _encode(VALID_STEPS[0]), _encode({"advance": 0.01})])
                except TraceError:
                    return None
                result = Replayer(trace).run()
                if result.internal_errors:
                    return "internal:" + result.internal_errors[0]
                return _check_output(result)

            self._guarded("header", line.decode("utf-8", "replace"), go)

    def _requests(self) -> None:
        """QMP requests straight into the monitor (what a socket client sends,
        after JSON decoding)."""
        from sim.engine.machine import Machine
        from sim.qmp.dispatch import Monitor
        from sim.trace import parse_header

        header = parse_header(HEADER)
        machine = Machine(header.drives, header.policy, header.seed)
        monitor = Monitor(machine)
        requests = []
        for _ in range(self.batch):
            base = self.rng.choice([s for s in VALID_STEPS if "execute" in s])
            request = mutate_value(self.rng, {k: v for k, v in base.items() if k != "expect"})
            requests.append(request)
        self._count("qmp-request", len(requests))

        def go() -> str | None:
            for request in requests:
                response = monitor.execute(request)
                if monitor.internal_errors:
                    return "internal:" + monitor.internal_errors[0]
                text = jsonio.dumps(response)
                _strict_loads(text)
                text.encode("utf-8")
                machine.advance(0.001)
            return None

        shown = "\n".join(_encode(r).decode() for r in requests)
        self._guarded("qmp-request", shown, go)

    def _socket(self) -> None:
        """Byte streams into a QMP monitor as `blocksim serve` runs it (greeting,
        negotiation, QEMU's streaming JSON reader), cut into random chunks."""
        from sim.serve.host import SimHost
        from sim.serve.session import answer_bytes
        from sim.trace import parse_header

        rng = self.rng
        host = SimHost(parse_header(HEADER))
        stream = b""
        count = 0
        for _ in range(self.batch // 2):
            base = rng.choice([s for s in VALID_STEPS if "execute" in s])
            request = {k: v for k, v in base.items() if k != "expect"}
            roll = rng.random()
            if roll < 0.4:
                data = _encode(mutate_value(rng, request))
            elif roll < 0.8:
                data = mutate_text(rng, json.dumps(request))
            else:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            stream += data + rng.choice([b"", b"\n", b"\r\n", b" "])
            count += 1
        cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(1, 6)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        self._count("qmp-socket", count)

        def go() -> str | None:
            out = answer_bytes(host, chunks, negotiate=rng.random() < 0.8)
            if host.monitor.internal_errors:
                return "internal:" + host.monitor.internal_errors[0]
            for message in out:
                try:
                    _strict_loads(message.decode("utf-8"))
                except (ValueError, UnicodeError) as exc:
                    return f"answer {message[:120]!r}: {exc}"
            return None

        self._guarded("qmp-socket", repr(stream[:2000]), go)


def run(
    max_inputs: int,
    seconds: float | None = None,
    seed: int = 0,
    progress: Callable[[CampaignStats], None] | None = None,
) -> CampaignStats:
    """Run a malformed-input campaign; see CampaignStats."""
    return Campaign(seed).run(max_inputs, seconds, progress)
