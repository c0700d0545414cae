"""Fuzzer power: the default campaign must find every mutant within its budget.

The mutant suite is tests/mutant_catalog.py (`ALL_MUTANTS`: the twelve of
tests/test_mutants.py and twenty-two more).  For each mutant the *default*
campaign (`blocksim fuzz` defaults: policy qemu-7.2, every checker, the default
swarm of rule groups, 25 steps, rounds of 200 examples, seed 0) runs under the
mutant for at most `EXAMPLES` examples (a budget in examples, not seconds, so
whether a mutant is found does not depend on the machine or its load;
`BUDGET_S` seconds only guard against a hang).  A failure counts as finding the
mutant only when the healthy model, replaying the failing trace, does not
show it.  To keep CI short the rounds run without Hypothesis' shrink phase
(`shrink=False`: a round stops at its first failure): a failure the healthy
model also shows is muted from the next round on, the first one it does not
show stops the campaign, and the exporter shortens it (it drops steps while
the failure still replays), which gives the "shrunk length" of the table.
Generation (rules, swarm, coverage target, seeds) is the default campaign's,
so the example that finds a mutant is the same on every machine; the time to
it is not.

The healthy model is not failure-free under qemu-7.2 (the bitmap placement of
real QEMU breaks addressability, and a few more real QEMU behaviours break an
invariant), so a healthy campaign runs first and its failure keys are muted
in the mutant campaigns, as a campaign mutes what it already exported; a
healthy failure that shows up anyway is recognised by the replay.

The table (mutant, found, time to find, examples, shrunk length, checker) is
printed (pytest -s) and written to `BLOCKSIM_POWER_TABLE` when that is set (as
JSON when its name ends in .json: `BLOCKSIM_POWER_TABLE=bench/results/fuzz-power.json`
writes what README.md's table is made from by scripts/readme_numbers.py).
Budget: `BLOCKSIM_POWER_EXAMPLES` examples per mutant (default 1500), and
`BLOCKSIM_POWER_BUDGET` seconds (default 300, at most 600) as a guard against a hang; a
hunt ends at its first kill, so the test takes the healthy campaign of
`BLOCKSIM_POWER_HEALTHY` (300) examples plus the time to each kill.  Every mutant
must be found within its budget (`BLOCKSIM_POWER_ONLY=a,b` hunts only those).  It runs in CI (`.ci/run`,
as `-m slow`) and when BLOCKSIM_SLOW=1 is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sim.check import make_checkers
from sim.fuzz.campaign import Campaign, CampaignConfig, CampaignStop
from sim.fuzz.export import ExportRecord
from sim.fuzz.failures import FuzzFailure, failure_key
from sim.replay import ReplayResult, replay
from sim.trace import parse_lines
from tests.mutant_catalog import ALL_MUTANTS
from tests.test_mutants import MUTANTS, Mutant

# The slowest kill: merge-first-source-only at example 474 (the same in two runs at
# different loads; earlier code needed 854), the others under 300.  Its kill needs a
# merge whose later source holds bits the first source and the target lack: the
# generator's changing merge lists two sources only when one node holds three usable
# bitmaps of one geometry (the target, one adding nothing, one adding bits), and a
# random merge rarely names two existing, differing bitmaps.  The budget is counted in
# examples: the seed is fixed, so the example that kills a mutant is the same on every
# machine, and a busy machine (813 examples in 60 s at load average 5.4) no longer
# misses it.  1500 leaves room for a change of the generator and costs time only for a
# mutant that is not found; the seconds only end a hunt that hangs.
EXAMPLES = int(os.environ.get("BLOCKSIM_POWER_EXAMPLES", "1500"))
BUDGET_S = min(float(os.environ.get("BLOCKSIM_POWER_BUDGET", "300")), 600.0)
HEALTHY_EXAMPLES = int(os.environ.get("BLOCKSIM_POWER_HEALTHY", "300"))


def wanted(config: pytest.Config) -> bool:
    return "slow" in str(config.getoption("markexpr", "")) or bool(os.environ.get("BLOCKSIM_SLOW"))


def shows(result: ReplayResult, kind: str, message: str) -> bool:
    """Does a replay show this failure (by failure key)?"""
    if kind == "internal-error":
        return bool(result.internal_errors)
    seen = [v for o in result.steps for v in o.violations] + result.final["violations"]
    key = failure_key(kind, message)
    return any(failure_key(str(v["invariant"]), str(v["message"])) == key for v in seen)


@dataclass
class Finding:
    """What the campaign did against one mutant: whether a checker caught it, how fast,
    and with what."""

    mutant: str
    found: bool
    seconds: float  # wall time until the first failing example of the kill was seen
    examples: int  # examples run until then
    steps: int  # the exported (shrunk) trace's length
    checker: str
    message: str = ""


class PowerCampaign(Campaign):
    """The default campaign under a mutant, rounds cut at their first failure.  A failing
    example is judged on the healthy model the first time its failure key shows up: a
    failure the healthy model shows too is muted from the next round on; the first one
    it does not show stops the campaign and is exported (shortened by the exporter)."""

    def __init__(
        self,
        config: CampaignConfig,
        mp: pytest.MonkeyPatch,
        mutant: Mutant,
        examples: int | None = None,
    ) -> None:
        super().__init__(config)
        self.mp, self.mutant = mp, mutant
        self.examples = examples  # the hunt's budget in examples (None: the config's)
        self.verdicts: dict[str, bool] = {}  # failure key -> the healthy model shows it
        self.found: tuple[str, float, int] | None = None  # key, seconds, examples
        self.kill: ExportRecord | None = None

    def healthy(self, failure: FuzzFailure) -> bool:
        self.mp.undo()
        try:
            trace = parse_lines(failure.trace_lines())
            names = list(failure.header.get("invariants", [])) or None
            result = replay(trace, checkers=make_checkers(names))
        finally:
            self.mutant.apply(self.mp)
        return shows(result, failure.kind, failure.message)

    def failure_seen(self, failure: FuzzFailure) -> None:
        super().failure_seen(failure)
        key = failure_key(failure.kind, failure.message)
        if key not in self.verdicts:
            self.verdicts[key] = self.healthy(failure)
        if self.verdicts[key]:
            self.muted.add(key)
        elif self.found is None:
            self.found = (key, self.elapsed(), self.result.examples + 1)

    def _export(self, failure: FuzzFailure, shrunk: bool, round_number: int | None) -> None:
        before = len(self.result.failures)
        super()._export(failure, shrunk, round_number)
        if self.kill is None and len(self.result.failures) > before:
            if not self.verdicts.get(failure_key(failure.kind, failure.message), True):
                self.kill = self.result.failures[-1]

    def example_finished(self, machine: Any) -> float:
        if self.kill is not None:
            raise CampaignStop("found")
        rarity = super().example_finished(machine)
        if self.examples is not None and self.found is None:
            if self.result.examples >= self.examples:
                raise CampaignStop("examples")
        return rarity

    def _round(self, number: int, size: int) -> None:
        super()._round(number, size)
        if self.kill is not None:
            raise CampaignStop("found")


# What these campaigns are asked for: the budget (time, or the healthy campaign's
# examples) ends them instead.
UNBOUNDED = 1 << 30


def hunt(mutant: Mutant, out: Path, mute: tuple[str, ...], examples: int, budget: float) -> Finding:
    config = CampaignConfig(
        out=out, examples=UNBOUNDED, time_budget_s=budget, mute=mute, shrink=False
    )
    with pytest.MonkeyPatch.context() as mp:
        mutant.apply(mp)
        campaign = PowerCampaign(config, mp, mutant, examples)
        campaign.run()
    kill, found = campaign.kill, campaign.found
    if kill is None or found is None:
        return Finding(mutant.name, False, campaign.result.wall_s, campaign.result.examples, 0, "")
    _, seconds, examples = found
    return Finding(mutant.name, True, seconds, examples, kill.steps, kill.kind, kill.message)


class HealthyCampaign(Campaign):
    """The default campaign on the healthy model, every failure muted once seen (rounds end
    at their first failure), until `wanted` examples ran."""

    def __init__(self, config: CampaignConfig, wanted: int) -> None:
        super().__init__(config)
        self.wanted = wanted

    def failure_seen(self, failure: FuzzFailure) -> None:
        super().failure_seen(failure)
        self.muted.add(failure_key(failure.kind, failure.message))

    def example_finished(self, machine: Any) -> float:
        rarity = super().example_finished(machine)
        if self.result.examples >= self.wanted:
            raise CampaignStop("examples")
        return rarity


def healthy_keys(out: Path, examples: int) -> tuple[str, ...]:
    """Failure keys of the healthy model in a default campaign of `examples` examples."""
    config = CampaignConfig(out=out, examples=UNBOUNDED, time_budget_s=300, shrink=False)
    campaign = HealthyCampaign(config, examples)
    result = campaign.run()
    keys = [failure_key(f.kind, f.message) for f in result.failures]
    return tuple(keys) + tuple(result.muted)


def table(findings: list[Finding]) -> str:
    lines = [
        "| mutant | found | time to find | examples | shrunk length | checker |",
        "|---|---|---|---|---|---|",
    ]
    for f in findings:
        if f.found:
            lines.append(
                f"| `{f.mutant}` | yes | {f.seconds:.1f} s | {f.examples} | {f.steps} "
                f"step{'s' * (f.steps != 1)} "
                f"| `{f.checker}` |"
            )
        else:
            lines.append(f"| `{f.mutant}` | **no** | > {f.seconds:.0f} s | {f.examples} | - | - |")
    found = sum(f.found for f in findings)
    lines.append(f"\n{found} of {len(findings)} mutants found")
    return "\n".join(lines)


def power_json(findings: list[Finding]) -> str:
    """The findings as BLOCKSIM_POWER_TABLE=FILE.json writes them (bench/results/fuzz-power.json
    is what README.md's mutant table is made from: `table(findings_from_json(doc))`)."""
    import json
    from dataclasses import asdict

    doc = {
        "power": 1,
        "budget_examples": EXAMPLES,
        "budget_s": BUDGET_S,
        "load_average": round(os.getloadavg()[0], 1),
        "cores": os.cpu_count(),
        "findings": [asdict(f) for f in findings],
    }
    return json.dumps(doc, indent=1)


def findings_from_json(doc: dict[str, Any]) -> list[Finding]:
    return [Finding(**f) for f in doc["findings"]]


@pytest.mark.slow
def test_the_default_campaign_finds_the_mutants(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if not wanted(request.config):
        pytest.skip("a few minutes: runs with -m slow (CI) or BLOCKSIM_SLOW=1")
    only = [n for n in os.environ.get("BLOCKSIM_POWER_ONLY", "").split(",") if n]
    mutants = [m for m in ALL_MUTANTS if not only or m.name in only]
    mute = healthy_keys(tmp_path / "healthy", HEALTHY_EXAMPLES)
    findings = [hunt(m, tmp_path / m.name, mute, EXAMPLES, BUDGET_S) for m in mutants]
    text = table(findings)
    print("\n" + text)
    out = os.environ.get("BLOCKSIM_POWER_TABLE")
    if out:  # FILE.json: the findings README.md's table is made from (scripts/readme_numbers.py)
        Path(out).write_text(power_json(findings) + "\n" if out.endswith(".json") else text + "\n")
    assert mutants, f"no mutant named {only}"
    missed = sorted(f.mutant for f in findings if not f.found)
    assert not missed, f"not found within {EXAMPLES} examples ({BUDGET_S:.0f} s) each: {missed}"
    assert len(ALL_MUTANTS) >= 31
    assert {m.name for m in MUTANTS} <= {m.name for m in ALL_MUTANTS}
