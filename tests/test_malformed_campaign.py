"""The CI slice of the malformed-input campaign: 100,000 hostile inputs or 2 minutes.

bench/bench_malformed.py runs the same campaign over 1,000,000 inputs."""

from __future__ import annotations

from sim.fuzz import malformed


def test_campaign_slice_finds_no_traceback_hang_or_invalid_json() -> None:
    stats = malformed.run(100_000, seconds=120, seed=2026)
    report = "\n".join(stats.lines())
    assert stats.inputs >= 10_000, report  # a slow machine still tries a real slice
    assert stats.tracebacks == 0 and stats.hangs == 0 and stats.invalid_output == 0, report
    # every surface was exercised
    assert set(stats.by_surface) >= {
        "step",
        "step-text",
        "header",
        "qemu-io",
        "sim-only",
        "qmp-request",
    }


def test_campaign_is_deterministic_and_counts_what_it_finds() -> None:
    a = malformed.Campaign(seed=5)
    a.run(400)
    b = malformed.Campaign(seed=5)
    b.run(400)
    assert a.stats.by_surface == b.stats.by_surface and a.stats.inputs == b.stats.inputs
    # a crash planted in the replay path is counted as a traceback, with its input
    import dataclasses

    from sim.qmp import dispatch

    real = dispatch.COMMANDS["query-jobs"]

    def broken(m, args):  # type: ignore[no-untyped-def]
        raise KeyError("planted")

    dispatch.COMMANDS["query-jobs"] = dataclasses.replace(real, handler=broken)
    try:
        stats = malformed.run(2000, seed=3)
    finally:
        dispatch.COMMANDS["query-jobs"] = real
    assert stats.tracebacks > 0
    assert any("planted" in f.error for f in stats.failures)
