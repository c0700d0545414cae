"""Triage classes, --mute expected, counts of what was asked, and the report's grouping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.fuzz.campaign import CampaignConfig, run_campaign
from sim.fuzz.triage import EXPECTED, NEW, classify_expected
from sim.report.campaign_figs import failures_table
from sim.report.runfolder import load_run

ADDR = "bitmap-addressability"
RESOLVES = (
    "bitmap 'b0' created at 'drive0' (step 1) is no longer reachable at that address: "
    "'drive0' now resolves to node 'ov0', which has no bitmap 'b0'; the bitmap is on node 'fmt0'"
)
ADD = {"execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0", "name": "b0"}}
SNAP = {
    "execute": "blockdev-snapshot-sync",
    "arguments": {"device": "drive0", "snapshot-file": "o"},
}


def test_expected_only_for_the_policy_that_documents_it_and_after_a_graph_change() -> None:
    assert classify_expected("qemu-7.2", ADDR, RESOLVES, [ADD, SNAP])[0] == EXPECTED
    assert classify_expected("bb-attached", ADDR, RESOLVES, [ADD, SNAP])[0] == NEW
    assert classify_expected("qemu-7.2", ADDR, RESOLVES, [ADD])[0] == NEW  # no graph change
    other = "bitmap 'b0' created at 'drive0' (step 1) was destroyed without being removed"
    assert classify_expected("qemu-7.2", ADDR, other, [ADD, SNAP])[0] == NEW


def campaign(tmp_path: Path, **extra: object) -> object:
    config = CampaignConfig(
        examples=30, steps=6, seed=10, invariants=[ADDR], out=tmp_path, round_examples=30
    )
    for key, value in extra.items():
        setattr(config, key, value)
    return run_campaign(config)


def failing_campaign(tmp_path: Path, **extra: object) -> object:
    """The first seed (11, 10, 12, ...) whose campaign (no shrinking) fails: which one does
    depends on the fuzzer's rules; the search is deterministic and tries first the seed
    that fails today."""
    knobs: dict[str, object] = {"steps": 8, "examples": 60, "round_examples": 20, "shrink": False}
    for seed in dict.fromkeys((11, *range(10, 30))):
        out = tmp_path / f"seed-{seed}"
        result = campaign(out, seed=seed, **knobs, **extra)
        if result.failures:  # type: ignore[attr-defined]
            return result
    raise AssertionError("no seed in 10..29 finds an addressability failure")


def test_counts_examples_asked_for_apart_from_shrink_runs(tmp_path: Path) -> None:
    result = failing_campaign(tmp_path)
    tmp_path = Path(result.config.out)  # type: ignore[attr-defined]
    assert result.failures, "a seed finds an addressability failure"  # type: ignore[attr-defined]
    assert 0 < result.examples <= 60  # type: ignore[attr-defined]
    # the failing example is replayed once more at the end of its round: a replay, not
    # one more example
    assert result.replays > 0  # type: ignore[attr-defined]
    doc = json.loads((tmp_path / "campaign.json").read_text())
    assert doc["examples"] == result.examples and doc["replays"] == result.replays  # type: ignore[attr-defined]
    # coverage.json and its series count the same: generated examples, the runs apart
    cov = json.loads((tmp_path / "coverage.json").read_text())
    assert cov["examples"] == cov["series"][-1]["examples"] == result.examples  # type: ignore[attr-defined]
    assert cov["runs"] == cov["series"][-1]["runs"] >= result.examples + result.replays  # type: ignore[attr-defined]
    assert all(p["examples"] <= p["runs"] for p in cov["series"])
    examples = [p["examples"] for p in cov["series"]]
    assert examples == sorted(examples) and examples[-1] <= 60  # never more than asked
    index = json.loads((tmp_path / "failures" / "index.json").read_text())
    assert all(r["class"] in ("new", "expected") for r in index)
    ranks = [0 if r["class"] == "new" else 1 for r in index]
    assert ranks == sorted(ranks)  # new first


def test_mute_expected_keeps_expected_failures_from_stopping_the_campaign(tmp_path: Path) -> None:
    knobs: dict[str, object] = {"steps": 8, "examples": 60, "round_examples": 20, "shrink": False}
    # the first seed with an expected failure (a deterministic search; 2 has one today)
    for seed in dict.fromkeys((2, *range(12))):
        loud = campaign(tmp_path / f"loud-{seed}", seed=seed, **knobs)
        if EXPECTED in [r.triage for r in loud.failures]:  # type: ignore[attr-defined]
            break
    quiet = campaign(tmp_path / "quiet", mute=("expected",), seed=seed, **knobs)
    # both generate what was asked: the loud one's rounds go on in parts past the failure
    assert quiet.examples == loud.examples == 60  # type: ignore[attr-defined]
    classes = [r.triage for r in loud.failures]  # type: ignore[attr-defined]
    assert EXPECTED in classes
    assert EXPECTED not in [r.triage for r in quiet.failures]  # type: ignore[attr-defined]


def test_report_table_groups_failures_by_class_new_first(tmp_path: Path) -> None:
    folder = tmp_path / "failures"
    folder.mkdir()
    records = [
        {"kind": ADDR, "path": "a.jsonl", "steps": 2, "message": "m", "class": "expected",
         "class_reason": "documented"},
        {"kind": "bitmap-soundness", "path": "b.jsonl", "steps": 3, "message": "m", "class": "new"},
    ]  # fmt: skip
    (folder / "index.json").write_text(json.dumps(records))
    run = load_run(tmp_path)
    table = failures_table(run.failures, lambda _p: None)
    assert [row[0] for row in table.rows] == ["new", "expected"]
    assert "documented" in table.rows[1][-1]


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU 7.2 not on PATH")
def test_triage_on_real_qemu_rewrites_the_index(tmp_path: Path) -> None:
    result = failing_campaign(tmp_path)
    tmp_path = Path(result.config.out)  # type: ignore[attr-defined]
    new = [r for r in result.failures if r.triage == NEW]  # type: ignore[attr-defined]
    out = CliRunner().invoke(main, ["triage", str(tmp_path)])
    assert out.exit_code == 0, out.output
    index = json.loads((tmp_path / "failures" / "index.json").read_text())
    assert len(index) == len(result.failures)  # type: ignore[attr-defined]
    for r in index:
        assert r["class"] in ("new", "artefact", "refused-by-qemu", "expected")
        if any(n.signature == r["signature"] for n in new):
            assert r["class_reason"], r  # every new failure was checked on QEMU
            both = tmp_path / "failures" / (Path(r["path"]).stem + ".qemu.json")
            if not r["class_reason"].startswith("not checked"):  # QEMU ran it: both runs kept
                doc = json.loads(both.read_text())
                assert [row["step"] for row in doc["steps"]] == list(range(1, r["steps"] + 1))
                assert all(row["qemu"]["response"] is not None for row in doc["steps"][:1])


def test_report_campaign_table_names_asked_and_done_apart_and_sorts_depths(
    tmp_path: Path,
) -> None:
    from sim.report import _extra_tables, _TraceLinks

    campaign_doc = {
        "config": {"policies": ["qemu-7.2", "bb-attached"], "seed": 3, "examples": 100,
                   "steps": 25, "shards": 4, "time_budget_s": 30.0},
        "examples": 97, "replays": 400, "rejected": 2, "steps": 2300, "stopped": "done",
    }  # fmt: skip
    coverage = {"graph-shapes": {"chain-depth": {"10": 1, "2": 5, "1": 9, "4-7": 2, "8+": 1}}}
    (tmp_path / "campaign.json").write_text(json.dumps(campaign_doc))
    (tmp_path / "coverage.json").write_text(json.dumps(coverage))
    run = load_run(tmp_path)
    tables = _extra_tables(run, _TraceLinks(run, tmp_path / "out"))
    rows = dict((r[0], r[1]) for r in tables["campaign"][0][1].rows)
    assert rows["examples asked"] == "100" and rows["examples generated"] == "97"
    assert rows["steps per example (at most)"] == "25" and rows["steps run"] == "2300"
    assert rows["runs replaying or shrinking"] == "400"
    assert rows["time budget (s)"].startswith("30:")  # examples asked, or the budget
    assert rows["policies"] == "qemu-7.2, bb-attached"
    labels = [r[0] for r in tables["campaign"][0][1].rows]
    assert len(labels) == len(set(labels))  # no two rows with the same name
    depths = [r[1] for r in tables["coverage"][0][1].rows if r[0] == "chain-depth"]
    assert depths == ["1", "2", "4-7", "8+", "10"]


def test_a_step_the_permission_rules_refuse_is_classed_refused_without_qemu() -> None:
    """Under qemu-2.5 (no BdrvChild permissions) a side write into a node a backup holds
    goes through; with the model's permission rules on (QEMU 7.2's) it is refused, so the
    failure needs a step QEMU refuses."""
    from sim.fuzz.export import prepare_failure
    from sim.fuzz.failures import FuzzFailure
    from sim.fuzz.triage import REFUSED, classify_refused

    root = Path(__file__).resolve().parent.parent / "scenarios"
    path = root / "checkers" / "pit-side-write-bypasses-backup-filter.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip() and x[0] != "/"]
    header, steps = lines[0], [x for x in lines[1:] if "final-expect" not in x]
    assert header["policy"] == "qemu-2.5"
    verdict = classify_refused(header, steps)
    assert verdict is not None and verdict[0] == REFUSED
    assert "step 3 (qemu-io" in verdict[1] and "Permission conflict on node 'fmt0'" in verdict[1]
    # under qemu-7.2 the simulator applies the rules itself: nothing to add
    assert classify_refused({**header, "policy": "qemu-7.2"}, steps) is None
    violation = [{"invariant": "backup-point-in-time", "step": len(steps), "message": "m"}]
    failure = FuzzFailure("backup-point-in-time", "m", header, steps, violation)
    record = prepare_failure(failure, "test", shrunk=True).record
    assert record.triage == REFUSED and "perms.py" in record.triage_reason


def test_mute_values_that_mute_nothing_are_refused(tmp_path: Path) -> None:
    from sim.cli import parse_mute

    keys = "expected,bitmap-addressability,internal-error,bitmap-soundness: bitmap '*' x"
    assert len(parse_mute(keys)) == 4
    out = CliRunner().invoke(main, ["fuzz", "--mute", "adressability", "--out", str(tmp_path)])
    assert out.exit_code == 2 and "'adressability' mutes nothing" in out.output
    assert not (tmp_path / "coverage.json").exists()  # refused before any campaign ran


def test_triage_of_a_folder_that_is_no_campaign_says_so(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["triage", str(tmp_path)])
    assert out.exit_code == 2 and "blocksim fuzz --out DIR" in out.output
    assert "Traceback" not in out.output and "Errno" not in out.output


def test_a_job_gone_on_qemu_is_a_timing_artefact_not_a_refusal() -> None:
    from types import SimpleNamespace

    from sim.fuzz.triage import ARTEFACT, REFUSED, classify_runs

    steps = [{"execute": "drive-backup"}, {"execute": "job-cancel"}, {"execute": "query-jobs"}]

    def runs(error: str) -> object:
        qemu = [{"response": {"return": {}}}, {"response": {"error": {"desc": error}}}, {}]
        sim = [SimpleNamespace(response={"return": {}}) for _ in steps]
        return SimpleNamespace(qemu=SimpleNamespace(steps=qemu), sim=SimpleNamespace(steps=sim),
                               differences=[])  # fmt: skip

    name, why = classify_runs(runs("Job not found"), steps, 3)
    assert name == ARTEFACT and "already ended by step 2 (job-cancel" in why
    assert classify_runs(runs("Block job 'job3' not found"), steps, 3)[0] == ARTEFACT
    name, why = classify_runs(runs("Permission conflict on node 'fmt0'"), steps, 3)
    assert name == REFUSED and "refuses step 2" in why
    assert classify_runs(runs("Job not found"), steps, 1)[0] == "new"  # after the violation


def test_a_failure_is_timed_when_first_seen_not_when_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sim.fuzz.campaign import Campaign
    from sim.fuzz.failures import failure_type

    header = {"trace": 1, "name": "t", "policy": "qemu-7.2", "seed": 0,
              "drives": [{"id": "drive0", "node-name": "fmt0", "file-node-name": "proto0",
                          "format": "qcow2", "size": 67108864}]}  # fmt: skip
    steps = [ADD, SNAP]
    failure = failure_type(ADDR, RESOLVES)(ADDR, RESOLVES, header, steps, [])
    config = CampaignConfig(examples=10, invariants=[ADDR], out=tmp_path)
    campaign = Campaign(config)
    now = [1.5]
    monkeypatch.setattr(campaign, "elapsed", lambda: now[0])
    campaign.failure_seen(failure)  # an example shows it at 1.5 s ...
    now[0] = 9.0
    campaign.failure_seen(failure)  # ... and again while Hypothesis shrinks it
    now[0] = 9.5
    campaign._export(failure, shrunk=True, round_number=0)  # exported at 9.5 s
    [record] = campaign.result.failures
    assert record.wall_s == 1.5


def test_a_bitmap_destroyed_with_the_node_a_mirror_pivot_dropped_is_expected() -> None:
    """Recorded on QEMU 7.2: a drive-mirror pivot drops the old source, and its bitmap
    added by device name goes with it; under the device-follows-root policies that is
    documented behaviour, not a new bug."""
    name = "scenarios/checkers/addr-mirror-pivot-destroys-source-bitmap.jsonl"
    lines, steps = _scenario(name)
    (destroyed,) = [
        v for v in lines[-1]["final-expect"]["violations"] if "destroyed" in v["message"]
    ]
    verdict = classify_expected("qemu-7.2", ADDR, destroyed["message"], steps, destroyed["step"])
    assert verdict[0] == EXPECTED and name in verdict[1]
    assert classify_expected("bb-attached", ADDR, destroyed["message"], steps)[0] == NEW
    assert classify_expected("qemu-7.2", ADDR, destroyed["message"], steps[:1])[0] == NEW


def test_a_step_real_qemu_never_completes_is_classed_refused() -> None:
    """qemu-io through a drive whose commit waits to be finalized after job-complete:
    QEMU 7.2 keeps the source drained until then, so the write never completes (its
    monitor hangs: `blocksim diff` times out on it); the simulator writes and warns, and
    the data the commit then drops is no bug a user can meet."""
    from sim.fuzz.export import prepare_failure
    from sim.fuzz.failures import FuzzFailure
    from sim.fuzz.triage import REFUSED

    header = {"trace": 1, "drives": [{"id": "drive0", "node-name": "fmt0",
              "file-node-name": "proto0", "format": "qcow2", "size": 64 << 20}],
              "policy": "qemu-7.2", "seed": 0, "invariants": ["no-lost-guest-data"]}  # fmt: skip
    steps = [
        {"execute": "blockdev-snapshot-sync",
         "arguments": {"device": "drive0", "snapshot-file": "o.qcow2"}},
        {"execute": "block-commit",
         "arguments": {"device": "drive0", "job-id": "j", "auto-finalize": False}},
        {"until": {"job": "j", "point": "ready"}},
        {"execute": "job-complete", "arguments": {"id": "j"}},
        {"until": {"job": "j", "point": "ready"}},
        {"execute": "human-monitor-command",
         "arguments": {"command-line": 'qemu-io drive0 "write -P 1 0 4096"'}},
        {"execute": "job-finalize", "arguments": {"id": "j"}},
    ]  # fmt: skip
    message = (
        "device 'drive0' lost guest data when commit job 'j' ended: 4096 bytes differ, first "
        "at offset 0: the guest last wrote write #2 (pattern 0x01) there, the device now "
        "reads unallocated (zeroes)"
    )
    violation = [{"invariant": "no-lost-guest-data", "step": 7, "message": message}]
    failure = FuzzFailure("no-lost-guest-data", message, header, steps, violation)
    record = prepare_failure(failure, "test", shrunk=True).record
    assert record.reproduced, record.message
    assert record.triage == REFUSED, record.triage_reason
    assert "never completes step 6 (qemu-io drive0" in record.triage_reason
    assert "hangs its monitor" in record.triage_reason


def test_an_aborted_always_backup_transaction_is_expected_and_nothing_wider() -> None:
    """Recorded on QEMU 7.2: the aborted transaction leaves its bitmap-mode=always backup's
    bitmap fully dirty.  Expected only for exactly that change of exactly that bitmap."""
    atom = "transaction-atomicity"
    name = "scenarios/checkers/atom-aborted-backup-always-dirties-bitmap.jsonl"
    lines, steps = _scenario(name)
    (v,) = lines[-1]["final-expect"]["violations"]
    verdict = classify_expected("bb-attached", atom, v["message"], steps, v["step"])
    assert verdict[0] == EXPECTED and name in verdict[1]
    other = v["message"].replace("changed its bits", "changed its enabled")
    assert classify_expected("qemu-7.2", atom, other, steps, v["step"])[0] == NEW
    more = v["message"] + "; node 'ov0' appeared"
    assert classify_expected("qemu-7.2", atom, more, steps, v["step"])[0] == NEW
    txn = steps[v["step"] - 1]
    on_success = json.loads(json.dumps(txn).replace('"always"', '"on-success"'))
    changed = [*steps[: v["step"] - 1], on_success]
    assert classify_expected("qemu-7.2", atom, v["message"], changed, v["step"])[0] == NEW


def test_a_write_through_a_copy_before_write_filter_into_a_drive_is_expected() -> None:
    """Recorded on QEMU 7.2: a copy-before-write filter whose target is drive0's node
    copies its source's cluster into drive0.  Expected only when the write goes through
    such a filter and its target is a drive's node, not a node the trace added."""
    loss = "no-lost-guest-data"
    name = "scenarios/checkers/loss-cbw-target-is-drive-node.jsonl"
    lines, steps = _scenario(name)
    (v,) = lines[-1]["final-expect"]["violations"]
    verdict = classify_expected("qemu-7.2", loss, v["message"], steps, v["step"])
    assert verdict[0] == EXPECTED and name in verdict[1]
    assert classify_expected("bb-attached", loss, v["message"], steps, v["step"])[0] == EXPECTED
    # the target a node the trace added (no drive reads it): a loss there is new
    other = json.loads(json.dumps(steps).replace('"target": "fmt0"', '"target": "flt5"'))
    assert classify_expected("qemu-7.2", loss, v["message"], other, v["step"])[0] == NEW
    # the same loss at a step that writes through no such filter is new
    assert classify_expected("qemu-7.2", loss, v["message"], steps, v["step"] - 1)[0] == NEW


def _scenario(name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lines of a scenario file (header first, `//` comments skipped) and its
    steps (without final-expect)."""
    root = Path(__file__).resolve().parent.parent
    text = (root / name).read_text().splitlines()
    lines = [json.loads(x) for x in text if x.strip() and not x.startswith("//")]
    return lines, [x for x in lines[1:] if "final-expect" not in x]
