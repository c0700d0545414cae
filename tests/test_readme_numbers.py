"""README.md's generated numbers match what the commands it shows produce.

scripts/readme_numbers.py writes the regions; here the cheap regions (the
scenario layout: every folder and what it holds; the costs, fuzzer-power and
differential tables rendered from bench/results/) are compared for equality, and the expensive one
(`blocksim matrix` over every scenario, minutes) for its shape: every policy
and checker present, each cell `holds` or a breaking trace that exists with
its real step count, a trace count within 10% of the corpus'."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sim.check import CHECKERS
from sim.trace import POLICIES, load_trace

ROOT = Path(__file__).resolve().parent.parent


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "readme_numbers", ROOT / "scripts" / "readme_numbers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_numbers"] = module  # its dataclasses look their module up
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


def test_measured_tables_are_rendered_from_the_results_the_tools_wrote() -> None:
    """The costs, fuzzer-power and differential tables are the output files of
    bench/bench_costs.py --json, tests/test_fuzz_power.py (BLOCKSIM_POWER_TABLE=*.json)
    and the differential campaign's merged summary, rendered by their own code."""
    numbers = script()
    body = numbers.regions((ROOT / "README.md").read_text())
    for name in (
        "costs",
        "fuzz-power",
        "differential-campaigns",
        "differential-classes",
        "race-coverage",
        "serve",
        "shards",
        "malformed",
        "profile",
    ):
        assert body[name] == numbers.REGIONS[name][0](), "run python3 scripts/readme_numbers.py"
    costs = json.loads((ROOT / "bench" / "results" / "costs.json").read_text())
    assert len(body["costs"].splitlines()) >= len(costs["rows"]) + 2
    for row in costs["rows"]:
        assert f"| {row['work']} |" in body["costs"] and row["verdict"] in ("met", "NOT met")
    power = json.loads((ROOT / "bench" / "results" / "fuzz-power.json").read_text())
    found = sum(f["found"] for f in power["findings"])
    assert f"{found} of {len(power['findings'])} mutants found" in body["fuzz-power"]


def test_bench_costs_json_round_trips_and_keeps_rows_not_run(tmp_path: Path) -> None:
    numbers = script()
    bench = numbers._module(ROOT / "bench" / "bench_costs.py")
    table = bench.Table()
    table.row = "one"
    table.add("one trace", "1 s", "2 s", "2x slower", "faster", False)
    earlier = {"rows": [{"row": "traces", "work": "old", "qemu": "q", "blocksim": "b",
                         "ratio": "r", "target": "t", "verdict": "met"},
                        {"row": "one", "work": "replaced", "qemu": "", "blocksim": "",
                         "ratio": "", "target": "", "verdict": "met"}]}  # fmt: skip
    doc = json.loads(json.dumps(table.to_json("python bench/bench_costs.py one", earlier)))
    assert [r["row"] for r in doc["rows"]] == ["traces", "one"]  # ROWS order, "one" replaced
    assert doc["rows"][1]["work"] == "one trace" and doc["rows"][1]["verdict"] == "NOT met"
    assert isinstance(doc["rows"][1]["load_average"], float)
    text = bench.Table.from_json(doc).markdown()
    assert text.splitlines()[-1] == "| one trace | 1 s | 2 s | 2x slower | faster | NOT met |"
    results = tmp_path / "results"
    results.mkdir()
    (results / "costs.json").write_text(json.dumps(doc))
    region = numbers.costs_region(results)
    assert region.startswith(text) and "`one`: `python bench/bench_costs.py one`" in region


def test_power_findings_json_renders_the_table_the_test_prints(tmp_path: Path) -> None:
    numbers = script()
    power = numbers._module(ROOT / "tests" / "test_fuzz_power.py")
    findings = [power.Finding("m1", True, 1.25, 30, 1, "bitmap-precision"),
                power.Finding("m2", False, 20.0, 400, 0, "")]  # fmt: skip
    results = tmp_path / "results"
    results.mkdir()
    (results / "fuzz-power.json").write_text(power.power_json(findings))
    region = numbers.power_region(results)
    printed = [line for line in power.table(findings).splitlines() if line.startswith("|")]
    assert region.startswith("\n".join(printed))
    assert "| `m1` | yes | 1.2 s | 30 | 1 step | `bitmap-precision` |" in region
    assert f"1 of 2 mutants found within {power.EXAMPLES:,} examples each" in region


def test_a_differential_summary_becomes_a_campaign_row() -> None:
    numbers = script()
    summary = {"traces": 675, "identical": 538, "untestable": 124, "steps": 12728,
               "steps_matched": 12563}  # fmt: skip
    row = numbers.differential_row(summary, "seed 2027", "103df14")
    assert (row["drawn"], row["diffed"]) == (799, 675) and row["classes"] == []
    assert (row["traces_per_1000"], row["steps_per_1000"]) == (797, 987)


def test_a_summary_keeps_its_classes_and_the_class_table_follows_the_latest(
    tmp_path: Path,
) -> None:
    """The class table counts the latest campaign's traces per class (from its summary,
    via --add-differential), shows each pinned class with the reason its trace gives, a
    pinned class the campaign did not meet with its count when pinned, and a class nobody
    pinned as unexplained."""
    numbers = script()
    folder = tmp_path / "pinned"
    folder.mkdir()
    for name, sig, n, reason in (
        ("a.jsonl", "response:query-block:x|y", "7", "// reason: a `pipe`\n"),
        ("b.jsonl", "qemu-died:transaction", "75", "// reason: QEMU crashes\n"),
    ):
        header = {"trace": 1, "drives": [], "description": f"known difference "
                  f"(differential campaign class {sig}, {n} of the campaign's traces): pinned"}  # fmt: skip
        (folder / name).write_text(json.dumps(header) + "\n" + reason + "// other\n")
    summary = {"traces": 10, "identical": 5, "untestable": 2, "steps": 100, "steps_matched": 90,
               "classes": [{"signature": "response:query-block:x|y", "count": 3, "seeds": [1],
                            "reproduced": "2/2"},
                           {"signature": "final:new", "count": 4, "seeds": [2],
                            "reproduced": "0/2"},
                           {"signature": "final:flaky", "count": 2, "seeds": [3, 4],
                            "reproduced": "0/2", "nondeterministic": [3, 4]}]}  # fmt: skip
    results = tmp_path / "results"
    results.mkdir()
    older = numbers.differential_row({**summary, "classes": []}, "seed 1", "abc")
    rows = [older, numbers.differential_row(summary, "seed 2", "def")]
    rows.append({k: v for k, v in rows[0].items() if k != "classes"})  # a row kept no classes
    (results / "differential-campaigns.json").write_text(json.dumps({"campaigns": rows}))
    body = numbers.differential_classes_region(results, folder)
    lines = [line for line in body.splitlines() if line.startswith("| `")]
    assert lines == [
        "| `final:new` | 4 | **unexplained**: no pinned trace names this class (its shrunk "
        "trace showed it again in 0/2 runs on QEMU 7.2) | none |",
        "| `response:query-block:x\\|y` | 3 | a `pipe` | "
        "`known-differences/differential/a.jsonl` |",
        "| `final:flaky` | 2 | **QEMU nondeterministic**: QEMU 7.2 answered a re-run of each "
        "of its traces differently where the simulator differs (QEMU's answers in the "
        "campaign's `failures/qemu-nondeterministic/`) | none |",
        "| `qemu-died:transaction` | 0 (75 when pinned) | QEMU crashes | "
        "`known-differences/differential/b.jsonl` |",
    ]
    assert body.startswith("Every class of the latest campaign that recorded its classes, "
                           "seed 2 (3 classes, 9 traces: 1 pinned, 1 unexplained, "
                           "1 QEMU-nondeterministic")  # fmt: skip


def test_a_campaign_folder_gives_the_race_coverage_sentence(tmp_path: Path) -> None:
    """--race-coverage OUT keeps what the campaign's own files say (campaign.json,
    coverage.json); the README sentence is made from it."""
    numbers = script()
    out = tmp_path / "run"
    out.mkdir()
    rc = {"command-x-job-status": {"reached": 44, "exist": 45, "missing": ["x"]},
          "progress-deciles": {"reached": 150, "exist": 160},
          "interleavings": {"sequences-with-several": 9}}  # fmt: skip
    (out / "coverage.json").write_text(json.dumps({"race-coverage": rc}))
    (out / "campaign.json").write_text(json.dumps(
        {"config": {"policy": "qemu-7.2", "seed": 3}, "examples": 1000, "wall_s": 99.6}
    ))  # fmt: skip
    record = numbers.race_coverage_record(out, "blocksim fuzz --seed 3")
    assert record["race-coverage"] == rc and record["wall_s"] == 100
    results = tmp_path / "results"
    results.mkdir()
    (results / "race-coverage.json").write_text(json.dumps(record))
    text = numbers.race_coverage_region(results)
    assert text.startswith("Measured: `blocksim fuzz --seed 3` (qemu-7.2, seed 3: 1,000 examples")
    assert "reached 44 of the 45 command x job-status cells and 150 of the 160" in text
    assert "ran 9 command sequences" in text


def test_the_serve_figures_are_what_bench_serve_wrote() -> None:
    """bench/results/serve.json has the keys bench/bench_serve.py --json writes, and the
    README paragraph states its request count, losses and throughput."""
    numbers = script()
    doc = json.loads((ROOT / "bench" / "results" / "serve.json").read_text())
    assert doc["command"].startswith("python bench/bench_serve.py")
    assert doc["requests"] == doc["clients"] * doc["commands"]
    text = numbers.serve_region()
    assert f"{doc['requests']:,} requests, {doc['lost']} lost" in text
    assert f"{doc['requests_per_s']:,} requests/s" in text
    source = (ROOT / "bench" / "bench_serve.py").read_text()
    for key in doc:
        assert f'"{key}"' in source, key  # written by the benchmark, not by hand


def test_the_shard_throughput_is_what_bench_shards_wrote(tmp_path: Path) -> None:
    """bench/results/shards.json has the keys bench/bench_shards.py --json writes; the
    paragraph gives its speed-up, verdict, rates and the load it was measured at."""
    numbers = script()
    doc = json.loads((ROOT / "bench" / "results" / "shards.json").read_text())
    source = (ROOT / "bench" / "bench_shards.py").read_text()
    for key in [*doc, *doc["runs"][0]]:
        assert f'"{key}"' in source, key  # written by the benchmark, not by hand
    assert doc["command"].startswith("python bench/bench_shards.py")
    assert len(doc["runs"]) == 2 * len(doc["speed_ups"])
    text = numbers.shards_region()
    assert f"speed-up with 2 workers {doc['speed_up']:.2f}x" in text
    assert f"{doc['runs'][0]['steps_per_s']:,} and {doc['runs'][1]['steps_per_s']:,}" in text
    # a quiet run that meets the target says so, and the load span follows the runs
    quiet = dict(doc, speed_up=1.9, speed_ups=[1.9], runs=[
        dict(r, load_before=0.2, load_after=0.4) for r in doc["runs"][:2]])  # fmt: skip
    (tmp_path / "shards.json").write_text(json.dumps(quiet))
    text = numbers.shards_region(tmp_path)
    assert "target >= 1.7x: met" in text and "load average 0.2-0.4 around" in text


def test_the_malformed_output_block_is_what_bench_malformed_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench_malformed.py --json keeps the lines it printed; the README block is those
    lines under the command, and a run short of the million says its size."""
    numbers = script()
    bench = numbers._module(ROOT / "bench" / "bench_malformed.py")
    out = tmp_path / "malformed.json"
    argv = ["bench_malformed.py", "--inputs", "300", "--seed", "3", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    doc = json.loads(out.read_text())
    assert doc["command"] == "python bench/bench_malformed.py --inputs 300 --seed 3"
    assert doc["inputs"] >= 300 and doc["tracebacks"] == 0
    text = numbers.malformed_region(tmp_path)
    printed = capsys.readouterr().out
    for line in doc["output"]:
        assert f"    {line}\n" in text + "\n" and line in printed
    assert "a run of 300 inputs, not the million of the target" in text
    shown = json.loads((ROOT / "bench" / "results" / "malformed.json").read_text())
    assert shown["tracebacks"] == shown["hangs"] == shown["invalid_output"] == 0


def test_the_profile_paragraph_is_what_bench_profile_wrote() -> None:
    """bench/results/profile.json has the keys bench/bench_profile.py --json writes; the
    paragraph's start-up parts add up to the process's CPU."""
    numbers = script()
    doc = json.loads((ROOT / "bench" / "results" / "profile.json").read_text())
    source = (ROOT / "bench" / "bench_profile.py").read_text()
    for key in [*doc, *doc["writes"], *doc["one"], *doc["traces"]]:
        assert f'"{key}"' in source, key  # written by the benchmark, not by hand
    text = numbers.profile_region()
    one = doc["one"]
    assert f"as a process: {one['process_ms']} ms of CPU" in text
    parts = [int(m) for m in re.findall(r"(?:hooks|click|modules) (\d+) ms", text)]
    rest = int(re.search(r"\(`-m`, exit\) (-?\d+) ms", text)[1])  # type: ignore[index]
    assert sum(parts) + one["replay_ms"] + rest == pytest.approx(one["process_ms"], abs=1)
    # the rest is what the parts leave of the process: measured parts cannot exceed it
    assert 0 <= rest < one["process_ms"]
    for name, pct in doc["traces"]["shares"]:
        assert f"{name}` {pct:g}%" in text or f"{name} {pct:g}%" in text
    # the replay cost a step and the costs table's `steps` row are different measurements
    # of the same traces: each is named for what it counts
    steps = [r for r in json.loads((ROOT / "bench" / "results" / "costs.json").read_text())["rows"]
             if r["row"] == "steps"]  # fmt: skip
    tr = doc["traces"]
    assert (f"replaying {tr['replay_us_per_step']} us of CPU a step ({tr['steps']:,} steps), "
            "each trace's `Replayer` set-up and final queries included") in text  # fmt: skip
    if steps:
        assert (f"the costs table's `steps` row, {steps[0]['blocksim']}, is another "
                "measurement: the wall time of `run_step` alone") in text  # fmt: skip


def test_the_fresh_iotest_recordings_cover_every_trace_the_script_writes(
    tmp_path: Path,
) -> None:
    """bench/results/iotests.json (scripts/iotest_traces.py OUT --record RUNS --json)
    names every trace the script writes now: a new conversion needs a new measurement."""
    numbers = script()
    writer = numbers._module(ROOT / "scripts" / "iotest_traces.py")
    writer.write_all(tmp_path)
    doc = numbers.iotests_fresh()
    assert sorted(r["trace"] for r in doc["traces"]) == sorted(p.stem for p in tmp_path.iterdir())
    assert doc["total"] == len(doc["traces"])
    assert doc["replay_exactly"] == sum(r["replays_exactly"] for r in doc["traces"])
    assert all(r["event_orders"] >= 1 for r in doc["traces"] if r["recorded"])
    assert "7.2" in doc["qemu"]


def test_every_pinned_difference_says_why() -> None:
    from sim.fuzz.differential import pinned_differences

    pinned = pinned_differences()
    assert pinned and all(p.reason for p in pinned), [p.path.name for p in pinned if not p.reason]


def test_numbers_in_the_prose_are_current_and_rewritten_when_stale() -> None:
    """Each number `CLAIMS` finds in README.md equals its source (a count of scenario
    files or mutants, a default or a limit of the code); a stale one is named by --check
    and set back by a rewrite."""
    numbers = script()
    text = (ROOT / "README.md").read_text()
    assert numbers.claims_stale(text) == [], "run python3 scripts/readme_numbers.py --cheap"
    races = sum(1 for _ in (ROOT / "scenarios" / "races").glob("*.jsonl"))
    assert f"`scenarios/races/` holds {races} such races" in text
    stale = text.replace(f"holds {races} such races", f"holds {races + 1} such races")
    assert [s.split(":")[0] for s in numbers.claims_stale(stale)] == ["races recorded on QEMU 7.2"]
    assert numbers.rewrite_claims(stale) == text


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


@pytest.mark.slow
def test_matrix_region_is_what_blocksim_matrix_gives_now(request: pytest.FixtureRequest) -> None:
    """The matrix region equals `blocksim matrix` over today's scenarios and checkers (a
    minute: CI runs it with -m slow, scripts/run-tests.sh; BLOCKSIM_SLOW=1 here), so a
    checker change or a new scenario that moves a cell fails until the region is
    regenerated (python3 scripts/readme_numbers.py)."""
    if not (
        "slow" in str(request.config.getoption("markexpr", "")) or os.environ.get("BLOCKSIM_SLOW")
    ):
        pytest.skip("a minute: runs with -m slow (CI) or BLOCKSIM_SLOW=1")
    numbers = script()
    body = numbers.regions((ROOT / "README.md").read_text())["matrix"]
    assert body == numbers.matrix_region(), "run python3 scripts/readme_numbers.py"


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


def test_power_results_list_every_mutant_found() -> None:
    """bench/results/fuzz-power.json (what README.md's mutant table is made from) was
    measured on the whole catalogue of tests/mutant_catalog.py, and found every mutant."""
    import json

    from tests.mutant_catalog import ALL_MUTANTS

    doc = json.loads((ROOT / "bench" / "results" / "fuzz-power.json").read_text())
    assert [f["mutant"] for f in doc["findings"]] == [m.name for m in ALL_MUTANTS]
    assert [f["mutant"] for f in doc["findings"] if not f["found"]] == []


def test_a_class_a_recorded_scenario_shows_fixed_is_listed_as_fixed(tmp_path: Path) -> None:
    """A class of the latest campaign that a scenario recorded on QEMU 7.2 names in a
    `// fixes:` line is listed as fixed since, with that scenario, not as unexplained."""
    numbers = script()
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "r.jsonl").write_text('{"trace": 1}\n// fixes: final:gone\n')
    summary = {"traces": 4, "identical": 1, "untestable": 0, "steps": 10, "steps_matched": 9,
               "classes": [{"signature": "final:gone", "count": 2, "seeds": [3],
                            "reproduced": "2/2"},
                           {"signature": "final:new", "count": 1, "seeds": [4],
                            "reproduced": "2/2"}]}  # fmt: skip
    results = tmp_path / "results"
    results.mkdir()
    rows = [numbers.differential_row(summary, "seed 9", "abc")]
    (results / "differential-campaigns.json").write_text(json.dumps({"campaigns": rows}))
    body = numbers.differential_classes_region(results, pinned, recorded)
    lines = [line for line in body.splitlines() if line.startswith("| `")]
    assert lines[0] == (
        "| `final:gone` | 2 | fixed since: the rule is modelled, `recorded/r.jsonl` (recorded "
        "on QEMU 7.2) shows it | none |"
    )
    assert lines[1].startswith("| `final:new` | 1 | **unexplained**")
    assert "1 fixed since, 1 unexplained" in body


# -- the audit: every number of README.md comes from a command or a named source ----------


def test_every_number_in_the_readme_comes_from_a_command_or_a_named_source() -> None:
    """Outside the generated regions (written by scripts/readme_numbers.py from what a
    shown command wrote) and the code it shows, every number of README.md is a CLAIM or a
    SOURCE: a version, a default or limit of the code or of QEMU (checked against the
    constant where the model has one), an input of a shown command or test, or what a
    recorded scenario says of itself.  A hand-written measurement fails here."""
    numbers = script()
    text = (ROOT / "README.md").read_text()
    assert numbers.unsourced_numbers(text) == [], (
        "a number no command writes: generate it (scripts/readme_numbers.py) or list it "
        "in SOURCES with where it comes from"
    )
    assert numbers.sources_stale(text) == []


def test_the_audit_flags_a_hand_written_measurement_and_a_stale_constant() -> None:
    numbers = script()
    text = (ROOT / "README.md").read_text()
    prose = text.replace(
        "## Permissions\n", "## Permissions\n\nA snapshot takes 3.2 ms, 1,000 times 4x.\n"
    )
    flagged = numbers.unsourced_numbers(prose)
    assert [f.split(": ")[1].split(" in ")[0] for f in flagged] == ["'3.2'", "'1,000'", "'4'"]
    # the same figure inside a generated region, or shown as code, is not prose
    region = text.replace(
        "<!-- /numbers:serve -->", "A snapshot takes 3.2 ms.\n<!-- /numbers:serve -->"
    )
    assert numbers.unsourced_numbers(region) == []
    code = text.replace("## Permissions\n", "## Permissions\n\n`--speed 3.2`\n")
    assert numbers.unsourced_numbers(code) == []
    # ... but a figure with its unit is one, in code or glued to its unit
    units = text.replace("## Permissions\n", "## Permissions\n\nIt takes 500ms (`3.2 ms`).\n")
    assert [f.split(": ")[1].split(" in ")[0] for f in numbers.unsourced_numbers(units)] == [
        "'500'", "'3.2'"]  # fmt: skip
    # a name with digits is no number; a number next to a name still is
    names = text.replace("## Permissions\n", "## Permissions\n\next4 rec-0211 bitmap0 int64\n")
    assert numbers.unsourced_numbers(names) == []
    # a constant that drifts from the code is named
    stale = text.replace("up to 64 at a time", "up to 32 at a time")
    assert any(
        "BLOCK_COPY_MAX_WORKERS" in s and "says 32" in s for s in numbers.sources_stale(stale)
    )
    # a scenario's run count that the scenario does not say is named
    runs = text.replace("5 of 5 runs on", "4 of 5 runs on")
    assert any("backup-first-tasks" in s for s in numbers.sources_stale(runs))
    # and a source whose sentence is gone is named too
    gone = text.replace("errno (5 or 28)", "an errno")
    assert any("EIO and ENOSPC" in s for s in numbers.sources_stale(gone))


# -- derived figures, recomputed from what the tools wrote ---------------------------------


def _shown(figure: str) -> tuple[float, float]:
    """The interval a figure printed with its decimals stands for (1,208 -> 1207.5-1208.5)."""
    digits = figure.replace(",", "")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    half = 0.5 * 10**-decimals
    return float(digits) - half, float(digits) + half


def _figures(text: str) -> list[tuple[float, float]]:
    return [_shown(m) for m in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]


def _ratio(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] / b[1], (a[1] / b[0] if b[0] > 0 else float("inf"))


def _agrees(shown: tuple[float, float], computed: tuple[float, float]) -> bool:
    return shown[0] <= computed[1] and computed[0] <= shown[1]


def test_the_costs_ratios_and_verdicts_follow_from_their_own_figures() -> None:
    """Each costs row's ratio is its QEMU figure over its blocksim figure (or the growth
    over depth), within the rounding they were printed with, and its verdict follows
    from the figures and the target: a hand-edited figure, ratio or verdict fails."""
    doc = json.loads((ROOT / "bench" / "results" / "costs.json").read_text())
    rows = {r["row"]: r for r in doc["rows"]}
    checked = set()

    def ratio(row: str, q: int, s: int, r: int = 0) -> tuple[float, float]:
        figures = rows[row]
        computed = _ratio(_figures(figures["qemu"])[q], _figures(figures["blocksim"])[s])
        assert _agrees(_figures(figures["ratio"])[r], computed), (row, figures, computed)
        checked.add(row)
        return computed

    def verdict(row: str, met: bool) -> None:
        assert rows[row]["verdict"] == ("met" if met else "NOT met"), rows[row]

    if "traces" in rows:
        verdict("traces", ratio("traces", 0, 0)[0] >= 100)
        ratio("traces", 1, 2, 1)  # CPU: QEMU's over the blocksim process's, start-up included
    if "steps" in rows:
        q, s = _figures(rows["steps"]["qemu"])[0], _figures(rows["steps"]["blocksim"])[0]
        computed = _ratio((q[0] * 1000, q[1] * 1000), s)  # ms over us
        assert _agrees(_figures(rows["steps"]["ratio"])[0], computed)
        verdict("steps", computed[0] >= 50)
        checked.add("steps")
    if "one" in rows:
        faster = ratio("one", 0, 0)
        ratio("one", 1, 1, 1)
        verdict("one", faster[0] > 1)
    if "backup" in rows:
        peak = _figures(rows["backup"]["blocksim"])[1]
        verdict("backup", ratio("backup", 0, 0)[0] >= 10 and peak[1] < 200)
    if "qnbn" in rows:
        ratio("qnbn", 0, 0)
        verdict("qnbn", _figures(rows["qnbn"]["blocksim"])[0][1] < 10)
    if "snapshot" in rows:
        figures = _figures(rows["snapshot"]["blocksim"])  # depth 50, bare, depth 25
        growth = _ratio(figures[0], figures[3])
        assert _agrees(_figures(rows["snapshot"]["ratio"])[1], growth), rows["snapshot"]
        verdict("snapshot", growth[0] <= 2)  # the target: linear, x2 or less
        checked.add("snapshot")
    if "fuzz" in rows:
        figures = rows["fuzz"]
        bare = _figures(figures["qemu"].split(":", 1)[1])[0]
        computed = _ratio(_figures(figures["blocksim"])[0], bare)
        assert _agrees(_figures(figures["ratio"])[0], computed), figures
        verdict("fuzz", computed[1] >= 0.7)
        checked.add("fuzz")
    if "writes" in rows:
        rate = _figures(rows["writes"]["blocksim"])[0]  # k writes/s
        peak = _figures(rows["writes"]["blocksim"].split("+", 1)[1])[0]
        verdict("writes", rate[1] >= 500 and peak[0] < 300)
        checked.add("writes")
    assert checked >= {"traces", "steps", "one", "backup", "qnbn", "snapshot", "fuzz"}


def test_the_derived_serve_shard_malformed_and_profile_figures_recompute() -> None:
    """Sums, rates and medians the README shows are recomputed here from the raw figures
    of the same JSON (each within the rounding it was stored with) and found in the
    rendered text."""
    import statistics

    numbers = script()
    results = ROOT / "bench" / "results"
    text = (ROOT / "README.md").read_text()
    # serve: requests/s is requests over the wall time, end/half the RSS ratio
    serve = json.loads((results / "serve.json").read_text())
    assert _agrees(
        _shown(f"{serve['requests_per_s']}"),
        _ratio((serve["requests"], serve["requests"]), _shown(f"{serve['wall_s']}")),
    )
    rss = serve["rss_mib"]
    assert _agrees(
        _shown(f"{serve['end_over_half']}"),
        _ratio(_shown(f"{rss['end']}"), _shown(f"{rss['half']}")),
    )
    assert f"(end/half {serve['end_over_half']:.3f}," in text
    # shards: each speed-up is a pair's 1-worker wall over its 2-worker wall, the figure
    # shown their median; the CPU ratio the median of the pairs' cluster CPU ratios
    shards = json.loads((results / "shards.json").read_text())
    pairs = [shards["runs"][i : i + 2] for i in range(0, len(shards["runs"]), 2)]
    cpu = []
    for (a, b), shown in zip(pairs, shards["speed_ups"], strict=True):
        one, two = (a, b) if a["workers"] == 1 else (b, a)
        assert (one["workers"], two["workers"]) == (1, 2)
        assert _agrees(_shown(f"{shown:.2f}"), _ratio(_shown(f"{one['wall_s']}"),
                                                      _shown(f"{two['wall_s']}")))  # fmt: skip
        cpu.append(_ratio(_shown(f"{two['cluster_cpu_us_per_step']}"),
                          _shown(f"{one['cluster_cpu_us_per_step']}")))  # fmt: skip
    assert shards["speed_up"] == statistics.median(shards["speed_ups"])
    low, high = statistics.median(c[0] for c in cpu), statistics.median(c[1] for c in cpu)
    assert _agrees(_shown(f"{shards['cluster_cpu_2_over_1']:.2f}"), (low, high))
    assert f"speed-up with 2 workers {statistics.median(shards['speed_ups']):.2f}x" in text
    # malformed: the inputs are the surfaces' sum; inputs/s the inputs over the wall time
    bad = json.loads((results / "malformed.json").read_text())
    assert bad["inputs"] == sum(bad["by_surface"].values()) >= bad["inputs_asked"]
    rate = re.search(r"\((\d+) inputs/s", "\n".join(bad["output"]))
    assert rate is not None
    assert _agrees(
        _shown(rate[1]), _ratio((bad["inputs"], bad["inputs"]), _shown(f"{bad['wall_s']}"))
    )
    assert f"inputs tried:  {bad['inputs']} " in numbers.regions(text)["malformed"]
    # profile: the parts of the traces process fit in its CPU
    tr = json.loads((results / "profile.json").read_text())["traces"]
    parts_ms = tr["imports_ms"] + tr["read_ms"] + tr["replay_us_per_step"] * tr["steps"] / 1000
    assert parts_ms <= tr["process_s"] * 1000 + 1, (parts_ms, tr)
    # race coverage and the class table: counts inside their totals, the head's sums
    rc = json.loads((results / "race-coverage.json").read_text())["race-coverage"]
    for cells in (rc["command-x-job-status"], rc["progress-deciles"]):
        assert 0 <= cells["reached"] <= cells["exist"]
    campaigns = json.loads((results / "differential-campaigns.json").read_text())["campaigns"]
    for row in campaigns:
        assert row["diffed"] <= row["drawn"] and 0 <= row["traces_per_1000"] <= 1000
        assert 0 <= row["steps_per_1000"] <= 1000
    latest = [r for r in campaigns if "classes" in r][-1]
    n = sum(c["count"] for c in latest["classes"])
    assert f"({len(latest['classes'])} classes, {n} traces:" in text
    assert n <= latest["diffed"] * (1000 - latest["traces_per_1000"]) / 1000 + 1
