"""The mutants of tests/test_mutants.py, found by the fuzzer instead of the corpus.

For each deliberately broken model, a campaign of a fixed budget must find a
failure that the healthy model does not have: every failure the mutant
campaign exports is replayed on the healthy model, and only one the healthy
model does not reproduce counts as a kill.  The healthy model is not
failure-free (real bugs, and real QEMU behaviour that breaks an invariant), so
for the full matrix a healthy campaign runs first, as often as it takes to come
back clean, and its failure keys are muted in the mutant campaigns.

Campaigns run without shrinking (a mutant only has to be *found*), under
`bb-attached` (fewer known failures than qemu-7.2), with the rule groups that
touch the model (no blockdev-add, transactions, queries, workloads, faults or
deliberately invalid input).  All of it is deterministic.  The full matrix is
`slow` (about 2-3 minutes) and runs only when asked for, `pytest -m slow
tests/test_fuzz_mutants.py` (or BLOCKSIM_SLOW=1); the fast suite runs the
mutants found in a few examples.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sim.check import make_checkers
from sim.fuzz.campaign import CampaignConfig, CampaignResult, run_campaign
from sim.fuzz.export import ExportRecord
from sim.fuzz.machine import failure_key
from sim.replay import replay
from sim.trace import load_trace
from tests.test_mutants import MUTANTS, Mutant

EXAMPLES = 1000  # the fixed budget of the full matrix
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


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """Failure keys of the healthy model, campaign after campaign until none is new."""
    root = tmp_path_factory.mktemp("healthy")
    keys: list[str] = []
    for attempt in range(10):
        result = campaign(root / f"run-{attempt}", EXAMPLES, tuple(keys))
        new = [failure_key(f.kind, f.message) for f in result.failures]
        if not new:
            return tuple(keys)
        keys.extend(new)
    raise AssertionError(f"the healthy model keeps failing in new ways: {keys}")


def by_name(name: str) -> Mutant:
    return next(m for m in MUTANTS if m.name == name)


@pytest.mark.parametrize("name", FAST)
def test_fuzzer_finds_cheap_mutants(name: str, tmp_path: Path) -> None:
    # rounds of 50: a round stops at its first failure, which may be one the healthy model
    # has too (no healthy campaign runs first here); the next round goes on looking
    found = kills(by_name(name), tmp_path, FAST_EXAMPLES, (), rounds=4)
    assert found, f"{name}: {FAST_EXAMPLES} examples found nothing the healthy model lacks"


def slow_wanted(config: pytest.Config) -> bool:
    return "slow" in str(config.getoption("markexpr", "")) or bool(os.environ.get("BLOCKSIM_SLOW"))


@pytest.mark.slow
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_fuzzer_finds_every_mutant(
    mutant: Mutant, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if not slow_wanted(request.config):
        pytest.skip("a 2-3 minute matrix: run with -m slow or BLOCKSIM_SLOW=1")
    known: tuple[str, ...] = request.getfixturevalue("known")
    found = kills(mutant, tmp_path, EXAMPLES, known)
    print(f"\n{mutant.name}: {found}")
    assert found, f"{mutant.name} ({mutant.rule}): {EXAMPLES} examples, no kill"
