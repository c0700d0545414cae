"""blkdebug's rules and state machine (sim.engine.faults.Blkdebug)."""

from __future__ import annotations

import pytest

from sim.engine.faults import BlkdebugRule, blkdebug_rules
from sim.errors import QMPError


def _errno(rule: BlkdebugRule | None) -> str | None:
    return None if rule is None else rule.errno


def test_set_state_and_state_bound_rules() -> None:
    debug = blkdebug_rules(
        {"inject-error": [{"event": "write_aio", "state": 2, "once": True}],
         "set-state": [{"event": "write_aio", "state": 1, "new_state": 2},
                       {"event": "flush_to_disk", "state": 2, "new_state": 3}]}
    )  # fmt: skip
    assert debug.request("write", 0, 4096, "raw") is None and debug.state == 2
    assert _errno(debug.request("write", 0, 4096, "raw")) == "EIO"  # active in state 2, once
    assert debug.request("write", 0, 4096, "raw") is None and not debug.rules["write_aio"][1:]
    assert debug.request("flush", 0, 0, "raw") is None and debug.state == 3


def test_an_active_rule_stays_active_for_every_type_until_replaced() -> None:
    debug = blkdebug_rules(
        {"inject-error": [{"event": "read_aio", "errno": 28}, {"event": "flush_to_os"}]}
    )
    assert debug.request("write", 0, 512, "raw") is None  # nothing active yet
    assert _errno(debug.request("read", 0, 512, "raw")) == "ENOSPC"
    assert _errno(debug.request("write", 0, 512, "raw")) == "ENOSPC"  # write_aio has no rules
    assert _errno(debug.request("flush", 0, 0, "raw")) == "EIO"  # flush_to_os replaced it


def test_sector_iotype_and_zero_writes() -> None:
    debug = blkdebug_rules(
        {"inject-error": [{"event": "write_aio", "sector": 16, "iotype": "write"}]}
    )
    assert debug.request("write", 0, 8192, "raw") is None  # sector 16 starts at 8192
    assert _errno(debug.request("write", 4096, 8192, "raw")) == "EIO"
    assert debug.request("read", 8192, 512, "raw") is None  # iotype write only
    assert debug.request("write-zeroes", 8192, 512, "raw") is None
    every = blkdebug_rules({"inject-error": [{"event": "write_aio"}]})
    every.request("write", 0, 512, "raw")
    assert _errno(every.request("write-zeroes", 0, 512, "raw")) == "EIO"  # raw passes it on
    assert _errno(every.request("read", 0, 512, None)) == "EIO"  # qemu-io on the node: no event


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"inject-error": [{"event": "cluster_alloc_bytes"}]}, "event 'cluster_alloc_bytes'"),
        ({"inject-error": [{"event": "l2_update", "sector": 4}]}, "'sector' on event 'l2_update'"),
        ({"inject-error": [{"event": "read_aio", "iotype": "discard"}]}, "iotype 'discard'"),
        ({"inject-error": [{"event": "read_aio", "errno": 1}]}, "errno 1"),
        ({"set-state": [{"event": "l1_grow_alloc_table", "new_state": 2}]}, "event 'l1_grow"),
        ({"config": "x.conf"}, "'config' files"),
    ],
)
def test_what_is_not_modelled_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(QMPError, match=message):
        blkdebug_rules(options)
