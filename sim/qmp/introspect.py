"""query-qmp-schema: QEMU 7.2's SchemaInfo list (qapi/introspect.json) for the
modelled subset.

Theory of operation.  The answer is generated from the one command table
(`sim.qmp.dispatch.COMMANDS`: each command's argument type) plus two small
tables here: the events blocksim emits with their data members (`EVENTS`)
and the return types of the commands that return something (`RETURNS`;
every other command returns the empty object).  Types are named as QEMU
names them in introspection: builtins by name (`str`, `int`, `bool`, `any`,
`null`; every integer width is `int`), arrays `[T]`, and every other type a
number in order of first use, `0` being the empty object (QEMU's q_empty).

What is left out, so that the answer describes what blocksim accepts: the
variants of a union that blocksim refuses (unmodelled drivers and object
types; the tag's enum lists only the modelled values) and members that are
refused whatever their value (qcow2 `data-file`, `encrypt` of
blockdev-create).  query-block, query-named-block-nodes, query-qmp-schema
itself and x-debug-query-block-graph have return type `any`: their large
shapes are declared nowhere in blocksim but in the code that builds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.qmp.dispatch import command, command_table
from sim.qmp.schema import (
    INT,
    STR,
    Alternate,
    Enum,
    List,
    Member,
    NotModelled,
    Scalar,
    Struct,
    Union,
    members,
)

if TYPE_CHECKING:
    from sim.engine.machine import Machine

_JOB_TYPE = Enum(
    "JobType",
    ("commit", "stream", "mirror", "backup", "create", "amend", "snapshot-load", "snapshot-save",
     "snapshot-delete"),
)  # fmt: skip
_JOB_STATUS = Enum(
    "JobStatus",
    ("undefined", "created", "running", "paused", "ready", "standby", "waiting", "pending",
     "aborting", "concluded", "null"),
)  # fmt: skip
_JOB_PROGRESS = members(
    ("type", _JOB_TYPE), ("device", STR), ("len", INT), ("offset", INT), ("speed", INT)
)

# The events blocksim emits and their data (qapi/job.json, block-core.json, block-export.json)
EVENTS: dict[str, tuple[Member, ...]] = {
    "JOB_STATUS_CHANGE": members(("id", STR), ("status", _JOB_STATUS)),
    "BLOCK_JOB_COMPLETED": (*_JOB_PROGRESS, *members(("*error", STR))),
    "BLOCK_JOB_CANCELLED": _JOB_PROGRESS,
    "BLOCK_JOB_ERROR": members(
        ("device", STR),
        ("operation", Enum("IoOperationType", ("read", "write"))),
        ("action", Enum("BlockErrorAction", ("ignore", "report", "stop"))),
    ),
    "BLOCK_JOB_READY": _JOB_PROGRESS,
    "BLOCK_JOB_PENDING": members(("type", _JOB_TYPE), ("id", STR)),
    "BLOCK_WRITE_THRESHOLD": members(
        ("node-name", STR),
        ("amount-exceeded", Scalar("uint64")),
        ("write-threshold", Scalar("uint64")),
    ),
    "BLOCK_EXPORT_DELETED": members(("id", STR)),
}

_ANY = Scalar("any")
_BOOL = Scalar("bool")
_COUNTERS = (
    "rd_bytes", "wr_bytes", "unmap_bytes", "rd_operations", "wr_operations",
    "flush_operations", "unmap_operations", "rd_total_time_ns", "wr_total_time_ns",
    "flush_total_time_ns", "unmap_total_time_ns", "wr_highest_offset", "rd_merged",
    "wr_merged", "unmap_merged",
)  # fmt: skip
_FAILED = tuple(
    f"{kind}_{op}_operations"
    for kind in ("failed", "invalid")
    for op in ("rd", "wr", "flush", "unmap")
)
_TIMED = Struct(
    "BlockDeviceTimedStats",
    members(
        ("interval_length", INT),
        *((f"{f}_{op}_latency_ns", INT) for op in ("rd", "wr", "flush") for f in ("min", "max", "avg")),
        ("avg_rd_queue_depth", Scalar("number")), ("avg_wr_queue_depth", Scalar("number")),
    ),
)  # fmt: skip
_HISTOGRAM = Struct(
    "BlockLatencyHistogramInfo", members(("boundaries", List(INT)), ("bins", List(INT)))
)
_DEVICE_STATS = Struct(
    "BlockDeviceStats",
    members(
        *((c, INT) for c in _COUNTERS), ("*idle_time_ns", INT), *((c, INT) for c in _FAILED),
        ("account_invalid", _BOOL), ("account_failed", _BOOL), ("timed_stats", List(_TIMED)),
        ("*rd_latency_histogram", _HISTOGRAM), ("*wr_latency_histogram", _HISTOGRAM),
        ("*flush_latency_histogram", _HISTOGRAM),
    ),
)  # fmt: skip
# the driver-specific statistics blocksim reports: the file driver's
_STATS_SPECIFIC = Union(
    "BlockStatsSpecific",
    members(("driver", Enum("BlockdevDriver", ("file",)))),
    "driver",
    {
        "file": members(
            ("discard-nb-ok", INT), ("discard-nb-failed", INT), ("discard-bytes-ok", INT)
        )
    },
)
_BLOCK_STATS = Struct("BlockStats", ())
object.__setattr__(  # BlockStats nests itself (parent, backing): tied after creation
    _BLOCK_STATS,
    "members",
    members(
        ("*device", STR), ("*qdev", STR), ("*node-name", STR), ("stats", _DEVICE_STATS),
        ("*driver-specific", _STATS_SPECIFIC), ("*parent", _BLOCK_STATS),
        ("*backing", _BLOCK_STATS),
    ),
)  # fmt: skip
_JOB_INFO = Struct(
    "JobInfo",
    members(
        ("id", STR), ("type", _JOB_TYPE), ("status", _JOB_STATUS), ("current-progress", INT),
        ("total-progress", INT), ("*error", STR),
    ),
)  # fmt: skip
_BLOCK_JOB_INFO = Struct(
    "BlockJobInfo",
    members(
        ("type", STR), ("device", STR), ("len", INT), ("offset", INT), ("busy", _BOOL),
        ("paused", _BOOL), ("speed", INT),
        ("io-status", Enum("BlockDeviceIoStatus", ("ok", "failed", "nospace"))),
        ("ready", _BOOL), ("status", _JOB_STATUS), ("auto-finalize", _BOOL),
        ("auto-dismiss", _BOOL), ("*error", STR),
    ),
)  # fmt: skip
_EXPORT_INFO = Struct(
    "BlockExportInfo",
    members(
        ("id", STR), ("type", Enum("BlockExportType", ("nbd", "vhost-user-blk", "fuse", "vduse-blk"))),
        ("node-name", STR), ("shutting-down", _BOOL),
    ),
)  # fmt: skip
# What the commands that return something return; every other command: the empty object
RETURNS: dict[str, Any] = {
    "x-debug-block-dirty-bitmap-sha256": Struct("BlockDirtyBitmapSha256", members(("sha256", STR))),
    "human-monitor-command": STR,
    "query-version": Struct(
        "VersionInfo",
        members(
            ("qemu", Struct("VersionTriple", members(("major", INT), ("minor", INT), ("micro", INT)))),
            ("package", STR),
        ),
    ),
    "query-commands": List(Struct("CommandInfo", members(("name", STR)))),
    "qom-get": _ANY,
    "query-jobs": List(_JOB_INFO),
    "query-block-jobs": List(_BLOCK_JOB_INFO),
    "query-blockstats": List(_BLOCK_STATS),
    "query-block-exports": List(_EXPORT_INFO),
    **dict.fromkeys(
        ("query-block", "query-named-block-nodes", "query-qmp-schema",
         "x-debug-query-block-graph"),
        _ANY,
    ),
}  # fmt: skip

_JSON_TYPES = {
    "str": "string", "int": "int", "bool": "boolean", "any": "value", "null": "null",
    "number": "number",
}  # fmt: skip


class _Schema:
    """Builds the SchemaInfo list: names every type at its first use."""

    def __init__(self) -> None:
        self.entities: list[dict[str, Any]] = [{"name": "0", "meta-type": "object", "members": []}]
        self.names: dict[Any, str] = {}
        self.builtins: set[str] = set()

    def _number(self, key: Any) -> tuple[str, bool]:
        """The type's name, and whether it is new (its entity still to be written)."""
        if key in self.names:
            return self.names[key], False
        name = str(len(self.names) + 1)
        self.names[key] = name
        return name, True

    def builtin(self, name: str) -> str:
        if name not in self.builtins:
            self.builtins.add(name)
            self.entities.append(
                {"name": name, "meta-type": "builtin", "json-type": _JSON_TYPES[name]}
            )
        return name

    def ref(self, t: Any) -> str:
        if isinstance(t, Scalar):
            return self.builtin("int" if t.kind.startswith(("int", "uint")) else t.kind)
        if isinstance(t, List):
            element = self.ref(t.element)
            name = f"[{element}]"
            if name not in self.builtins:
                self.builtins.add(name)
                self.entities.append({"name": name, "meta-type": "array", "element-type": element})
            return name
        if isinstance(t, Struct):
            return self.object(("struct", id(t)), t.members)
        if isinstance(t, Union):
            return self.union(t)
        if isinstance(t, Enum):
            return self.enum(("enum", id(t)), t.values)
        if isinstance(t, Alternate):
            return self.alternate(t)
        raise TypeError(f"no introspection for {t!r}")

    def object(self, key: Any, spec: tuple[Member, ...]) -> str:
        shown = [m for m in spec if not isinstance(m.type, NotModelled)]
        if not shown and not spec:
            return "0"
        name, new = self._number(key)
        if new:
            entity: dict[str, Any] = {"name": name, "meta-type": "object", "members": []}
            self.entities.append(entity)
            entity["members"] = self.members(shown)
        return name

    def members(self, spec: list[Member] | tuple[Member, ...]) -> list[dict[str, Any]]:
        out = []
        for m in spec:
            if isinstance(m.type, NotModelled):
                continue
            info: dict[str, Any] = {"name": m.name, "type": self.ref(m.type)}
            if m.optional:
                info["default"] = None
            out.append(info)
        return out

    def enum(self, key: Any, values: tuple[str, ...]) -> str:
        name, new = self._number(key)
        if new:
            self.entities.append(
                {"name": name, "meta-type": "enum", "values": list(values),
                 "members": [{"name": v} for v in values]}
            )  # fmt: skip
        return name

    def union(self, u: Union) -> str:
        name, new = self._number(("union", id(u)))
        if not new:
            return name
        entity: dict[str, Any] = {"name": name, "meta-type": "object", "members": []}
        self.entities.append(entity)
        cases = [(case, v) for case, v in u.variants.items() if v is not None]
        base = []
        for m in u.base:
            if m.name == u.tag:  # only the modelled tag values
                tag_enum = self.enum(("tag", id(u)), tuple(c for c, _ in cases))
                base.append({"name": m.name, "type": tag_enum})
            else:
                base.extend(self.members([m]))
        entity["members"] = base
        entity["tag"] = u.tag
        entity["variants"] = [
            {"case": case, "type": self.object(("variant", id(u), case), variant)}
            for case, variant in cases
        ]
        return name

    def alternate(self, a: Alternate) -> str:
        name, new = self._number(("alternate", id(a)))
        if new:
            entity: dict[str, Any] = {"name": name, "meta-type": "alternate", "members": []}
            self.entities.append(entity)
            branches = []
            if a.object_branch is not None:
                branches.append({"type": self.ref(a.object_branch)})
            if a.string_branch is not None:
                branches.append({"type": self.ref(a.string_branch)})
            if a.null_branch:
                branches.append({"type": self.builtin("null")})
            entity["members"] = branches
        return name


def schema_info() -> list[dict[str, Any]]:
    """The SchemaInfo list: every command of the table (`command_table`'s order), then
    every event, each followed by the types it uses first."""
    s = _Schema()
    for cmd in command_table():
        name = cmd.name
        entity: dict[str, Any] = {"name": name, "meta-type": "command"}
        s.entities.append(entity)
        args = cmd.args
        if isinstance(args, Union):
            entity["arg-type"] = s.ref(args)
        else:
            entity["arg-type"] = s.object(("args", name), args.members)
        ret = RETURNS.get(name)
        entity["ret-type"] = "0" if ret is None else s.ref(ret)
    for name, data in EVENTS.items():
        entity = {"name": name, "meta-type": "event"}
        s.entities.append(entity)
        entity["arg-type"] = s.object(("event", name), data)
    return s.entities


@command("query-qmp-schema", members())
def _query_qmp_schema(m: Machine, a: dict[str, Any]) -> list[dict[str, Any]]:
    return schema_info()
