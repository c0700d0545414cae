"""The simulation engine: the machine, block jobs and guest workloads as simpy
processes, the timing model.

simpy is put in place here, before any engine module runs `import simpy`,
without its package `__init__`: that `__init__` only re-exports the classes of
simpy's submodules and reads simpy's version from the installed package
metadata, and `importlib.metadata` pulls in email, zipfile and csv (about a
tenth of a `blocksim replay` process's start-up).  The package holds the same
classes from the same submodules; the first read of any other attribute (such
as `simpy.__version__`) runs the real `__init__`.  When simpy is already
imported, it is left as it is; when the installed simpy does not hold these
submodules and classes, its own `__init__` runs as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# What simpy's package __init__ re-exports, by submodule (simpy 4.1).
_SIMPY_EXPORTS = {
    "simpy.core": ("Environment",),
    "simpy.events": ("AllOf", "AnyOf", "Event", "Process", "Timeout"),
    "simpy.exceptions": ("Interrupt", "SimPyException"),
    "simpy.resources.container": ("Container",),
    "simpy.resources.resource": ("PreemptiveResource", "PriorityResource", "Resource"),
    "simpy.resources.store": ("FilterStore", "PriorityItem", "PriorityStore", "Store"),
    "simpy.rt": ("RealtimeEnvironment",),
}


def _install_simpy() -> None:
    if "simpy" in sys.modules:
        return
    spec = importlib.util.find_spec("simpy")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("No module named 'simpy'", name="simpy")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> object:
        # PEP 562: called for a name the package does not hold (yet)
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    package.__dict__["__getattr__"] = complete
    sys.modules["simpy"] = package
    try:
        for submodule, names in _SIMPY_EXPORTS.items():
            loaded = importlib.import_module(submodule)
            for name in names:
                setattr(package, name, getattr(loaded, name))
    except (ImportError, AttributeError):
        # another simpy layout: import the package the ordinary way
        del sys.modules["simpy"]
        importlib.import_module("simpy")
    except BaseException:
        del sys.modules["simpy"]
        raise


_install_simpy()
