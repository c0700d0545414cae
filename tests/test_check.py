"""The invariant checkers (sim/check): the registry, and the verdict on every checker scenario.

Each scenario under scenarios/checkers/ pins its violations in `final-expect`;
here we also say, per scenario, which invariants it must flag under its
header's policy (every other checker must pass it), and check that every
checker has scenarios it flags and scenarios it passes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sim.check import CHECKERS, Checker, Violation, make_checkers
from sim.replay import ReplayResult, replay
from sim.trace import load_trace
from tests.helpers import DRIVE0, SCENARIOS, io, qmp, run_steps, snapshot_sync

CHECKER_SCENARIOS = SCENARIOS / "checkers"
ADDR, SOUND, PIT = "bitmap-addressability", "bitmap-soundness", "backup-point-in-time"
MCC, LOSS, GRAPH, JOB = (
    "mirror-and-commit-consistency",
    "no-lost-guest-data",
    "graph-well-formed",
    "job-state-legality",
)
ATOM, PREC = "transaction-atomicity", "bitmap-precision"

# scenario -> the invariants it must flag under its header's policy
VERDICTS: dict[str, set[str]] = {
    "addr-snapshot-device-bitmap": {ADDR, SOUND},
    "addr-snapshot-device-bitmap-bb-attached": set(),
    "addr-mirror-filter-captures-bitmap": {ADDR},
    "addr-mirror-pivot-destroys-source-bitmap": {ADDR},
    "addr-node-bitmaps-across-snapshot": set(),
    "graph-qemu25-list-head": {ADDR, GRAPH, PREC},
    "sound-cancelled-incremental-keeps-bits": set(),
    "sound-active-commit-rescues-base-bitmap": {ADDR},
    "pit-incremental-chain": set(),
    "pit-fleecing-sync-none": set(),
    "pit-side-write-bypasses-backup-filter": {PIT, GRAPH},
    "pit-incremental-into-used-image": {PIT},
    "mcc-mirror-stream-commit": set(),
    "mcc-side-write-to-mirror-target": {MCC, LOSS},
    "loss-backup-into-another-drive": {LOSS},
    "loss-cbw-target-is-drive-node": {LOSS},
    "job-lifecycles": set(),
    "mcc-mirror-existing-target-zeroed": set(),
    "graph-snapshot-onto-itself-refused": set(),
    "atom-failed-transaction-rolls-back": set(),
    "atom-aborted-backup-always-dirties-bitmap": {ATOM},
    "prec-merge-disable-stream": set(),
}
# No trace makes a correct model break QEMU's job state machine (the model's moves go
# through the same JobSTT table); tests/test_mutants.py shows the checker catches models
# that do.
FLAGGED_ONLY_BY_MUTANTS = {JOB}


def _replay(name: str, policy: str | None = None) -> ReplayResult:
    return replay(
        load_trace(CHECKER_SCENARIOS / f"{name}.jsonl"), policy=policy, checkers=make_checkers(None)
    )


def _flagged(result: ReplayResult) -> set[str]:
    return {v["invariant"] for v in result.final["violations"]}


# -- the registry ----------------------------------------------------------------------------


def test_registry_names_the_nine_invariants_in_order() -> None:
    assert list(CHECKERS) == [ADDR, SOUND, PIT, MCC, LOSS, GRAPH, JOB, ATOM, PREC]
    for name, cls in CHECKERS.items():
        assert cls.name == name
        doc = " ".join((cls.__doc__ or "").split())
        assert doc.endswith(".") and doc.count(". ") == 0, f"{name}: one sentence, got {doc!r}"


def test_make_checkers_builds_fresh_instances() -> None:
    every = make_checkers(None)
    assert [c.name for c in every] == list(CHECKERS)
    again = make_checkers([JOB, ADDR])
    assert [type(c) for c in again] == [CHECKERS[JOB], CHECKERS[ADDR]]
    assert all(isinstance(c, Checker) for c in every)
    assert not set(map(id, every)) & set(map(id, make_checkers(None)))
    assert make_checkers([]) == []


def test_make_checkers_refuses_unknown_names() -> None:
    with pytest.raises(ValueError) as info:
        make_checkers([ADDR, "bitmap-adressability", "nope"])
    text = str(info.value)
    assert "'bitmap-adressability'" in text and "'nope'" in text
    assert ADDR in text.split("known:")[1]


# -- the scenarios -----------------------------------------------------------------------------


def test_every_checker_scenario_has_a_verdict() -> None:
    files = {p.stem for p in CHECKER_SCENARIOS.glob("*.jsonl")}
    assert files == set(VERDICTS)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_scenario_verdict(name: str) -> None:
    result = _replay(name)
    problems = result.mismatches + result.trace_errors + result.internal_errors
    assert not problems, f"blocksim replay scenarios/checkers/{name}.jsonl\n" + "\n".join(problems)
    assert _flagged(result) == VERDICTS[name], json.dumps(result.final["violations"], indent=1)


def test_every_checker_flags_one_scenario_and_passes_another() -> None:
    for name in CHECKERS:
        flagging = [s for s, v in VERDICTS.items() if name in v]
        passing = [s for s, v in VERDICTS.items() if name not in v]
        assert passing, name
        assert flagging or name in FLAGGED_ONLY_BY_MUTANTS, name


@pytest.mark.parametrize(
    ("policy", "flagged"),
    [
        ("qemu-7.2", {ADDR, SOUND}),
        ("bb-attached", set()),
        ("node-only", set()),
        ("qemu-2.5", {ADDR}),
    ],
)
def test_the_thread_scenario_under_each_policy(policy: str, flagged: set[str]) -> None:
    """Bitmap by device name, snapshot, same address again: qemu-7.2 breaks addressability
    and soundness, bb-attached keeps both, node-only refuses the add, qemu-2.5 moves the
    bitmap along and then shows the list-head bug on remove."""
    result = _replay("addr-snapshot-device-bitmap", policy)
    assert _flagged(result) == flagged, json.dumps(result.final["violations"], indent=1)
    if policy == "qemu-2.5":
        [v] = result.final["violations"]
        assert "removed at step" in v["message"] and "still listed on node 'ov0'" in v["message"]


# (scenario, mutant of tests/mutant_catalog.py): a trace every checker passes on the healthy
# model, which the new checkers flag once the model breaks the rule they guard
FLAGGED_UNDER_MUTANT = [
    ("checkers/atom-failed-transaction-rolls-back", "txn-add-survives-abort", ATOM, None),
    ("checkers/atom-failed-transaction-rolls-back", "txn-snapshot-survives-abort", ATOM, None),
    ("checkers/prec-merge-disable-stream", "stream-cor-dirties-top", PREC, None),
    ("checkers/prec-merge-disable-stream", "disabled-bitmap-records", PREC, None),
    ("checkers/prec-merge-disable-stream", "clear-keeps-bits", PREC, None),
    # recorded on QEMU 7.2: one transaction clears both bitmaps and starts a full backup,
    # whose filter then stands where drive0 names: the clears found the bitmaps first
    ("iotests/iotest-124-incremental-transaction", "clear-keeps-bits", PREC, None),
    # bb-attached: drive0 lists its own 'snap-bm' and its root one of the same name; a
    # merge into the root's 'b0' by device name reads the root's 'snap-bm' (a bare source
    # name is looked up on the target's owner), and the checker must read the same one
    ("qemu-7.2-recorded/rec-0366", "clear-keeps-bits", PREC, "bb-attached"),
    ("qemu-7.2-recorded/rec-0366", "merge-replaces-target", PREC, "bb-attached"),
    ("recorded/jobs-cancel", "force-cancel-ignored", JOB, None),
]


@pytest.mark.parametrize(("name", "mutant", "invariant", "policy"), FLAGGED_UNDER_MUTANT)
def test_a_passing_scenario_is_flagged_under_a_mutant(
    name: str, mutant: str, invariant: str, policy: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.mutant_catalog import ALL_MUTANTS

    trace = load_trace(SCENARIOS / f"{name}.jsonl")
    assert invariant not in _flagged(replay(trace, policy=policy, checkers=make_checkers(None)))
    next(m for m in ALL_MUTANTS if m.name == mutant).apply(monkeypatch)
    assert invariant in _flagged(replay(trace, policy=policy, checkers=make_checkers(None)))


def test_precision_reads_a_bare_merge_source_on_the_targets_owner_under_bb_attached() -> None:
    """Under bb-attached drive0 lists its own 'snap-bm' (added by device name) and its
    root fmt0 one of the same name.  A merge at drive0 into 'b0' finds 'b0' on fmt0 and
    its bare source 'snap-bm' on fmt0 too (block_dirty_bitmap_merge looks a bare name up
    on the target's node), not the device's dirty one: 'b0' stays clean, and the checker
    must expect it clean."""
    steps = [
        qmp("block-dirty-bitmap-add", node="drive0", name="snap-bm"),
        qmp("block-dirty-bitmap-add", node="fmt0", name="snap-bm"),
        qmp("block-dirty-bitmap-add", node="fmt0", name="b0"),
        io("write -P 1 0 64k"),
        qmp("block-dirty-bitmap-clear", node="fmt0", name="b0"),
        qmp("block-dirty-bitmap-clear", node="fmt0", name="snap-bm"),
        qmp("block-dirty-bitmap-merge", node="drive0", target="b0", bitmaps=["snap-bm"]),
        qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"),
        qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="snap-bm"),
        qmp("x-debug-block-dirty-bitmap-sha256", node="drive0", name="snap-bm"),
    ]
    result = run_steps(steps, policy="bb-attached", checkers=make_checkers([PREC, SOUND]))
    b0, root_snap, device_snap = (s.response["return"]["sha256"] for s in result.steps[-3:])
    assert b0 == root_snap != device_snap  # the merge read the root's clean 'snap-bm'
    assert result.final["violations"] == []


def test_a_copy_before_write_copy_into_a_device_is_a_loss_at_the_write_through_the_filter() -> None:
    """A write through a copy-before-write filter whose target is drive0's node copies the
    filter's source cluster into drive0 (QEMU 7.2 does: recorded as
    checkers/loss-cbw-target-is-drive-node, images identical in blocksim diff).  That
    qemu-io step is quiet (no time, no event), and the loss is reported there; before, it
    waited for the next step that could change data (the campaign met it as a loss "in
    blockdev-del", a failed one) and went unreported when the trace ended first."""
    path = SCENARIOS / "checkers" / "loss-cbw-target-is-drive-node.jsonl"
    lines = path.read_text().splitlines()
    steps = [json.loads(line) for line in lines[1:10]]  # up to the write through cbw6
    for step in steps:
        step.pop("expect", None)
    assert steps[-1]["arguments"]["command-line"].startswith("qemu-io cbw6 ")
    result = run_steps(steps, checkers=make_checkers([LOSS]))
    (found,) = result.final["violations"]
    assert found["step"] == 9 and "in human-monitor-command" in found["message"]
    assert found["details"]["ranges"] == [[0, 65536]]  # the cluster the filter copied


def test_precision_follows_a_clear_that_ran_before_its_transaction_moved_the_device() -> None:
    """QEMU runs a transaction's actions in order: a clear before a snapshot of the same
    drive found the bitmap on the old top; the snapshot then moves drive0 to the overlay.
    The checker resolves the clear as QEMU did, so the cleared bitmap must be clean."""
    steps = [
        qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
        io("write -P 1 0 64k"),
        qmp("transaction", actions=[
            {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "b0"}},
            {"type": "blockdev-snapshot-sync",
             "data": {"device": "drive0", "snapshot-file": "ov.qcow2"}},
        ]),
        qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"),
    ]  # fmt: skip
    result = run_steps(steps, checkers=make_checkers([PREC]))
    assert result.steps[2].response == {"return": {}}
    assert result.final["violations"] == []


def test_precision_keeps_open_the_bitmaps_a_failed_write_may_have_marked() -> None:
    """A guest write that an injected fault fails still marks the bitmaps it reached
    (bdrv_co_write_req_finish marks failed writes too); a qemu-io step is a quiet step,
    and the next quiet step must not call those bits unexplained.  Under bb-attached the
    device's bitmap takes the failed write's mark."""
    trace = load_trace(SCENARIOS / "engine" / "bk-cbw-guest-write-fails.jsonl")
    result = replay(trace, policy="bb-attached", checkers=make_checkers([PREC]))
    assert result.final["violations"] == []


def test_precision_follows_a_failed_enable_action_disabling_its_bitmap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transaction failing at a block-dirty-bitmap-enable whose bitmap is busy leaves
    that bitmap disabled on QEMU 7.2 (recorded): the checker must not ask it to mark
    later writes.  A transaction failing at a clear of the same busy bitmap leaves it
    enabled: a model that disabled it there is flagged."""
    trace = load_trace(SCENARIOS / "recorded" / "transaction-failed-enable-disables-bitmap.jsonl")
    assert replay(trace, checkers=make_checkers([PREC])).final["violations"] == []
    remove_then = [
        {"type": "block-dirty-bitmap-remove", "data": {"node": "fmt0", "name": "b0"}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "fmt0", "name": "b0"}},
    ]
    steps = [
        qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
        qmp("transaction", actions=remove_then),
        io("write -P 1 0 64k"),
        qmp("query-block"),
    ]
    result = run_steps(steps, checkers=make_checkers([PREC]))
    assert "in use" in result.steps[1].response["error"]["desc"]
    assert result.final["violations"] == []
    import sim.qmp.transaction as txn

    found = txn._failed_enable_bitmap

    def disables_any(m: object, kind: str, data: dict[str, object], ctx: object) -> object:
        return found(m, "block-dirty-bitmap-enable", data, ctx)  # type: ignore[arg-type]

    monkeypatch.setattr(txn, "_failed_enable_bitmap", disables_any)
    result = run_steps(steps, checkers=make_checkers([PREC]))
    assert [v["message"] for v in result.final["violations"]][0].endswith(
        "lacks 65536 byte(s) that guest writes through it or merges into it dirtied, "
        "first at offset 0"
    )


def test_a_drain_pauses_every_active_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """scenarios/recorded/jobs-drain.jsonl (recorded on QEMU 7.2) passes; with a drain that
    pauses nothing, job-state-legality names the job the drain left alone."""
    trace = load_trace(SCENARIOS / "recorded" / "jobs-drain.jsonl")
    healthy = replay(trace, checkers=make_checkers([JOB]))
    assert healthy.final["violations"] == []
    from tests.mutant_catalog import ALL_MUTANTS

    next(m for m in ALL_MUTANTS if m.name == "drain-skips-jobs").apply(monkeypatch)
    broken = replay(trace, checkers=make_checkers([JOB]))
    messages = [v["message"] for v in broken.final["violations"]]
    assert messages and all("the drain of this step did not take it to" in m for m in messages)


# -- how violations are reported -----------------------------------------------------------------


def test_violations_reach_the_step_and_the_final_state() -> None:
    result = _replay("addr-snapshot-device-bitmap")
    per_step = [v for o in result.steps for v in o.violations]
    assert per_step == result.final["violations"]
    [addr, sound] = per_step
    assert addr["step"] == 3 and addr["invariant"] == ADDR
    assert "'drive0' now resolves to node 'ov0'" in addr["message"]
    assert "the bitmap is on node 'fmt0'" in addr["message"]
    assert sound["details"]["ranges"] == [[2 << 20, 64 << 10]]
    assert result.steps[2].json_line()["violations"] == [addr]
    Violation(**{k: v for k, v in sound.items()})  # the dict form round-trips


def test_checkers_only_observe() -> None:
    trace = load_trace(CHECKER_SCENARIOS / "mcc-mirror-stream-commit.jsonl")
    bare, watched = replay(trace), replay(trace, checkers=make_checkers(None))
    assert watched.final["violations"] == [] and bare.final["violations"] == []
    assert {k: v for k, v in watched.final.items() if k != "violations"} == {
        k: v for k, v in bare.final.items() if k != "violations"
    }
    assert [o.response for o in watched.steps] == [o.response for o in bare.steps]


def test_replays_are_deterministic() -> None:
    first = _replay("pit-side-write-bypasses-backup-filter").final["violations"]
    assert first == _replay("pit-side-write-bypasses-backup-filter").final["violations"]


# -- small inline cases ---------------------------------------------------------------------------


def test_a_disabled_bitmap_owes_nothing() -> None:
    result = run_steps(
        [
            qmp("block-dirty-bitmap-add", node="fmt0", name="b0", disabled=True),
            io("write -P 1 0 64k"),
            qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"),
        ],
        checkers=make_checkers([SOUND]),
    )
    assert result.final["violations"] == []


def test_a_clear_restarts_what_a_bitmap_owes() -> None:
    result = run_steps(
        [
            qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
            io("write -P 1 0 64k"),
            snapshot_sync("ov.qcow2", format="qcow2"),
            io("write -P 2 1M 64k"),
            qmp("block-dirty-bitmap-clear", node="fmt0", name="b0"),
            qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"),
        ],
        checkers=make_checkers([SOUND]),
    )
    assert result.final["violations"] == []


def test_a_node_addressed_bitmap_owes_only_writes_through_its_node() -> None:
    result = run_steps(
        [
            qmp("block-dirty-bitmap-add", node="fmt0", name="b0"),
            snapshot_sync("ov.qcow2", format="qcow2"),
            io("write -P 2 1M 64k"),
        ],
        checkers=make_checkers([ADDR, SOUND]),
    )
    assert result.final["violations"] == []


def test_a_removed_bitmap_is_no_longer_tracked() -> None:
    result = run_steps(
        [
            qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
            qmp("block-dirty-bitmap-remove", node="drive0", name="b0"),
            snapshot_sync("ov.qcow2", format="qcow2"),
            qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
            io("write -P 2 1M 64k"),
        ],
        checkers=make_checkers([ADDR, SOUND]),
    )
    assert result.final["violations"] == []


class _Counter(Checker):
    name = "counter"

    def after_step(self, index: int) -> list[Violation]:
        return [self.report(index, "seen")] if index == 2 else []


def test_base_checker_report_and_violations() -> None:
    counter = _Counter()
    result = run_steps([io("write 0 512"), io("write 512 512")], checkers=[counter])
    assert [v.step for v in counter.violations()] == [2]
    assert result.steps[1].violations == [{"invariant": "counter", "step": 2, "message": "seen"}]
    assert result.final["violations"] == []  # at_end of the base class adds nothing


def test_one_transaction_adds_a_name_on_two_devices() -> None:
    drive1 = {"id": "drive1", "node-name": "fmt1", "format": "qcow2", "size": 64 << 20}
    both = [{"type": "block-dirty-bitmap-add", "data": {"node": d, "name": "inc"}}
            for d in ("drive0", "drive1")]  # fmt: skip
    result = run_steps(
        [
            qmp("transaction", actions=both),
            io("write -P 1 0 64k"),
            io("write -P 2 1M 64k", device="drive1"),
            qmp("x-debug-block-dirty-bitmap-sha256", node="drive0", name="inc"),
            qmp("x-debug-block-dirty-bitmap-sha256", node="drive1", name="inc"),
        ],
        policy="bb-attached",
        checkers=make_checkers([ADDR, SOUND]),
        drives=[DRIVE0, drive1],
    )
    assert result.final["violations"] == []


def test_an_action_before_a_snapshot_in_the_same_transaction_sees_the_old_graph() -> None:
    actions = [
        {"type": "block-dirty-bitmap-disable", "data": {"node": "drive0", "name": "b0"}},
        {"type": "blockdev-snapshot-sync",
         "data": {"device": "drive0", "snapshot-file": "ov.qcow2", "format": "qcow2"}},
    ]  # fmt: skip
    result = run_steps(
        [
            qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
            qmp("transaction", actions=actions),
            io("write -P 2 1M 64k"),
            qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"),
        ],
        checkers=make_checkers([SOUND]),
    )
    assert result.final["violations"] == []  # b0 was disabled: it owes nothing


def test_policy_matrix() -> None:
    from sim.matrix import markdown, policy_matrix, to_json

    path = CHECKER_SCENARIOS / "addr-snapshot-device-bitmap.jsonl"
    matrix = policy_matrix([path], invariants=[ADDR, SOUND, JOB])
    broken = {(p, n) for p in matrix.policies for n in matrix.invariants
              if matrix.cells[p][n].broken}  # fmt: skip
    assert broken == {("qemu-7.2", ADDR), ("qemu-7.2", SOUND), ("qemu-2.5", ADDR)}
    table = markdown(matrix)
    assert f"| `bitmap-addressability` | **broken** by `{path}`" in table
    assert table.count("holds") == 12 - 3
    cells = to_json(matrix)["cells"]
    assert [c["broken"] for c in cells].count(True) == 3
    assert all(c["trace"] == str(path) for c in cells if c["broken"])


@pytest.mark.parametrize("policy", ["qemu-7.2", "bb-attached"])
def test_a_bitmap_added_and_disabled_in_one_transaction_owes_nothing(policy: str) -> None:
    actions = [
        {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "n1"}},
        {"type": "block-dirty-bitmap-disable", "data": {"node": "drive0", "name": "n1"}},
    ]
    result = run_steps(
        [
            qmp("transaction", actions=actions),
            io("write -P 3 4M 64k"),
            qmp("x-debug-block-dirty-bitmap-sha256", node="drive0", name="n1"),
        ],
        policy=policy,
        checkers=make_checkers([SOUND]),
    )
    assert result.final["violations"] == []


def test_incremental_backup_from_a_protocol_node_bitmap_is_checked_without_error(tmp_path) -> None:
    # The bitmap on proto0 covers the host file, and so does a backup job reading proto0
    # (its target, made by a backup of proto0, is as long); the soundness checker settles
    # the successor over the bitmap's length.  IDENTICAL on QEMU 7.2 (blocksim diff).
    lines = [
        {"trace": 1, "drives": [{"id": "drive0", "node-name": "fmt0", "file-node-name": "proto0",
                                 "format": "qcow2", "size": 64 << 20}]},
        {"execute": "drive-backup", "arguments": {"device": "proto0", "job-id": "job1",
                                                  "sync": "full", "target": "bk3.qcow2",
                                                  "format": "qcow2"}},
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "job1"}}},
        {"execute": "block-dirty-bitmap-add", "arguments": {"node": "proto0", "name": "b0"}},
        {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "tgt8",
                                                  "file": {"driver": "file",
                                                           "filename": "bk3.qcow2"}}},
        {"execute": "blockdev-backup", "arguments": {"device": "proto0", "job-id": "job7",
                                                     "sync": "incremental", "bitmap": "b0",
                                                     "target": "tgt8"}},
        {"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "job7"}}},
    ]  # fmt: skip
    path = tmp_path / "proto-bitmap-backup.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    result = replay(load_trace(path), checkers=make_checkers(["bitmap-soundness"]))
    assert not result.trace_errors and not result.internal_errors, result.internal_errors
    assert result.steps[4].response == {"return": {}}
    # the bitmap is empty: the job completes with the command (nothing to copy)
    assert result.steps[5].response["event"] == "BLOCK_JOB_COMPLETED"


@pytest.mark.parametrize("policy", ["qemu-7.2", "bb-attached", "node-only"])
def test_a_backup_that_ends_with_its_command_leaves_the_bitmap_tracked(policy: str) -> None:
    # an incremental backup of an empty bitmap copies nothing: it ends within the
    # command, the successor takes over b0 without any step seeing it frozen
    result = run_steps(
        [
            qmp("block-dirty-bitmap-add", node="fmt0", name="b0"),
            qmp(
                "drive-backup",
                device="drive0",
                target="inc.qcow2",
                format="qcow2",
                sync="incremental",
                bitmap="b0",
                **{"job-id": "bk"},
            ),
            io("write -P 1 1M 64k"),
            qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"),
            qmp("block-dirty-bitmap-clear", node="fmt0", name="b0"),
            qmp("x-debug-block-dirty-bitmap-sha256", node="fmt0", name="b0"),
        ],
        policy=policy,
        checkers=make_checkers([ADDR, SOUND, PREC]),
    )
    events = [e["event"] for e in result.steps[1].events]
    assert "BLOCK_JOB_COMPLETED" in events
    assert result.final["violations"] == []
    written, cleared = (result.steps[i].response["return"]["sha256"] for i in (3, 5))
    assert written != cleared


@pytest.mark.parametrize("seed", range(6))
def test_extent_comparison_finds_what_the_sector_comparison_finds(seed: int) -> None:
    """extents.compare (extent by extent) answers compare_view (sector by sector) on
    random chains: same differing sectors, first difference and listed runs."""
    import random

    from sim.check import extents as ex
    from sim.model.content import Content, read_through

    rng = random.Random(seed)
    n = 20_000

    def chain(depth: int) -> list[Content]:
        layers = [Content(n * 512) for _ in range(depth)]
        for layer in layers:
            for _ in range(rng.choice([0, 3, 40])):
                a = rng.randrange(n)
                layer.write_sectors(a, a + rng.choice([1, 7, 300]), rng.choice([0, 1, 2, 3, 4]))
        return layers

    for _ in range(30):
        expected, actual = chain(rng.randint(1, 3)), chain(rng.randint(1, 3))
        runs = ex.union([(a, a + rng.choice([5, 900, 8000])) for a in rng.sample(range(n), 4)])
        runs = ex.clip(runs, n)
        by_sector = ex.compare_view(
            runs, expected, lambda lo, hi, c=actual: read_through(c, lo, hi)
        )
        assert ex.compare(runs, expected, actual) == by_sector


def test_a_fleecing_target_is_checked_where_writes_reach_its_source_only() -> None:
    """A sync=none backup's target reads as the source did where its copy-before-write
    copied (writes through the source); a write to an unrelated node changes neither,
    so the target's own older data elsewhere (it has no backing onto the source) is
    not a violation.  A write through the source is still checked (and holds here)."""
    from sim.check import make_checkers

    def image(name: str, node: str) -> list[dict[str, Any]]:
        def wait(job: str) -> dict[str, Any]:
            return {"wait": {"event": "JOB_STATUS_CHANGE",
                             "data": {"id": job, "status": "concluded"}}}  # fmt: skip

        return [
            qmp("blockdev-create", **{"job-id": f"c{node}",
                "options": {"driver": "file", "filename": name, "size": 0}}),
            wait(f"c{node}"), qmp("job-dismiss", id=f"c{node}"),
            qmp("blockdev-add", driver="file", filename=name, **{"node-name": f"f{node}"}),
            qmp("blockdev-create", **{"job-id": f"q{node}",
                "options": {"driver": "qcow2", "file": f"f{node}", "size": 64 << 20}}),
            wait(f"q{node}"), qmp("job-dismiss", id=f"q{node}"),
            qmp("blockdev-add", driver="qcow2", file=f"f{node}", **{"node-name": node}),
        ]  # fmt: skip

    steps = [
        io("write -P 1 0 1M"), *image("t.qcow2", "tgt"), *image("o.qcow2", "other"),
        io("write -P 9 0 1M", "tgt"),  # the target's own data, not the source's
        qmp("blockdev-backup", device="drive0", sync="none", target="tgt", **{"job-id": "fl"}),
        io("write -P 5 0 64k", "other"),
        io("write -P 7 1M 64k"),
    ]  # fmt: skip
    result = run_steps(steps, checkers=make_checkers(["backup-point-in-time"]))
    assert result.final["violations"] == []
    assert result.steps[-1].output == "wrote 65536/65536 bytes at offset 1048576\n"
