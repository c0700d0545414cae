"""Where the bundled scenarios and campaign profiles are.

A checkout has them at the repository's root (`scenarios/`, `fuzz/profiles/`);
an installed package carries copies as package data in `sim/_data/` (setup.py
copies them there when the package is built).  `bundled(RELATIVE)` answers
the folder in the working directory when there is one (so a checkout's paths
stay relative and every output names them as before), else the installed
copy, else the checkout this package was imported from."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "_data"
CHECKOUT = Path(__file__).resolve().parent.parent

# what setup.py copies into the package (folders, relative to the repository's root)
BUNDLED_FOLDERS = ("scenarios", "fuzz/profiles")


def bundled(relative: str) -> Path:
    """The bundled folder `relative` (one of BUNDLED_FOLDERS); the relative path itself
    when no copy exists anywhere (the caller says it is missing)."""
    if Path(relative).exists():
        return Path(relative)
    for base in (PACKAGE_DATA, CHECKOUT):
        if (base / relative).exists():
            return base / relative
    return Path(relative)


def shown(path: Path) -> str:
    """How output names a file of the installed copy: by its place in the repository's
    layout (`scenarios/engine/x.jsonl (bundled)`), not by the site-packages path it was
    read from; any other path as it is."""
    try:
        return f"{path.resolve().relative_to(PACKAGE_DATA.resolve())} (bundled)"
    except ValueError:
        return str(path)
