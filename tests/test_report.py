"""Reports: the run recorder (sim/timeline.py) and `blocksim report` (sim/report/).

One small run folder is built once per module: two recorded replays (one
with a guest workload across a backup and a mirror, one in which no time
passes), a coverage.json, campaign.json and failures/ in the fuzzer's format,
and a matrix.json.  Every figure must exist as a sensible PNG and an SVG,
index.html must show them all, and headless Chromium must load every image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
from html import escape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.demo import policy_matrix, record
from sim.report import build_report
from sim.report.coverage_figs import coverage_figures
from sim.report.runfolder import coverage_from_timelines
from sim.timeline import dumps_timeline, write_json
from sim.trace import parse_lines
from tests.helpers import DRIVE0, SCENARIOS, header, qmp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

UNDER_LOAD: list[dict[str, Any]] = [
    # data to copy: block-copy writes zeroes for holes, which takes no device time, and
    # a backup of a sparse disk would be too short to see on the run's timeline; the
    # speed keeps its concurrent tasks from copying 32 MiB in a few milliseconds
    qmp("human-monitor-command", **{"command-line": 'qemu-io drive0 "write 0 32M"'}),
    qmp("block-dirty-bitmap-add", node="fmt0", name="b0"),
    {
        "workload": {
            "device": "drive0",
            "pattern": "uniform",
            "rate": 300,
            "size": 65536,
            "duration": 1.5,
            "read-ratio": 0.2,
        }
    },
    {"advance": 0.2},
    qmp(
        "drive-backup",
        device="drive0",
        **{"job-id": "bk0"},
        sync="full",
        target="t.qcow2",
        format="qcow2",
        speed=64 << 20,
    ),  # fmt: skip
    {"wait": {"event": "BLOCK_JOB_COMPLETED"}},
    qmp(
        "drive-mirror",
        device="drive0",
        **{"job-id": "m0", "copy-mode": "write-blocking"},
        sync="full",
        target="m.qcow2",
        format="qcow2",
    ),  # fmt: skip
    {"wait": {"event": "BLOCK_JOB_READY"}},
    {"advance": 0.1},
    qmp("block-job-complete", device="m0"),
    {"wait": {"event": "BLOCK_JOB_COMPLETED"}},
    {"advance": 1},
]

NO_TIME: list[dict[str, Any]] = [
    qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
    qmp("human-monitor-command", **{"command-line": 'qemu-io drive0 "write 0 64k"'}),
    qmp(
        "blockdev-snapshot-sync", device="drive0", **{"snapshot-file": "s.qcow2"}, format="qcow2"
    ),  # fmt: skip
    qmp("human-monitor-command", **{"command-line": 'qemu-io drive0 "write 1M 64k"'}),
    qmp("block-dirty-bitmap-remove", node="fmt0", name="b0"),
]


def write_trace(path: Path, steps: list[dict[str, Any]], name: str) -> Path:
    drive = dict(DRIVE0, size=32 << 20)
    lines = [header(drives=[drive], name=name)] + steps
    path.write_text("".join(json.dumps(s) + "\n" for s in lines), encoding="utf-8")
    return path


def fuzzer_files(run: Path) -> None:
    """coverage.json, campaign.json and failures/ as sim/fuzz/campaign.py writes them."""
    coverage = {
        "examples": 40,
        "steps": 400,
        "points": 9,
        "commands": {
            "block-dirty-bitmap-add": {"return": 30, "Bitmap already exists: *": 4},
            "qemu-io write": {"return": 50},
            "job-cancel": {"return": 2, "Job '*' in state 'concluded' cannot accept": 1},
        },
        "job-states": {
            "job-cancel": {"running": 2, "concluded": 1},
            "qemu-io write": {"no-job": 40, "running": 10},
        },  # fmt: skip
        "command-x-job-status": {"cancel": {"running": 2, "concluded": 1}},
        "race-coverage": {
            "command-x-job-status": {"reached": 1, "exist": 2, "missing": ["cancel in ready"]}
        },
        "transitions": {
            "backup": {
                "undefined->created": 3,
                "created->running": 3,
                "running->aborting": 1,
                "aborting->concluded": 1,
            }
        },
        "graph-shapes": {"chain-depth": {"1": 300, "2": 100}, "filters": {"none": 390}},
        "invariants": {"bitmap-addressability": {"evaluated": 400, "violated": 2}},
        "series": [
            {
                "examples": 10 * i,
                "steps": 100 * i,
                "points": 3 + 2 * i,
                "failures": i // 2,
                "wall_s": 1.5 * i,
            }  # fmt: skip
            for i in range(5)
        ],
    }
    write_json(run / "coverage.json", coverage)
    write_json(
        run / "campaign.json",
        {"config": {"policy": "qemu-7.2", "seed": 0}, "examples": 40, "steps": 400, "wall_s": 6.0},
    )
    failure = run / "failures" / "bitmap-addressability-0123456789ab.jsonl"
    failure.parent.mkdir()
    write_trace(failure, NO_TIME[:3], "fuzz-bitmap-addressability-0123456789ab")
    index = [{"kind": "bitmap-addressability", "signature": "0123456789ab",
              "path": str(failure), "steps": 3, "message": "bitmap 'b0' lost",
              "reproduced": True, "shrunk": True}]  # fmt: skip
    write_json(run / "failures" / "index.json", index)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    run = tmp / "run"
    load = write_trace(tmp / "under-load.jsonl", UNDER_LOAD, "under-load")
    still = write_trace(tmp / "no-time.jsonl", NO_TIME, "no-time")
    result = CliRunner().invoke(
        main, ["replay", "--record-timeline", str(run), str(load), str(still)]
    )
    assert result.exit_code == 0, result.output
    fuzzer_files(run)
    shutil.copyfile(still, run / "no-time.jsonl")
    matrix = {
        "policies": ["qemu-7.2", "bb-attached"],
        "invariants": ["bitmap-addressability", "bitmap-soundness"],
        "cells": [
            {"policy": "qemu-7.2", "invariant": "bitmap-addressability", "broken": True,
             "trace": "no-time.jsonl", "steps": 5, "traces_breaking": 1},
            {"policy": "bb-attached", "invariant": "bitmap-addressability", "broken": False},
        ],
    }  # fmt: skip
    write_json(run / "matrix.json", matrix)
    return run


@pytest.fixture(scope="module")
def report(run_folder: Path) -> Any:
    """The report, drawn by `blocksim report` (Report describes what it wrote)."""
    out = run_folder.parent / "out"
    result = CliRunner().invoke(main, ["report", str(run_folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(EXPECTED)} figures" in result.output
    pngs = sorted((out / "figures").glob("*.png"))
    return SimpleNamespace(out_dir=out, index=out / "index.html", pngs=pngs, output=result.output)


EXPECTED = (
    "timeline-under-load",
    "latency-under-load",
    "timeline-no-time",
    "graph-under-load",
    "graph-no-time",
    "coverage-commands-outcomes",
    "coverage-commands-job-states",
    "coverage-job-status-cells",
    "coverage-job-transitions",
    "coverage-growth",
    "campaign-throughput",
    "campaign-failures",
    "policy-matrix",
)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path.name} has no IHDR first"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_every_figure_is_a_sensible_png_and_an_svg(report: Any) -> None:
    figures = report.out_dir / "figures"
    assert "not drawn: Guest write latency: no-time" in report.output  # no guest workload
    assert report.output.count("not drawn") == 1
    for stem in EXPECTED:
        width, height = png_size(figures / f"{stem}.png")
        assert 300 <= width <= 4000 and 150 <= height <= 4000, (stem, width, height)
        svg = (figures / f"{stem}.svg").read_text(encoding="utf-8")
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "Date" not in svg
    assert sorted(p.stem for p in report.pngs) == sorted(EXPECTED)


def test_index_references_every_figure_and_linked_trace(report: Any) -> None:
    html = report.index.read_text(encoding="utf-8")
    for stem in EXPECTED:
        assert f'<img src="figures/{stem}.png"' in html, stem
        assert f'href="figures/{stem}.svg"' in html, stem
    for href in re.findall(r'href="(traces/[^"]+)"', html):
        assert (report.out_dir / href).is_file(), href
    assert "bitmap-addressability-0123456789ab.jsonl" in html
    assert 'href="traces/no-time.jsonl"' in html  # the matrix cell's trace
    assert "http://" not in html.replace("http://www.w3.org", "")  # readable offline


def test_report_is_deterministic(run_folder: Path, report: Any, tmp_path: Path) -> None:
    # the page names the command that made it: the same command, byte for byte
    command = f"blocksim report {run_folder} -o {report.out_dir}"
    again = build_report(run_folder, tmp_path / "again", command=command)
    assert again.index.read_bytes() == report.index.read_bytes()
    for png in report.pngs:
        assert (tmp_path / "again" / "figures" / png.name).read_bytes() == png.read_bytes()


def test_the_page_names_version_command_seeds_and_a_date_only_from_source_date_epoch(
    run_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sim.report import blocksim_version

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "my out"
    args = ["report", str(run_folder), "-o", str(out), "--title", "it's"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    page = (out / "index.html").read_bytes()
    html = page.decode("utf-8")
    assert f"blocksim {escape(blocksim_version())}" in html
    # the command as given, quoted to paste back, the working folder's paths made relative
    said = shlex.join(["blocksim", "report", str(run_folder), "-o", "my out", "--title", "it's"])
    assert escape(said) in html and str(tmp_path) not in html
    assert "under-load: 0" in html  # the seed of each replayed trace
    assert "fuzz campaign: 0" in html  # and of the campaign
    assert "not recorded (set SOURCE_DATE_EPOCH to stamp one)" in html
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and (out / "index.html").read_bytes() == page
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    dated = CliRunner().invoke(main, args)
    assert dated.exit_code == 0, dated.output
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "2023-11-14 22:13:20 UTC" in html and "not recorded" not in html
    assert html.replace("2023-11-14 22:13:20 UTC (SOURCE_DATE_EPOCH=1700000000)", "") == (
        page.decode("utf-8").replace("not recorded (set SOURCE_DATE_EPOCH to stamp one)", "")
    )  # the date is the only difference
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code == 0, bad.output
    assert "SOURCE_DATE_EPOCH=&#x27;yesterday&#x27; is not a count of seconds" in (
        (out / "index.html").read_text(encoding="utf-8")
    )


def test_timeline_records_jobs_bitmaps_graph_changes_and_io(run_folder: Path) -> None:
    doc = json.loads((run_folder / "timelines" / "under-load.json").read_text())
    lanes = {j["lane"]: j for j in doc["jobs"]}
    assert [lanes["bk0"]["type"], lanes["m0"]["type"]] == ["backup", "mirror"]
    assert [s[1] for s in lanes["m0"]["states"]][-3:] == ["pending", "concluded", "null"]
    assert "ready" in [s[1] for s in lanes["m0"]["states"]]
    progress = lanes["bk0"]["progress"]
    assert progress[-1][1] == progress[-1][2] == 32 << 20
    assert [c[1] for c in doc["graph_changes"]][:2] == [
        "drive-backup bk0",
        "BLOCK_JOB_COMPLETED bk0",
    ]
    counts = doc["bitmaps"][0]["counts"]
    assert doc["bitmaps"][0]["label"] == "fmt0/b0" and max(c[1] or 0 for c in counts) > 0
    assert counts[-1][1] is None  # fmt0 left the graph with the mirror's pivot
    kinds = {tuple(row[3]) for row in doc["io"] if row[1] == "write"}
    assert {(), ("backup",), ("mirror",)} <= kinds
    still = json.loads((run_folder / "timelines" / "no-time.json").read_text())
    assert still["end_ns"] == 0
    assert [c[2] for c in still["graph_changes"]] == [3]  # the snapshot, at step 3
    assert still["bitmaps"][0]["counts"][-1][1] is None  # removed at step 5


def test_recording_changes_nothing_and_is_deterministic(run_folder: Path) -> None:
    from sim.replay import replay

    lines = (run_folder.parent / "under-load.jsonl").read_text().splitlines()
    plain = replay(parse_lines(lines))
    recorded, timeline = record(parse_lines(lines))
    assert [o.json_line() for o in plain.steps] == [o.json_line() for o in recorded.steps]
    assert plain.final == recorded.final
    _, again = record(parse_lines(lines))
    assert dumps_timeline(again) == dumps_timeline(timeline)
    saved = (run_folder / "timelines" / "under-load.json").read_text()
    assert json.loads(saved)["jobs"] == timeline["jobs"]


def test_bitmap_counts_are_throttled_between_steps_but_exact_at_them() -> None:
    big = dict(DRIVE0, size=64 << 30)  # 16M bits at 4 KiB: a count every ~4 ms at most
    steps = [
        qmp("block-dirty-bitmap-add", node="fmt0", name="fine", granularity=4096),
        {
            "workload": {
                "device": "drive0",
                "pattern": "uniform",
                "rate": 4000,
                "size": 4096,
                "duration": 0.5,
            }
        },  # fmt: skip
        {"advance": 0.6},
    ]
    lines = [json.dumps(header(drives=[big]))] + [json.dumps(s) for s in steps]
    result, timeline = record(parse_lines(lines))
    counts = timeline["bitmaps"][0]["counts"]
    writes = sum(1 for row in timeline["io"] if row[1] == "write")
    assert 50 < len(counts) < writes / 4
    node = result.machine.state.graph.node("fmt0")
    bitmap = node.find_bitmap("fine") if node is not None else None
    assert bitmap is not None and counts[-1][1] == bitmap.count_bytes() > 0


def test_coverage_from_timelines_when_no_campaign_ran(run_folder: Path) -> None:
    docs = [json.loads(p.read_text()) for p in sorted((run_folder / "timelines").iterdir())]
    coverage = coverage_from_timelines(docs)
    assert coverage["commands"]["drive-backup"] == {"return": 1}
    assert coverage["commands"]["block-dirty-bitmap-remove"] == {"return": 1}
    assert coverage["job-states"]["block-job-complete"] == {"ready": 1}
    assert coverage["transitions"]["mirror"]["running->ready"] == 1
    assert [p["traces"] for p in coverage["series"]] == [1, 2]
    built = coverage_figures(coverage, "timelines")
    # the job-status cells need a campaign's denominator (race-coverage): listed as not drawn
    kinds = {b.stem: type(b).__name__ for b in built}
    assert kinds.pop("coverage-job-status-cells") == "Skipped"
    assert list(kinds.values()) == ["Drawn"] * 4


def test_recorder_detaches_from_the_clock() -> None:
    lines = [json.dumps(header())] + [json.dumps(s) for s in NO_TIME]
    result, timeline = record(parse_lines(lines))
    env = result.machine.env
    assert getattr(env.step, "__func__", None) is type(env).step  # hook gone after the run
    assert timeline["timeline"] == 1 and timeline["name"] == "inline"


def test_empty_and_broken_run_folders_still_give_a_page(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "timelines").mkdir(parents=True)
    (run / "coverage.json").write_text("{not json", encoding="utf-8")
    (run / "timelines" / "x.json").write_text('{"timeline": 99}', encoding="utf-8")
    built = build_report(run, tmp_path / "out")
    html = built.index.read_text(encoding="utf-8")
    assert not built.pngs and built.skipped
    assert "coverage.json: unreadable" in html and "not a version 1 timeline" in html
    assert "Not drawn: <b>Policy x invariant matrix</b>" in html


def test_report_command_on_a_missing_folder(tmp_path: Path) -> None:
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    # a folder with nothing to draw (a typo, the parent of a run folder) is no report
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    out = tmp_path / "out"
    empty = CliRunner().invoke(main, ["report", str(tmp_path / "empty"), "-o", str(out)])
    assert empty.exit_code == 2 and "holds no run folder input" in empty.output
    assert not (out / "index.html").exists()


def test_demo_policy_matrix_links_the_shortest_breaking_trace(tmp_path: Path) -> None:
    from sim.check import CHECKERS

    traces = sorted((SCENARIOS / "thread").glob("*.jsonl"))
    (tmp_path / "traces").mkdir()
    doc = policy_matrix(traces, tmp_path)
    assert len(doc["cells"]) == len(doc["policies"]) * len(doc["invariants"])
    cells = {(c["policy"], c["invariant"]): c for c in doc["cells"]}
    for cell in doc["cells"]:
        assert not cell["broken"] or (tmp_path / cell["trace"]).is_file()
    if "bitmap-addressability" in CHECKERS:  # the thread's point: 7.2 loses it on snapshot
        assert cells[("qemu-7.2", "bitmap-addressability")]["broken"]
        assert not cells[("bb-attached", "bitmap-addressability")]["broken"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

MARK_IMAGES = """<script>
window.addEventListener("load", () => {
  for (const img of document.images)
    img.setAttribute("data-loaded", img.complete && img.naturalWidth > 0 ? "yes" : "no");
});
</script>"""


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (Debian: apt-get install -y chromium)",
)
def test_every_image_loads_in_headless_chromium(report: Any) -> None:
    page = report.out_dir / "chromium-check.html"
    html = report.index.read_text(encoding="utf-8")
    page.write_text(html.replace("</body>", MARK_IMAGES + "</body>"), encoding="utf-8")
    proc = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, HOME=str(report.out_dir)),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    marks = re.findall(r'<img [^>]*data-loaded="(\w+)"', proc.stdout)
    assert len(marks) == len(EXPECTED), proc.stdout[-2000:]
    assert set(marks) == {"yes"}
