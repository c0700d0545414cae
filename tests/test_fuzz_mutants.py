"""The mutants of tests/test_mutants.py, found by the fuzzer instead of the corpus.

For each deliberately broken model, a campaign of a fixed budget must find a
failure that the healthy model does not have: each failure the mutant
campaign sees is replayed on the healthy model (once per failure key), and
only one the healthy model does not reproduce counts as a kill (the healthy
model is not failure-free: real QEMU behaviour breaks some invariants); one
it does reproduce is muted.  The campaign stops at its first kill
(tests/test_fuzz_power.py's PowerCampaign), so a test costs the examples up
to the kill, not its whole budget.

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

from sim.fuzz import INTERNAL_ERROR
from sim.fuzz.campaign import CampaignConfig
from tests.test_fuzz_power import PowerCampaign
from tests.test_mutants import MUTANTS, Mutant

FAST_EXAMPLES = 400
ROUND_EXAMPLES = 100
STEPS = 25
GROUPS = ("bitmap", "io", "snapshot", "backup", "mirror", "commit", "stream", "verbs", "wait")
FAST = (
    "skip-bitmap-marking",
    "job-skips-waiting",
    "remove-keeps-bitmap",
    "copy-after-write",
    "no-copy-before-write",
    "mirror-does-not-copy",
)


def hunt(mutant: Mutant, out: Path) -> PowerCampaign:
    """At most FAST_EXAMPLES examples under `mutant`, in rounds of ROUND_EXAMPLES; the
    campaign stops at its first failure the healthy model does not show (a kill)."""
    config = CampaignConfig(
        policy="bb-attached",
        examples=FAST_EXAMPLES,
        steps=STEPS,
        round_examples=ROUND_EXAMPLES,
        groups=GROUPS,
        out=out,
        shrink=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        mutant.apply(mp)
        campaign = PowerCampaign(config, mp, mutant)
        campaign.run()
    return campaign


def by_name(name: str) -> Mutant:
    return next(m for m in MUTANTS if m.name == name)


@pytest.mark.parametrize("name", FAST)
def test_fuzzer_finds_cheap_mutants(name: str, tmp_path: Path) -> None:
    # a round stops at its first failure, which may be one the healthy model has too (no
    # healthy campaign runs first here): that failure is muted and the hunt goes on
    campaign = hunt(by_name(name), tmp_path)
    kill = campaign.kill
    assert kill is not None, (
        f"{name}: {FAST_EXAMPLES} examples found nothing the healthy model lacks"
    )
    assert campaign.result.examples <= FAST_EXAMPLES
    # a kill is a checker's violation, not the mutant crashing the simulator
    assert kill.kind != INTERNAL_ERROR, kill.message
