"""JSON in and out, strict as QEMU 7.2's parser and never producing invalid JSON.

Reading (`loads`): one JSON text, as QEMU's `qobject/json-parser.c` reads a
QMP request.  `NaN`, `Infinity` and numbers that overflow a double are
refused (QEMU refuses the first two; it reads `1e400` as inf and then echoes
the invalid token `inf`, which no output of ours may contain).  An integer
outside int64 and uint64 becomes a double, as in QEMU (`id`
123456789012345678901234567890 comes back as 1.2345678901234568e+29), so no
integer beyond Python's string-conversion limit ever enters the simulator.
Nesting is bounded (`MAX_DEPTH`) so nothing downstream recurses deeply.

Strings may still carry lone UTF-16 surrogates (`"\\ud800"`): JSON's
grammar allows the escape, QEMU does not (`JSON parse error, \\ud800 is not
a valid Unicode character`).  `lone_surrogate(obj)` finds one so the caller
can answer as QEMU does.

Writing (`dumps`): UTF-8 text, non-ASCII kept, every lone surrogate written
as its `\\uXXXX` escape (valid JSON, encodable as UTF-8), NaN and infinities
refused (ValueError: a simulator bug, since input cannot carry them).
"""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 128  # objects and arrays nested deeper are refused
INT64_MIN = -(1 << 63)
UINT64_MAX = (1 << 64) - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def encoder(*, sort_keys: bool = False, ensure_ascii: bool = True) -> Callable[[object], str]:
    """`json.JSONEncoder(sort_keys=..., ensure_ascii=...).encode` for comparing and
    scanning values, the same text, with the C encoder made once rather than at each
    call (its set-up costs more than encoding a small answer).  No check for
    circular references: a cycle raises RecursionError (TypeError for a value JSON
    cannot hold, as `encode` raises)."""
    plain = json.JSONEncoder(sort_keys=sort_keys, ensure_ascii=ensure_ascii, check_circular=False)
    c_make = getattr(json.encoder, "c_make_encoder", None)  # the C accelerator's
    if c_make is None:  # no C accelerator: the pure-Python encoder
        return plain.encode
    make = c_make(
        None,
        plain.default,
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring,
        None,
        plain.key_separator,
        plain.item_separator,
        sort_keys,
        False,
        True,
    )

    def encode(value: object) -> str:
        return "".join(make(value, 0))

    return encode


_RAW_JSON = encoder(ensure_ascii=False)


class JSONInputError(ValueError):
    """A text that is not one strict JSON value; `str()` says why in a few words."""


def _refuse_constant(name: str) -> Any:
    raise JSONInputError(
        f"{name} is not a JSON value (QEMU 7.2: JSON parse error, stray '{name[1] if name.startswith('-') else name[0]}')"
    )


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONInputError(f"the number {_short(text)} is out of range of a double")
    return value


def _parse_int(text: str) -> int | float:
    # int64 and uint64 have at most 20 digits; longer literals are never in range,
    # and int() of a very long one would hit Python's string-conversion limit
    if len(text) <= 21:
        value = int(text)
        if INT64_MIN <= value <= UINT64_MAX:
            return value
    return _parse_float(text)


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


_DECODER = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_refuse_constant
)


def loads(text: str) -> Any:
    """Decode one strict JSON text; raises JSONInputError (never anything else)."""
    try:
        value = _DECODER.decode(text)
    except JSONInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONInputError(str(exc)) from None
    except RecursionError:
        raise JSONInputError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # defensive: any other conversion problem of the decoder
        raise JSONInputError(str(exc)) from None
    # nesting needs an opening bracket a level: a text with few cannot be too deep
    if text.count("[") + text.count("{") > MAX_DEPTH and depth(value) > MAX_DEPTH:
        raise JSONInputError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def depth(value: object) -> int:
    """How deeply objects and arrays nest in `value` (a scalar is 0); iterative."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            items: Any = item.values()
        elif isinstance(item, list | tuple):
            items = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        stack.extend((child, level) for child in items)
    return deepest


def json_text(value: object) -> str | None:
    """`value` as JSON text, non-ASCII kept (None when it is not JSON-encodable)."""
    try:
        return _RAW_JSON(value)
    except (TypeError, ValueError, RecursionError):
        return None


def lone_surrogate(value: object, text: str | None = None) -> str | None:
    """The first lone UTF-16 surrogate in any string or key of `value`, or None.
    `text`: `json_text(value)`, when the caller has it."""
    if text is None:
        text = json_text(value)
    if text is not None and _SURROGATE.search(text) is None:
        return None  # most values have none: one search over their JSON text says so
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def source_surrogate(source: str, value: object) -> str | None:
    """`lone_surrogate(value)` for a value decoded from the JSON text `source`.  With
    no `\\u` escape in `source`, every character of value's strings and keys stands
    in `source` as it is (the other escapes stand for ASCII characters): a search of
    `source` finds none in most texts, without encoding `value` again."""
    if "\\u" not in source and _SURROGATE.search(source) is None:
        return None
    return lone_surrogate(value)


def qemu_surrogate_error(char: str) -> dict[str, Any]:
    """QEMU 7.2's answer to a request carrying the lone surrogate `char` (no `id`:
    the request was never parsed)."""
    desc = f"JSON parse error, \\u{ord(char):04x} is not a valid Unicode character"
    return {"error": {"class": "GenericError", "desc": desc}}


def dumps(obj: object, **kwargs: Any) -> str:
    """The one JSON encoding of every output line: valid JSON, valid UTF-8."""
    kwargs.setdefault("separators", (", ", ": "))
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, **kwargs)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def escape_text(text: str) -> str:
    """`text` with lone surrogates written as `\\uXXXX`, so it can be printed."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_filename_options(name: str) -> dict[str, Any] | None:
    """The options object of a ``json:{...}`` file name (bdrv_open's json:
    pseudo-protocol, as QEMU writes such names for nodes a file name cannot
    describe); None for any other name or one that does not parse to an object."""
    if not name.startswith("json:"):
        return None
    try:
        options = json.loads(name[len("json:") :])
    except ValueError:
        return None
    return options if isinstance(options, dict) else None
