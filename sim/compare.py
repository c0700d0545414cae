"""Comparing what a run produced with what a trace expects.

QEMU invents node names (`#blockNNN`); recorded traces write them `#auto`,
and the simulator invents its own, so every invented name is normalised to
`#auto` on both sides before comparing.  Comparison is exact otherwise.
"""

from __future__ import annotations

import re
from typing import Any

_AUTO_RE = re.compile(r"#block\d+")
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
    """None when equal (after normalisation), else where and how they differ."""
    return _diff(normalize(expected), normalize(actual), path or "$")


def _diff(exp: Any, act: Any, path: str) -> str | None:
    if isinstance(exp, dict) and isinstance(act, dict):
        for key in exp:
            if key not in act:
                return f"{path}.{key}: missing (expected {_short(exp[key])})"
            d = _diff(exp[key], act[key], f"{path}.{key}")
            if d:
                return d
        for key in act:
            if key not in exp:
                return f"{path}.{key}: unexpected {_short(act[key])}"
        return None
    if isinstance(exp, list) and isinstance(act, list):
        for i, (e, a) in enumerate(zip(exp, act, strict=False)):
            d = _diff(e, a, f"{path}[{i}]")
            if d:
                return d
        if len(exp) != len(act):
            extra = act[len(exp) :] if len(act) > len(exp) else exp[len(act) :]
            which = "unexpected extra" if len(act) > len(exp) else "missing"
            return f"{path}: length {len(act)}, expected {len(exp)} ({which}: {_short(extra[0])})"
        return None
    if type(exp) is not type(act) or exp != act:
        return f"{path}: expected {_short(exp)}, got {_short(act)}"
    return None


def _short(value: Any, limit: int = 160) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
