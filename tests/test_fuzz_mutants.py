"""The mutants of tests/test_mutants.py, found by the fuzzer instead of the corpus.

For each deliberately broken model, a campaign of a fixed budget must find a
failure that the healthy model does not have: every failure the mutant
campaign exports is replayed on the healthy model, and only one the healthy
model does not reproduce counts as a kill (the healthy model is not
failure-free: real QEMU behaviour breaks some invariants).

Campaigns run without shrinking (a mutant only has to be *found*), under
`bb-attached` (fewer known failures than qemu-7.2), with the rule groups that
touch the model (no blockdev-add, transactions, queries, workloads, faults or
deliberately invalid input).  All of it is deterministic.  Only the mutants
found in a few examples run here, in the fast suite: the full matrix of the
eleven is tests/test_fuzz_power.py, which runs the default campaign against
them (and the rest of tests/mutant_catalog.py) with a time budget each in CI
and requires every one of the eleven to be found.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.check import make_checkers
from sim.fuzz.campaign import CampaignConfig, CampaignResult, run_campaign
from sim.fuzz.export import ExportRecord
from sim.fuzz.machine import failure_key
from sim.replay import replay
from sim.trace import load_trace
from tests.test_mutants import MUTANTS, Mutant

FAST_EXAMPLES = 400
STEPS = 25
GROUPS = ("bitmap", "io", "snapshot", "backup", "mirror", "commit", "stream", "verbs", "wait")
FAST = ("skip-bitmap-marking", "job-skips-waiting", "remove-keeps-bitmap", "copy-after-write")


def campaign(
    out: Path, examples: int, mute: tuple[str, ...] = (), round_examples: int | None = None
) -> CampaignResult:
    config = CampaignConfig(
        policy="bb-attached",
        examples=examples,
        steps=STEPS,
        round_examples=round_examples or examples,
        groups=GROUPS,
        out=out,
        shrink=False,
        mute=mute,
    )
    return run_campaign(config)


def healthy_also_fails(record: ExportRecord) -> bool:
    """Does the healthy model show this failure on the same trace?"""
    trace = load_trace(record.path)
    names = trace.header.raw.get("invariants", [])
    result = replay(trace, checkers=make_checkers(list(names)))
    seen = [v for o in result.steps for v in o.violations] + result.final["violations"]
    return any(
        failure_key(str(v["invariant"]), str(v["message"]))
        == failure_key(record.kind, record.message)
        for v in seen
    )


def kills(
    mutant: Mutant, out: Path, examples: int, mute: tuple[str, ...], rounds: int = 1
) -> list[str]:
    """The failures of a campaign under `mutant` that the healthy model does not have."""
    with pytest.MonkeyPatch.context() as mp:
        mutant.apply(mp)
        result = campaign(out, examples, mute, examples // rounds)
    found = [r for r in result.failures if not healthy_also_fails(r)]
    return [f"{r.kind} ({r.steps} steps): {r.message[:80]}" for r in found]


def by_name(name: str) -> Mutant:
    return next(m for m in MUTANTS if m.name == name)


@pytest.mark.parametrize("name", FAST)
def test_fuzzer_finds_cheap_mutants(name: str, tmp_path: Path) -> None:
    # rounds of 50: a round stops at its first failure, which may be one the healthy model
    # has too (no healthy campaign runs first here); the next round goes on looking
    found = kills(by_name(name), tmp_path, FAST_EXAMPLES, (), rounds=4)
    assert found, f"{name}: {FAST_EXAMPLES} examples found nothing the healthy model lacks"
