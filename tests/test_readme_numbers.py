"""README.md's generated numbers match what the commands it shows produce.

scripts/readme_numbers.py writes the regions; here the cheap region (the
scenario layout: every folder and what it holds) is compared for equality, and the expensive one
(`blocksim matrix` over every scenario, minutes) for its shape: every policy
and checker present, each cell `holds` or a breaking trace that exists with
its real step count, a trace count within 10% of the corpus'."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from sim.check import CHECKERS
from sim.trace import POLICIES, load_trace

ROOT = Path(__file__).resolve().parent.parent


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "readme_numbers", ROOT / "scripts" / "readme_numbers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_region_is_current_and_describes_every_folder() -> None:
    numbers = script()
    body = numbers.regions((ROOT / "README.md").read_text())["layout"]
    assert body == numbers.layout_region(), "run python3 scripts/readme_numbers.py --cheap"
    folders = {p.name for p in (ROOT / "scenarios").iterdir() if p.is_dir()}
    assert folders <= set(numbers.SCENARIO_FOLDERS), folders - set(numbers.SCENARIO_FOLDERS)
    for name in folders:
        assert f"`scenarios/{name}/`" in body


def test_matrix_region_has_the_shape_blocksim_matrix_prints() -> None:
    numbers = script()
    body = numbers.regions((ROOT / "README.md").read_text())["matrix"]
    lines = body.splitlines()
    assert lines[0] == "| invariant | " + " | ".join(f"`{p}`" for p in POLICIES) + " |"
    rows = {
        line.split("|")[1].strip().strip("`"): line for line in lines[2:] if line.startswith("| `")
    }
    assert set(rows) == set(CHECKERS)
    cell = re.compile(
        r"^(holds|\*\*broken\*\* by `(?P<path>[^`]+)` \((?P<steps>\d+) steps(, (?P<n>\d+) traces)?\))$"
    )
    for name, line in rows.items():
        cells = [c.strip() for c in line.split("|")[2:-1]]
        assert len(cells) == len(POLICIES), name
        for text in cells:
            m = cell.match(text)
            assert m, text
            if m["path"]:
                trace = load_trace(ROOT / m["path"])
                assert len(trace.steps) == int(m["steps"]), text
    # the count is as expensive as the table (a scenario added since shows up at the next
    # `python3 scripts/readme_numbers.py`): its form is checked, and that it is near the corpus'
    m = re.fullmatch(
        r"(\d+) traces, each replayed under every policy with every checker\.", lines[-1]
    )
    assert m, lines[-1]
    total = sum(1 for _ in (ROOT / "scenarios").rglob("*.jsonl"))
    assert 0.9 * total <= int(m[1]) <= total, (m[1], total)


def test_check_mode_names_a_stale_region(tmp_path: Path, monkeypatch: object) -> None:
    numbers = script()
    text = (ROOT / "README.md").read_text()
    stale = text.replace("| `scenarios/thread/` | ", "| `scenarios/thread/` | (stale) ")
    readme = tmp_path / "README.md"
    readme.write_text(stale)
    numbers.README = readme
    assert numbers.main(["--check", "--cheap"]) == 1
    numbers.main(["--cheap"])
    assert readme.read_text() == text
