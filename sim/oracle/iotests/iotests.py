"""The subset of QEMU 7.2's qemu-iotests `iotests` module that exported tests use.

Same names, arguments and log format as QEMU's tests/qemu-iotests/iotests.py
(7.2): `test_dir`, `imgfmt`, `script_initialize`, `qemu_img_create`,
`qemu_img`, `log` (JSON with sorted keys unless already ordered),
`filter_qmp_testfiles`, `filter_qmp_event`, and `VM` with `add_args`,
`add_drive`, `launch`, `shutdown`, `qmp`, `qmp_log`, `event_wait` and
`hmp_qemu_io`.  The VM is `qemu-system-x86_64 -M none -nodefaults -display
none -accel tcg` (QEMU_PROG overrides the binary) spoken to with
`qemu.qmp`'s synchronous client.  Environment: TEST_DIR (default: a fresh
temporary folder), IMGFMT (default qcow2), QEMU_PROG, QEMU_IMG_PROG.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

QMPMessage = dict[str, Any]

test_dir = os.environ.get("TEST_DIR") or tempfile.mkdtemp(prefix="iotest-")
os.makedirs(test_dir, exist_ok=True)
imgfmt = os.environ.get("IMGFMT", "qcow2")
qemu_prog = os.environ.get("QEMU_PROG", "qemu-system-x86_64")
qemu_img_prog = os.environ.get("QEMU_IMG_PROG", "qemu-img")


def script_initialize(supported_fmts: Iterable[str] = (), **_: Any) -> None:
    """Skip (exit 0 with a notice, as iotests does) when IMGFMT is not supported."""
    fmts = list(supported_fmts)
    if fmts and imgfmt not in fmts and "generic" not in fmts:
        _out(f"not run: not suitable for this image format: {imgfmt}")
        sys.exit(0)


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([qemu_img_prog, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"qemu-img {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def qemu_img_create(*args: str) -> subprocess.CompletedProcess[str]:
    return qemu_img("create", *args)


def log(msg: Any, filters: Iterable[Callable[[Any], Any]] = (), indent: int | None = None) -> None:
    for flt in filters:
        msg = flt(msg)
    if isinstance(msg, dict | list):
        do_sort = not isinstance(msg, OrderedDict)
        _out(json.dumps(msg, sort_keys=do_sort, indent=indent))
    else:
        _out(str(msg))


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def filter_testfiles(msg: str) -> str:
    pref1 = os.path.join(test_dir, f"{os.getpid()}-")
    pref2 = os.path.join(test_dir, "")
    return msg.replace(pref1, "TEST_DIR/PID-").replace(pref2, "TEST_DIR/")


def _filter_qmp(qmsg: Any, filter_fn: Callable[[Any, Any], Any]) -> Any:
    if isinstance(qmsg, list):
        items: Iterable[tuple[Any, Any]] = list(enumerate(qmsg))
    else:
        items = list(qmsg.items())
    for k, v in items:
        if isinstance(v, dict | list):
            qmsg[k] = _filter_qmp(v, filter_fn)
        else:
            qmsg[k] = filter_fn(k, v)
    return qmsg


def filter_qmp_testfiles(qmsg: Any) -> Any:
    return _filter_qmp(qmsg, lambda _k, v: filter_testfiles(v) if isinstance(v, str) else v)


def filter_qmp_event(event: QMPMessage) -> QMPMessage:
    event = dict(event)
    if "timestamp" in event:
        event["timestamp"] = {"seconds": "SECS", "microseconds": "USECS"}
    return event


def ordered_qmp(qmsg: Any) -> Any:
    if isinstance(qmsg, list):
        return [ordered_qmp(v) for v in qmsg]
    if isinstance(qmsg, dict):
        od: OrderedDict[str, Any] = OrderedDict()
        for k, v in sorted(qmsg.items()):
            od[k] = ordered_qmp(v)
        return od
    return qmsg


class VM:
    """A QEMU process with a QMP monitor (QEMUMachine's API, the used part)."""

    def __init__(self) -> None:
        self._args: list[str] = []
        self._drives = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._events: list[QMPMessage] = []
        self._sock = os.path.join(test_dir, f"qmp-{os.getpid()}.sock")

    def add_args(self, *args: str) -> VM:
        self._args.extend(args)
        return self

    def add_drive(
        self, path: str, opts: str = "", interface: str = "virtio", img_format: str = imgfmt
    ) -> VM:
        options = [f"if={interface}", f"id=drive{self._drives}", f"file={path}",
                   f"format={img_format}"]  # fmt: skip
        if opts:
            options.append(opts)
        self._drives += 1
        return self.add_args("-drive", ",".join(options))

    def launch(self) -> None:
        if os.path.exists(self._sock):
            os.unlink(self._sock)
        cmd = [qemu_prog, "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg",
               "-qmp", f"unix:{self._sock},server=on,wait=off", *self._args]  # fmt: skip
        self._proc = subprocess.Popen(cmd, cwd=test_dir, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(self._sock):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU did not start: {' '.join(cmd)}")
            time.sleep(0.02)
        self._qmp = QEMUMonitorProtocol(self._sock)
        self._qmp.connect(negotiate=True)

    def shutdown(self) -> None:
        if self._qmp is not None:
            try:
                self._qmp.cmd_raw("quit")
            except Exception:  # noqa: BLE001 - QEMU may hang up first
                pass
            try:
                self._qmp.close()
            except Exception:  # noqa: BLE001 - EOF: QEMU hung up after quit
                pass
            self._qmp = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def qmp(
        self,
        cmd: str,
        args_dict: dict[str, Any] | None = None,
        conv_keys: bool | None = None,
        **args: Any,
    ) -> QMPMessage:
        if args_dict is not None:
            args, conv_keys = args_dict, False
        if conv_keys is None:
            conv_keys = True
        qmp_args = {(k.replace("_", "-") if conv_keys else k): v for k, v in args.items()}
        assert self._qmp is not None, "VM not launched"
        reply = self._qmp.cmd_raw(cmd, qmp_args)
        self._events.extend(self._qmp.get_events(wait=False))
        self._qmp.clear_events()
        return dict(reply) if reply is not None else {}

    def qmp_log(
        self,
        cmd: str,
        filters: Iterable[Callable[[Any], Any]] = (),
        indent: int | None = None,
        **kwargs: Any,
    ) -> QMPMessage:
        full_cmd = OrderedDict((("execute", cmd), ("arguments", ordered_qmp(kwargs))))
        log(full_cmd, filters, indent=indent)
        result = self.qmp(cmd, **kwargs)
        log(result, filters, indent=indent)
        return result

    def hmp_qemu_io(self, drive: str, cmd: str, use_log: bool = False) -> QMPMessage:
        kwargs: dict[str, Any] = {"command-line": f'qemu-io {drive} "{cmd}"'}
        if use_log:
            return self.qmp_log("human-monitor-command", **kwargs)
        return self.qmp("human-monitor-command", **kwargs)

    @staticmethod
    def event_match(event: Any, match: Any) -> bool:
        if match is None:
            return True
        if isinstance(match, dict):
            return isinstance(event, dict) and all(
                k in event and VM.event_match(event[k], v) for k, v in match.items()
            )
        return bool(event == match)

    def event_wait(
        self, name: str, timeout: float = 60.0, match: dict[str, Any] | None = None
    ) -> QMPMessage:
        """The first not yet consumed event `name` matching `match` (waits up to timeout)."""
        assert self._qmp is not None, "VM not launched"
        deadline = time.monotonic() + timeout
        while True:
            for i, seen in enumerate(self._events):
                if seen["event"] == name and self.event_match(seen, match):
                    return self._events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name} event matching {match} within {timeout} s")
            try:
                ev = self._qmp.pull_event(wait=float(left))
            except TimeoutError:
                continue
            if ev is not None:
                self._events.append(dict(ev))
