"""QEMU's JSON writer (qobject/qjson.c) and the key order of its dictionaries.

QMP output is one JSON text per message followed by CRLF.  QEMU writes
`", "` and `": "` separators, escapes every character outside printable
ASCII as ``\\uXXXX`` with upper-case hex (a surrogate pair above U+FFFF) and
prints a QDict's members in its iteration order (`sim.qmp.schema.qdict_order`),
which is why a response reads ``{"return": ..., "id": ...}`` but an error
``{"id": ..., "error": ...}``.  Only the top-level keys of responses and
events are put in QDict order here; what command handlers return is written
in the order they built it.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from sim.qmp.schema import qdict_order

_ESCAPE = re.compile(r'[\x00-\x1f"\\\x7f-\U0010ffff]')
_SIMPLE = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group(0)
    simple = _SIMPLE.get(c)
    if simple is not None:
        return simple
    cp = ord(c)
    if 0xD800 <= cp <= 0xDFFF:  # a lone surrogate from a lossy decode
        return "\\uFFFD"
    if cp > 0xFFFF:
        cp -= 0x10000
        return f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}"
    return f"\\u{cp:04X}"


def _string(s: str) -> str:
    return '"' + _ESCAPE.sub(_escape_char, s) + '"'


def to_json(obj: Any) -> str:
    """One QObject as QEMU writes it (compact, `, ` and `: ` separators)."""
    if isinstance(obj, str):
        return _string(obj)
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if obj is None:
        return "null"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        return "{" + ", ".join(f"{_string(str(k))}: {to_json(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        if not obj:
            return "[]"
        return "[" + ", ".join(to_json(v) for v in obj) + "]"
    return _string(str(obj))


def _float(value: float) -> str:
    """QEMU prints a double with %.17g (JSON has no inf/nan; neither does QMP)."""
    if value != value or value in (float("inf"), float("-inf")):
        return "null"
    return f"{value:.17g}"


def qdict_ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with its top-level keys in QEMU's QDict iteration order."""
    return {k: obj[k] for k in qdict_order(list(obj))}


# the reader accepts 1024 levels of nesting (QEMU's MAX_NESTING); an `id` that
# deep is echoed, and to_json takes two frames a level
_ENCODE_RECURSION = 4 * 1024 + 200


def encode_message(obj: dict[str, Any]) -> bytes:
    """A response, event or greeting as the bytes QEMU puts on the socket."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _ENCODE_RECURSION))
    try:
        return (to_json(qdict_ordered(obj)) + "\r\n").encode("ascii")
    finally:
        sys.setrecursionlimit(old)


def dumps_compact(obj: Any) -> str:
    """Plain JSON for logs (not the wire)."""
    return json.dumps(obj, separators=(",", ":"))
