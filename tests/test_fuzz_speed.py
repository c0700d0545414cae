"""What a campaign spends its time on: work Hypothesis would do for nothing is skipped.

- a round whose failures are all muted ends once its examples are generated (no Pareto
  front shrinking with runs that all overrun);
- Hypothesis' shrink order key is computed once per choice sequence;
- failures triage classes expected are exported as found, never shrunk by Hypothesis;
- the exporter cuts an unshrunk trace by runs of steps first;
- expected failures are polished in a second process while the round goes on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis.internal.conjecture import pareto, shrinker

from sim.check import CHECKERS
from sim.fuzz import export, triage
from sim.fuzz.campaign import Campaign, CampaignConfig, run_campaign
from sim.fuzz.export import polish
from sim.fuzz.machine import DRIVE0, FuzzFailure, MachineCore
from tests.helpers import io, qmp
from tests.test_fuzz import FAKE, FakeAddressability, small


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(CHECKERS, FAKE, FakeAddressability)
    return FAKE


class Counting(Campaign):
    """Counts every run Hypothesis starts (generated, cut, replayed or shrunk)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.runs = 0

    def example_started(self, machine: MachineCore) -> None:
        self.runs += 1
        super().example_started(machine)


def test_a_round_with_every_failure_muted_ends_with_its_examples(tmp_path: Path) -> None:
    # the default machine and checkers, expected failures muted: seed 0 meets no other
    # failure in 60 examples of 25 steps, and Hypothesis' target phase takes its Pareto
    # front in hand half way through (5,610 runs, 27 s, before rounds ended: 67, 2.5 s)
    config = CampaignConfig(examples=60, round_examples=60, out=tmp_path, mute=("expected",))
    campaign = Counting(config)
    result = campaign.run()
    assert result.examples == 60 and not result.failures
    assert campaign.runs <= result.examples + result.rejected + result.replays + 5


def test_cached_sort_keys_are_hypothesis_keys(tmp_path: Path, fake: str) -> None:
    import sim.fuzz.machine  # noqa: F401 - installs the cache

    run_campaign(small(tmp_path, examples=5))  # some choice sequences to order
    assert getattr(pareto.sort_key, "_blocksim_cached", False)
    assert shrinker.sort_key is pareto.sort_key
    from hypothesis.internal.conjecture.data import ConjectureData

    data = ConjectureData.for_choices([3, b"\x01\x02", True])
    data.draw_integer(0, 10)
    data.draw_bytes(2, 2)
    data.draw_boolean()
    data.freeze()
    nodes = data.nodes
    expected = (3, tuple(shrinker.choice_to_index(n.value, n.constraints) for n in nodes))
    assert pareto.sort_key(nodes) == expected
    assert pareto.sort_key(nodes) is pareto.sort_key(nodes)  # kept, not recomputed
    assert pareto.sort_key(list(nodes)) == expected  # a list may grow: never kept


def test_expected_failures_are_exported_as_found_not_shrunk(
    tmp_path: Path, fake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expect_the_fake(monkeypatch)
    result = run_campaign(small(tmp_path, examples=200))
    assert [f.kind for f in result.failures] == [FAKE], result.summary()
    record = result.failures[0]
    assert record.triage == triage.EXPECTED and record.reproduced
    assert not record.shrunk and record.shrink_left.startswith("expected failures")
    assert result.replays == 0  # Hypothesis never saw a failure, so it shrank nothing
    assert result.examples == 200  # and the round was not cut short by one
    assert record.steps <= 3  # the exporter cut the example down


def expect_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triage classes the fake checker's violation expected."""
    known = triage.Known(
        frozenset({"qemu-7.2"}), FAKE, re.compile("no longer answers there"), "a test's reason",
        after_graph_change=False,
    )  # fmt: skip
    monkeypatch.setattr(triage, "KNOWN", (*triage.KNOWN, known))


def test_expected_failures_polished_in_the_background_are_the_same_files(
    tmp_path: Path, fake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    expect_the_fake(monkeypatch)
    parent, replays = os.getpid(), {"here": 0}
    replay_once = export._failure_in

    def counted(*args: Any) -> Any:
        if os.getpid() == parent:  # the polish child's replays are not counted here
            replays["here"] += 1
        return replay_once(*args)

    monkeypatch.setattr(export, "_failure_in", counted)

    def files(out: Path) -> dict[str, Any]:
        found: dict[str, Any] = {
            p.name: p.read_text().replace(str(out), "OUT")
            for p in sorted((out / "failures").iterdir())
        }
        found["index.json"] = json.loads(found["index.json"])
        for record in found["index.json"]:
            del record["wall_s"]  # when it was found: wall time
        return found

    def run(out: Path, background: bool) -> dict[str, str]:
        replays["here"] = 0
        result = run_campaign(small(out, examples=200), background_polish=background)
        assert result.failures and all(not f.shrunk for f in result.failures)
        return files(out)

    in_line = run(tmp_path / "in-line", False)
    in_line_replays = replays["here"]
    assert run(tmp_path / "background", True) == in_line
    # the background child did the polish: here only the pin replay of each failure
    assert replays["here"] < in_line_replays
    assert replays["here"] == 0


def test_a_background_polish_that_fails_is_done_in_line(
    fake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    header = {"trace": 1, "drives": [DRIVE0], "policy": "qemu-7.2", "seed": 0}
    header["invariants"] = [fake]
    steps = [
        qmp("block-dirty-bitmap-add", node="drive0", name="b0"),
        io("write -P 1 0 64k"),
        qmp("blockdev-snapshot-sync", device="drive0", format="qcow2",
            **{"snapshot-file": "o.qcow2"}),
    ]  # fmt: skip
    msg = "bitmap 'b0' added at 'drive0' no longer answers there"
    failure = FuzzFailure(fake, msg, header, steps, [])
    parent, real = os.getpid(), export.polish_steps

    def dies_in_the_child(*args: Any) -> Any:
        if os.getpid() != parent:
            os._exit(3)  # a child killed mid-polish
        return real(*args)

    monkeypatch.setattr(export, "polish_steps", dies_in_the_child)
    background = export.BackgroundPolish()
    background.submit(failure, coarse=True, deadline=None)
    assert background.result(failure) == (False, None)  # the caller polishes it
    other = FuzzFailure(fake, msg, header, steps, [])
    monkeypatch.setattr(export, "polish_steps", real)
    background.submit(other, coarse=True, deadline=None)
    took, cut = background.result(other)
    assert took and cut is not None
    assert export.polished_failure(other, cut).steps == polish(other, coarse=True).steps
    background.submit(other, coarse=True, deadline=None)
    background.close()  # a child still running is ended, not left behind
    assert background.running is None and background.result(other) == (False, None)

    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    background.submit(other, coarse=True, deadline=None)  # no child: polished in line
    assert background.running is None and background.result(other) == (False, None)


def test_coarse_polish_cuts_a_long_trace_with_fewer_replays(
    fake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = {"trace": 1, "drives": [DRIVE0], "policy": "qemu-7.2", "seed": 0}
    header["invariants"] = [fake]
    noise = [io("write -P 1 0 64k"), qmp("query-block"), {"advance": 0.5}]
    steps = noise * 6 + [qmp("block-dirty-bitmap-add", node="drive0", name="b0")] + noise * 6
    steps.append(
        qmp("blockdev-snapshot-sync", device="drive0", format="qcow2",
            **{"snapshot-file": "o.qcow2"})
    )  # fmt: skip
    msg = "bitmap 'b0' added at 'drive0' no longer answers there"
    failure = FuzzFailure(fake, msg, header, steps, [])
    calls = {"n": 0}
    replay_once = export._failure_in

    def counted(*args: Any) -> Any:
        calls["n"] += 1
        return replay_once(*args)

    monkeypatch.setattr(export, "_failure_in", counted)
    fine = polish(failure)
    fine_calls, calls["n"] = calls["n"], 0
    coarse = polish(failure, coarse=True)
    assert coarse.steps == fine.steps
    assert [s.get("execute") for s in coarse.steps] == [
        "block-dirty-bitmap-add",
        "blockdev-snapshot-sync",
    ]
    assert calls["n"] * 2 < fine_calls, (calls["n"], fine_calls)


def test_the_search_does_not_depend_on_the_wall_clock(
    tmp_path: Path, fake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    def run(out: Path) -> tuple[int, int, int, list[str]]:
        r = run_campaign(small(out, examples=150, round_examples=150, steps=6))
        return r.examples, r.replays, r.steps, [f.signature for f in r.failures]

    quick = run(tmp_path / "quick")
    now = [0.0]

    def slow_clock() -> float:  # a machine where every look at the clock is 5 s later
        now[0] += 5.0
        return now[0]

    monkeypatch.setattr(time, "monotonic", slow_clock)
    assert run(tmp_path / "slow") == quick


def test_the_constant_pool_is_the_same_from_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the literals of sim/**/*.py, parsed (cold), read back (warm), and parsed again
    # when the cache file is damaged: one pool, equal to Hypothesis' own parse
    from hypothesis.internal.conjecture import providers
    from hypothesis.internal.constants_ast import _constants_from_source

    from sim.fuzz import hygiene

    root = Path(hygiene.__file__).resolve().parent.parent
    parsed = providers.Constants()
    for path in sorted(root.rglob("*.py")):
        for constant in _constants_from_source(path.read_bytes(), limit=True):
            parsed.add(constant)
    monkeypatch.setenv(hygiene.CACHE_ENV, str(tmp_path))
    cold = hygiene._package_constants(providers)
    (cache,) = tmp_path.glob("constants-*.marshal")
    warm = hygiene._package_constants(providers)
    cache.write_bytes(b"damaged")
    again = hygiene._package_constants(providers)
    assert cold == warm == again == parsed and len(parsed) > 1000
    assert cache.read_bytes() != b"damaged"  # written anew
    # a changed source tree is another cache file, not a stale pool
    monkeypatch.setattr(hygiene, "__file__", str(tmp_path / "fuzz" / "hygiene.py"))
    (tmp_path / "only.py").write_text("X = 123456789\n")
    assert list(hygiene._package_literals()) == [123456789]
    assert len(list(tmp_path.glob("constants-*.marshal"))) == 2
