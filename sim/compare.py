"""Comparing what a run produced with what a trace (or real QEMU) says.

The one home of the comparison used by `sim.replay` (expects, final-expect)
and by the oracle (`sim.oracle.diff`, simulator against real QEMU).

QEMU invents node names (`#blockNNN`); recorded traces write them `#auto`,
and the simulator invents its own, so every invented name equals every other,
also inside strings such as ``Node '#block12' is busy``.  Comparison is exact
otherwise: lists in order, objects by key set (not key order), and ``True``
is not ``1``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from sim import jsonio

_AUTO_RE = re.compile(r"#block\d+")
_SORTED_JSON = jsonio.encoder(sort_keys=True)
_SORTED_TEXT = jsonio.encoder(sort_keys=True, ensure_ascii=False)
AUTO = "#auto"


def normalize(value: Any) -> Any:
    """A deep copy with every invented node name replaced by `#auto`."""
    if isinstance(value, str):
        return _AUTO_RE.sub(AUTO, value) if "#block" in value else value
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def first_difference(expected: Any, actual: Any, path: str = "") -> str | None:
    """Where `actual` first differs from `expected`, as a readable path; None when equal."""
    if _identical(expected, actual):
        return None
    return next(differences(expected, actual, path), None)


def _identical(expected: Any, actual: Any) -> bool:
    """Equal values with the same JSON text (so no `True` for `1`, no `1.0` for `1`),
    or JSON texts equal once invented node names are `#auto` in both: nothing to
    report, found without walking the values in Python."""
    try:
        if expected == actual:
            return bool(_SORTED_JSON(expected) == _SORTED_JSON(actual))
        texts = _SORTED_TEXT(expected), _SORTED_TEXT(actual)
    except (TypeError, ValueError, RecursionError):
        return False
    if "#block" not in texts[0] and "#block" not in texts[1]:
        return False
    # non-ASCII kept as is: `#block` and its digits read in the text as in each string
    return bool(_AUTO_RE.sub(AUTO, texts[0]) == _AUTO_RE.sub(AUTO, texts[1]))


def differences(expected: Any, actual: Any, path: str = "") -> Iterator[str]:
    """Every place `actual` differs from `expected`, in document order (lazily).

    Each item reads ``PATH: what``, e.g. ``.return[0].count: expected 0, got 65536``;
    the top level is written ``(top)``.
    """
    where = path or "(top)"
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        for key in expected:
            if key not in actual:
                yield f"{where}: key {key!r} missing (expected {expected[key]!r})"
            else:
                yield from differences(expected[key], actual[key], f"{path}.{key}")
        extra = [k for k in actual if k not in expected]
        if extra:
            yield f"{where}: unexpected key(s) {extra}"
        return
    if isinstance(expected, list) and isinstance(actual, list):
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            yield from differences(e, a, f"{path}[{i}]")
        if len(expected) != len(actual):
            yield f"{where}: expected {len(expected)} item(s), got {len(actual)}"
        return
    if isinstance(expected, str) and isinstance(actual, str):
        if normalize(expected) != normalize(actual):
            yield f"{where}: expected {expected!r}, got {actual!r}"
        return
    if type(expected) is not type(actual) or expected != actual:
        yield f"{where}: expected {expected!r}, got {actual!r}"
