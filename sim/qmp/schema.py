"""QAPI argument checking for the QMP commands blocksim supports (QEMU 7.2).

Theory of operation
-------------------
QEMU's QMP dispatcher hands a command's `arguments` object to the generated
marshaller, which runs the QObject input visitor over it
(qapi/qobject-input-visitor.c, qapi/qapi-visit-core.c, generated
qapi-visit-*.c).  The visitor walks the *schema*, not the input: members are
visited in schema order, the first failure stops everything, and only after
every member of a struct has been visited does `check_struct` complain about
members nobody consumed.  `check_arguments` replays that walk over a
declarative table of the argument types (`ARGUMENTS`), written in QAPI's own
notation (`"*name"` = optional) in the member order of QEMU 7.2's
qapi/block-core.json, transaction.json, job.json, misc.json and control.json.

Error texts (all class GenericError):

- missing member: `Parameter 'PATH' is missing`
- wrong JSON type: `Invalid parameter type for 'PATH', expected: T`, T one of
  `string`, `boolean`, `integer`, `object`, `array`
- uint64 member given a non-integer: `Parameter 'PATH' expects uint64`
- uint32 member out of range: `Parameter 'NAME' expects uint32_t`
- enum value unknown: `Parameter 'NAME' does not accept value 'V'`
- alternate given a JSON type it has no branch for:
  `Invalid parameter type for 'NAME', expected: ALTERNATE`
- unconsumed member: `Parameter 'PATH' is unexpected`

PATH is the full path (`actions[0].data.bitmaps[1].name`); NAME is only the
member's own name, or `null` inside a list (QEMU passes the bare name there).

Facts verified on qemu-system-x86_64 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)
with `-M none` over QMP, by the author of this module:

- every message form above, including `bitmaps[0].name` / `bitmaps[1].name`
  missing, `actions[0].data` missing, `actions[0].data.node` missing,
  `actions[0].type` missing, `actions[0].x` / `actions[0].data.x` /
  `bitmaps[1].q` / `x-perf.foo` / `properties.x` / `file.file.x` unexpected,
  `actions[0]` expected object, `enable[0]` expected string, enum errors
  named `type`, `completion-mode`, `template`, `format`, `overlap-check`
  (bare names) and `null` (enum inside a list), `'null', expected:
  BlockDirtyBitmapOrStr`, `'file', expected: BlockdevRef`,
  `'backing', expected: BlockdevRefOrNull`,
  `'overlap-check', expected: Qcow2OverlapChecks`;
- `null` for an optional member is a type error, not "absent" (except in
  `backing`, whose alternate has a null branch);
- integers: `1.0` and `true` are rejected for every integer type; int64
  members accept exactly [-2^63, 2^63-1]; uint64 members accept
  [-2^63, 2^64-1] (negatives wrap); uint32 members reject every negative value
  and 2^32 with `expects uint32_t`, but strings, floats, 2^64 and < -2^63 with
  `expects uint64`.  Every integer member of the table was probed with
  "x", 2^31, 2^32, -1 and 2^63 to learn its width;
- errors come in schema order: a wrong type or a missing member stops the
  walk; unexpected members are reported only after all members were visited,
  and nested structs are checked (including their unexpected members) when
  the walk reaches them;
- with several unexpected members, QEMU reports the first one a GLib
  GHashTable iteration yields (keys inserted in QDict bucket order, consumed
  keys removed).  `_first_unexpected` emulates QDict (qobject/qdict.c
  tdb_hash, 512 buckets) and GLib 2.74's GHashTable; 600 random key sets
  (1-40 unknown keys, unicode included) matched the binary exactly;
- `arguments` that is not an object (list, null, ...) gives
  `QMP input member 'arguments' must be an object`, before the command name
  is even looked up;
- a JSON text nested deeper than 1024 levels (request object included) is
  refused by the JSON parser with `JSON nesting depth limit exceeded`;
- unknown command: class CommandNotFound, `The command X has not been found`;
- the whole table equals the binary's query-qmp-schema (member names, order,
  optionality, enum values, alternate branches, union variants), and 16000
  seeded mutations of valid arguments got the same answer from both.

Not checked here because they are command checks, not visitor errors (all
verified): `Parameter 'speed' expects a non-negative value` (raised when the
job is created, and by block-job-set-speed only after the job lookup),
`Parameter 'cpu-index' expects a CPU number` (any cpu-index under -M none),
`latency-ns is invalid`, `'node-name' must be specified for the root node`.

blockdev-add: only the drivers blocksim models (`MODELLED_DRIVERS`) have
their member tables; any other valid 7.2 driver name passes the common
members and is then refused with a blocksim message (QEMU would go on).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sim import jsonio
from sim.errors import QMPError, SimulatorBug

# JSON nesting QEMU's JSON streamer accepts (MAX_NESTING, qobject/json-streamer.c),
# counted from the outer request object; `arguments` sits one level below it.
_MAX_NESTING = 1024

Path = tuple[str | int, ...]


def _full_name(path: Path) -> str:
    """QEMU's full_name(): members joined by '.', list indexes as [i]."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else seg
    return out or "<anonymous>"


def _bare(name: str | None) -> str:
    return "null" if name is None else name


def _type_error(path: Path, expected: str) -> QMPError:
    return QMPError(f"Invalid parameter type for '{_full_name(path)}', expected: {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# QAPI types.  Each knows how to check one value: check(value, path, name)
# returns the value as QEMU sees it or raises QMPError.


@dataclass(frozen=True, slots=True)
class Scalar:
    """A QAPI built-in: str, bool, int (int64), uint64, uint32 or any."""

    kind: str

    def check(self, value: object, path: Path, name: str | None) -> Any:
        kind = self.kind
        if kind == "any":
            return value
        if kind == "str":
            if isinstance(value, str):
                return value
            raise _type_error(path, "string")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise _type_error(path, "boolean")
        if kind == "int":
            if _is_int(value) and -(2**63) <= value < 2**63:  # type: ignore[operator]
                return value
            raise _type_error(path, "integer")
        # uint64 and uint32: QEMU accepts negative int64 values and wraps them.
        if not (_is_int(value) and -(2**63) <= value < 2**64):  # type: ignore[operator]
            raise QMPError(f"Parameter '{_full_name(path)}' expects uint64")
        wrapped = value & (2**64 - 1)  # type: ignore[operator]
        if kind == "uint32" and wrapped > 2**32 - 1:
            raise QMPError(f"Parameter '{_bare(name)}' expects uint32_t")
        return wrapped


@dataclass(frozen=True, slots=True)
class Enum:
    """A QAPI enum: a string among `values`."""

    name: str
    values: tuple[str, ...]

    def check(self, value: object, path: Path, name: str | None) -> Any:
        if not isinstance(value, str):
            raise _type_error(path, "string")
        if value not in self.values:
            raise QMPError(f"Parameter '{_bare(name)}' does not accept value '{value}'")
        return value


@dataclass(frozen=True, slots=True)
class List:
    """A QAPI array of `element`."""

    element: Any

    def check(self, value: object, path: Path, name: str | None) -> Any:
        if not isinstance(value, list):
            raise _type_error(path, "array")
        element = self.element
        return [element.check(item, (*path, i), None) for i, item in enumerate(value)]


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a QAPI struct or union: its name, type, and whether it may be
    left out (`*name` in the schema)."""

    name: str
    type: Any
    optional: bool


def members(*spec: tuple[str, Any]) -> tuple[Member, ...]:
    """Members in QAPI notation: ("*name", T) is optional."""
    return tuple(Member(n.lstrip("*"), t, n.startswith("*")) for n, t in spec)


@dataclass(frozen=True, slots=True)
class Struct:
    """A QAPI struct: its members, checked as QEMU's generated visitor does (a missing
    mandatory member or an unexpected one is refused)."""

    name: str
    members: tuple[Member, ...]

    def check(self, value: object, path: Path, name: str | None) -> Any:
        if not isinstance(value, dict):
            raise _type_error(path, "object")
        out: dict[str, Any] = {}
        _visitmembers(self.members, value, path, out)
        _check_struct(value, out, path)
        return out


@dataclass(frozen=True, slots=True)
class Union:
    """A flat union: base members, then the members of the variant that the
    discriminator (`tag`, a base member) selects.  A variant of None is a
    valid tag value blocksim does not model."""

    name: str
    base: tuple[Member, ...]
    tag: str
    variants: Mapping[str, tuple[Member, ...] | None] = field(default_factory=dict)

    def check(self, value: object, path: Path, name: str | None) -> Any:
        if not isinstance(value, dict):
            raise _type_error(path, "object")
        out: dict[str, Any] = {}
        _visitmembers(self.base, value, path, out)
        variant = self.variants.get(out[self.tag])
        if variant is None:
            modelled = ", ".join(k for k, v in self.variants.items() if v)
            raise QMPError(
                f"blocksim does not model {self.tag} '{out[self.tag]}' (modelled: {modelled})"
            )
        _visitmembers(variant, value, path, out)
        _check_struct(value, out, path)
        return out


@dataclass(frozen=True, slots=True)
class NotModelled:
    """A member whose QAPI type blocksim does not model: present means refused."""

    what: str

    def check(self, value: object, path: Path, name: str | None) -> Any:
        raise QMPError(f"blocksim does not model {self.what} ('{_full_name(path)}')")


@dataclass(frozen=True, slots=True)
class Alternate:
    """An alternate: the JSON type of the value picks the branch."""

    name: str
    object_branch: Any = None
    string_branch: Any = None
    null_branch: bool = False

    def check(self, value: object, path: Path, name: str | None) -> Any:
        if isinstance(value, dict) and self.object_branch is not None:
            return self.object_branch.check(value, path, name)
        if isinstance(value, str) and self.string_branch is not None:
            return self.string_branch.check(value, path, name)
        if value is None and self.null_branch:
            return None
        raise QMPError(f"Invalid parameter type for '{_bare(name)}', expected: {self.name}")


def _visitmembers(
    members: tuple[Member, ...], obj: dict[Any, Any], path: Path, out: dict[str, Any]
) -> None:
    for m in members:
        if m.name in obj:
            out[m.name] = m.type.check(obj[m.name], (*path, m.name), m.name)
        elif not m.optional:
            raise QMPError(f"Parameter '{_full_name((*path, m.name))}' is missing")


def _check_struct(obj: dict[Any, Any], consumed: dict[str, Any], path: Path) -> None:
    if len(obj) != len(consumed):
        key = _first_unexpected([str(k) for k in obj], list(consumed))
        raise QMPError(f"Parameter '{_full_name((*path, key))}' is unexpected")


# ---------------------------------------------------------------------------
# Which unexpected member QEMU names first.  qobject_input_push() copies the
# keys of the QDict (iterated bucket by bucket, newest first in a bucket) into
# a GHashTable, every visited member is removed from it, and check_struct
# reports the first key that g_hash_table_iter_next() yields.

_M32 = 0xFFFFFFFF
# GLib's prime_mod[] table (glib/ghash.c), indexed by the table's shift.
_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749,
              65521, 131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213,
              33554393, 67108859, 134217689, 268435399, 536870909, 1073741789, 2147483647)  # fmt: skip


def _c_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _tdb_hash(key: bytes) -> int:
    value = (0x238F13AF * len(key)) & _M32
    for i, c in enumerate(key):
        value = (value + (c << (i * 5 % 24))) & _M32
    return (1103515243 * value + 12345) & _M32


def qdict_order(keys: list[str]) -> list[str]:
    """The order in which QEMU 7.2 iterates a QDict built by inserting `keys`
    in this order (JSON text order): by tdb_hash bucket, newest first within a
    bucket.  QEMU's request-level checks (qmp_dispatch_check_obj) walk this
    order too."""
    buckets: dict[int, list[str]] = {}
    for k in keys:
        buckets.setdefault(_tdb_hash(_c_bytes(k)) % 512, []).insert(0, k)
    return [k for b in sorted(buckets) for k in buckets[b]]


def _g_str_hash(key: bytes) -> int:
    h = 5381
    for c in key:  # GLib hashes `signed char`s
        h = (h * 33 + (c - 256 if c >= 128 else c)) & _M32
    return h


class _GHashTable:
    """Just enough of GLib 2.74's GHashTable (a map, not a set) to reproduce
    its iteration order: open addressing, quadratic probing, tombstones,
    grow/shrink with in-place rehash."""

    def __init__(self) -> None:
        self._set_shift(3)
        self.hashes = [0] * self.size  # 0 unused, 1 tombstone, >= 2 real
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = 0
        self.noccupied = 0

    def _set_shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _index(self, h: int) -> int:
        return ((h * 11) & _M32) % self.mod

    def _lookup(self, key: str) -> tuple[int, int]:
        h = max(_g_str_hash(_c_bytes(key)), 2)
        i, step, tombstone = self._index(h), 0, -1
        while self.hashes[i] != 0:
            if self.hashes[i] == h and self.keys[i] == key:
                return i, h
            if self.hashes[i] == 1 and tombstone < 0:
                tombstone = i
            step += 1
            i = (i + step) & self.mask
        return (tombstone if tombstone >= 0 else i), h

    def insert(self, key: str) -> None:
        i, h = self._lookup(key)
        old = self.hashes[i]
        if old >= 2:
            return
        self.hashes[i], self.keys[i] = h, key
        self.nnodes += 1
        if old == 0:
            self.noccupied += 1
            self._maybe_resize()

    def remove(self, key: str) -> None:
        i, _ = self._lookup(key)
        if self.hashes[i] >= 2:
            self.hashes[i], self.keys[i] = 1, None
            self.nnodes -= 1
            self._maybe_resize()

    def _maybe_resize(self) -> None:
        if (self.size > self.nnodes * 4 and self.size > 8) or (
            self.size <= self.noccupied + self.noccupied // 16
        ):
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        self._set_shift(max(int(self.nnodes * 1.333).bit_length(), 3))
        if self.size > old_size:
            self.hashes += [0] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        moved = [False] * max(self.size, old_size)
        for i in range(old_size):
            node_hash = self.hashes[i]
            if node_hash < 2:
                self.hashes[i] = 0
                continue
            if moved[i]:
                continue
            self.hashes[i] = 0
            key, self.keys[i] = self.keys[i], None
            while True:  # cuckoo-style eviction, as resize_map() does
                j, step = self._index(node_hash), 0
                while moved[j]:
                    step += 1
                    j = (j + step) & self.mask
                moved[j] = True
                replaced = self.hashes[j]
                self.hashes[j] = node_hash
                if replaced < 2:
                    self.keys[j] = key
                    break
                node_hash = replaced
                key, self.keys[j] = self.keys[j], key
        del self.hashes[self.size :], self.keys[self.size :]
        self.noccupied = self.nnodes

    def first(self) -> str | None:
        for h, k in zip(self.hashes, self.keys, strict=True):
            if h >= 2:
                return k
        return None


def _first_unexpected(keys: list[str], consumed: list[str]) -> str:
    table = _GHashTable()
    for k in qdict_order(keys):
        table.insert(k)
    for k in consumed:
        table.remove(k)
    first = table.first()
    return keys[0] if first is None else first


# ---------------------------------------------------------------------------
# The table.  Types first (names as in QEMU 7.2's schema; the names matter
# only for alternates, whose name appears in error messages).

STR, BOOL, INT = Scalar("str"), Scalar("bool"), Scalar("int")
UINT64, UINT32 = Scalar("uint64"), Scalar("uint32")

_ON_ERROR = Enum("BlockdevOnError", ("report", "ignore", "enospc", "stop", "auto"))
_SYNC = Enum("MirrorSyncMode", ("top", "full", "none", "incremental", "bitmap"))
_BITMAP_MODE = Enum("BitmapSyncMode", ("on-success", "never", "always"))
_NEW_IMAGE_MODE = Enum("NewImageMode", ("existing", "absolute-paths"))
_COPY_MODE = Enum("MirrorCopyMode", ("background", "write-blocking"))
_COMPLETION_MODE = Enum("ActionCompletionMode", ("individual", "grouped"))
_OVERLAP_MODE = Enum("Qcow2OverlapCheckMode", ("none", "constant", "cached", "all"))

_BITMAP = members(("node", STR), ("name", STR))
_BITMAP_ADD = members(
    ("node", STR), ("name", STR), ("*granularity", UINT32), ("*persistent", BOOL),
    ("*disabled", BOOL),
)  # fmt: skip
_BITMAP_OR_STR = Alternate(
    "BlockDirtyBitmapOrStr", object_branch=Struct("BlockDirtyBitmap", _BITMAP), string_branch=STR
)
_BITMAP_MERGE = members(("node", STR), ("target", STR), ("bitmaps", List(_BITMAP_OR_STR)))

_BACKUP_PERF = Struct(
    "BackupPerf", members(("*use-copy-range", BOOL), ("*max-workers", INT), ("*max-chunk", INT))
)
_BACKUP_COMMON = members(
    ("*job-id", STR), ("device", STR), ("sync", _SYNC), ("*speed", INT), ("*bitmap", STR),
    ("*bitmap-mode", _BITMAP_MODE), ("*compress", BOOL), ("*on-source-error", _ON_ERROR),
    ("*on-target-error", _ON_ERROR), ("*auto-finalize", BOOL), ("*auto-dismiss", BOOL),
    ("*filter-node-name", STR), ("*x-perf", _BACKUP_PERF),
)  # fmt: skip
_DRIVE_BACKUP = (
    *_BACKUP_COMMON, *members(("target", STR), ("*format", STR), ("*mode", _NEW_IMAGE_MODE))
)  # fmt: skip
_BLOCKDEV_BACKUP = (*_BACKUP_COMMON, *members(("target", STR)))

_SNAPSHOT_SYNC = members(
    ("*device", STR), ("*node-name", STR), ("snapshot-file", STR), ("*snapshot-node-name", STR),
    ("*format", STR), ("*mode", _NEW_IMAGE_MODE),
)  # fmt: skip
_SNAPSHOT = members(("node", STR), ("overlay", STR))
_SNAPSHOT_INTERNAL = members(("device", STR), ("name", STR))

# blockdev-add: BlockdevOptions, a flat union on `driver`.
_DRIVERS = (
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
    "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
    "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum",
    "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
)  # fmt: skip
_BLOCKDEV_BASE = members(
    ("driver", Enum("BlockdevDriver", _DRIVERS)), ("*node-name", STR),
    ("*discard", Enum("BlockdevDiscardOptions", ("ignore", "unmap"))),
    ("*cache", Struct("BlockdevCacheOptions", members(("*direct", BOOL), ("*no-flush", BOOL)))),
    ("*read-only", BOOL), ("*auto-read-only", BOOL), ("*force-share", BOOL),
    ("*detect-zeroes", Enum("BlockdevDetectZeroesOptions", ("off", "on", "unmap"))),
)  # fmt: skip
_BLOCKDEV_VARIANTS: dict[str, tuple[Member, ...] | None] = dict.fromkeys(_DRIVERS)
BLOCKDEV_OPTIONS = Union("BlockdevOptions", _BLOCKDEV_BASE, "driver", _BLOCKDEV_VARIANTS)
_BLOCKDEV_REF = Alternate("BlockdevRef", object_branch=BLOCKDEV_OPTIONS, string_branch=STR)
_BLOCKDEV_REF_OR_NULL = Alternate(
    "BlockdevRefOrNull", object_branch=BLOCKDEV_OPTIONS, string_branch=STR, null_branch=True
)
_OVERLAP_FLAGS = Struct(
    "Qcow2OverlapCheckFlags",
    members(
        ("*template", _OVERLAP_MODE), ("*main-header", BOOL), ("*active-l1", BOOL),
        ("*active-l2", BOOL), ("*refcount-table", BOOL), ("*refcount-block", BOOL),
        ("*snapshot-table", BOOL), ("*inactive-l1", BOOL), ("*inactive-l2", BOOL),
        ("*bitmap-directory", BOOL),
    ),
)  # fmt: skip
_QCOW2_ENCRYPTION = Union(
    "BlockdevQcow2Encryption",
    members(("format", Enum("BlockdevQcow2EncryptionFormat", ("aes", "luks")))),
    "format",
    {"aes": members(("*key-secret", STR)), "luks": members(("*key-secret", STR))},
)
MODELLED_DRIVERS = (
    "blkdebug", "copy-before-write", "copy-on-read", "file", "null-co", "qcow2", "raw",
    "snapshot-access", "throttle",
)  # fmt: skip
_BLKDEBUG_EVENT = Enum("BlkdebugEvent", (
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
    "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
    "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
    "vmstate_load", "vmstate_save", "cow_read", "cow_write", "reftable_load", "reftable_grow",
    "reftable_update", "refblock_load", "refblock_update", "refblock_update_part",
    "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
    "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
    "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk",
    "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
    "pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare", "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
))  # fmt: skip
_BLOCK_PERMISSION = Enum(
    "BlockPermission", ("consistent-read", "write", "write-unchanged", "resize")
)
_BLOCKDEV_VARIANTS.update(
    file=members(
        ("filename", STR), ("*pr-manager", STR),
        ("*locking", Enum("OnOffAuto", ("auto", "on", "off"))),
        ("*aio", Enum("BlockdevAioOptions", ("threads", "native", "io_uring"))),
        ("*aio-max-batch", INT), ("*drop-cache", BOOL), ("*x-check-cache-dropped", BOOL),
    ),
    qcow2=members(
        ("file", _BLOCKDEV_REF), ("*backing", _BLOCKDEV_REF_OR_NULL), ("*lazy-refcounts", BOOL),
        ("*pass-discard-request", BOOL), ("*pass-discard-snapshot", BOOL),
        ("*pass-discard-other", BOOL),
        ("*overlap-check",
         Alternate("Qcow2OverlapChecks", object_branch=_OVERLAP_FLAGS, string_branch=_OVERLAP_MODE)),
        ("*cache-size", INT), ("*l2-cache-size", INT), ("*l2-cache-entry-size", INT),
        ("*refcount-cache-size", INT), ("*cache-clean-interval", INT),
        ("*encrypt", _QCOW2_ENCRYPTION), ("*data-file", _BLOCKDEV_REF),
    ),
    raw=members(("file", _BLOCKDEV_REF), ("*offset", INT), ("*size", INT)),
    throttle=members(("throttle-group", STR), ("file", _BLOCKDEV_REF)),
    **{"copy-on-read": members(("file", _BLOCKDEV_REF), ("*bottom", STR))},
    blkdebug=members(
        ("image", _BLOCKDEV_REF), ("*config", STR), ("*align", INT), ("*max-transfer", INT),
        ("*opt-write-zero", INT), ("*max-write-zero", INT), ("*opt-discard", INT),
        ("*max-discard", INT),
        ("*inject-error", List(Struct("BlkdebugInjectErrorOptions", members(
            ("event", _BLKDEBUG_EVENT), ("*state", INT),
            ("*iotype", Enum("BlkdebugIOType", ("read", "write", "write-zeroes", "discard", "flush", "block-status"))),
            ("*errno", INT), ("*sector", INT), ("*once", BOOL), ("*immediately", BOOL),
        )))),
        ("*set-state", List(Struct("BlkdebugSetStateOptions", members(
            ("event", _BLKDEBUG_EVENT), ("*state", INT), ("new_state", INT),
        )))),
        ("*take-child-perms", List(_BLOCK_PERMISSION)),
        ("*unshare-child-perms", List(_BLOCK_PERMISSION)),
    ),
)  # fmt: skip
_BLOCKDEV_VARIANTS["copy-before-write"] = members(
    ("file", _BLOCKDEV_REF), ("target", _BLOCKDEV_REF), ("*bitmap", Struct("BlockDirtyBitmap", _BITMAP)),
    ("*on-cbw-error", Enum("OnCbwError", ("break-guest-write", "break-snapshot"))),
    ("*cbw-timeout", UINT32),
)  # fmt: skip
_BLOCKDEV_VARIANTS["snapshot-access"] = members(("file", _BLOCKDEV_REF))
_BLOCKDEV_VARIANTS["null-co"] = members(
    ("*size", INT), ("*latency-ns", UINT64), ("*read-zeroes", BOOL)
)

# blockdev-create: BlockdevCreateOptions, a flat union on `driver`; drivers with no
# variant have no members and no create callback ("Driver does not support ...").
_SIZE = UINT64
_PREALLOC = Enum("PreallocMode", ("off", "metadata", "falloc", "full"))
_CREATE_WITH_MEMBERS = (
    "file", "gluster", "luks", "nfs", "parallels", "qcow", "qcow2", "qed", "rbd", "ssh",
    "vdi", "vhdx", "vmdk", "vpc",
)  # fmt: skip
_CREATE_VARIANTS: dict[str, tuple[Member, ...] | None] = {
    d: (None if d in _CREATE_WITH_MEMBERS else ()) for d in _DRIVERS
}
_CREATE_VARIANTS.update(
    file=members(
        ("filename", STR), ("size", _SIZE), ("*preallocation", _PREALLOC), ("*nocow", BOOL),
        ("*extent-size-hint", _SIZE),
    ),
    qcow2=members(
        ("file", _BLOCKDEV_REF), ("*data-file", NotModelled("qcow2 external data files")),
        ("*data-file-raw", BOOL), ("*extended-l2", BOOL), ("size", _SIZE),
        ("*version", Enum("BlockdevQcow2Version", ("v2", "v3"))), ("*backing-file", STR),
        ("*backing-fmt", Enum("BlockdevDriver", _DRIVERS)),
        ("*encrypt", NotModelled("qcow2 encryption")), ("*cluster-size", _SIZE),
        ("*preallocation", _PREALLOC), ("*lazy-refcounts", BOOL), ("*refcount-bits", INT),
        ("*compression-type", Enum("Qcow2CompressionType", ("zlib", "zstd"))),
    ),
)  # fmt: skip
BLOCKDEV_CREATE_OPTIONS = Union(
    "BlockdevCreateOptions",
    members(("driver", Enum("BlockdevDriver", _DRIVERS))),
    "driver",
    _CREATE_VARIANTS,
)

# transaction: TransactionAction, a flat union on `type`, each variant a
# wrapper struct with one member `data`.
_ACTIONS: dict[str, tuple[Member, ...]] = {
    "abort": (),
    "block-dirty-bitmap-add": _BITMAP_ADD,
    "block-dirty-bitmap-remove": _BITMAP,
    "block-dirty-bitmap-clear": _BITMAP,
    "block-dirty-bitmap-enable": _BITMAP,
    "block-dirty-bitmap-disable": _BITMAP,
    "block-dirty-bitmap-merge": _BITMAP_MERGE,
    "blockdev-backup": _BLOCKDEV_BACKUP,
    "blockdev-snapshot": _SNAPSHOT,
    "blockdev-snapshot-internal-sync": _SNAPSHOT_INTERNAL,
    "blockdev-snapshot-sync": _SNAPSHOT_SYNC,
    "drive-backup": _DRIVE_BACKUP,
}
TRANSACTION_ACTION_TYPES = tuple(_ACTIONS)
_TRANSACTION_ACTION = Union(
    "TransactionAction",
    members(("type", Enum("TransactionActionKind", TRANSACTION_ACTION_TYPES))),
    "type",
    {t: members(("data", Struct(t, m))) for t, m in _ACTIONS.items()},
)

_JOB_START_TAIL = members(
    ("*filter-node-name", STR), ("*auto-finalize", BOOL), ("*auto-dismiss", BOOL)
)
_NO_ARGS: tuple[Member, ...] = ()
_BY_DEVICE = members(("device", STR))
_BY_ID = members(("id", STR))

# Command -> its arguments: a member tuple (an implicit struct), or a union
# for the one `boxed` command, blockdev-add.
_COMMAND_ARGS: dict[str, tuple[Member, ...] | Union] = {
    # control.json, misc.json
    "qmp_capabilities": members(("*enable", List(Enum("QMPCapability", ("oob",))))),
    "query-version": _NO_ARGS,
    "query-commands": _NO_ARGS,
    "human-monitor-command": members(("command-line", STR), ("*cpu-index", INT)),
    # block-core.json
    "query-block": _NO_ARGS,
    "query-named-block-nodes": members(("*flat", BOOL)),
    "query-block-jobs": _NO_ARGS,
    "x-debug-query-block-graph": _NO_ARGS,
    "blockdev-add": BLOCKDEV_OPTIONS,
    "blockdev-del": members(("node-name", STR)),
    "blockdev-snapshot-sync": _SNAPSHOT_SYNC,
    "blockdev-snapshot": _SNAPSHOT,
    "block-dirty-bitmap-add": _BITMAP_ADD,
    "block-dirty-bitmap-remove": _BITMAP,
    "block-dirty-bitmap-clear": _BITMAP,
    "block-dirty-bitmap-enable": _BITMAP,
    "block-dirty-bitmap-disable": _BITMAP,
    "block-dirty-bitmap-merge": _BITMAP_MERGE,
    "x-debug-block-dirty-bitmap-sha256": _BITMAP,
    "drive-backup": _DRIVE_BACKUP,
    "blockdev-backup": _BLOCKDEV_BACKUP,
    "drive-mirror": members(
        ("*job-id", STR), ("device", STR), ("target", STR), ("*format", STR), ("*node-name", STR),
        ("*replaces", STR), ("sync", _SYNC), ("*mode", _NEW_IMAGE_MODE), ("*speed", INT),
        ("*granularity", UINT32), ("*buf-size", INT), ("*on-source-error", _ON_ERROR),
        ("*on-target-error", _ON_ERROR), ("*unmap", BOOL), ("*copy-mode", _COPY_MODE),
        ("*auto-finalize", BOOL), ("*auto-dismiss", BOOL),
    ),
    "blockdev-mirror": members(
        ("*job-id", STR), ("device", STR), ("target", STR), ("*replaces", STR), ("sync", _SYNC),
        ("*speed", INT), ("*granularity", UINT32), ("*buf-size", INT),
        ("*on-source-error", _ON_ERROR), ("*on-target-error", _ON_ERROR),
        ("*filter-node-name", STR), ("*copy-mode", _COPY_MODE), ("*auto-finalize", BOOL),
        ("*auto-dismiss", BOOL),
    ),
    "block-commit": (*members(
        ("*job-id", STR), ("device", STR), ("*base-node", STR), ("*base", STR),
        ("*top-node", STR), ("*top", STR), ("*backing-file", STR), ("*speed", INT),
        ("*on-error", _ON_ERROR),
    ), *_JOB_START_TAIL),
    "block-stream": (*members(
        ("*job-id", STR), ("device", STR), ("*base", STR), ("*base-node", STR),
        ("*backing-file", STR), ("*bottom", STR), ("*speed", INT), ("*on-error", _ON_ERROR),
    ), *_JOB_START_TAIL),
    "block-job-cancel": members(("device", STR), ("*force", BOOL)),
    "block-job-pause": _BY_DEVICE,
    "block-job-resume": _BY_DEVICE,
    "block-job-complete": _BY_DEVICE,
    "block-job-set-speed": members(("device", STR), ("speed", INT)),
    "block-job-finalize": _BY_ID,
    "block-job-dismiss": _BY_ID,
    # transaction.json
    "transaction": members(
        ("actions", List(_TRANSACTION_ACTION)),
        ("*properties",
         Struct("TransactionProperties", members(("*completion-mode", _COMPLETION_MODE)))),
    ),
    # job.json
    "query-jobs": _NO_ARGS,
    "job-cancel": _BY_ID,
    "job-pause": _BY_ID,
    "job-resume": _BY_ID,
    "job-complete": _BY_ID,
    "job-finalize": _BY_ID,
    "job-dismiss": _BY_ID,
}  # fmt: skip

ARGUMENTS: dict[str, Struct | Union] = {
    name: args if isinstance(args, Union) else Struct(f"q_obj_{name}-arg", args)
    for name, args in _COMMAND_ARGS.items()
}


def declare(name: str, args: tuple[Member, ...] | Union) -> Struct | Union:
    """Declare the argument type of QMP command `name` (a member tuple written
    with `members(...)`, or a union).  `sim.qmp.dispatch.command` calls this for
    commands declared next to their handler; returns the type.  Raises
    SimulatorBug if `name` already has one."""
    if name in ARGUMENTS:
        raise SimulatorBug(f"QMP command {name!r} is declared twice")
    ARGUMENTS[name] = args if isinstance(args, Union) else Struct(f"q_obj_{name}-arg", args)
    return ARGUMENTS[name]


_ABSENT: Any = object()
_JSON = jsonio.encoder()


def check_arguments(
    command: str, arguments: object = _ABSENT, *, request_text: str | None = None
) -> dict[str, Any]:
    """Validate the `arguments` of a QMP request exactly as QEMU 7.2 does.

    Leave `arguments` out (or pass {}) when the request has none; None stands
    for a JSON `null` and is refused, as QEMU refuses it.  Returns a new dict
    of the arguments as QEMU sees them (uint64 values wrapped into range; no
    defaults added).  Raises QMPError with QEMU's class and text: GenericError
    for a non-object `arguments` (checked first) and for every QAPI error,
    CommandNotFound for an unknown command.  `request_text`: the JSON text of
    the whole request holding `arguments`, when the caller has it (its brackets
    bound the nesting without encoding `arguments` again).
    """
    if arguments is _ABSENT:
        arguments = {}
    # the request object is level 1: a text with few opening brackets cannot nest
    # `arguments` too deeply
    shallow = (
        request_text is not None
        and request_text.count("[") + request_text.count("{") <= _MAX_NESTING
    )
    if not shallow and _too_deep(arguments):
        raise QMPError("JSON nesting depth limit exceeded")
    if not isinstance(arguments, dict):
        raise QMPError("QMP input member 'arguments' must be an object")
    schema = ARGUMENTS.get(command) if isinstance(command, str) else None
    if schema is None:
        raise QMPError(f"The command {command} has not been found", "CommandNotFound")
    try:
        result: dict[str, Any] = schema.check(arguments, (), None)
    except RecursionError:
        # Legal nesting (< 1024 levels) deeper than Python's default limit.
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 8 * _MAX_NESTING))
        try:
            result = schema.check(arguments, (), None)
        finally:
            sys.setrecursionlimit(old)
    return result


def _too_deep(arguments: object) -> bool:
    """True if QEMU's JSON parser would refuse this nesting.  The request
    object is level 1 and `arguments` level 2; level _MAX_NESTING + 1 fails."""
    try:  # nesting needs an opening bracket a level: a text with few cannot be too deep
        text = _JSON(arguments)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is not None and text.count("[") + text.count("{") + 1 <= _MAX_NESTING:
        return False
    stack: list[tuple[object, int]] = [(arguments, 2)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        if depth > _MAX_NESTING:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False
