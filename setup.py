"""Build hook: the bundled scenarios and campaign profiles ship as package data.

They live at the repository's root (scenarios/, fuzz/profiles/); building the
package copies them into sim/_data/ so `blocksim demo`, `blocksim matrix` and
`blocksim fuzz --profile NAME` work after `pip install .` outside a checkout
(sim/bundled.py finds them).  Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED_FOLDERS = ("scenarios", "fuzz/profiles")  # as sim/bundled.py's BUNDLED_FOLDERS


class BuildWithBundledData(build_py):
    """build_py that also copies the bundled folders into the built package."""

    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        for relative in BUNDLED_FOLDERS:
            source = root / relative
            if source.is_dir():
                target = Path(self.build_lib) / "sim" / "_data" / relative
                shutil.copytree(source, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithBundledData})
