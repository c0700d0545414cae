"""Every scenario under scenarios/ replays with all its expectations met."""

from __future__ import annotations

import pytest

from sim.check import make_checkers
from sim.cli import header_invariants
from sim.replay import replay
from sim.trace import load_trace
from tests.helpers import SCENARIOS

FILES = sorted(SCENARIOS.rglob("*.jsonl"))


def test_corpus_is_there() -> None:
    # the 45 real-QEMU traces plus our own scenarios
    assert len(list((SCENARIOS / "qemu-7.2").rglob("*.jsonl"))) == 45
    assert len(FILES) >= 47


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SCENARIOS)) for p in FILES])
def test_scenario_replays(path) -> None:  # type: ignore[no-untyped-def]
    trace = load_trace(path)
    result = replay(trace, checkers=make_checkers(header_invariants(trace)))
    problems = result.mismatches + result.trace_errors + result.internal_errors
    assert not problems, f"replay with: blocksim replay {path}\n" + "\n".join(problems)
    if trace.final_expect is None or "violations" not in trace.final_expect:
        assert result.final["violations"] == []
