"""Modules loaded on first use.

`numpy` here is numpy itself, but its import (about a third of a blocksim
process's start-up) runs only when something first reads one of its
attributes: a trace that never builds an array, and `blocksim --help`, never
pay for it.  Modules that use numpy import it from here.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """`name` as a module that executes on its first attribute access (the module
    itself when it is already imported)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


numpy = lazy_module("numpy")
