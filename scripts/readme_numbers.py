"""Regenerate the numbers of README.md from the commands the README shows.

README.md marks each generated region with HTML comments:

    <!-- numbers:NAME (command that produced it) -->
    ...generated text...
    <!-- /numbers:NAME -->

and this script rewrites the text between them.  Regions:

- `layout`: every folder under scenarios/ and what it holds (cheap);
- `matrix`: the policy x invariant table and its trace count, the output of
  `blocksim matrix` over scenarios/ (replays every trace under every policy
  with every checker; expensive, a few minutes);
- `costs`: the costs table, from bench/results/costs.json, which
  `python bench/bench_costs.py [ROW ...] --json bench/results/costs.json` writes
  (rows not run keep their earlier figures);
- `fuzz-power`: the mutant table, from bench/results/fuzz-power.json, which
  `BLOCKSIM_POWER_TABLE=bench/results/fuzz-power.json python3 -m pytest -m slow
  tests/test_fuzz_power.py` writes;
- `differential-campaigns`: the differential campaigns' matched traces and
  steps per 1,000, from bench/results/differential-campaigns.json; a campaign's
  merged summary (`python -m sim.fuzz.differential --merge DIR... --out DIR`)
  is added with `--add-differential DIR/summary.json --campaign LABEL --code COMMIT`
  (which keeps the campaign's classes and their trace counts too);
- `serve`: the serve load paragraph's figures, from bench/results/serve.json, which
  `python bench/bench_serve.py --json bench/results/serve.json` writes;
- `race-coverage`: what a default campaign reached of the race cells, from
  bench/results/race-coverage.json, which `--race-coverage OUT` writes from the
  campaign folder OUT (`blocksim fuzz --out OUT`);
- `differential-classes`: the known-differences class table: every class of the
  latest campaign that kept its classes, with its trace count, and every class
  pinned earlier, each with the reason its pinned trace in
  scenarios/known-differences/differential/ gives in `// reason:` lines.

All but `matrix` are cheap (they render files the benchmarks and tests wrote).

Numbers in the prose (`CLAIMS`: counts of scenario files and mutants, defaults
and limits of the code) are found by a pattern each and rewritten in place.

The audit (`unsourced_numbers`, run by `--check` and tests/test_readme_numbers.py):
every number of README.md outside the generated regions and the code it shows
(inline code holding a figure with its unit, `3.2 ms`, counts as prose) must be a CLAIM or a `SOURCES` entry (a version, a default or limit of the code
or of QEMU checked against the constant where the model has one, an input of a
shown command or test, what a recorded scenario says of itself); anything else
is a hand-written measurement and fails.

Usage (from the repository's root):

    python3 scripts/readme_numbers.py            # rewrite every region
    python3 scripts/readme_numbers.py --cheap    # only the cheap ones
    python3 scripts/readme_numbers.py --check    # exit 1 when a region is stale
    python3 scripts/readme_numbers.py --add-differential DIR/summary.json \
        --campaign "seed 5151" --code 1234abc     # add a campaign row, then rewrite

tests/test_readme_numbers.py checks the cheap regions and the claims for equality and the
expensive one for its shape (every checker and policy, each cell `holds` or a
breaking trace that exists with its step count, a trace count within 10% of
the corpus').
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
PINNED_SHOWN = "known-differences/differential"  # the pinned traces, under scenarios/
PINNED = ROOT / "scenarios" / PINNED_SHOWN
FIXES = "// fixes: "  # a recorded scenario's line naming a campaign class it shows fixed

# What each folder of scenarios/ holds; a folder without an entry fails the test.
SCENARIO_FOLDERS = {
    "blockapi": "block API commands (blockdev-create, blockdev-reopen, block_resize, "
    "change-backing-file, write thresholds, copy-on-read, blkdebug), recorded on QEMU 7.2",
    "checkers": "hand-written traces that break each invariant checker (some under "
    "`qemu-2.5`, `bb-attached` or `node-only`)",
    "differential": "traces of the differential campaign whose answers match QEMU 7.2, "
    "recorded on it",
    "engine": "block jobs under guest workloads, rate limits and injected faults "
    "(the timelines of the report)",
    "iotests": "qemu-iotests 236 and 281 as traces, recorded on QEMU 7.2",
    "known-differences": "where the model knowingly differs from QEMU 7.2, the "
    "difference pinned (`differential/`: the differential campaign's open classes)",
    "libvirt": "libvirt's block job and backup flows, recorded on QEMU 7.2",
    "nbd": "NBD exports, recorded on QEMU 7.2",
    "qemu-7.2": "hand-written bitmap and job traces recorded on QEMU 7.2 (`generated/`: "
    "seeded random ones); see its README.md",
    "qemu-7.2-recorded": "mostly random traces of sim/fuzz/tracegen.py, recorded on QEMU 7.2",
    "races": "races whose answers do not depend on timing, recorded on QEMU 7.2",
    "recorded": "single QEMU 7.2 behaviours recorded while fixing the model",
    "thread": "the 2016 qemu-block thread's headline: a snapshot makes `(drive0, b0)` "
    "unreachable under `qemu-7.2`, not under `bb-attached`",
}


def layout_region(root: Path = ROOT) -> str:
    """The scenario folders, one line each with what it holds.  No trace counts: folders
    gain scenarios all the time, and the matrix line below the table counts them."""
    scenarios = root / "scenarios"
    lines = ["| folder | what |", "|---|---|"]
    for folder in sorted(p for p in scenarios.iterdir() if p.is_dir()):
        what = SCENARIO_FOLDERS.get(
            folder.name, "(undescribed: add it to scripts/readme_numbers.py)"
        )
        lines.append(f"| `scenarios/{folder.name}/` | {what} |")
    return "\n".join(lines)


def matrix_region(root: Path = ROOT) -> str:
    """`blocksim matrix` over scenarios/: the table and its trace count."""
    sys.path.insert(0, str(root))
    from sim.matrix import markdown, policy_matrix

    files = sorted((root / "scenarios").rglob("*.jsonl"))
    result = policy_matrix(files)
    text = markdown(result)
    return text.replace(f"{root}/", "")


def _module(path: Path) -> ModuleType:
    """A bench/ or tests/ file as a module: the tables are rendered by the code that
    prints them (one home for each table's format)."""
    name = f"_readme_numbers_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def _loads(rows: list[dict[str, Any]]) -> str:
    """Where the rows were measured: each command with its rows and load averages."""
    by_command: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_command.setdefault(str(r.get("command", "?")), []).append(r)
    parts = []
    for command, group in by_command.items():
        names = ", ".join(f"`{r.get('row', '?')}`" for r in group)
        loads = sorted({r["load_average"] for r in group if r.get("load_average") is not None})
        at = (
            f"load average {loads[0]}" + (f"-{loads[-1]}" if len(loads) > 1 else "")
            if loads
            else "load average not recorded"
        )
        shown = f"`{command}`" if command.startswith("python") else command
        parts.append(f"{names}: {shown} ({at}, {group[0].get('cores', '?')} cores)")
    return "Rows " + "; ".join(parts) + "."


def costs_region(results: Path = RESULTS) -> str:
    """The costs table: bench/bench_costs.py's own markdown of bench/results/costs.json."""
    doc = json.loads((results / "costs.json").read_text())
    bench = _module(ROOT / "bench" / "bench_costs.py")
    return bench.Table.from_json(doc).markdown() + "\n\n" + _loads(doc["rows"])


def power_region(results: Path = RESULTS) -> str:
    """The fuzzer-power table: tests/test_fuzz_power.py's own table of the findings in
    bench/results/fuzz-power.json, and under what budget and load they were found."""
    doc = json.loads((results / "fuzz-power.json").read_text())
    power = _module(ROOT / "tests" / "test_fuzz_power.py")
    findings = power.findings_from_json(doc)
    found = sum(f.found for f in findings)
    table = "\n".join(line for line in power.table(findings).splitlines() if line.startswith("|"))
    budget = (
        f"{doc['budget_examples']:,} examples"
        if "budget_examples" in doc
        else f"{doc['budget_s']:.0f} s"
    )
    return (
        f"{table}\n\n{found} of {len(findings)} mutants found within {budget} "
        f"each (load average {doc.get('load_average', '?')} on {doc.get('cores', '?')} cores)."
    )


DIFF_HEAD = (
    "| campaign | code | drawn | diffed | traces /1000 | steps /1000 |\n|---|---|---|---|---|---|"
)


def differential_region(results: Path = RESULTS) -> str:
    """Traces and steps matched per 1,000 diffed, one row per differential campaign (the
    last in bold)."""
    rows = json.loads((results / "differential-campaigns.json").read_text())["campaigns"]
    lines = [DIFF_HEAD]
    for i, r in enumerate(rows):
        bold = "**" if i == len(rows) - 1 else ""
        lines.append(
            f"| {r['campaign']} | {r['code']} | {r['drawn']:,} | {r['diffed']:,} | "
            f"{bold}{r['traces_per_1000']}{bold} | {bold}{r['steps_per_1000']}{bold} |"
        )
    return "\n".join(lines)


def differential_row(summary: dict[str, Any], campaign: str, code: str) -> dict[str, Any]:
    """A campaign row from the summary.json a (merged) differential campaign wrote, with
    its classes of difference and how many traces each had."""
    traces = int(summary["traces"])
    steps = int(summary.get("steps", 0))
    return {
        "campaign": campaign,
        "code": code,
        "drawn": traces + int(summary.get("untestable", 0)),
        "diffed": traces,
        "traces_per_1000": round(1000 * int(summary["identical"]) / traces) if traces else 0,
        "steps_per_1000": round(1000 * int(summary.get("steps_matched", 0)) / steps)
        if steps
        else 0,
        "classes": [
            {
                "signature": str(c["signature"]),
                "count": int(c["count"]),
                "reproduced": str(c.get("reproduced", "")),
                "qemu_nondeterministic": len(set(c.get("nondeterministic", []))),
            }
            for c in summary.get("classes", [])
        ],
    }


SIGNATURE_SHOWN = 100  # characters of a class signature the table shows


def _cell(text: str) -> str:
    """Text as one cell of a markdown table."""
    return text.replace("|", "\\|")


def _signature(sig: str) -> str:
    """A class signature as its table cell shows it (long ones cut)."""
    shown = sig if len(sig) <= SIGNATURE_SHOWN else sig[:SIGNATURE_SHOWN] + "..."
    return f"`{_cell(shown)}`"


def differential_classes_region(
    results: Path = RESULTS, pinned: Path = PINNED, recorded: Path | None = None
) -> str:
    """The known-differences class table: every class of the latest differential campaign
    that recorded its classes, with its trace count, then every class pinned earlier that
    it did not meet; each with the reason its pinned trace gives (`// reason:` lines), or
    the recorded scenario that shows it fixed (`// fixes:` lines in `recorded`)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sim.fuzz.differential import NONDETERMINISTIC, class_status, pinned_differences

    rows = json.loads((results / "differential-campaigns.json").read_text())["campaigns"]
    latest = next((r for r in reversed(rows) if "classes" in r), None)
    met = {c["signature"]: c for c in latest["classes"]} if latest else {}
    known = {p.signature: p for p in pinned_differences(pinned)}

    def row(sig: str, traces: str) -> str:
        p = known[sig]
        reason = _cell(p.reason) or "(its trace gives no `// reason:`)"
        return f"| {_signature(sig)} | {traces} | {reason} | `{PINNED_SHOWN}/{p.path.name}` |"

    fixed = fixed_classes(recorded)
    lines = ["| class (signature) | traces | reason | pinned scenario |", "|---|---|---|---|"]

    def status(c: dict[str, Any]) -> str:
        return class_status(c["signature"], c["count"], c.get("qemu_nondeterministic", 0), known)

    for c in sorted(met.values(), key=lambda c: (-c["count"], c["signature"])):
        if c["signature"] in known:
            lines.append(row(c["signature"], str(c["count"])))
            continue
        if status(c) == NONDETERMINISTIC:
            lines.append(
                f"| {_signature(c['signature'])} | {c['count']} | **QEMU nondeterministic**: "
                "QEMU 7.2 answered a re-run of each of its traces differently where the "
                "simulator differs (QEMU's answers in the campaign's "
                "`failures/qemu-nondeterministic/`) | none |"
            )
            continue
        if c["signature"] in fixed:
            lines.append(
                f"| {_signature(c['signature'])} | {c['count']} | fixed since: the rule is "
                f"modelled, `recorded/{fixed[c['signature']]}` (recorded on QEMU 7.2) shows it "
                "| none |"
            )
            continue
        again = (
            f" (its shrunk trace showed it again in {c['reproduced']} runs on QEMU 7.2)"
            if c.get("reproduced")
            else ""
        )
        lines.append(
            f"| {_signature(c['signature'])} | {c['count']} | **unexplained**: no pinned "
            f"trace names this class{again} | none |"
        )
    for sig in sorted(set(known) - set(met)):
        lines.append(row(sig, f"0 ({known[sig].count_when_pinned} when pinned)"))
    n_pinned = sum(1 for sig in met if sig in known)
    n_flaky = sum(1 for c in met.values() if status(c) == NONDETERMINISTIC)
    n_fixed = sum(
        1
        for c in met.values()
        if status(c) != NONDETERMINISTIC and c["signature"] in fixed and c["signature"] not in known
    )
    head = (
        f"Every class of the latest campaign that recorded its classes, {latest['campaign']} "
        f"({len(met)} classes, {sum(c['count'] for c in met.values())} traces: {n_pinned} "
        f"pinned, {f'{n_fixed} fixed since, ' if n_fixed else ''}"
        f"{len(met) - n_pinned - n_flaky - n_fixed} unexplained, "
        f"{n_flaky} QEMU-nondeterministic; the traces column counts its traces), "
        if latest
        else "No campaign recorded its classes yet; "
    )
    return (
        f"{head}and every class pinned earlier that it did not meet (`0 (N when pinned)`: "
        "N of the pinning campaign's traces), each pinned to the *simulator's* answers in "
        f"`scenarios/{PINNED_SHOWN}/` (the `//` lines say what QEMU does, the `// reason:` "
        "line why the simulator differs; `blocksim diff FILE` shows it):\n\n" + "\n".join(lines)
    )


def race_coverage_record(out: Path, command: str) -> dict[str, Any]:
    """What bench/results/race-coverage.json keeps of a campaign's folder: its command,
    seed, examples and wall time (campaign.json), race coverage (coverage.json) and the
    machine's load average now."""
    campaign = json.loads((out / "campaign.json").read_text())
    coverage = json.loads((out / "coverage.json").read_text())
    return {
        "command": command,
        "policy": campaign["config"]["policy"],
        "seed": campaign["config"]["seed"],
        "examples": campaign["examples"],
        "wall_s": round(float(campaign["wall_s"])),
        "load_average": round(os.getloadavg()[0], 1),
        "cores": os.cpu_count(),
        "race-coverage": coverage["race-coverage"],
    }


def race_coverage_region(results: Path = RESULTS) -> str:
    """The sentence on the race coverage a default campaign reached, from
    bench/results/race-coverage.json (`--race-coverage OUT` writes it)."""
    doc = json.loads((results / "race-coverage.json").read_text())
    rc = doc["race-coverage"]
    cells, deciles = rc["command-x-job-status"], rc["progress-deciles"]
    return (
        f"Measured: `{doc['command']}` ({doc['policy']}, seed {doc['seed']}: "
        f"{doc['examples']:,} examples in {doc['wall_s']} s on the shared machine at load "
        f"average {doc['load_average']}, {doc['cores']} cores) reached {cells['reached']} of "
        f"the {cells['exist']} command x job-status cells and {deciles['reached']} of the "
        f"{deciles['exist']} progress-decile cells, and ran "
        f"{rc['interleavings']['sequences-with-several']} command sequences under more than "
        "one event order."
    )


def serve_region(results: Path = RESULTS) -> str:
    """The serve load figures, from bench/results/serve.json (`python bench/bench_serve.py
    --json bench/results/serve.json` writes it)."""
    d = json.loads((results / "serve.json").read_text())
    rss = d["rss_mib"]
    return (
        f"Measured with `{d['command']}` on the {d['cores']}-core development machine "
        f"(shared, under `nice`, load average {d['load_average']}): {d['requests']:,} "
        f"requests, {d['lost']} lost, {d['duplicates']} duplicated, "
        f"{d['requests_per_s']:,} requests/s ({d['wall_s']} s); server RSS "
        f"{rss['start']} MiB at start, {rss.get('half', rss['end'])} MiB at half time, "
        f"{rss['end']} MiB at the end (end/half {d['end_over_half']:.3f}, target <= 1.25)."
    )


def _load_span(*loads: float) -> str:
    low, high = min(loads), max(loads)
    return f"{low}" if low == high else f"{low}-{high}"


def shards_region(results: Path = RESULTS) -> str:
    """The sharded-campaign throughput, from bench/results/shards.json (`python
    bench/bench_shards.py --repeat N --json bench/results/shards.json` writes it)."""
    d = json.loads((results / "shards.json").read_text())
    runs = d["runs"]
    loads = [r[k] for r in runs for k in ("load_before", "load_after")]
    pairs = [runs[i : i + 2] for i in range(0, len(runs), 2)]
    rates = ", then ".join(
        f"{one['steps_per_s']:,} and {two['steps_per_s']:,}" for one, two in pairs
    )
    cpu = ", then ".join(
        f"{one['cluster_cpu_us_per_step']} and {two['cluster_cpu_us_per_step']} us"
        for one, two in pairs
    )
    each = " and ".join(f"{x:.2f}x" for x in d["speed_ups"])
    verdict = "met" if d["speed_up"] >= d["target"] else "missed"
    return (
        f"Measured with `{d['command']}` ({d['examples']} examples, {d['shards']} shards) on "
        f"the shared {d['cores']}-core development machine at load average "
        f"{_load_span(*loads)} around the runs (other processes on the cores lower the "
        "wall-clock speed-up, not the CPU time per step): speed-up with 2 workers "
        f"{d['speed_up']:.2f}x (median of {each}; target >= {d['target']}x: {verdict}); "
        f"steps/s with 1 and 2 workers {rates}; whole-cluster CPU time per step "
        f"{cpu}, 2 workers over 1: {d['cluster_cpu_2_over_1']:.2f}."
    )


def malformed_region(results: Path = RESULTS) -> str:
    """The malformed-input benchmark's command and output, from
    bench/results/malformed.json (`python bench/bench_malformed.py ... --json
    bench/results/malformed.json` writes it)."""
    d = json.loads((results / "malformed.json").read_text())
    block = "\n".join(f"    {line}" if line else "" for line in [d["command"], "", *d["output"]])
    size = (
        ""
        if d["inputs_asked"] >= 1_000_000
        else f"a run of {d['inputs_asked']:,} inputs, not the million of the target; "
    )
    return (
        f"{block}\n\n({size}{d['cpu_s']} s of CPU time; the wall time is that of a `nice`d "
        f"run on {d['cores']} cores shared with other work, load average "
        f"{_load_span(d['load_before'], d['load_after'])} before and after.)"
    )


def _shares(rows: list[list[Any]]) -> str:
    return ", ".join(
        f"`{name}` {pct:g}%" if "/" in name else f"{name} {pct:g}%" for name, pct in rows
    )


def _steps_row(results: Path) -> str:
    """The costs table's `steps` figure, named for what it is next to the profile's
    replay cost per step (a different measurement of the same traces)."""
    rows = json.loads((results / "costs.json").read_text())["rows"]
    steps = [r for r in rows if r["row"] == "steps"]
    if not steps:
        return ""
    return (
        f" (the costs table's `steps` row, {steps[0]['blocksim']}, is another measurement: "
        "the wall time of `run_step` alone, set-up and final queries excluded, "
        f"at load average {steps[0].get('load_average', '?')})"
    )


def profile_region(results: Path = RESULTS) -> str:
    """Where the CPU of three costs rows goes, from bench/results/profile.json (`python
    bench/bench_profile.py --json bench/results/profile.json` writes it)."""
    d = json.loads((results / "profile.json").read_text())
    w, one, tr = d["writes"], d["one"], d["traces"]
    parts = one["interpreter_ms"] + one["click_ms"] + one["sim_ms"] + one["replay_ms"]
    rest = one["process_ms"] - parts
    return "\n".join(
        [
            f"- {w['writes']:,} random 4 KiB guest writes one by one on a 1 TiB qcow2 disk "
            f"with 4 bitmaps: {w['write_us']} us of CPU a write (the log append, the "
            f"bitmaps' marks, the path walk), then {w['splice_us']} us a write for the "
            f"first read's splice; own time by module: {_shares(w['shares'])};",
            f"- `blocksim replay {one['trace']}` as a process: {one['process_ms']} ms of "
            f"CPU: the interpreter with this machine's site hooks {one['interpreter_ms']} ms, "
            f"click {one['click_ms']} ms, blocksim's {one['sim_modules']} modules "
            f"{one['sim_ms']} ms ({round(one['dataclass_share'] * 100)}% of that creating "
            f"their dataclasses), the replay itself {one['replay_ms']} ms, the rest "
            f"(`-m`, exit) {rest:.0f} ms;",
            f"- the costs table's {tr['traces']} recorded traces in one process: "
            f"{tr['process_s']} s of CPU: imports {tr['imports_ms']} ms, reading the traces "
            f"{tr['read_ms']} ms, replaying {tr['replay_us_per_step']} us of CPU a step "
            f"({tr['steps']:,} steps), each trace's `Replayer` set-up and final queries "
            f"included{_steps_row(results)}; own time by module: {_shares(tr['shares'])}.",
            "",
            f"Measured with `{d['command']}` on the shared {d['cores']}-core development "
            f"machine at load average {_load_span(d['load_before'], d['load_after'])} "
            "(CPU times are medians of fresh processes; the shares come from one run under "
            "cProfile).",
        ]
    )


def iotests_fresh() -> dict[str, Any]:
    """bench/results/iotests.json: the iotest traces recorded afresh on QEMU 7.2 and
    replayed (`python3 scripts/iotest_traces.py OUT --record RUNS --json FILE`)."""
    doc: dict[str, Any] = json.loads((RESULTS / "iotests.json").read_text())
    return doc


def _iotests_shown(_: int) -> str:
    d = iotests_fresh()
    more = [f"{r['runs']} for {r['trace']}" for r in d["traces"] if r["runs"] != d["runs"]]
    runs = ", ".join([f"{d['runs']} runs each", *more])
    return f"{runs}): {d['replay_exactly']} of {d['total']}"


def iotest_257_clusters() -> tuple[int, int]:
    """(clusters copied, clusters of the disk) of 257's full-sync backups that a read
    error fails (`intermediate`), from what QEMU 7.2 answered in their recordings."""
    writer = _module(ROOT / "scripts" / "iotest_traces.py")
    cluster = int(writer.GRANULARITY)
    seen = set()
    for path in sorted(
        (ROOT / "scenarios" / "iotests").glob("iotest-257-full-*-intermediate.jsonl")
    ):
        for line in path.read_text().splitlines():
            if not line.startswith('{"final-expect"'):
                continue
            for event in json.loads(line)["final-expect"].get("events", []):
                data = event.get("data", {})
                if event.get("event") == "BLOCK_JOB_COMPLETED" and "error" in data:
                    seen.add((data["offset"] // cluster, data["len"] // cluster))
    assert len(seen) == 1, seen  # every such case failed at the same cluster
    return seen.pop()


def fixed_classes(recorded: Path | None = None) -> dict[str, str]:
    """Signature -> recorded scenario, for every campaign class a scenario recorded on
    QEMU 7.2 shows fixed (its `// fixes: SIGNATURE` lines)."""
    root = recorded if recorded is not None else ROOT / "scenarios" / "recorded"
    found: dict[str, str] = {}
    for path in sorted(root.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith(FIXES):
                found.setdefault(line[len(FIXES) :].strip(), path.name)
    return found


def _count(folder: str) -> int:
    return sum(1 for _ in (ROOT / "scenarios" / folder).rglob("*.jsonl"))


def _import(name: str) -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name)


def _mutants() -> tuple[list[Any], list[Any]]:
    catalog = _module(ROOT / "tests" / "mutant_catalog.py")
    return list(catalog.MUTANTS), list(catalog.NEW_MUTANTS)


def _demo_seconds() -> int:
    cli = _import("sim.cli")
    (option,) = [p for p in cli.demo.params if p.name == "fuzz_seconds"]
    return int(option.default)


@dataclass(frozen=True)
class Claim:
    """A number in README.md's prose: the pattern that finds it (its group `n` is the
    number) and where it comes from (a count of files, a default or a limit in the code)."""

    name: str
    pattern: str
    value: Callable[[], Any]
    shown: Callable[[Any], str] = "{:,}".format

    def find(self, text: str) -> re.Match[str] | None:
        return re.search(self.pattern, text)


CLAIMS = [
    Claim(
        "quick start: the demo's fuzz seconds", r"timelines, fuzzes for (?P<n>\d+) s", _demo_seconds
    ),
    Claim(
        "corpus of the seed-21 differential campaign",
        r"`scenarios/differential/` \((?P<n>[\d,]+) traces recorded",
        lambda: _count("differential"),
    ),
    Claim(
        "races recorded on QEMU 7.2",
        r"`scenarios/races/` holds (?P<n>\d+) such races",
        lambda: _count("races"),
    ),
    Claim(
        "mutants in the catalogue",
        r"runs under each of (?P<n>\d+)\s+one-rule mutants",
        lambda: sum(map(len, _mutants())),
    ),
    Claim(
        "mutants of tests/test_mutants.py",
        r"the (?P<n>\d+) of `tests/test_mutants.py`",
        lambda: len(_mutants()[0]),
    ),
    Claim(
        "mutants of real QEMU bug kinds",
        r"and (?P<n>\d+) of the kinds real QEMU bugs take",
        lambda: len(_mutants()[1]),
    ),
    Claim(
        "default examples of blocksim fuzz",
        r"blocksim fuzz +# (?P<n>\d+) examples",
        lambda: _import("sim.fuzz.campaign").CampaignConfig().examples,
        str,
    ),
    Claim(
        "default examples of a shard",
        r"\(default: one per (?P<n>\d+) examples\)",
        lambda: _import("sim.fuzz.campaign").CampaignConfig().round_examples,
    ),
    Claim(
        "steps of a trace at most",
        r"a trace holds at most (?P<n>[\d,]+) steps",
        lambda: _import("sim.trace").MAX_STEPS,
    ),
    Claim(
        "the line a too long trace is refused at",
        r"is refused at line (?P<n>[\d,]+)",
        lambda: _import("sim.trace").MAX_STEPS + 2,
    ),
    Claim(
        "MiB of a trace at most",
        r"line [\d,]+\), (?P<n>\d+) MiB, ",
        lambda: _import("sim.trace").MAX_TRACE_BYTES >> 20,
    ),
    Claim(
        "MiB of a trace line at most",
        r"MiB, (?P<n>\d+)\s+MiB a line",
        lambda: _import("sim.trace").MAX_LINE_BYTES >> 20,
    ),
    Claim(
        "bits of a bitmap at most (log2)",
        r"a dirty bitmap at most 2\^(?P<n>\d+) bits",
        lambda: _import("sim.model.bitmap").MAX_BITMAP_BITS.bit_length() - 1,
    ),
    Claim(
        "bits of all bitmaps at most (log2)",
        r"all of a machine's bitmaps\s+2\^(?P<n>\d+)",
        lambda: _import("sim.model.bitmap").MAX_TOTAL_BITS.bit_length() - 1,
    ),
    Claim(
        "TiB a full copy at most",
        r"copies at most (?P<n>\d+) TiB",
        lambda: _import("sim.qmp.cmd_job").MAX_FULL_COPY_BYTES >> 40,
    ),
    Claim(
        "requests of a workload at most",
        r"a workload issues at most (?P<n>[\d,]+)\s+requests",
        lambda: _import("sim.engine.workload").MAX_OPS,
    ),
    Claim(
        "requests of a trace's workloads at most",
        r"a trace's workloads (?P<n>[\d,]+)\.",
        lambda: _import("sim.engine.workload").MAX_MACHINE_OPS,
    ),
]


def _power_default(variable: str) -> int:
    """The default of a BLOCKSIM_POWER_* setting of tests/test_fuzz_power.py, read from
    its source (the module's value follows the environment)."""
    source = (ROOT / "tests" / "test_fuzz_power.py").read_text()
    m = re.search(rf'"{variable}", "(\d+)"', source)
    assert m is not None, variable
    return int(m[1])


CLAIMS += [
    Claim(
        "QEMU micro version in the serve greeting",
        r"QEMU's greeting \(version 7\.2\.(?P<n>\d+),",
        lambda: _import("sim.qmp.cmd_query").QEMU_VERSION["qemu"]["micro"],
    ),
    Claim(
        "ms of simulated time a blockdev-create job takes",
        r"A `blockdev-create` job takes (?P<n>\d+) ms",
        lambda: max(_import("sim.qmp.cmd_create").CREATE_DELAY_NS.values()) // 1_000_000,
    ),
    Claim(
        "examples per mutant of the power test",
        r"at most (?P<n>[\d,]+) examples each \(`BLOCKSIM_POWER_EXAMPLES`",
        lambda: _power_default("BLOCKSIM_POWER_EXAMPLES"),
    ),
    Claim(
        "seconds per mutant that end a power test hunt that hangs",
        r"a cap of (?P<n>\d+) s a\s+mutant, `BLOCKSIM_POWER_BUDGET`",
        lambda: _power_default("BLOCKSIM_POWER_BUDGET"),
    ),
    Claim(
        "examples of the power test's healthy campaign",
        r"a healthy campaign of (?P<n>\d+)\s+examples",
        lambda: _power_default("BLOCKSIM_POWER_HEALTHY"),
    ),
]


CLAIMS += [
    Claim(
        "iotest traces recorded afresh that replay exactly (bench/results/iotests.json)",
        r"Fresh recordings of everything the script\s+writes \((?P<n>\d+ runs each[^)]*\): \d+ of \d+)",
        lambda: iotests_fresh()["replay_exactly"],
        _iotests_shown,
    ),
    Claim(
        "clusters 257's failed full-sync backups copy (recorded on QEMU 7.2)",
        r"257's full-sync cases copy\s+(?P<n>\d+ of \d+) clusters",
        lambda: iotest_257_clusters()[0],
        lambda n: f"{n} of {iotest_257_clusters()[1]}",
    ),
]


def _source_number(relative: str, pattern: str, group: int = 1) -> int:
    """A number in a source file found by `pattern` (for files whose import is slow or
    whose value is an argument, not a name)."""
    m = re.search(pattern, (ROOT / relative).read_text(), re.MULTILINE)
    assert m is not None, (relative, pattern)
    return int(m[group].replace("_", ""))


CLAIMS += [
    Claim(
        "examples of bench_shards' campaign",
        r"`python bench/bench_shards.py` runs one campaign \((?P<n>\d+) examples",
        lambda: _source_number("bench/bench_shards.py", r"^EXAMPLES = (\d+)"),
        str,
    ),
    Claim(
        "shards of bench_shards' campaign",
        r"examples\s+in (?P<n>\d+) shards, every checker on\)",
        lambda: _source_number("bench/bench_shards.py", r"^SHARDS = (\d+)"),
        str,
    ),
    Claim(
        "bench_shards' speed-up target (tenths)",
        r"the speed-up against the 1\.(?P<n>\d)x target",
        lambda: _source_number("bench/bench_shards.py", r"^TARGET = 1\.(\d)$"),
        str,
    ),
    Claim(
        "inputs of the malformed-input slice CI runs",
        r"`tests/test_malformed_campaign.py`: (?P<n>[\d,]+) inputs or",
        lambda: _source_number("tests/test_malformed_campaign.py", r"malformed\.run\(([\d_]+),"),
    ),
    Claim(
        "minutes of the malformed-input slice CI runs",
        r"[\d,]+ inputs or (?P<n>\d+) minutes",
        lambda: _source_number("tests/test_malformed_campaign.py", r"seconds=(\d+)") // 60,
    ),
    Claim(
        "allocations between collections of the youngest generation",
        r"collects its youngest GC generation\s+every (?P<n>[\d,]+) allocations",
        lambda: _import("sim.entry").GC_THRESHOLDS[0],
    ),
    Claim(
        "us of simulated time a hole chunk takes",
        r"`HOLE_CHUNK_NS`\s+\((?P<n>\d+) us,",
        lambda: _import("sim.engine.timing").HOLE_CHUNK_NS // 1000,
    ),
    Claim(
        "KiB of a write the content's log keeps",
        r"A guest write of up to (?P<n>\d+) KiB is",
        lambda: _import("sim.model.content").LOG_MAX_BYTES >> 10,
    ),
]


def _event_orders(path: Path) -> int:
    """How many event orders a recorded trace accepts: its own and the other ones QEMU
    gave (`blocksim record --runs N`)."""
    final = json.loads(path.read_text().splitlines()[-1]).get("final-expect", {})
    return 1 + len(final.get("other-event-orders", []))


def _fresh_orders(_: int) -> str:
    (row,) = [r for r in iotests_fresh()["traces"] if r["trace"] == RACING_IOTEST]
    return f"{row['runs']}-run recording gave {row['event_orders']}"


RACING_IOTEST = "iotest-124-transaction-failure"

CLAIMS += [
    Claim(
        "event orders iotest 124's transaction failure keeps (its recorded scenario)",
        r"its scenario keeps\s+the (?P<n>\d+) orders its",
        lambda: _event_orders(ROOT / "scenarios" / "iotests" / f"{RACING_IOTEST}.jsonl"),
    ),
    Claim(
        "event orders a fresh recording of iotest 124's transaction failure gave",
        r"a fresh (?P<n>\d+-run recording gave \d+)",
        lambda: 0,
        _fresh_orders,
    ),
]


CLAIMS.append(
    Claim(
        "iotest 257 cases as traces (all replay exactly: tests/test_scenarios.py)",
        r"bitmap-mode refusal\): (?P<n>\d+ of \d+);",
        lambda: sum(1 for _ in (ROOT / "scenarios" / "iotests").glob("iotest-257-*.jsonl")),
        lambda n: f"{n} of {n}",
    )
)


def claims_stale(text: str) -> list[str]:
    """The claims whose number in `text` is not what their source gives (or that are gone)."""
    stale = []
    for claim in CLAIMS:
        m = claim.find(text)
        if m is None:
            stale.append(f"{claim.name}: not found in README.md (pattern {claim.pattern!r})")
        elif m["n"] != claim.shown(claim.value()):
            stale.append(
                f"{claim.name}: README.md says {m['n']}, it is {claim.shown(claim.value())}"
            )
    return stale


def rewrite_claims(text: str) -> str:
    """`text` with every claim's number set to what its source gives."""
    for claim in CLAIMS:
        m = claim.find(text)
        if m is not None:
            text = text[: m.start("n")] + claim.shown(claim.value()) + text[m.end("n") :]
    return text


# -- the audit: every number of README.md has a source --------------------------------------

UNIT = r"(?:x|k|s|ms|us|µs|ns|KiB|MiB|GiB|TiB|KB|MB|GB)"  # written right after a number
NUMBER = re.compile(
    rf"(?<![\w.#/^\-:$])\d+(?:[.,]\d+)*(?:\^\d+)?(?:(?={UNIT}\b)|(?![\w]|[.,]\d))"
)  # a number in prose (1,000, 0.69, 2^31, 1.7x, 500ms, 10-minute), not part of a name (ext4)
# inline code holding a figure with its unit is a figure, not a command's input
MEASURED = re.compile(rf"\d(?:\.\d+)?\s*{UNIT}\b|\d%")


def _spaced(pattern: str) -> str:
    """`pattern` with each space matching any run of white space (README lines wrap)."""
    return pattern.replace(" ", r"\s+")


@dataclass(frozen=True)
class Source:
    """A number in README.md's prose that no command measures: a version, a default or a
    limit of the code or of QEMU, an input of a shown command or test, what a recorded
    scenario says of itself.  Every number `pattern` matches is accounted for; `value`,
    when the number can be computed, gives what its group `n` must read."""

    pattern: str
    source: str
    value: Callable[[], str] | None = None

    def regex(self) -> str:
        """The pattern, white space matching line breaks too; with a `value`, its number
        `n` matches any number (so a drifted one is named stale, not only unsourced)."""
        pattern = _spaced(self.pattern)
        if self.value is not None:
            pattern = re.sub(r"\(\?P<n>[\d,]+\)", r"(?P<n>\\d+(?:,\\d{3})*)", pattern)
        return pattern


def _constant(pattern: str, dotted: str) -> Source:
    """A number that is the value of a module's constant (`dotted`: module.NAME)."""
    module, name = dotted.rsplit(".", 1)
    return Source(pattern, dotted, lambda: str(getattr(_import(module), name)))


def _scenario_says(relative: str, phrase: str) -> Callable[[], str]:
    """The phrase, when the scenario's own text (its description or `//` lines) says it:
    QEMU's run counts are kept where they were recorded."""

    def value() -> str:
        text = re.sub(r"\s+", " ", (ROOT / "scenarios" / relative).read_text())
        return phrase if phrase in text else f"(not in scenarios/{relative})"

    return value


def _test_source_number(relative: str, pattern: str) -> Callable[[], str]:
    return lambda: f"{_source_number(relative, pattern):,}"


def _first_violation_step(relative: str, checker: str) -> str:
    """The step at which `checker` first flags the scenario (a cheap replay)."""
    from sim.check import make_checkers
    from sim.replay import replay
    from sim.trace import load_trace

    result = replay(load_trace(ROOT / "scenarios" / relative), checkers=make_checkers([checker]))
    for n, step in enumerate(result.steps, start=1):
        if getattr(step, "violations", None):
            return str(n)
    return "(none)"


def _mib(value: int) -> str:
    return f"{value >> 20}"


SOURCES = [
    Source(
        r"QEMU(?:'s)? 7\.(?P<n>2)\b|QEMU 7\.x|[Qq]emu-7\.2|as 7\.2 does|\| as 7\.2 \|",
        "the QEMU version blocksim models (sim.qmp.cmd_query.QEMU_VERSION)",
        lambda: str(_import("sim.qmp.cmd_query").QEMU_VERSION["qemu"]["minor"]),
    ),
    Source(
        r"the 2016 (?:qemu-block )?thread",
        "the year of the qemu-block thread on "
        "bitmap placement the policies come from (docs/architecture.md)",
    ),
    _constant(r"Version (?P<n>\d+) of the shared spec", "sim.trace.TRACE_VERSION"),
    _constant(r"exit (?P<n>0) when every `expect`", "sim.cli.EXIT_OK"),
    _constant(r"(?P<n>1) on a mismatch \(naming", "sim.cli.EXIT_MISMATCH"),
    _constant(r"(?P<n>2) for a bad trace", "sim.cli.EXIT_USAGE"),
    _constant(r"codes: (?P<n>0) all matched", "sim.cli.EXIT_OK"),
    _constant(r"(?P<n>1) a mismatch, violation", "sim.cli.EXIT_MISMATCH"),
    _constant(r"(?P<n>2) a bad trace,\s+bad usage", "sim.cli.EXIT_USAGE"),
    Source(
        r"(?P<n>3) an\s+internal error",
        "the exit code of an internal error (sim/entry.py)",
        lambda: str(_source_number("sim/cli.py", r"internal error: .*\n\s+code = (\d+)")),
    ),
    _constant(r"exit code (?P<n>130)|(?P<m>130) interrupted", "sim.interrupt.EXIT_INTERRUPTED"),
    Source(
        r"exits? (?P<n>1)(?= only when|\.  `tests| \(listing)",
        "the exit code of a difference (sim.cli.EXIT_MISMATCH)",
        lambda: str(_import("sim.cli").EXIT_MISMATCH),
    ),
    _constant(r"and exit (?P<n>2)\.", "sim.cli.EXIT_USAGE"),
    Source(
        r"per 1,000(?: drawn| diffed| per command)",
        "the unit of the differential campaigns' figures",
    ),
    Source(r"QEMU\s+7\.2 (?:now|there)", "the QEMU version blocksim models"),
    Source(r"\(0 s is the start of the session\)", "a definition"),
    Source(r"always 0 or empty", "a definition (the counters blocksim does not model)"),
    Source(r"O\(1\)", "notation"),
    Source(r"`PASS \.\.\. 1 expected violation\(s\)`", "what `blocksim replay` prints"),
    Source(
        r"runs (?P<n>16) clients x (?P<m>10,000) pipelined requests",
        "bench/bench_serve.py's defaults (--clients, --commands)",
        _test_source_number("bench/bench_serve.py", r'"--clients", type=int, default=(\d+)'),
    ),
    Source(
        r"10,000 pipelined",
        "bench/bench_serve.py's default --commands",
        _test_source_number("bench/bench_serve.py", r'"--commands", type=int, default=([\d_]+)'),
    ),
    Source(
        r"one garbage line in (?P<n>\d+)",
        "bench/bench_serve.py GARBAGE_EVERY",
        _test_source_number("bench/bench_serve.py", r"^GARBAGE_EVERY = (\d+)"),
    ),
    Source(
        r"\((?P<n>4) x 300, a few seconds\)",
        "tests/test_serve.py's clients and commands",
        _test_source_number("tests/test_serve.py", r'"--clients", "(\d+)"'),
    ),
    Source(
        r"4 x (?P<n>300), a few",
        "tests/test_serve.py's commands",
        _test_source_number("tests/test_serve.py", r'"--commands", "(\d+)"'),
    ),
    _constant(r"a multiple of (?P<n>512)|per (?P<m>512)-byte sector", "sim.model.content.SECTOR"),
    Source(
        r"a state \((?P<n>1) at open\)",
        "blkdebug's initial state (block/blkdebug.c: s->state = 1), sim/qmp/cmd_blockdev.py",
    ),
    Source(
        r"errno \((?P<n>5) or (?P<m>28)\)",
        "EIO and ENOSPC, the errnos blkdebug rules "
        "may inject in blocksim (sim/qmp/cmd_blockdev.py)",
    ),
    Source(
        r"past (?P<n>2) GiB\)",
        "one refcount block of a 64 KiB-cluster image covers "
        "32768 clusters (16-bit refcounts): 2 GiB of host file",
        lambda: str((65536 // 2) * 65536 >> 30),
    ),
    Source(
        r"the (?P<n>10)-minute cache-clean timer",
        "QEMU 7.2 block/qcow2.c: the cache-clean-interval option's default, 600 s",
    ),
    Source(
        r"a backup's first (?P<n>64) MiB",
        "block-copy's first tasks: "
        "sim.engine.jobs.BLOCK_COPY_MAX_WORKERS tasks of BLOCK_COPY_MAX_BUFFER",
        lambda: _mib(
            _import("sim.engine.jobs").BLOCK_COPY_MAX_WORKERS
            * _import("sim.engine.jobs").BLOCK_COPY_MAX_BUFFER
        ),
    ),
    Source(
        r"through a (?P<n>4) MiB/s\s+and a (?P<m>16) MiB/s group",
        "the throttle limits of tests/test_throttle.py's backup-then-mirror cases",
        _test_source_number("tests/test_throttle.py", r"_backup_then_mirror\(16, (\d+) << 20\)"),
    ),
    Source(
        r"and a (?P<n>16) MiB/s group",
        "tests/test_throttle.py",
        _test_source_number("tests/test_throttle.py", r"_backup_then_mirror\(128, (\d+) << 20\)"),
    ),
    Source(
        r"iotests? (?:236|257|222|124)\b|124/236's|exactly\): 236, 281; 257's|"
        r"\b124's (?:incremental|transaction)|\b257's `qemu-img",
        "qemu-iotests test numbers (scripts/iotest_traces.py converts 124, 236, 257, 281)",
    ),
    Source(r"refusal\): 22 of 22;", "a CLAIM (counted from scenarios/iotests/)"),
    Source(
        r"a (?P<n>128) KiB-cluster target",
        "qemu-iotests 124's larger cluster target (scripts/iotest_traces.py)",
        lambda: str(_source_number("scripts/iotest_traces.py", r'"cluster-size": (\d+)') >> 10),
    ),
    Source(
        r"at most (?P<n>1) MiB, cut where",
        "sim.engine.jobs.BLOCK_COPY_MAX_BUFFER",
        lambda: _mib(_import("sim.engine.jobs").BLOCK_COPY_MAX_BUFFER),
    ),
    _constant(
        r"up to (?P<n>64) at a time|until (?P<m>64) (?:are|tasks are) busy",
        "sim.engine.jobs.BLOCK_COPY_MAX_WORKERS",
    ),
    _constant(r"until (?P<n>64) are busy", "sim.engine.jobs.BLOCK_COPY_MAX_WORKERS"),
    Source(
        r"the job's own (?P<n>10) us",
        "sim.engine.timing.HOLE_CHUNK_NS",
        lambda: str(_import("sim.engine.timing").HOLE_CHUNK_NS // 1000),
    ),
    Source(
        r"lets all (?P<n>65) complete",
        "BLOCK_COPY_MAX_WORKERS + 1",
        lambda: str(_import("sim.engine.jobs").BLOCK_COPY_MAX_WORKERS + 1),
    ),
    Source(
        r"\((?P<n>offset 65 MiB of a 128 MiB disk of data; 5 of 5 runs on QEMU 7\.2)",
        "the recorded scenario's description (scenarios/blockapi/backup-first-tasks.jsonl)",
        _scenario_says(
            "blockapi/backup-first-tasks.jsonl",
            "offset 65 MiB of a 128 MiB disk of data; 5 of 5 runs on QEMU 7.2",
        ),
    ),
    Source(
        r"\(up to (?P<n>64) of (?P<m>1) MiB\)",
        "BLOCK_COPY_MAX_WORKERS tasks of BLOCK_COPY_MAX_BUFFER (sim/engine/jobs.py)",
        lambda: str(_import("sim.engine.jobs").BLOCK_COPY_MAX_WORKERS),
    ),
    Source(
        r"\(step (?P<n>76): a guest",
        "the step graph-well-formed flags in "
        "scenarios/blockapi/fleecing-cbw-bitmap-and-errors.jsonl (replayed)",
        lambda: _first_violation_step(
            "blockapi/fleecing-cbw-bitmap-and-errors.jsonl", "graph-well-formed"
        ),
    ),
    Source(
        r"only a (?P<n>1) MiB/s backup keeps",
        "sim.fuzz.difftraces.SLOW",
        lambda: _mib(_import("sim.fuzz.difftraces").SLOW),
    ),
    Source(r"`--shrink-runs 12`", "a shown option"),
    Source(
        r"Since seed (?P<n>7272)|seed-(?P<m>7272) campaign",
        "a campaign of bench/results/differential-campaigns.json",
    ),
    Source(
        r"even the default (?P<n>1) GiB",
        "sim.qmp.cmd_blockdev.NULL_CO_DEFAULT_SIZE",
        lambda: str(_import("sim.qmp.cmd_blockdev").NULL_CO_DEFAULT_SIZE >> 30),
    ),
    Source(
        r"\(speed x (?P<n>100) ms\)",
        "sim.engine.jobs.SLICE_TIME_NS",
        lambda: str(_import("sim.engine.jobs").SLICE_TIME_NS // 1_000_000),
    ),
    Source(
        r"a compressed (?P<n>1) MiB/s backup cancelled at once has copied (?P<m>2) clusters",
        "the recorded scenario's description "
        "(scenarios/recorded/backup-compress-rate-limit-first-tasks.jsonl)",
    ),
    Source(
        r"what QEMU 7\.2 spends a (?P<n>1) MiB hole",
        "block-copy's task size (BLOCK_COPY_MAX_BUFFER)",
        lambda: _mib(_import("sim.engine.jobs").BLOCK_COPY_MAX_BUFFER),
    ),
    Source(
        r"The sparse (?P<n>64) GiB backup",
        "bench/bench_costs.py's backup row (its disk)",
        lambda: str(_source_number("bench/bench_costs.py", r'"size": (\d+) \* GIB')),
    ),
    Source(
        r"per (?P<n>512) MiB region",
        "an L2 table of a 64 KiB-cluster image maps "
        "8192 clusters: 512 MiB (sim/model/host_file.py)",
        lambda: str((65536 // 8) * 65536 >> 20),
    ),
    _constant(r"more than (?P<n>4096) bits set", "sim.model.bitmap._RUNWISE_MAX_BITS"),
    Source(
        r"allocations, not (?P<n>700)",
        "CPython's default gc threshold (gc.get_threshold())",
        lambda: "700",
    ),
    Source(
        r"(?P<n>10,000) bitmaps and a (?P<m>500)-deep",
        "tests/test_limits.py",
        _test_source_number("tests/test_limits.py", r'name=f"b\{i\}"\) for i in range\(([\d_]+)\)'),
    ),
    Source(
        r"and a (?P<n>500)-deep",
        "tests/test_limits.py",
        _test_source_number("tests/test_limits.py", r"def test_a_(\d+)_deep_snapshot_chain"),
    ),
    Source(
        r"on warm LocalClusters of (?P<n>1) and (?P<m>2) workers",
        "bench/bench_shards.py (its two cluster sizes)",
    ),
    Source(r"(?P<n>20) ms health tick", "Dask's default distributed.admin.tick.interval"),
    Source(
        r"a (?P<n>1,000,000)-step trace",
        "tests/test_limits.py's refused trace",
        _test_source_number("tests/test_limits.py", r"for _ in range\(([\d_]+)\)\)"),
    ),
    Source(
        r"\(a (?P<n>16) TiB disk otherwise works",
        "tests/test_limits.py's big disk",
        lambda: str(1 << _source_number("tests/test_limits.py", r"^TIB16 = 1 << (\d+)") >> 40),
    ),
    Source(
        r"the (?P<m>\d+) orders its (?P<n>\d+) recordings gave",
        "scripts/iotest_traces.py RACES (runs of the racing iotest)",
        lambda: str(_module(ROOT / "scripts" / "iotest_traces.py").RACES[RACING_IOTEST]),
    ),
    Source(r"`--scheduler tcp://HOST:8786`", "a shown option (Dask's scheduler port)"),
    Source(
        r"DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=(?P<n>500)ms",
        "sim.cluster.QUIET_CLUSTER's tick interval",
        lambda: str(
            _source_number("sim/cluster.py", r'"distributed.admin.tick.interval": "(\d+)ms"')
        ),
    ),
]

AUDITED_REGIONS = "generated regions (their bodies and the commands in their markers)"


def _code_spans(text: str) -> list[tuple[int, int]]:
    """Where README.md shows code: fenced and indented blocks, inline `code`.  Numbers
    there are literal inputs (command lines, option values, file and field names)."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"```.*?```", text, re.DOTALL)]
    spans += [
        (m.start(), m.end())
        for m in re.finditer(r"(?:(?<=\n\n)|(?<=\A))(?: {4}.*\n?(?:\n(?= {4}))?)+", text)
    ]
    spans += [
        (m.start(), m.end()) for m in re.finditer(r"`[^`]+`", text) if not MEASURED.search(m[0])
    ]
    return spans


def unsourced_numbers(text: str) -> list[str]:
    """Every number of README text that is in no generated region, no code, no CLAIM and
    no SOURCE: each would be a figure no command writes."""
    covered = [(m.start(), m.end()) for m in MARK.finditer(text)]
    covered += [(m.start(), m.end()) for m in re.finditer(r"<!-- numbers:[^>]*-->", text)]
    covered += _code_spans(text)
    for claim in CLAIMS:
        covered += [(m.start(), m.end()) for m in re.finditer(claim.pattern, text)]
    for source in SOURCES:
        covered += [(m.start(), m.end()) for m in re.finditer(source.regex(), text)]
    found = []
    for m in NUMBER.finditer(text):
        if any(a <= m.start() and m.end() <= b for a, b in covered):
            continue
        line = text.count("\n", 0, m.start()) + 1
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        found.append(f"line {line}: {m[0]!r} in {text[start:end].strip()[:100]!r}")
    return found


def sources_stale(text: str) -> list[str]:
    """SOURCES that match nothing in `text`, or whose number is not what their source
    gives."""
    stale = []
    for source in SOURCES:
        matches = list(re.finditer(source.regex(), text))
        if not matches:
            stale.append(f"{source.source}: not found in README.md ({source.pattern!r})")
            continue
        if source.value is None:
            continue
        want = source.value()
        for m in matches:
            n = m.groupdict().get("n")
            n = None if n is None else " ".join(n.split())
            if n is not None and n != want:
                stale.append(f"{source.source}: README.md says {n}, it is {want}")
    return stale


REGIONS: dict[str, tuple[Callable[[], str], bool]] = {
    # name: (generator, cheap)
    "layout": (layout_region, True),
    "costs": (costs_region, True),
    "fuzz-power": (power_region, True),
    "differential-campaigns": (differential_region, True),
    "differential-classes": (differential_classes_region, True),
    "race-coverage": (race_coverage_region, True),
    "serve": (serve_region, True),
    "shards": (shards_region, True),
    "malformed": (malformed_region, True),
    "profile": (profile_region, True),
    "matrix": (matrix_region, False),
}

MARK = re.compile(
    r"(?P<open><!-- numbers:(?P<name>[a-z-]+)[^>]*-->\n)(?P<body>.*?)(?P<close><!-- /numbers:(?P=name) -->)",
    re.DOTALL,
)


def regions(text: str) -> dict[str, str]:
    """The generated regions of README text: name -> body (without its markers)."""
    return {m["name"]: m["body"].rstrip("\n") for m in MARK.finditer(text)}


def rewrite(text: str, bodies: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        body = bodies.get(m["name"])
        if body is None:
            return m[0]
        return f"{m['open']}{body}\n{m['close']}"

    return MARK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a region is stale")
    parser.add_argument("--cheap", action="store_true", help="only the cheap regions")
    parser.add_argument(
        "--add-differential",
        metavar="SUMMARY",
        help="add the campaign of this summary.json (python -m sim.fuzz.differential --merge "
        "... --out DIR writes DIR/summary.json) to bench/results/differential-campaigns.json",
    )
    parser.add_argument(
        "--race-coverage",
        metavar="OUT",
        help="keep the race coverage of the campaign in folder OUT (blocksim fuzz --out OUT) "
        "in bench/results/race-coverage.json",
    )
    parser.add_argument(
        "--command", default="blocksim fuzz", help="the command that ran it (--race-coverage)"
    )
    parser.add_argument("--campaign", help="its row's label, e.g. 'seed 5151'")
    parser.add_argument("--code", help="the commit the campaign ran on")
    args = parser.parse_args(argv)
    if args.add_differential:
        if not args.campaign or not args.code:
            parser.error("--add-differential needs --campaign and --code")
        summary = json.loads(Path(args.add_differential).read_text())
        store = RESULTS / "differential-campaigns.json"
        doc = json.loads(store.read_text())
        doc["campaigns"].append(differential_row(summary, args.campaign, args.code))
        store.write_text(json.dumps(doc, indent=1) + "\n")
    if args.race_coverage:
        record = race_coverage_record(Path(args.race_coverage), args.command)
        (RESULTS / "race-coverage.json").write_text(json.dumps(record, indent=1) + "\n")
    text = README.read_text()
    present = regions(text)
    missing = sorted(set(REGIONS) - set(present))
    if missing:
        print(f"README.md has no region {missing}", file=sys.stderr)
        return 2
    bodies = {name: gen() for name, (gen, cheap) in REGIONS.items() if cheap or not args.cheap}
    stale = sorted(name for name, body in bodies.items() if present[name] != body)
    claims = claims_stale(text)
    if args.check:
        for name in stale:
            print(f"README.md region {name!r} is stale: run scripts/readme_numbers.py")
        for line in claims:
            print(f"README.md number stale: {line}")
        audit = sources_stale(text) + [
            f"{where}: no command writes it (generate it or list its source in SOURCES)"
            for where in unsourced_numbers(text)
        ]
        for line in audit:
            print(f"README.md number without a source: {line}")
        return 1 if stale or claims or audit else 0
    README.write_text(rewrite_claims(rewrite(text, bodies)))
    gone = claims_stale(README.read_text())
    for line in gone:
        print(f"README.md: {line}", file=sys.stderr)
    print(
        f"rewrote {', '.join(sorted(bodies))} and {len(CLAIMS)} numbers in the text"
        + (f" ({', '.join(stale)} changed)" if stale else "")
        + (f" ({len(claims)} number(s) changed)" if claims else "")
    )
    return 2 if gone else 0


if __name__ == "__main__":
    sys.exit(main())
