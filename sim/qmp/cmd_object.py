"""object-add, object-del, qom-get and qom-set for `throttle-group` objects.

qom/object_interfaces.c `user_creatable_add_type` / `user_creatable_del` and
block/throttle-groups.c of QEMU 7.2.  object-add checks the id, sets the
properties in the order QEMU's QDict iterates them (`limits` checks the
whole config at once; each `x-*` legacy property only its own value),
refuses a duplicate id, then completes the group (throttle_is_valid again).
object-del refuses a group a throttle node still holds.  Other object types
are valid QAPI but refused as not modelled.  qom-get and qom-set reach only
throttle groups (`/objects/<id>` or the bare id): `type`, `limits` and, for
reading, the `x-*` properties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.errors import QMPError
from sim.model.graph import id_wellformed
from sim.model.throttle import (
    LIMIT_KEYS,
    ThrottleConfig,
    ThrottleGroup,
    apply_limits,
    check_valid,
    limits_of,
    set_property,
)
from sim.qmp.dispatch import command
from sim.qmp.schema import INT, STR, Enum, Scalar, Struct, Union, members, qdict_order

if TYPE_CHECKING:
    from sim.engine.machine import Machine

OBJECT_TYPES = (
    "authz-list", "authz-listfile", "authz-pam", "authz-simple", "can-bus", "can-host-socketcan",
    "colo-compare", "cryptodev-backend", "cryptodev-backend-builtin", "cryptodev-backend-lkcf",
    "cryptodev-vhost-user", "dbus-vmstate", "filter-buffer", "filter-dump", "filter-mirror",
    "filter-redirector", "filter-replay", "filter-rewriter", "input-barrier", "input-linux",
    "iothread", "main-loop", "memory-backend-epc", "memory-backend-file", "memory-backend-memfd",
    "memory-backend-ram", "pef-guest", "pr-manager-helper", "qtest", "rng-builtin", "rng-egd",
    "rng-random", "secret", "secret_keyring", "sev-guest", "thread-context", "s390-pv-guest",
    "throttle-group", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509", "tls-cipher-suites",
    "x-remote-object", "x-vfio-user-server",
)  # fmt: skip
THROTTLE_LIMITS = Struct("ThrottleLimits", members(*((f"*{k}", INT) for k in LIMIT_KEYS)))
LEGACY_PROPERTIES = tuple(f"x-{k}" for k in LIMIT_KEYS)
_VARIANTS: dict[str, tuple[Any, ...] | None] = dict.fromkeys(OBJECT_TYPES)
_VARIANTS["throttle-group"] = members(
    ("*limits", THROTTLE_LIMITS), *((f"*{p}", INT) for p in LEGACY_PROPERTIES)
)
OBJECT_OPTIONS = Union(
    "ObjectOptions",
    members(("qom-type", Enum("ObjectType", OBJECT_TYPES)), ("id", STR)),
    "qom-type",
    _VARIANTS,
)
# children of the QOM root (and their children) that a partial path may name
_QOM_CONTAINERS = frozenset(
    {"machine", "objects", "chardevs", "backend", "peripheral", "peripheral-anon", "unattached"}
)


@command("object-add", OBJECT_OPTIONS)
def _object_add(m: Machine, a: dict[str, Any]) -> None:
    oid = a["id"]
    if not id_wellformed(oid):
        raise QMPError("Parameter 'id' expects an identifier")
    cfg = ThrottleConfig()
    props = [k for k in a if k not in ("qom-type", "id")]
    for prop in qdict_order(props):  # object_set_properties_from_qdict
        if prop == "limits":
            apply_limits(cfg, a["limits"])
        else:
            set_property(cfg, prop, a[prop])
    if oid in m.state.throttle_groups:
        raise QMPError(f"attempt to add duplicate property '{oid}' to object (type 'container')")
    check_valid(cfg)  # throttle_group_obj_complete
    group = ThrottleGroup(oid)
    group.configure(cfg, m.now_ns)
    m.state.throttle_groups[oid] = group


@command("object-del", members(("id", STR)))
def _object_del(m: Machine, a: dict[str, Any]) -> None:
    oid = a["id"]
    group = m.state.throttle_groups.get(oid)
    if group is None:
        raise QMPError(f"object '{oid}' not found")
    if any(n.throttle_group is group for n in m.state.graph.nodes):
        raise QMPError(f"object '{oid}' is in use, can not be deleted")
    del m.state.throttle_groups[oid]


def _resolve(m: Machine, path: str) -> ThrottleGroup:
    """object_resolve_path for the paths that can name a throttle group."""
    oid = path.removeprefix("/objects/") if path.startswith("/objects/") else path
    group = m.state.throttle_groups.get(oid)
    if group is not None and "/" not in oid:
        return group
    if path.startswith("/") and not path.startswith("/objects/"):
        raise QMPError(f"blocksim does not model QOM path '{path}'")
    if path in _QOM_CONTAINERS:
        raise QMPError(f"blocksim does not model QOM object '{path}'")
    raise QMPError(f"Device '{path}' not found", "DeviceNotFound")


@command("qom-get", members(("path", STR), ("property", STR)))
def _qom_get(m: Machine, a: dict[str, Any]) -> Any:
    group = _resolve(m, a["path"])
    prop = a["property"]
    if prop == "type":
        return "throttle-group"
    if prop == "limits":
        return limits_of(group.cfg)
    if prop in LEGACY_PROPERTIES:
        return limits_of(group.cfg)[prop.removeprefix("x-")]
    raise QMPError(f"Property 'throttle-group.{prop}' not found")


@command("qom-set", members(("path", STR), ("property", STR), ("value", Scalar("any"))))
def _qom_set(m: Machine, a: dict[str, Any]) -> None:
    group = _resolve(m, a["path"])
    prop = a["property"]
    if prop == "limits":
        limits = THROTTLE_LIMITS.check(a["value"], ("limits",), "limits")
        cfg = group.cfg.copy()
        apply_limits(cfg, limits)
        group.configure(cfg, m.now_ns)  # throttle_config: the buckets start empty
        return
    if prop in LEGACY_PROPERTIES:
        raise QMPError("Property cannot be set after initialization")
    if prop == "type":
        raise QMPError("blocksim does not model setting QOM property 'type'")
    raise QMPError(f"Property 'throttle-group.{prop}' not found")
