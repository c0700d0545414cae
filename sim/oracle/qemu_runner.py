"""Run a trace on a real QEMU 7.2 and answer in the shapes of a simulator replay.

Theory of operation: this is the oracle the simulator is checked against.  It
repeats, step by step, the procedure every recorded trace was made with:

1. a private scratch folder; one fresh image per header drive
   (``qemu-img create -f FORMAT SCRATCH/ID.FORMAT SIZE``);
2. ``qemu-system-x86_64 -M none -nodefaults -display none -accel tcg`` with one
   ``-drive if=none,...`` per drive and QMP on ``SCRATCH/qmp.sock``, started in
   the scratch folder;
3. greeting + ``qmp_capabilities`` (by the `qemu.qmp` library), then the steps:
   `execute` as written but with bare file names put in the scratch folder,
   `wait` consuming the first matching not-yet-consumed event, `advance` a no-op;
4. the final state from ``query-named-block-nodes``, ``x-debug-query-block-graph``,
   ``query-block``, ``query-jobs`` and ``x-debug-block-dirty-bitmap-sha256``,
   plus every event since negotiation; then ``quit``.

Each QMP exchange is synchronous from the caller's view: the runner owns one
asyncio event loop and drives `qemu.qmp.QMPClient` through it.  Events are
kept in arrival order; a step's `events` are those that had arrived when its
answer was in.  Jobs run on QEMU's own clock, so an event that QEMU emits
after a command returned may land in a later step; the full ordered list in
the final state is what recorded traces compare.

Failures: a step QEMU must not run (sim-only, broken, or a known QEMU 7.2
crasher) and a wait that times out become an ``"error"`` of that step and the
run goes on.  A missing binary, a QEMU that dies or a QMP that never comes up
raise `OracleError`.  QEMU is stopped and the scratch folder removed in every
case, Ctrl-C included, unless `keep_scratch` asks to keep the folder.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NotRequired, TypedDict

from qemu.qmp import ConnectError, ExecuteError, Message, QMPClient, QMPError, Runstate

from sim.oracle.guards import place_files, refusal
from sim.oracle.normalize import (
    build_final_state,
    event_matches,
    normalize_event,
    normalize_response,
    scrub,
)
from sim.trace import Step, Trace, load_trace

QEMU_BINARY = "qemu-system-x86_64"
QEMU_IMG_BINARY = "qemu-img"
QEMU_IMG_TIMEOUT_S = 60.0  # one qemu-img run over 64 MiB test images takes well under a second
DEFAULT_WAIT_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 15.0
# How long the final state waits for job events that query-jobs shows already
# happened (the concluded/null after a last BLOCK_JOB_COMPLETED).
SETTLE_TIMEOUT_S = 2.0
_POLL_S = 0.25
_SOCKET = "qmp.sock"
_LOG = "qemu.log"
_RAW = ".blocksim-read.raw"  # read_image_runs' raw copy, removed after reading
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the NUL


class OracleError(Exception):
    """The real-QEMU runner could not do its job: no QEMU, QEMU died, QMP never came up.

    Neither a QMP error response (those are results) nor a `TraceError`
    (a bad step is a result too): the environment or QEMU itself failed.
    """


class QemuNotFound(OracleError):
    """No usable qemu-system-x86_64 / qemu-img binary."""


class QemuDied(OracleError):
    """QEMU exited (or crashed) while the runner still needed it."""


class StepResult(TypedDict):
    """One replay ``--json`` line: what a step sent and got back."""

    step: int  # 1-based position of the step in the trace
    line: int  # its line in the trace file
    command: dict[str, Any]
    response: dict[str, Any] | None  # None when the step was refused or failed
    events: list[dict[str, Any]]
    error: NotRequired[str]  # why the step was refused or failed


@dataclass(frozen=True, slots=True)
class RunResult:
    """A whole run: one `StepResult` per step and the final state."""

    steps: list[StepResult]
    final: dict[str, Any]
    scratch_dir: str | None = None  # set when the scratch folder was kept


_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In QEMU and qemu-img, before exec: a process group of their own, so a Ctrl-C
    at the terminal reaches blocksim alone, which then quits them; and (Linux) a
    SIGKILL when blocksim dies, so no QEMU outlives it."""
    os.setpgrp()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held by _interrupts_held


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT held back (blocked) for the block: around `subprocess.Popen` and the
    assignment of its result, since a Ctrl-C inside Popen, after the fork, would leave a
    child nobody knows of (it outlives `close` and may write into the scratch folder
    while it is removed).  A Ctrl-C that came meanwhile is raised on leaving the block."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def find_qemu(qemu: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """Paths of ``qemu-system-x86_64`` and ``qemu-img``.

    `qemu` is an explicit path (or name) of the system emulator; qemu-img is
    looked up next to it, then on PATH.  Raises `QemuNotFound` naming what is
    missing and how to get it.
    """
    wanted = os.fspath(qemu) if qemu is not None else QEMU_BINARY
    system = shutil.which(wanted)
    if system is None:
        raise QemuNotFound(
            f"{wanted!r} not found (looked for an executable at that path and on PATH); "
            "install QEMU 7.2 (apt-get install qemu-system-x86 qemu-utils) or pass its path"
        )
    beside = os.path.join(os.path.dirname(os.path.abspath(system)), QEMU_IMG_BINARY)
    img = shutil.which(beside) or shutil.which(QEMU_IMG_BINARY)
    if img is None:
        raise QemuNotFound(
            f"{QEMU_IMG_BINARY!r} not found next to {system} nor on PATH; "
            "install qemu-utils (it creates the drive images)"
        )
    return system, img


class _WaitTimeout(Exception):
    pass


class QemuRunner:
    """One trace run on a real QEMU 7.2, recorded the way every recorded trace was.

    Models the machine of a trace header on real hardware: a `-M none` QEMU whose
    BlockBackends are the header drives, each a format node over a protocol node
    over a fresh image in a private scratch folder, spoken to over QMP.

    Lifecycle: `start` -> `run_step` per step -> `final_state` -> `stop` ->
    (`read_image`, `images`) -> `close`.  `run` does the lot except `close`;
    used as a context manager, `close` always runs on exit (exceptions and
    Ctrl-C included): QEMU is killed if it will not quit, and the scratch folder
    is removed unless `keep_scratch` is true.

    Image contents: after `stop` (QEMU flushed and exited) `images` lists the
    files of the scratch folder, `read_image` returns a file's guest-visible
    bytes (``qemu-img convert -O raw``, backing chain included) and
    `image_backing` the backing file its header names.

    One QEMU process per runner and per trace.  The steps never touch the
    process directly (only `start`, `stop` and the QMP plumbing do), so a later
    pool that keeps processes warm can reuse `run_step` and `final_state` and
    swap only how a machine is started and stopped.
    """

    def __init__(
        self,
        trace: Trace,
        *,
        qemu: str | os.PathLike[str] | None = None,
        wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
        keep_scratch: bool = False,
        scratch_parent: str | os.PathLike[str] | None = None,
    ) -> None:
        self.trace = trace
        self.wait_timeout_s = wait_timeout_s
        self.keep_scratch = keep_scratch
        self._qemu, self._qemu_img = find_qemu(qemu)
        self._scratch_parent = scratch_parent
        self._scratch: Path | None = None
        self._scratch_dirs: tuple[str, ...] = ()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._qmp: QMPClient | None = None
        self._events: list[dict[str, Any]] = []  # raw QMP events, arrival order
        self._consumed: list[bool] = []
        self._connected = False  # QMP came up once

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> QemuRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def scratch_dir(self) -> Path:
        """The private folder of images, socket and QEMU's stdout (``qemu.log``)."""
        if self._scratch is None:
            raise OracleError("the runner has no scratch folder: call start() first")
        return self._scratch

    def start(self) -> None:
        """Create the scratch folder and images, start QEMU, connect and negotiate QMP.

        Raises `OracleError` (`QemuDied` if QEMU exits during start-up).
        """
        if self._scratch is not None:
            raise OracleError("this runner was already started; use one runner per run")
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _make_scratch(self) -> None:
        """Create the scratch folder, its path known to `close` before it exists: a Ctrl-C
        at any point leaves nothing that `close` does not remove (`tempfile.mkdtemp`
        returns the name only after the folder is made)."""
        parent = Path(self._scratch_parent or tempfile.gettempdir())
        while True:
            self._scratch = parent / f"blocksim-qemu-{secrets.token_hex(5)}"
            try:
                self._scratch.mkdir(mode=0o700)
                return
            except FileExistsError:
                continue

    def _start(self) -> None:
        self._make_scratch()
        assert self._scratch is not None
        self._scratch_dirs = tuple(
            dict.fromkeys([str(self._scratch), os.path.realpath(self._scratch)])
        )
        self._check_scratch_path()
        for drive in self.trace.header.drives:
            image = self._scratch / f"{drive.id}.{drive.format}"
            self._qemu_img_run(["create", "-f", drive.format, str(image), str(drive.size)])
        self._log = open(self._scratch / _LOG, "wb")  # closed in _reap
        with _interrupts_held():
            self._proc = subprocess.Popen(
                self._argv(), cwd=self._scratch, stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_child_setup,
            )  # fmt: skip
        self._loop = asyncio.new_event_loop()
        self._qmp = QMPClient(self.trace.header.name or "blocksim")
        self._connect()

    def _check_scratch_path(self) -> None:
        sock = str(self.scratch_dir / _SOCKET)
        if len(sock.encode()) > _MAX_SOCKET_PATH or "," in sock:
            raise OracleError(
                f"scratch path {sock!r} is too long for a unix socket or holds a comma "
                "(QEMU option syntax); pass a short scratch_parent such as /tmp"
            )

    def _argv(self) -> list[str]:
        argv = [self._qemu, "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg"]
        for d in self.trace.header.drives:
            image = self.scratch_dir / f"{d.id}.{d.format}"
            opts = f"if=none,id={d.id},file={image},format={d.format},node-name={d.node_name}"
            if d.file_node_name is not None:
                opts += f",file.node-name={d.file_node_name}"
            if d.discard != "ignore":
                opts += f",discard={d.discard}"
            argv += ["-drive", opts]
        return argv + ["-qmp", f"unix:{self.scratch_dir / _SOCKET},server=on,wait=off"]

    def _connect(self) -> None:
        sock = self.scratch_dir / _SOCKET
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self._check_alive("while starting")
            if sock.exists():
                try:
                    self._sync(self.qmp.connect(str(sock)), START_TIMEOUT_S)
                    self._connected = True
                    return
                except (ConnectError, OSError):
                    pass  # QEMU made the socket but is not listening yet
            if time.monotonic() > deadline:
                raise OracleError(f"QMP did not come up within {START_TIMEOUT_S} s on {sock}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Quit QEMU (kill it if it will not go) and drop the QMP connection.

        Images are flushed and unlocked afterwards.  Safe to call twice.
        """
        try:
            if self._proc is not None and self._proc.poll() is None and self._qmp is not None:
                if self._qmp.runstate == Runstate.RUNNING:
                    try:
                        self._sync(self._qmp.execute("quit"), 5.0)
                    except (QMPError, EOFError, OSError, TimeoutError):
                        pass  # it is going away anyway; _reap makes sure
        finally:
            try:
                self._disconnect()
            finally:
                # a QEMU whose QMP never came up is still starting: nothing to wait for
                self._reap(10.0 if self._connected else 0.0)

    def close(self) -> None:
        """`stop`, close the event loop and remove the scratch folder (unless kept); the
        folder goes even when a Ctrl-C lands in one of the steps before."""
        try:
            self.stop()
        finally:
            try:
                if self._loop is not None and not self._loop.is_closed():
                    self._close_loop(self._loop)
            finally:
                self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self._scratch is None or self.keep_scratch:
            return
        try:
            shutil.rmtree(self._scratch, ignore_errors=True)
        except BaseException:
            # a Ctrl-C half-way through: finish the removal, then let the interrupt go on
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise

    @staticmethod
    def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
        """Cancel what is left on the loop (an interrupt can leave the QMP reader
        behind) and close it; nothing is reported about tasks ended that way."""
        loop.set_exception_handler(lambda _loop, _context: None)
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    def _disconnect(self) -> None:
        if self._qmp is None or self._loop is None or self._qmp.runstate == Runstate.IDLE:
            return
        try:
            self._sync(self._qmp.disconnect(), 5.0)
        except Exception:  # disconnect re-raises whatever ended the reader (EOF)
            pass

    def _reap(self, wait_s: float) -> None:
        """Wait `wait_s` for QEMU to exit, then kill it.  A Ctrl-C while waiting kills
        it too: a QEMU still starting up could otherwise make its socket in the scratch
        folder while `close` removes it."""
        if self._proc is not None and self._proc.returncode is None:
            try:
                self._proc.wait(timeout=wait_s)
            except BaseException as exc:
                self._proc.kill()
                self._proc.wait()
                if not isinstance(exc, subprocess.TimeoutExpired):
                    raise
        if self._log is not None:
            self._log.close()
            self._log = None

    # --- the steps ---------------------------------------------------------------------

    def run(self) -> RunResult:
        """`start`, every step, `final_state`, `stop`; returns the whole `RunResult`."""
        self.start()
        steps = [self.run_step(n, step) for n, step in enumerate(self.trace.steps, start=1)]
        final = self.final_state()
        self.stop()
        kept = str(self._scratch) if self.keep_scratch and self._scratch else None
        return RunResult(steps, final, kept)

    def run_step(self, number: int, step: Step) -> StepResult:
        """Run one step; returns its `StepResult` (refusals and wait timeouts as `error`).

        Raises `QemuDied` if QEMU is gone.
        """
        mark = len(self._events)
        response: dict[str, Any] | None = None
        error = refusal(step)
        if error is None:
            try:
                response = self._run(step)
            except _WaitTimeout as exc:
                error = str(exc)
        self._pump()
        events = [normalize_event(e, self._scratch_dirs) for e in self._events[mark:]]
        result = StepResult(
            step=number, line=step.line, command=step.body, response=response, events=events
        )
        if error is not None:
            result["error"] = error
        return result

    def _run(self, step: Step) -> dict[str, Any]:
        if step.kind == "execute":
            response = self._execute(step.body)
            if "id" in step.body:
                response["id"] = step.body["id"]  # QMP echoes the id
            return response
        if step.kind == "wait":
            return self._wait(step.body["wait"], step.line)
        return {}  # advance: real time is QEMU's own

    def _execute(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["execute"]
        msg: dict[str, Any] = {"execute": name}
        if "arguments" in body:
            msg["arguments"] = place_files(name, body["arguments"], str(self.scratch_dir))
        try:
            reply: dict[str, Any] = {"return": self._call(msg)}
        except ExecuteError as exc:
            reply = dict(exc.received)
        return normalize_response(reply, self._scratch_dirs)

    def _wait(self, spec: dict[str, Any], line: int) -> dict[str, Any]:
        name, data = spec["event"], spec.get("data", {})
        timeout = spec.get("timeout", self.wait_timeout_s)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise _WaitTimeout(f"line {line}: wait timeout must be a positive number of seconds")
        deadline = time.monotonic() + timeout
        self._pump()
        while True:
            for i, event in enumerate(self._events):
                if not self._consumed[i] and event_matches(event, name, data):
                    self._consumed[i] = True
                    return normalize_event(event, self._scratch_dirs)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WaitTimeout(self._timeout_message(line, name, data, timeout))
            self._next_event(min(remaining, _POLL_S))

    def _timeout_message(self, line: int, name: str, data: Any, timeout: float) -> str:
        left = [
            normalize_event(e, self._scratch_dirs)
            for e, used in zip(self._events, self._consumed, strict=True)
            if not used
        ]
        return (
            f"line {line}: no {name} event with data {data} arrived within {timeout} s "
            f"(unconsumed events: {left[-5:]}); check the wait, or give it a longer "
            '"timeout"'
        )

    # --- the final state ---------------------------------------------------------------

    def final_state(self) -> dict[str, Any]:
        """The ``final-expect`` STATE of the machine now, normalized, events included.

        Waits up to SETTLE_TIMEOUT_S for job events that ``query-jobs`` shows
        already happened but that have not arrived yet.
        """
        named = self._call({"execute": "query-named-block-nodes", "arguments": {"flat": True}})
        graph = self._call({"execute": "x-debug-query-block-graph"})
        blocks = self._call({"execute": "query-block"})
        jobs = self._call({"execute": "query-jobs"})
        sha256: dict[tuple[str, str], str | None] = {}
        for node in named:
            for bitmap in node.get("dirty-bitmaps", []):
                if "name" in bitmap:
                    sha256[node["node-name"], bitmap["name"]] = self._sha256(
                        node["node-name"], bitmap["name"]
                    )
        self._settle(jobs)
        events = [normalize_event(e) for e in self._events]
        state = build_final_state(named, graph, blocks, jobs, sha256, events)
        return dict(scrub(state, self._scratch_dirs))

    def _sha256(self, node_name: str, name: str) -> str | None:
        args = {"node": node_name, "name": name}
        try:
            reply = self._call({"execute": "x-debug-block-dirty-bitmap-sha256", "arguments": args})
        except ExecuteError:
            return None
        return str(reply["sha256"])

    def _settle(self, jobs: list[dict[str, Any]]) -> None:
        # QEMU emits a job's events before any later reply, so they are normally
        # here already; this only guards against a slow socket.  Jobs still
        # moving on their own (a trace that ends with a live job) are not waited for.
        target = {job["id"]: job["status"] for job in jobs}
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            self._pump()
            last: dict[str, str] = {}
            for event in self._events:
                if event["event"] == "JOB_STATUS_CHANGE":
                    last[event["data"]["id"]] = event["data"]["status"]
            behind = [j for j, status in last.items() if status != target.get(j, "null")]
            remaining = deadline - time.monotonic()
            if not behind or remaining <= 0:
                return
            self._next_event(min(remaining, _POLL_S))

    # --- images ------------------------------------------------------------------------

    def images(self) -> dict[str, Path]:
        """Bare file name -> path of every image in the scratch folder (drives and created)."""
        return {
            p.name: p
            for p in sorted(self.scratch_dir.iterdir())
            if p.is_file() and p.name not in (_SOCKET, _LOG, _RAW)
        }

    def read_image(self, name: str) -> bytes:
        """Guest-visible bytes of scratch image `name` (backing chain included).

        Only after `stop`: a running QEMU may still hold metadata in its caches.
        Raises `OracleError` if QEMU runs or the image does not exist.
        """
        size, runs = self.read_image_runs(name)
        data = bytearray(size)
        for offset, chunk in runs:
            data[offset : offset + len(chunk)] = chunk
        return bytes(data)

    def read_image_runs(self, name: str) -> tuple[int, list[tuple[int, bytes]]]:
        """Guest-visible bytes of scratch image `name`, sparse: (size, data runs).

        Each run is (offset, bytes); everything outside the runs reads as
        zeroes.  ``qemu-img convert`` writes a sparse raw file and only its
        data extents (``SEEK_DATA``/``SEEK_HOLE``) are read, so a mostly empty
        64 MiB image costs little.  Only after `stop`; raises `OracleError`
        like `read_image`.
        """
        path = self._stopped_image(name, "read_image")
        # in the scratch folder, which `close` removes whatever interrupts this
        raw = self.scratch_dir / _RAW
        try:
            self._qemu_img_run(["convert", "-O", "raw", str(path), str(raw)])
            return _data_runs(raw)
        finally:
            raw.unlink(missing_ok=True)

    def image_backing(self, name: str) -> str | None:
        """The backing file recorded in scratch image `name` (a bare name), or None.

        What ``qemu-img info`` reports as ``backing-filename``: the file a
        reader of the image goes to for unallocated clusters, as QEMU last
        wrote it (snapshot, mirror target, commit and stream rewrite it).
        Only after `stop`; raises `OracleError` like `read_image`.
        """
        path = self._stopped_image(name, "image_backing")
        out = self._qemu_img_run(["info", "--output=json", str(path)])
        backing = json.loads(out).get("backing-filename")
        return None if backing is None else str(scrub(backing, self._scratch_dirs))

    def _stopped_image(self, name: str, what: str) -> Path:
        if self._proc is not None and self._proc.poll() is None:
            raise OracleError(f"{what} needs QEMU stopped (its caches): call stop() first")
        path = self.images().get(name)
        if path is None:
            raise OracleError(
                f"no image {name!r} in the scratch folder; have: {sorted(self.images())}"
            )
        return path

    def _qemu_img_run(self, args: list[str]) -> bytes:
        proc: subprocess.Popen[bytes] | None = None
        try:
            with _interrupts_held():
                proc = subprocess.Popen(
                    [self._qemu_img, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    preexec_fn=_child_setup, cwd=self._scratch,
                )  # fmt: skip
            out, err = proc.communicate(timeout=QEMU_IMG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            assert proc is not None
            proc.kill()
            proc.wait()
            # e.g. an image whose header names itself as its backing file: qemu-img
            # follows the loop without end
            raise OracleError(
                f"qemu-img {' '.join(args)} did not finish within {QEMU_IMG_TIMEOUT_S:.0f} s"
            ) from None
        except BaseException:
            # a Ctrl-C: subprocess.run would kill qemu-img but wait only a moment for
            # it; reap it here so that no qemu-img is left when blocksim has quit
            if proc is not None:
                proc.kill()
                proc.wait()
            raise
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip()
            raise OracleError(f"qemu-img {' '.join(args)} failed ({proc.returncode}): {text}")
        return out

    # --- QMP plumbing ------------------------------------------------------------------

    @property
    def qmp(self) -> QMPClient:
        """The live `qemu.qmp.QMPClient` (after `start`)."""
        if self._qmp is None:
            raise OracleError("QEMU is not started: call start() first")
        return self._qmp

    def _sync(self, coro: Any, timeout: float | None) -> Any:
        if self._loop is None:
            raise OracleError("QEMU is not started: call start() first")
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def _call(self, msg: dict[str, Any]) -> Any:
        """Send one command; its return value, or `ExecuteError` for a QMP error."""
        try:
            return self._sync(self.qmp.execute_msg(Message(msg)), COMMAND_TIMEOUT_S)
        except ExecuteError:
            raise
        except (QMPError, EOFError, OSError, TimeoutError) as exc:
            raise self._died(f"while running {msg.get('execute')!r}", exc) from exc

    def _pump(self) -> None:
        """Move every event the client has received into the run's event log."""
        if self._qmp is None:
            return
        for event in self._qmp.events.clear():
            self._events.append(dict(event))
            self._consumed.append(False)

    def _next_event(self, timeout: float) -> None:
        """Wait up to `timeout` s for one more event; `QemuDied` if QEMU is gone."""
        self._pump()
        try:
            event = self._sync(self.qmp.events.get(), timeout)
        except TimeoutError:
            self._check_alive("while waiting for an event")
            return
        self._events.append(dict(event))
        self._consumed.append(False)

    def _check_alive(self, context: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self._died(context, None)

    def _died(self, context: str, exc: BaseException | None) -> OracleError:
        code = self._proc.poll() if self._proc is not None else None
        if code is None and self._proc is not None:
            try:
                code = self._proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                return OracleError(f"QMP failed {context} but QEMU still runs: {exc!r}")
        how = (
            f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
        )
        return QemuDied(f"QEMU {how} {context}; its output ends with: {self._log_tail()!r}")

    def _log_tail(self) -> str:
        try:
            return (self.scratch_dir / _LOG).read_text(errors="replace")[-600:]
        except (OSError, OracleError):
            return ""


def _data_runs(path: Path) -> tuple[int, list[tuple[int, bytes]]]:
    """(size, [(offset, bytes), ...]) of the data extents of a sparse file."""
    size = path.stat().st_size
    runs: list[tuple[int, bytes]] = []
    with open(path, "rb") as handle:
        fd, offset = handle.fileno(), 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            handle.seek(start)
            runs.append((start, handle.read(end - start)))
            offset = end
    return size, runs


def run_trace(
    trace: Trace | str | os.PathLike[str],
    *,
    qemu: str | os.PathLike[str] | None = None,
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
) -> RunResult:
    """Run `trace` (parsed, or a path) on real QEMU 7.2; returns its `RunResult`.

    Raises `OracleError` (e.g. `QemuNotFound`), and `TraceError` for an
    unreadable trace file.
    """
    if not isinstance(trace, Trace):
        trace = load_trace(os.fspath(trace))
    with QemuRunner(trace, qemu=qemu, wait_timeout_s=wait_timeout_s) as runner:
        return runner.run()
