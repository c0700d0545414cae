"""The data behind the report's figures, and what a reader of the page sees.

Timelines: bitmaps followed by address (the headline snapshot scenario shows
`(drive0, b0)` becoming unreachable), marks for job errors and pauses, the
node graph before and after each graph change, a zoom on short jobs,
graph-change numbers that are not rotated; latency CDFs that name the timing
model and draw a handful of writes as points; job transitions without the
`null -> created` of a reused job id; a page per failure; the commands never
exercised against the dispatch table; version and command line on the page,
no date."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sim.demo import record
from sim.report import build_report
from sim.report.figures import Drawn
from sim.report.timeline_figs import draw_latency, draw_timeline, zoom_window
from sim.timeline import write_json
from sim.trace import load_trace
from tests.helpers import SCENARIOS

SNAPSHOT = SCENARIOS / "thread" / "snapshot-breaks-device-bitmap.jsonl"
FAULTS = SCENARIOS / "engine" / "bk-fault-policies.jsonl"


@pytest.fixture(scope="module")
def timelines() -> dict[str, dict[str, Any]]:
    return {p.stem: record(load_trace(p))[1] for p in (SNAPSHOT, FAULTS)}


def test_the_snapshot_scenario_shows_drive0_b0_becoming_unreachable(timelines: Any) -> None:
    doc = timelines["snapshot-breaks-device-bitmap"]
    [address] = doc["addresses"]
    assert address["address"] == "drive0/b0"
    counts = address["counts"]
    found = [c for c in counts if c[1] is not None]
    assert found and all(c[3] == "fmt0" for c in found)  # the lookup found it on fmt0
    gone = counts[-1]
    snapshot_step = next(i for i, s in enumerate(doc["steps"], 1) if "snapshot" in s[1])
    assert gone[1] is None and gone[3] is None and gone[2] == snapshot_step
    # ... while the bitmap itself lives on at fmt0 (a node series keeps its count)
    [series] = [b for b in doc["bitmaps"] if b["label"] == "fmt0/b0"]
    assert series["counts"][-1][1] == found[-1][1] > 0


def test_each_timeline_lists_what_happened_step_by_step(timelines: Any) -> None:
    from sim.report.timeline_figs import steps_table

    doc = timelines["snapshot-breaks-device-bitmap"]
    table = steps_table(doc)
    assert [r[0] for r in table.rows] == [str(i) for i in range(1, len(doc["steps"]) + 1)]
    answers = [(r[2], r[3]) for r in table.rows]
    snapshot = answers.index(("blockdev-snapshot-sync", "ok"))
    # after the snapshot, QMP no longer finds (drive0, b0): the answer says so in words
    after = [a for c, a in answers[snapshot:] if c == "x-debug-block-dirty-bitmap-sha256"]
    assert after[0] == "Dirty bitmap 'b0' not found"
    assert ("qemu-io write", "ok") in answers and table.fold.startswith("What happened")
    # the caption opens with what the scenario does, from the trace header's description
    from sim.report.timeline_figs import draw_timeline

    lead = draw_timeline("snap", doc).lead  # type: ignore[union-attr]
    assert doc["description"] and lead.startswith("The scenario: The 2016 qemu-block thread")
    jobs = {r[4] for r in steps_table(timelines["bk-fault-policies"]).rows}
    assert any("running" in j for j in jobs)  # the jobs' status when each command answered


def test_node_graphs_before_and_after_each_graph_change(timelines: Any) -> None:
    doc = timelines["snapshot-breaks-device-bitmap"]
    graphs = doc["graphs"]
    assert len(graphs) == len(doc["graph_changes"]) + 1
    before, after = graphs[0][3], graphs[-1][3]
    assert before["devices"] == [["drive0", "fmt0"]]
    root = dict(after["devices"])["drive0"]
    nodes = {n[0]: n for n in after["nodes"]}
    assert root != "fmt0" and nodes[root][3] == "fmt0"  # the overlay, backed by fmt0
    assert nodes["fmt0"][5] == ["b0"]  # which node holds which bitmap
    # the snapshot drains (bdrv_drain_all, then the node it replaces): marked on the timeline
    drains = [m for m in doc["marks"] if m[1] == "drain"]
    assert drains and {m[2] for m in drains} == {graphs[-1][1]}
    assert "drained every node" in [m[3] for m in drains]


def test_job_errors_and_pauses_are_marked(timelines: Any) -> None:
    marks = timelines["bk-fault-policies"]["marks"]
    errors = [m for m in marks if m[1] == "error"]
    assert errors and all(m[3].startswith("BLOCK_JOB_ERROR") for m in errors)
    assert any("stop" in m[3] for m in errors) and any("ignore" in m[3] for m in errors)
    assert any(m[1] == "pause" for m in marks)
    faults = [m for m in marks if m[1] == "fault"]
    assert faults and faults[0][3] == "EIO on write of null0"
    assert faults[0][0] <= errors[0][0]  # armed before the job meets it
    drawn = draw_timeline("faults", timelines["bk-fault-policies"])
    assert isinstance(drawn, Drawn)
    assert any(t.header[1] == "mark" for t in drawn.tables)


def test_short_jobs_get_a_zoomed_timeline(timelines: Any) -> None:
    def job(lane: str, start: int, end: int) -> dict[str, Any]:
        states = [[start, "created", 1], [start, "running", 1], [end, "concluded", 2]]
        return {"lane": lane, "id": lane, "type": "backup", "states": states, "progress": []}

    ms = 1_000_000
    doc = {"name": "z", "end_ns": 1000 * ms, "steps": [[0, "a"], [1000 * ms, "b"]],
           "jobs": [job("long", 0, 800 * ms), job("short", 900 * ms, 905 * ms)]}  # fmt: skip
    window = zoom_window(doc)
    assert window is not None
    assert window[0] <= 900 * ms and 905 * ms <= window[1]
    assert window[1] - window[0] < 1000 * ms * 0.25
    zoom = draw_timeline("z", doc, window)
    assert isinstance(zoom, Drawn) and zoom.stem.endswith("-zoom")
    [lanes] = [ax for ax in zoom.fig.axes if ax.get_ylabel() == "block jobs"]
    assert [t.get_text() for t in lanes.get_yticklabels()] == ["short (backup)"]
    # a run whose jobs all take a visible part of the axis has nothing to zoom on
    doc["jobs"] = [job("long", 0, 800 * ms), job("other", 800 * ms, 1000 * ms)]
    assert zoom_window(doc) is None
    assert zoom_window(timelines["snapshot-breaks-device-bitmap"]) is None  # no time passes


def test_a_job_of_no_duration_is_marked_in_its_lane_not_zoomed_on() -> None:
    """A backup with nothing to copy begins and ends at one instant: no zoom can show
    it, so its lane gets a marker and says so (before: a zoom of a thin line)."""
    ms = 1_000_000

    def job(lane: str, start: int, end: int) -> dict[str, Any]:
        states = [[start, "created", 1], [start, "running", 1], [end, "concluded", 2],
                  [end, "null", 2]]  # fmt: skip
        return {"lane": lane, "id": lane, "type": "backup", "states": states, "progress": []}

    doc = {"name": "i", "end_ns": 1000 * ms, "steps": [[0, "a"], [1000 * ms, "b"]],
           "jobs": [job("long", 0, 800 * ms), job("instant", 900 * ms, 900 * ms)]}  # fmt: skip
    assert zoom_window(doc) is None
    drawn = draw_timeline("i", doc)
    assert isinstance(drawn, Drawn)
    [lanes] = [ax for ax in drawn.fig.axes if ax.get_ylabel() == "block jobs"]
    texts = [t.get_text() for t in lanes.texts]
    assert texts == ["created to concluded at one instant"]
    assert any(line.get_marker() == "D" for line in lanes.get_lines())


def test_a_handful_of_writes_are_drawn_as_points_one_can_see() -> None:
    """Ten writes at one latency sat under the p50 = p99 line as 5-point dots at half
    opacity; a handful of writes is drawn larger and opaque, a crowd stays fine."""
    from matplotlib.collections import PathCollection

    ms = 1_000_000

    def doc(n: int) -> dict[str, Any]:
        io = [[i * ms, "write", 225_000, []] for i in range(n)]
        return {"name": "w", "end_ns": (n + 1) * ms, "steps": [[0, "a"]], "io": io}

    def sizes(n: int) -> set[float]:
        drawn = draw_timeline("w", doc(n))
        assert isinstance(drawn, Drawn)
        [ax] = [a for a in drawn.fig.axes if a.get_ylabel().startswith("write latency")]
        dots = [c for c in ax.collections if isinstance(c, PathCollection)]
        return {float(s) for c in dots for s in c.get_sizes()}

    assert sizes(10) == {16.0} and sizes(1000) == {5.0}


def test_captions_never_print_exponents(timelines: Any) -> None:
    """A span of 1,414.7 ms reads as such, not as 1.41e+03."""
    from sim.report import style

    assert [style.num(x) for x in (1414.746, 13.1, 0.0066, 0.0, 25_000.0)] == [
        "1,415", "13.1", "0.0066", "0", "25,000"]  # fmt: skip
    doc = dict(timelines["bk-fault-policies"], end_ns=1_414_746_000)
    drawn = draw_timeline("f", doc)
    assert isinstance(drawn, Drawn) and "e+" not in drawn.caption
    assert "1,415 ms of simulated time" in drawn.caption


def test_nodes_no_device_reaches_are_drawn_parent_above_child() -> None:
    """A mirror's target (a qcow2 node over its file, reached by no device) sits apart
    on the right with its file below it, as every other node sits below its parent."""
    from sim.report.timeline_figs import graph_layout

    g = {"devices": [["drive0", "top"]],
         "nodes": [["top", "mirror_top", None, "fmt0", None, []],
                   ["fmt0", "qcow2", "proto0", None, None, ["b0"]],
                   ["proto0", "file", None, None, None, []],
                   ["tfile", "file", None, None, None, []],
                   ["tgt", "qcow2", "tfile", None, None, []]]}  # fmt: skip
    pos = graph_layout(g)
    assert pos["tgt"][1] > pos["tfile"][1] and pos["tgt"][0] == pos["tfile"][0]
    right = max(x for k, (x, _) in pos.items() if k in ("dev:drive0", "top", "fmt0", "proto0"))
    assert pos["tgt"][0] > right
    assert pos["dev:drive0"][1] > pos["top"][1] > pos["fmt0"][1] > pos["proto0"][1]


def test_graph_change_labels_are_numbers_not_rotated_text(timelines: Any) -> None:
    drawn = draw_timeline("faults", timelines["bk-fault-policies"])
    assert isinstance(drawn, Drawn)
    texts = [t for ax in drawn.fig.axes for t in ax.texts]
    assert texts and all(t.get_rotation() == 0 for t in texts)
    numbers = [t.get_text() for t in drawn.fig.axes[0].texts]
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)]
    changes = drawn.tables[0]
    assert changes.header[2] == "graph change" and len(changes.rows) == len(numbers)


def test_latency_cdf_names_the_timing_model_and_draws_few_writes_as_points() -> None:
    io = [[i * 1000, "write", 150_000 + i * 10_000, []] for i in range(5)]
    doc = {"name": "few", "io": io, "timing": {"drive0": {"latency_us": 100.0,
           "bandwidth_mbps": 500.0, "jitter": 0.0, "queue_depth": 32}}}  # fmt: skip
    drawn = draw_latency("few", doc)
    assert isinstance(drawn, Drawn)
    assert "timing model" in drawn.caption and "100 µs per request" in drawn.caption
    [ax] = drawn.fig.axes
    assert ax.collections and not [ln for ln in ax.lines if len(ln.get_xdata()) > 2]
    # drawn as points, and still counted in the table under the figure
    assert [row[:2] for row in drawn.tables[0].rows] == [["no job", "5"]]
    many = {**doc, "io": [[i, "write", 100_000 + i, []] for i in range(50)]}
    drawn = draw_latency("many", many)
    assert isinstance(drawn, Drawn)
    assert [ln for ln in drawn.fig.axes[0].lines if len(ln.get_xdata()) == 50]


def test_a_reused_job_id_starts_from_undefined_in_the_coverage() -> None:
    from types import SimpleNamespace

    from sim.fuzz.coverage import Coverage

    cov = Coverage()
    machine = SimpleNamespace(state=SimpleNamespace(jobs=[]))
    statuses = ["created", "running", "concluded", "null", "created", "running"]
    events = [{"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": s}} for s in statuses]
    cov._transitions(machine, events)
    reached = {k for per in cov.to_json()["transitions"].values() for k in per}
    assert "undefined->created" in reached and "null->created" not in reached


def test_job_status_cells_are_counted_against_what_qemu_allows() -> None:
    from sim.fuzz.coverage import Coverage
    from sim.report.coverage_figs import draw_status_cells, status_cells

    cov = Coverage()
    for verb, status in [("complete", "ready"), ("complete", "running"), ("write", "paused"),
                         ("dismiss", "concluded"), ("cancel", "standby")]:  # fmt: skip
        cov.hit("cmd-status", verb, status)
    doc = cov.to_json()
    cells = status_cells(doc)
    assert cells is not None
    race = doc["race-coverage"]["command-x-job-status"]
    # the report's split agrees with the fuzzer's denominator (JobVerbTable)
    assert len(cells["reached"]) == race["reached"] == 4
    assert set(cells["refused"]) == {("complete", "running")}  # QEMU refuses it: not counted
    assert cells["exist"] == race["exist"] == len(cells["reached"]) + len(cells["missing"])
    assert ("complete", "standby") in cells["missing"]
    assert ("write", "paused") not in cells["missing"]
    built = draw_status_cells(doc, "test")
    assert built.title.startswith(f"Job verbs and commands x job status: 4 of {race['exist']} ")
    missing = {row[0] for row in built.tables[0].rows}  # type: ignore[attr-defined]
    assert "complete in standby" in missing and len(missing) == race["exist"] - 4


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, timelines: Any) -> Path:
    run = tmp_path_factory.mktemp("run")
    for name, doc in timelines.items():
        write_json(run / "timelines" / f"{name}.json", doc)
    failures = run / "failures"
    failures.mkdir()
    pinned = '"violations": [{"invariant": "bitmap-addressability", "step": 3, "message": "m"}]'
    text = SNAPSHOT.read_text().replace('"violations": []', pinned)
    (failures / "snap.jsonl").write_text(text)
    record_ = {"kind": "bitmap-addressability", "path": "failures/snap.jsonl", "steps": 8,
               "message": "m", "class": "refused-by-qemu",
               "class_reason": "real QEMU refuses step 3 (x): nope"}  # fmt: skip
    (failures / "index.json").write_text(json.dumps([record_]))
    # what `blocksim triage` writes next to it: both runs step by step (QEMU refuses step 3)
    lines = [x for x in text.splitlines() if x.startswith("{")]
    steps = [json.loads(x) for x in lines[1:] if "final-expect" not in x]
    rows = []
    for n, step in enumerate(steps, start=1):
        sim = {"response": step.get("expect", {"return": {}}), "events": []}
        qemu = dict(sim)
        if n == 3:
            qemu = {"response": {"error": {"class": "GenericError", "desc": "qemu says no"}},
                    "events": [{"event": "JOB_STATUS_CHANGE", "data": {"status": "x"}}]}  # fmt: skip
        rows.append({"step": n, "request": step, "qemu": qemu, "sim": sim,
                     "differs": n in (3, 5), "violation": n == 3})  # fmt: skip
    both = {"version": 1, "violation_step": 3, "first_difference": 3, "steps": rows,
            "differences": [{"step": 3, "where": "step 3 (line 4) x", "detail": "refused"}],
            "notes": []}  # fmt: skip
    (failures / "snap.qemu.json").write_text(json.dumps(both))
    cov = {"commands": {"block-dirty-bitmap-add": {"return": 3}, "qemu-io write": {"return": 1}},
           "command-x-job-status": {"write": {"running": 2}},
           "race-coverage": {"command-x-job-status": {"reached": 1, "exist": 2,
                                                       "missing": ["write in ready"]}}}  # fmt: skip
    (run / "coverage.json").write_text(json.dumps(cov))
    out = run.parent / "report"
    build_report(run, out, "t", "blocksim report RUN -o OUT")
    return out


def test_the_page_says_version_and_command_and_no_date(page: Path) -> None:
    html = (page / "index.html").read_text()
    assert re.search(r"blocksim \d+\.\d+\.\d+: blocksim report RUN -o OUT", html)
    assert "snapshot-breaks-device-bitmap: 0" in html  # seeds
    assert not re.search(r"20\d\d-\d\d-\d\d|\d\d:\d\d:\d\d", html)


def test_a_page_per_failure_with_its_trace_violation_and_qemu_answer(page: Path) -> None:
    html = (page / "index.html").read_text()
    assert 'href="failures/snap.html"' in html
    failure = (page / "failures" / "snap.html").read_text()
    assert "real QEMU refuses step 3 (x): nope" in failure
    assert "blockdev-snapshot-sync" in failure and "◀ violation" in failure


def test_an_expected_failure_page_does_not_claim_a_qemu_run(tmp_path: Path) -> None:
    """An expected failure is classed by a documented rule whose reason names QEMU 7.2's
    recorded behaviour; its page said "real QEMU 7.2 (blocksim triage)" with that
    reason, as if triage had run it on QEMU.  It says it was not run, and how to."""
    run = tmp_path / "run"
    (run / "failures").mkdir(parents=True)
    (run / "failures" / "e.jsonl").write_text(SNAPSHOT.read_text())
    record_ = {"kind": "bitmap-addressability", "path": "failures/e.jsonl", "steps": 8,
               "message": "m", "class": "expected",
               "class_reason": "the bitmap stayed on its node (QEMU 7.2 behaviour, recorded)"}  # fmt: skip
    (run / "failures" / "index.json").write_text(json.dumps([record_]))
    build_report(run, tmp_path / "report", "t", "blocksim report RUN -o OUT")
    failure = (tmp_path / "report" / "failures" / "e.html").read_text()
    assert "blocksim triage)" not in failure
    assert "not run: an expected failure" in failure and "--all" in failure


def test_the_failure_page_shows_qemu_and_blocksim_side_by_side(page: Path) -> None:
    failure = (page / "failures" / "snap.html").read_text()
    assert "differs first at step 3" in failure
    table = failure[failure.index('<table class="sbs">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr( class=\"(\w+)\")?><td>(\d+)</td>(.*?)</tr>", table, re.DOTALL)
    assert [int(r[2]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 5
    marked = {int(r[2]): r[1] for r in rows if r[1]}
    assert marked == {3: "first", 5: "differs"}  # the first difference, then a later one
    third = next(r[3] for r in rows if r[2] == "3")
    cells = re.findall(r"<td>(.*?)</td>", third, re.DOTALL)
    assert "qemu says no" in cells[1] and "event JOB_STATUS_CHANGE" in cells[1]
    assert "qemu says no" not in cells[2]  # blocksim's own answer in its column
    assert "first difference" in cells[3] and "violation" in cells[3]


@pytest.mark.parametrize(
    "doc",
    [
        {"steps": [1, {"step": 1, "qemu": [], "sim": {"events": [3, {"event": "E"}]}}],
         "differences": 5, "notes": {"a": 1}},
        {"steps": "x"},
        [],
    ],
)  # fmt: skip
def test_a_malformed_side_by_side_file_gives_no_traceback(tmp_path: Path, doc: Any) -> None:
    from sim.report.html import _side_by_side, write_failure_page
    from sim.report.runfolder import Failure

    html = "".join(_side_by_side(doc if isinstance(doc, dict) else None))
    assert not isinstance(doc, dict) or "<table" in html
    failure = Failure(tmp_path / "f.jsonl", "x", 1, None, "m")
    write_failure_page(tmp_path, "f", failure, [{}], None, doc if isinstance(doc, dict) else None)
    assert (tmp_path / "failures" / "f.html").is_file()


def test_commands_never_exercised_against_the_dispatch_table(page: Path) -> None:
    html = (page / "index.html").read_text()
    m = re.search(r"QMP commands exercised: (\d+) of (\d+) supported", html)
    assert m and int(m[1]) == 2 and int(m[2]) >= 40  # bitmap-add and HMP (qemu-io)
    never = re.search(r"never exercised</td><td>([^<]*)</td>", html)
    assert never and "blockdev-snapshot-sync" in never[1]
    assert "block-dirty-bitmap-add" not in never[1].split(", ")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")
def test_headless_chromium_renders_the_figures_and_the_failure_page(
    page: Path, tmp_path: Path
) -> None:
    def dom(path: Path) -> str:
        out = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
             path.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return out.stdout

    index = dom(page / "index.html")
    images = re.findall(r'<img src="(figures/[^"]+\.png)"', index)
    names = {Path(i).name for i in images}
    assert {"graph-snapshot-breaks-device-bitmap.png", "graph-bk-fault-policies.png",
            "coverage-job-status-cells.png"} <= names  # fmt: skip
    assert "1 of 2 cells QEMU 7.2 allows reached" in index
    assert all((page / i).is_file() for i in images)
    failure = dom(page / "failures" / "snap.html")
    assert "Shrunk trace" in failure and "Violation" in failure
    assert '<tr class="first">' in failure and "Real QEMU 7.2 and blocksim" in failure
    assert "What happened, step by step" in index  # each scenario's steps, in words
    assert '<p class="lead">The scenario: The 2016 qemu-block thread' in index
