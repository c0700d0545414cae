"""One QMP monitor as QEMU 7.2 runs it, with no I/O: bytes in, messages out.

Theory of operation
-------------------
QEMU gives every QMP connection its own monitor (monitor/qmp.c).  A monitor
greets, then sits in *capabilities negotiation* mode, where its command list
holds only `qmp_capabilities`; every other command is refused with class
CommandNotFound and ``Expecting capabilities negotiation with
'qmp_capabilities'``.  After a successful `qmp_capabilities` it runs the full
command list and receives events.

Each message the JSON reader (`sim.serve.jsonstream`) completes goes
through the checks of qmp_dispatch() (qapi/qmp-dispatch.c), in QEMU's order:

1. a JSON parse error is answered as such, without an `id`;
2. the request must be an object whose members, walked in QDict order, are
   `execute` (a string), `exec-oob` (only once `oob` was negotiated),
   `arguments` (an object) or `id` (any JSON value, echoed in the answer);
3. the command must exist in the current command list; with `exec-oob` it
   must also allow out-of-band execution, which no command blocksim models
   does (``The command X does not support OOB``), so oob is offered in the
   greeting, accepted in negotiation, and every out-of-band request refused
   the way QEMU refuses it for such a command;
4. then the command runs on the shared simulated machine (`SimHost`).

`QmpSession.feed(data)` returns every message due on this connection, in
order: events the command caused (they go to every negotiated monitor
before the answer, as QEMU emits them while the command runs), then the
answer.  `answer_bytes` is the pure function to fuzz a monitor in-process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.qmp.schema import check_arguments, qdict_order
from sim.serve.jsonstream import JsonStreamer
from sim.serve.wire import encode_message

if TYPE_CHECKING:
    from collections.abc import Callable

    from sim.serve.host import SimHost

NEGOTIATION_NEEDED = "Expecting capabilities negotiation with 'qmp_capabilities'"


class QmpSession:
    """One QMP connection's monitor: negotiation state, oob, the JSON stream, the outbox."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.stream = JsonStreamer()
        self.negotiated = False
        self.oob = False
        self.outbox: list[bytes] = []
        self.event_cursor = 0  # index in the machine's event history already sent
        self.on_output: Callable[[], None] | None = None

    def greeting(self) -> bytes:
        return encode_message({"QMP": {"version": self.host.version(), "capabilities": ["oob"]}})

    def feed(self, data: bytes) -> list[bytes]:
        """Consume client bytes; returns (and drains) everything to send back."""
        try:
            for message in self.stream.feed(data):
                if message.error is not None:
                    self.outbox.append(encode_message(QMPError(message.error).to_response()))
                else:
                    self.outbox.append(encode_message(self.handle(message.value)))
        except Exception as exc:  # noqa: BLE001 - a blocksim bug: answer it, keep serving
            self.stream = JsonStreamer()
            self.host.internal_errors.append(f"{type(exc).__name__}: {exc}")
            desc = f"blocksim internal error: {type(exc).__name__}: {exc}"
            self.outbox.append(encode_message(QMPError(desc).to_response()))
        out, self.outbox = self.outbox, []
        return out

    def handle(self, request: object) -> dict[str, Any]:
        """Answer one parsed request (events it causes land in the outboxes first)."""
        req_id = request.get("id") if isinstance(request, dict) else None
        has_id = isinstance(request, dict) and "id" in request
        try:
            response = self._dispatch(request)
        except QMPError as exc:
            response = exc.to_response()
        if has_id:
            response["id"] = req_id
        return response

    def _dispatch(self, request: object) -> dict[str, Any]:
        name, args, oob = self._check_obj(request)
        if not self.negotiated:
            if name != "qmp_capabilities":
                raise QMPError(NEGOTIATION_NEEDED, "CommandNotFound")
            checked = check_arguments(name, args)
            self.negotiated = True
            self.oob = "oob" in checked.get("enable", [])
            self.event_cursor = self.host.event_count()
            return {"return": {}}
        if oob:
            if not self.host.knows(name):
                raise QMPError(f"The command {name} has not been found", "CommandNotFound")
            raise QMPError(f"The command {name} does not support OOB")
        assert isinstance(request, dict)
        return self.host.execute(self, name, args, request)

    def _check_obj(self, request: object) -> tuple[str, dict[str, Any], bool]:
        """qmp_dispatch_check_obj: members in QDict order; returns (command, args, oob)."""
        if not isinstance(request, dict):
            raise QMPError("QMP input must be a JSON object")
        exec_key: str | None = None
        for key in qdict_order(list(request)):
            value = request[key]
            if key == "execute" or (key == "exec-oob" and self.oob):
                if not isinstance(value, str):
                    raise QMPError(f"QMP input member '{key}' must be a string")
                if exec_key is not None:
                    raise QMPError(f"QMP input member '{key}' clashes with '{exec_key}'")
                exec_key = key
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QMPError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise QMPError(f"QMP input member '{key}' is unexpected")
        if exec_key is None:
            raise QMPError("QMP input lacks member 'execute'")
        return request[exec_key], request.get("arguments", {}), exec_key == "exec-oob"

    def deliver(self, message: bytes) -> None:
        """An event for this monitor (only negotiated monitors get events)."""
        self.outbox.append(message)

    def flush(self) -> None:
        if self.outbox and self.on_output is not None:
            self.on_output()


def answer_bytes(host: SimHost, chunks: list[bytes], negotiate: bool = False) -> list[bytes]:
    """Feed byte chunks to a fresh monitor of `host`; every message it sends back.

    The greeting comes first.  With `negotiate`, `qmp_capabilities` is sent
    before the chunks.  Never raises for any input: the function to fuzz a
    monitor in-process.
    """
    session = host.open_session()
    try:
        out = [session.greeting()]
        if negotiate:
            out += session.feed(b'{"execute": "qmp_capabilities"}')
        for chunk in chunks:
            out += session.feed(chunk)
        return out
    finally:
        host.close_session(session)
