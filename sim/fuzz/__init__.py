"""blocksim's fuzzer: Hypothesis drives a simulated QEMU 7.2 through QMP.

The public face, what a test or a script needs (everything else under
`sim.fuzz` may change without notice):

Writing a fuzz target
    `BlockMachine`: the state machine `blocksim fuzz` runs, every rule group;
    subclass it (class attributes `policy`, `checks`, `groups`, `drives`) and
    add rules, or run its `TestCase` under pytest.  `MachineCore`: the same
    without any rule, for a machine of your own rules.  A rule takes one
    argument drawn by `sim.fuzz.choices.choices()`, a `Choices` spent left to
    right on its decisions, and is switched on by its swarm `group(name)`; it
    runs steps with `self.qmp(...)`, `self.qemu_io(...)` or `self.run(step)`.

Running campaigns
    `CampaignConfig` says what to run (policy, invariants, examples, steps,
    seed, budget, output folder); `run_campaign(config)` runs it in this
    process and returns a `CampaignResult` (failures exported as replayable
    traces, coverage); `ShardedCampaign` runs the same campaign as shards on
    Dask (`sim.cluster.Runner`).  `replay_corpus(folder)` re-checks exported
    failures against the current simulator.

Failures
    `FuzzFailure`: an example that broke an invariant (its trace and the
    violation); `failure_key(kind, message)` is what tells two failures apart;
    `INTERNAL_ERROR` is the kind of a simulator bug.

Names are imported when first used, so that `import sim.fuzz.<module>` stays
as cheap as that module.  (`choices` is not re-exported: it is also the name
of its module.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim import lazy_exports

if TYPE_CHECKING:
    from sim.fuzz.campaign import CampaignConfig, CampaignResult, replay_corpus, run_campaign
    from sim.fuzz.choices import Choices, group
    from sim.fuzz.failures import INTERNAL_ERROR, FuzzFailure, failure_key
    from sim.fuzz.machine import BlockMachine, MachineCore
    from sim.fuzz.shards import ShardedCampaign

_HOME = {
    "BlockMachine": "sim.fuzz.machine",
    "MachineCore": "sim.fuzz.machine",
    "Choices": "sim.fuzz.choices",
    "group": "sim.fuzz.choices",
    "CampaignConfig": "sim.fuzz.campaign",
    "CampaignResult": "sim.fuzz.campaign",
    "run_campaign": "sim.fuzz.campaign",
    "replay_corpus": "sim.fuzz.campaign",
    "ShardedCampaign": "sim.fuzz.shards",
    "FuzzFailure": "sim.fuzz.failures",
    "failure_key": "sim.fuzz.failures",
    "INTERNAL_ERROR": "sim.fuzz.failures",
}

__all__ = [
    "INTERNAL_ERROR",
    "BlockMachine",
    "CampaignConfig",
    "CampaignResult",
    "Choices",
    "FuzzFailure",
    "MachineCore",
    "ShardedCampaign",
    "failure_key",
    "group",
    "replay_corpus",
    "run_campaign",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOME)
