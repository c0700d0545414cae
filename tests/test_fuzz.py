"""The fuzzer: state machine, campaigns, export, coverage, corpus re-checks, CLI.

Campaigns here are tiny (tens of examples, few steps) and run against a fake
checker (`fake-addr`, registered per test) so that these tests do not depend
on what the real checkers find today.  Long campaigns are in
tests/test_fuzz_mutants.py behind the `slow` marker.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import rule, run_state_machine_as_test

from sim.check import CHECKERS
from sim.check.base import Checker, Violation
from sim.cli import main
from sim.fuzz import campaign as fc
from sim.fuzz.campaign import Campaign, CampaignConfig, CampaignResult, run_campaign
from sim.fuzz.choices import Choices
from sim.fuzz.coverage import Coverage, step_label
from sim.fuzz.export import polish, signature, step_shape
from sim.fuzz.hygiene import has_cycle
from sim.fuzz.machine import DRIVE0, INTERNAL_ERROR, BlockMachine, FuzzFailure, failure_key
from sim.replay import replay
from sim.trace import load_trace
from tests.helpers import io, qmp

FAKE = "fake-addr"


class FakeAddressability(Checker):
    """A bitmap added by device name still answers at (device, name) until removed."""

    name = FAKE

    def attach(self, machine: Any) -> None:
        super().attach(machine)
        self.added: list[tuple[str, str]] = []
        self.found: list[Violation] = []
        machine.command_observers.append(self._on_command)

    def at_end(self) -> list[Violation]:
        return list(self.found)  # like sim.check's checkers: every violation of the run

    def _on_command(self, request: Any, response: dict[str, Any]) -> None:
        if not isinstance(request, dict) or "return" not in response:
            return
        args = request.get("arguments") or {}
        if request.get("execute") == "block-dirty-bitmap-add":
            if args.get("node") in self.machine.state.graph.backends:
                self.added.append((args["node"], args["name"]))
        elif request.get("execute") == "block-dirty-bitmap-remove":
            self.added = [a for a in self.added if a != (args.get("node"), args.get("name"))]

    def after_step(self, index: int) -> list[Violation]:
        out = []
        g = self.machine.state.graph
        for device, name in list(self.added):
            bb = g.backends.get(device)
            root = bb.root if bb is not None else None
            if bb is None or not (
                any(b.name == name for b in bb.bitmaps)
                or (root is not None and root.find_bitmap(name) is not None)
            ):
                msg = f"bitmap '{name}' added at '{device}' no longer answers there"
                out.append(Violation(FAKE, index, msg))
                self.added.remove((device, name))
        self.found.extend(out)
        return out


@pytest.fixture
def fake_checker(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(CHECKERS, FAKE, FakeAddressability)
    return FAKE


def small(out: Path, **kw: Any) -> CampaignConfig:
    """A campaign that finds the fake violation in seconds: bitmaps and snapshots only."""
    base: dict[str, Any] = {
        "invariants": [FAKE],
        "examples": 600,
        "steps": 8,
        "out": out,
        "groups": ("bitmap", "snapshot"),
        "round_examples": 600,
    }
    base.update(kw)
    return CampaignConfig(**base)


@dataclass(frozen=True)
class Finished:
    """A campaign of `small()` that ran once for the tests that only read what it left."""

    result: CampaignResult
    out: Path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One `small()` campaign (200 examples and a shrink) shared by the tests that
    read its result, its failure folder or its traces; a test that runs a campaign in
    that folder again works on a copy (`copy_of`)."""
    out = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(CHECKERS, FAKE, FakeAddressability)
        result = run_campaign(small(out, examples=200, round_examples=200))
    return Finished(result, out)


def copy_of(run: Finished, to: Path) -> Path:
    """The shared campaign's folder copied to `to` (failures, index and Hypothesis'
    database), for a test that writes into it."""
    shutil.copytree(run.out, to)
    return to


# -- the state machine --------------------------------------------------------------------


def test_machine_runs_as_a_plain_hypothesis_test() -> None:
    class Quick(BlockMachine):
        checks = ()

    run_state_machine_as_test(
        Quick,
        settings=settings(
            max_examples=10,
            stateful_step_count=10,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_subclass_with_own_rule_finds_the_fake_violation(fake_checker: str) -> None:
    """What README's "Fuzzing" section shows."""

    class Mine(BlockMachine):
        checks = (fake_checker,)
        groups = ("bitmap",)

        @rule()
        def snapshot_drive0(self) -> None:
            self.qmp(
                "blockdev-snapshot-sync",
                {"device": "drive0", "snapshot-file": self.fresh("s") + ".qcow2"},
            )

    with pytest.raises(FuzzFailure) as info:
        run_state_machine_as_test(
            Mine,
            settings=settings(max_examples=200, database=None, deadline=None, derandomize=True),
        )
    failure = info.value
    assert failure.kind == fake_checker
    assert len(failure.steps) <= 3
    notes = "\n".join(getattr(failure, "__notes__", []))
    assert '"trace": 1' in notes  # the shrunk trace, printed with note()


def test_swarm_only_runs_enabled_groups() -> None:
    seen: set[str] = set()

    class OnlyBitmaps(BlockMachine):
        checks = ()
        groups = ("bitmap",)

        def teardown(self) -> None:
            for s in self.steps:
                name = str(s.get("execute") or next(iter(s)))
                if name == "transaction":  # libvirt's checkpoints: bitmap actions only
                    seen.update(a["type"] for a in s["arguments"]["actions"])
                elif name == "human-monitor-command":  # the guest writes a bitmap records
                    seen.add(s["arguments"]["command-line"].split('"')[1].split()[0])
                else:
                    seen.add(name)
            super().teardown()

    run_state_machine_as_test(
        OnlyBitmaps,
        settings=settings(max_examples=30, database=None, deadline=None, derandomize=True),
    )
    allowed = {"advance", "write"} | {
        "block-dirty-bitmap-add",
        "block-dirty-bitmap-remove",
        "block-dirty-bitmap-clear",
        "block-dirty-bitmap-enable",
        "block-dirty-bitmap-disable",
        "block-dirty-bitmap-merge",
        "x-debug-block-dirty-bitmap-sha256",
    }
    assert seen and seen <= allowed, seen - allowed


def test_choices_shrink_to_the_simple_case() -> None:
    zero = Choices(b"\x00" * 4)
    assert zero.pick(["a", "b"]) == "a" and not zero.rarely(4) and not zero.boolean()
    assert zero.next() == 0  # past the end: 0
    c = Choices(bytes([3, 7, 255]))
    assert c.rarely(4) and c.between(5, 8) == 8 and c.below(2) == 1


def test_cycle_detection() -> None:
    class N:
        def __init__(self) -> None:
            self.kids: list[N] = []

        def children(self) -> list[N]:
            return self.kids

    a, b = N(), N()
    a.kids = [b]
    assert not has_cycle([a, b])
    b.kids = [a]
    assert has_cycle([a, b])


def test_failure_key_blanks_names_numbers_and_commands() -> None:
    k1 = failure_key("x", "device 'd0' lost data in blockdev-add: 512 bytes differ: detail 1")
    k2 = failure_key("x", "device 'd1' lost data in blockdev-del: 4096 bytes differ: detail 2")
    assert k1 == k2
    assert failure_key("x", "now resolves to node 'ov1'") != failure_key(
        "x", "now resolves to mirror_top filter node '#block1'"
    )


# -- campaigns ------------------------------------------------------------------------------


def test_campaign_exports_a_shrunk_failure_that_replays(
    finished: Finished, fake_checker: str
) -> None:
    result = finished.result
    assert result.failures, result.summary()
    record = result.failures[0]
    assert record.kind == fake_checker and record.reproduced and record.steps <= 3
    trace = load_trace(record.path)
    assert trace.header.raw["invariants"] == [fake_checker]
    assert trace.header.policy == "qemu-7.2"
    replayed = replay(trace, checkers=[FakeAddressability()])
    assert replayed.ok and not replayed.mismatches
    pinned = trace.final_expect["violations"]  # type: ignore[index]
    assert pinned and pinned == replayed.final["violations"]
    index = json.loads((finished.out / "failures" / "index.json").read_text())
    assert index[0]["path"] == record.path


def test_exported_trace_replays_through_the_cli(finished: Finished, fake_checker: str) -> None:
    record = finished.result.failures[0]
    out = CliRunner().invoke(main, ["replay", record.path])
    assert out.exit_code == 0, out.output
    assert "1 expected violation" in out.output


def test_campaign_is_deterministic(tmp_path: Path, fake_checker: str) -> None:
    a = run_campaign(small(tmp_path / "a", groups=None, examples=30))
    b = run_campaign(small(tmp_path / "b", groups=None, examples=30))

    def files(folder: Path) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted((folder / "failures").glob("*.jsonl"))}

    assert files(tmp_path / "a") == files(tmp_path / "b")
    ca, cb = a.coverage.to_json(), b.coverage.to_json()
    for c in (ca, cb):
        c["series"] = [{k: v for k, v in p.items() if k != "wall_s"} for p in c["series"]]
    assert ca == cb
    assert a.examples == b.examples and a.steps == b.steps


def test_rerun_in_the_same_folder_finds_the_failure_again_as_known(
    tmp_path: Path, finished: Finished, fake_checker: str
) -> None:
    first = finished.result
    # the same campaign asked for fewer examples: the database is keyed by seed and round,
    # so the stored failure comes back first whatever the number asked for
    second = run_campaign(small(copy_of(finished, tmp_path / "run"), examples=100))
    assert first.failures and not second.failures
    assert second.duplicates >= 1
    assert any(FAKE in m for m in second.muted)
    # both generate the examples asked for: a round cut short by its failure goes on, and
    # replaying what the database remembers is counted apart, not as examples
    assert first.examples == 200 and second.examples == 100
    assert second.replays >= second.duplicates
    assert second.replays < first.replays  # the stored failures come back shrunk


def test_internal_error_is_its_own_failure_kind(
    tmp_path: Path, fake_checker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sim.qmp import dispatch

    def broken(m: Any, a: dict[str, Any]) -> None:
        raise RuntimeError("simulated simulator bug")

    clear = dispatch.COMMANDS["block-dirty-bitmap-clear"]
    monkeypatch.setitem(dispatch.COMMANDS, clear.name, replace(clear, handler=broken))
    # seed 2 draws a bitmap-clear within its 60 examples (a deterministic search: seed 0
    # does not since the constant pool holds the simulator's literals, seed 1 not since
    # the rollback rule joined the rules)
    result = run_campaign(small(tmp_path, examples=60, seed=2))
    kinds = {f.kind for f in result.failures}
    assert INTERNAL_ERROR in kinds, result.summary()
    record = next(f for f in result.failures if f.kind == INTERNAL_ERROR)
    assert record.reproduced and "simulated simulator bug" in record.message
    assert Path(record.path).name.startswith(INTERNAL_ERROR)
    assert replay(load_trace(record.path)).internal_errors


class EndOnlyChecker(Checker):
    """A verdict only visible at the end of an example (as a force-cancelled job that never
    terminated is): one violation per example, none per step."""

    name = "fake-end"

    def at_end(self) -> list[Violation]:
        return [Violation(self.name, 1, "seen only at the end")]


def test_end_of_example_violations_are_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CHECKERS, EndOnlyChecker.name, EndOnlyChecker)
    config = CampaignConfig(examples=5, steps=3, seed=0, invariants=[EndOnlyChecker.name],
                            out=tmp_path, shrink=False, mute=(EndOnlyChecker.name,))  # fmt: skip
    result = run_campaign(config)
    counts = result.coverage.to_json()["invariants"][EndOnlyChecker.name]
    # muted (the campaign goes on), and counted once per example that ran to its end
    assert 0 < counts["muted"] <= result.coverage.examples and "violated" not in counts
    assert not result.failures


def test_coverage_json(tmp_path: Path, fake_checker: str) -> None:
    run_campaign(small(tmp_path, groups=None, examples=20))
    cov = json.loads((tmp_path / "coverage.json").read_text())
    for key in ("commands", "job-states", "transitions", "graph-shapes", "invariants", "series"):
        assert key in cov
    assert cov["invariants"][FAKE]["evaluated"] == cov["steps"]
    assert {"chain-depth", "filters", "devices"} <= set(cov["graph-shapes"])
    assert cov["series"][-1]["examples"] == cov["examples"]
    assert {"wall_s", "points", "failures", "steps"} <= set(cov["series"][-1])
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind
    summary = json.loads((tmp_path / "campaign.json").read_text())
    assert summary["stopped"] == "done"


def test_interrupt_keeps_failures_and_coverage(tmp_path: Path, fake_checker: str) -> None:
    class Interrupted(Campaign):
        def example_finished(self, machine: Any) -> float | None:
            score = super().example_finished(machine)
            if self.pending:
                raise KeyboardInterrupt
            return score

    result = Interrupted(small(tmp_path, examples=200)).run()
    assert result.stopped == "interrupted"
    assert result.failures and not result.failures[0].shrunk
    assert result.failures[0].reproduced
    assert (tmp_path / "coverage.json").is_file()
    assert json.loads((tmp_path / "campaign.json").read_text())["stopped"] == "interrupted"


def test_time_budget_stops_the_campaign(tmp_path: Path) -> None:
    result = run_campaign(small(tmp_path, invariants=[], examples=10_000, time_budget_s=1.0))
    assert result.stopped == "time-budget"
    assert result.wall_s < 30


def test_the_time_budget_bounds_the_export_of_failures_too(
    tmp_path: Path, fake_checker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure pending when the budget runs out is written as the smallest example
    seen, without the trace-level polish (which replays it up to 400 times): the budget
    bounds the fuzz phase, exports included."""
    from sim.fuzz import export

    class BudgetSpent(Campaign):
        def example_finished(self, machine: Any) -> float | None:
            if self.pending:
                self._t0 -= 10_000  # as if the budget had run out in this example
                self.seen = {k: len(f.steps) for k, (f, _) in self.pending.items()}
            return super().example_finished(machine)

    polish_replays = []
    real = export._failure_in
    monkeypatch.setattr(export, "_failure_in", lambda *a: polish_replays.append(1) or real(*a))
    campaign = BudgetSpent(small(tmp_path, examples=200, time_budget_s=3600))
    result = campaign.run()
    assert result.stopped == "time-budget" and len(result.failures) == 1
    record = result.failures[0]
    assert record.reproduced and not record.shrunk
    assert polish_replays == []  # exported within the budget: no polish after it
    assert record.steps == next(iter(campaign.seen.values()))  # the example as it was seen
    assert "cut at the trace level until the time budget ran out" in record.shrink_left


def test_polish_stops_at_its_deadline(fake_checker: str) -> None:
    header = {"trace": 1, "drives": [DRIVE0], "policy": "qemu-7.2", "seed": 0}
    header["invariants"] = [fake_checker]
    steps = [
        qmp("query-block"),
        qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
        qmp("blockdev-snapshot-sync", device="drive0", format="qcow2",
            **{"snapshot-file": "o.qcow2"}),
    ]  # fmt: skip
    msg = "bitmap 'b0' added at 'drive0' no longer answers there"
    failure = FuzzFailure(fake_checker, msg, header, steps, [])
    assert len(polish(failure).steps) == 2
    assert polish(failure, deadline=time.monotonic()).steps == steps


def test_mute_keeps_a_known_failure_quiet(tmp_path: Path, fake_checker: str) -> None:
    # 150 examples meet the fake violation a few times (`muted` counts them)
    result = run_campaign(small(tmp_path, mute=(FAKE,), examples=150, round_examples=150))
    assert not result.failures
    cov = result.coverage.to_json()
    assert cov["invariants"][FAKE].get("muted", 0) > 0


# -- export ---------------------------------------------------------------------------------


def test_signature_ignores_values_not_shapes() -> None:
    a = [qmp("block-dirty-bitmap-add", node="drive0", name="b0"), io("write -P 1 0 64k")]
    b = [qmp("block-dirty-bitmap-add", node="fmt0", name="b9"), io("write -P 7 1M 4k")]
    c = [qmp("block-dirty-bitmap-add", node="drive0", name="b0", granularity=512)]
    assert signature(a) == signature(b) != signature(c)
    assert step_shape(io("discard 0 64k")) == "qemu-io discard"
    assert step_label({"wait": {"event": "BLOCK_JOB_READY"}}) == "wait BLOCK_JOB_READY"


def test_polish_cuts_steps_and_arguments_that_do_not_matter(fake_checker: str) -> None:
    header = {"trace": 1, "drives": [DRIVE0], "policy": "qemu-7.2", "seed": 0}
    header["invariants"] = [fake_checker]
    steps = [
        io("write -P 1 0 64k"),
        qmp("block-dirty-bitmap-add", node="drive0", name="b0", granularity=65536),
        qmp("query-block"),
        {"advance": 0.5},
        qmp(
            "blockdev-snapshot-sync",
            device="drive0",
            format="qcow2",
            **{"snapshot-file": "o.qcow2"},
        ),
    ]
    msg = "bitmap 'b0' added at 'drive0' no longer answers there"
    failure = FuzzFailure(fake_checker, msg, header, steps, [])
    polished = polish(failure)
    assert [s.get("execute") for s in polished.steps] == [
        "block-dirty-bitmap-add",
        "blockdev-snapshot-sync",
    ]
    assert polished.steps[0]["arguments"] == {"node": "drive0", "name": "b0"}


# -- corpus and command line ------------------------------------------------------------------


def test_replay_corpus_reproduces_then_sees_the_fix(
    finished: Finished, fake_checker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = fc.replay_corpus(finished.out / "failures")
    assert checks and {c.status for c in checks} == {"reproduces"}

    class Quiet(FakeAddressability):
        def after_step(self, index: int) -> list[Violation]:
            return []

    monkeypatch.setitem(CHECKERS, FAKE, Quiet)  # the "fix"
    assert {c.status for c in fc.replay_corpus(finished.out / "failures")} == {"fixed"}


def test_cli_fuzz_and_replay_corpus(tmp_path: Path, fake_checker: str) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('groups = ["bitmap", "snapshot"]\nround-examples = 150\n')
    args = ["fuzz", "--profile", str(profile), "--invariants", FAKE, "--examples", "150"]
    args += ["--steps", "8", "--out", str(tmp_path / "out"), "--no-progress", "--memory-limit", "0"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 1, out.output  # a failure was found
    assert "blocksim replay" in out.output and "[fake-addr]" in out.output
    again = CliRunner().invoke(
        main, ["fuzz", "--replay-corpus", str(tmp_path / "out" / "failures")]
    )
    assert again.exit_code == 0, again.output
    assert "REPRODUCES" in again.output


def test_cli_rejects_an_unknown_profile_and_policy(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["fuzz", "--profile", "nosuch", "--out", str(tmp_path)])
    assert out.exit_code == 2 and "no campaign profile" in out.output
    out = CliRunner().invoke(main, ["fuzz", "--policy", "qemu-9", "--out", str(tmp_path)])
    assert out.exit_code == 2 and "unknown policy" in out.output


def test_bundled_profiles_load() -> None:
    folder = Path(__file__).resolve().parent.parent / "fuzz" / "profiles"
    names = sorted(p.stem for p in folder.glob("*.toml"))
    assert {"quick", "nightly", "differential"} <= set(names)
    for name in names:
        profile = fc.load_profile(name, folder)
        configs = fc.configs_from_options(
            profile, None, None, None, None, None, None, Path("x"), False
        )
        assert configs and all(c.examples > 0 for c in configs)


def test_coverage_rarity_rewards_successes_only() -> None:
    cov = Coverage()
    cov.start_example(frozenset())
    cov.hit("command", "block-dirty-bitmap-add", "Bitmap name cannot be empty")
    assert cov.example_rarity() == 0.0
    cov.hit("command", "block-dirty-bitmap-add", "return")
    assert cov.example_rarity() == 1.0


def test_readme_example_runs() -> None:
    """README's "Fuzzing" example, as written, finds the snapshot addressability break
    (found is what is asserted: without the shrink phase, which took 95% of the time;
    shrinking a subclass's failure is test_subclass_with_own_rule_finds_the_fake_violation)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = readme.split("## Fuzzing", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    machine = scope["SnapshotHeavy"]
    with pytest.raises(FuzzFailure) as info:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=200,
                deadline=None,
                database=None,
                derandomize=True,
                phases=(Phase.explicit, Phase.generate),
            ),
        )
    assert info.value.kind == "bitmap-addressability"


def test_the_corpus_replays() -> None:
    """Every trace of fuzz/corpus parses and replays; a fixed or changed one is reported
    by `blocksim fuzz --replay-corpus fuzz/corpus`, not failed here (fixing the simulator
    must not break this test)."""
    folder = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
    checks = fc.replay_corpus(folder)
    assert checks
    assert not [c for c in checks if c.status == "error"], checks


def test_public_face_names_what_users_need_with_docstrings() -> None:
    import sim.fuzz as fuzz

    assert {"BlockMachine", "run_campaign", "CampaignConfig", "FuzzFailure"} <= set(fuzz.__all__)
    for name in fuzz.__all__:
        value = getattr(fuzz, name)
        if not isinstance(value, str):
            assert (value.__doc__ or "").strip(), name
            assert value.__module__.startswith("sim.fuzz."), name
    from sim.fuzz.machine import BlockMachine

    assert fuzz.BlockMachine is BlockMachine
    with pytest.raises(AttributeError):
        fuzz.no_such_name  # noqa: B018
    assert sorted(fuzz.__all__) == sorted(fuzz._HOME)


def test_a_round_bounded_after_its_failure_still_reports_it(finished: Finished) -> None:
    # the shared campaign meets the fake violation within its 200 examples; after it
    # Hypothesis' target phase asks for runs past the round's size, which the campaign
    # ends before they draw anything, without Hypothesis finding its choices inconsistent
    result = finished.result
    assert [w for w in result.warnings if "Flaky" in w] == []
    assert result.examples == 200
    assert [f.kind for f in result.failures] == [FAKE]


JOB_STARTS = ("drive-backup", "drive-mirror", "block-stream", "block-commit")


def _race_machine() -> BlockMachine:
    from sim.fuzz.machine import GROUPS

    m = BlockMachine()
    m.open([dict(DRIVE0)], 0)
    m.enabled = frozenset(GROUPS) | {"time"}
    return m


def test_race_job_spreads_its_job_kinds_with_spare_choices() -> None:
    # the kind Hypothesis drew ("backup" here) is turned by the choices' last byte
    started = []
    for last in range(4):
        m = _race_machine()
        BlockMachine.race_job(m, Choices(bytes(62) + bytes([0, last])), 0, "backup")
        started.append(next(s["execute"] for s in m.steps if s.get("execute") in JOB_STARTS))
    assert started == ["drive-backup", "drive-mirror", "block-stream", "block-commit"]


def test_race_lands_a_verb_on_a_job_it_paused_in_ready() -> None:
    # a mirror held READY, the race rule pauses it (standby) and lands a verb there
    m = _race_machine()
    m.qmp(
        "drive-mirror",
        {
            "device": "drive0",
            "job-id": "m1",
            "target": "m.qcow2",
            "format": "qcow2",
            "sync": "full",
        },
    )
    m.run({"wait": {"event": "BLOCK_JOB_READY", "data": {"device": "m1"}}})
    # job, point (6: READY), pause (rarely(5)), a verb (boolean), device, verb of the state
    BlockMachine.race(m, Choices([0, 6, 4, 1, 0, 0, 0]), 0)
    names = [s.get("execute") for s in m.steps]
    at = names.index("job-pause")
    assert m.outcomes[at].response == {"return": {}}
    assert names[at + 1].startswith(("job-", "block-job-"))


@pytest.mark.parametrize(
    "names", [("interesting_examples", "valid_examples"),
              ("interesting_test_cases", "valid_test_cases")],
)  # fmt: skip
def test_a_round_ends_with_the_engine_counts_of_either_hypothesis_naming(
    names: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hypothesis renamed its engine's `interesting_examples` / `valid_examples` to
    `*_test_cases`; a round's end read the old name, so on a newer Hypothesis (what
    `pip install .` fetched) every round ended in FlakyStrategyDefinition.  Both work."""
    from types import SimpleNamespace

    from sim.fuzz import hygiene

    class Ended(Exception):
        pass

    def end() -> None:
        raise Ended

    interesting, valid = names
    runner = SimpleNamespace(
        **{interesting: {}, valid: 3}, settings=SimpleNamespace(max_examples=9)
    )
    monkeypatch.setattr(hygiene, "_runner", lambda frame: runner)
    monkeypatch.setattr(hygiene, "end_run_unexplored", end)
    with pytest.raises(Ended):
        hygiene.end_generation()
    assert getattr(runner, valid) == 9  # the engine stops after this run
    setattr(runner, interesting, {"a failure": 1})
    setattr(runner, valid, 3)
    with pytest.raises(Ended):
        hygiene.end_generation()
    assert getattr(runner, valid) == 3  # a failure to shrink: the count is left alone
