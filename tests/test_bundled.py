"""The bundled scenarios and campaign profiles are found outside a checkout.

`pip install .` builds the package through setup.py's build_py, which copies
scenarios/ and fuzz/profiles/ into sim/_data/; sim.bundled finds them there
when the working directory has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim import bundled as b
from sim.fuzz.campaign import load_profile

ROOT = Path(__file__).resolve().parent.parent


def test_build_copies_the_bundled_folders_into_the_package(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    data = lib / "sim" / "_data"
    for relative in b.BUNDLED_FOLDERS:
        shipped = sorted(p.relative_to(data) for p in (data / relative).rglob("*") if p.is_file())
        in_repo = sorted(p.relative_to(ROOT) for p in (ROOT / relative).rglob("*") if p.is_file())
        assert shipped == in_repo and shipped, relative
    assert (lib / "sim" / "bundled.py").is_file()


def test_outside_a_checkout_the_installed_copy_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "site" / "_data"
    (data / "fuzz" / "profiles").mkdir(parents=True)
    (data / "scenarios" / "thread").mkdir(parents=True)
    (data / "fuzz" / "profiles" / "tiny.toml").write_text("examples = 7\n")
    monkeypatch.setattr(b, "PACKAGE_DATA", data)
    monkeypatch.setattr(b, "CHECKOUT", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    assert b.bundled("scenarios") == data / "scenarios"
    assert load_profile("tiny") == {"examples": 7}
    with pytest.raises(ValueError, match="known: tiny"):
        load_profile("quick")
    # a folder in the working directory wins, named relatively
    (tmp_path / "scenarios").mkdir()
    assert b.bundled("scenarios") == Path("scenarios")


def test_from_anywhere_a_checkout_finds_its_own_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert b.bundled("scenarios").resolve() == (ROOT / "scenarios").resolve()
    assert load_profile("quick")["examples"] > 0


def test_output_names_an_installed_copy_by_its_place_in_the_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`blocksim demo` outside a checkout printed each bundled scenario by its
    site-packages path; it names it as the repository lays it out."""
    data = tmp_path / "site" / "_data"
    trace = data / "scenarios" / "engine" / "x.jsonl"
    trace.parent.mkdir(parents=True)
    trace.write_text("{}\n")
    monkeypatch.setattr(b, "PACKAGE_DATA", data)
    assert b.shown(trace) == "scenarios/engine/x.jsonl (bundled)"
    assert b.shown(Path("run/traces/demo.jsonl")) == "run/traces/demo.jsonl"
