"""The QMP surface: one dispatch table, validated at the edge.

`Monitor.execute(request)` turns a QMP request into a handler call and the
result into `{"return": ...}` or `{"error": {"class", "desc"}}`.  Arguments
are checked against the command's declared QAPI type before its handler runs,
so handlers see well-typed arguments.  `COMMANDS` is the one command table:
each entry pairs a command's argument type with its handler, and
`query-commands` lists it.  A `QMPError` raised
anywhere below becomes an error response here and only here.  Any other
exception is a simulator bug: it is recorded in `Monitor.internal_errors`
(the fuzzer's `internal-error` failure kind) and answered with a
`blocksim internal error` response so the run goes on.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim import jsonio
from sim.engine.jobs import end_idle_jobs
from sim.errors import QMPError, SimulatorBug
from sim.qmp import schema
from sim.qmp.schema import Member, Struct, Union, check_arguments

if TYPE_CHECKING:
    from sim.engine.machine import Machine

Handler = Callable[["Machine", dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Command:
    """One QMP command as QEMU's generated command table holds it: its name, its
    argument type (the QAPI `arg-type`, checked before the handler runs) and its
    handler (the `qmp_*` function)."""

    name: str
    args: Struct | Union
    handler: Handler


# The one command table: every command blocksim answers (`command_table` lists it).
COMMANDS: dict[str, Command] = {}


def command(
    name: str, args: tuple[Member, ...] | Union | None = None
) -> Callable[[Handler], Handler]:
    """Register `fn` as the handler of QMP command `name` together with its
    argument type: `args` (written with `schema.members(...)`) for a command
    declared here, or, when None, the type in the declarative table
    `schema.ARGUMENTS`.  Raises SimulatorBug for a second handler or a command
    whose arguments nobody declared."""

    def register(fn: Handler) -> Handler:
        if name in COMMANDS:
            raise SimulatorBug(f"QMP command {name!r} has two handlers")
        if args is not None:
            arg_type = schema.declare(name, args)
        elif name in schema.ARGUMENTS:
            arg_type = schema.ARGUMENTS[name]
        else:
            raise SimulatorBug(f"QMP command {name!r}: declare its arguments")
        COMMANDS[name] = Command(name, arg_type, fn)
        return fn

    return register


def command_table() -> list[Command]:
    """The command table in one order whatever order the handler modules were
    imported in (by name): what query-commands and query-qmp-schema list."""
    return [COMMANDS[name] for name in sorted(COMMANDS)]


def unhandled() -> list[str]:
    """Commands whose arguments are declared but that have no handler (should be none)."""
    return [name for name in schema.ARGUMENTS if name not in COMMANDS]


class Monitor:
    """A QMP monitor bound to one Machine (capabilities already negotiated)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.internal_errors: list[str] = []

    def execute(self, request: object) -> dict[str, Any]:
        """Run one QMP request; never raises for any input."""
        for before in self.machine.before_command_observers:
            before(request)
        text = jsonio.json_text(request)
        bad = jsonio.lone_surrogate(request, text)
        if bad is not None:
            # QEMU's JSON parser refuses the request before reading it: no `id` echoed
            refused = jsonio.qemu_surrogate_error(bad)
            for observer in self.machine.command_observers:
                observer(request, refused)
            return refused
        try:
            name, args = _split_request(request)
            checked = check_arguments(name, args, request_text=text)
            result = COMMANDS[name].handler(self.machine, checked)
            response: dict[str, Any] = {"return": {} if result is None else result}
        except QMPError as exc:
            response = exc.to_response()
        except SimulatorBug as exc:
            response = self._internal(exc)
        except Exception as exc:  # noqa: BLE001 - any other exception is a simulator bug
            response = self._internal(exc)
        if self.machine.idle_starts:
            end_idle_jobs(self.machine)
        if isinstance(request, dict) and "id" in request:
            response["id"] = request["id"]
        for observer in self.machine.command_observers:
            observer(request, response)
        return response

    def _internal(self, exc: BaseException) -> dict[str, Any]:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        loc = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
        message = f"blocksim internal error: {detail}{loc}"
        self.internal_errors.append(message)
        return {"error": {"class": "GenericError", "desc": message}}


def _split_request(request: object) -> tuple[str, object]:
    if not isinstance(request, dict):
        raise QMPError("QMP input must be a JSON object")
    if "execute" not in request:
        raise QMPError("QMP input lacks member 'execute'")
    name = request["execute"]
    if not isinstance(name, str):
        raise QMPError("QMP input member 'execute' must be a string")
    for key in request:
        if key not in ("execute", "arguments", "id"):
            raise QMPError(f"QMP input member '{key}' is unexpected")
    args = request.get("arguments", {})
    if not isinstance(args, dict):
        raise QMPError("QMP input member 'arguments' must be an object")
    return name, args
