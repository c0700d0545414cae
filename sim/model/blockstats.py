"""I/O accounting: what query-blockstats reports (block/accounting.c of QEMU 7.2).

Two kinds of counters, as in QEMU:

- a BlockBackend's `BlockAcctStats` (`AcctStats`): bytes, operations, failed
  operations and total latency per request type, and the time of the last
  accounted request.  QEMU's device models account guest requests there;
  qemu-io's `read`/`write` do not (they call blk_pread/blk_pwrite, which
  account nothing), so here only workload requests through a device count.
  A `-drive` accounts failed requests (`account_failed`) and invalid ones
  (`account_invalid`): a failed request counts in `failed_*` and adds its
  latency, not its bytes (block_account_one_io).
- a node's `wr_highest_offset` (`BlockNode.wr_highest_offset`): the end of
  the highest write request that reached the node, failed or not
  (bdrv_co_write_req_finish), kept by `sim.model.io.guest_write` and the
  engine's job chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACCT_TYPES = ("read", "write", "flush", "unmap")


@dataclass(slots=True)
class AcctStats:
    """A BlockBackend's BlockAcctStats: per type (read, write, flush, unmap) bytes,
    operations, failed operations and latency; when the last request ended."""

    nr_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACCT_TYPES, 0))
    nr_ops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACCT_TYPES, 0))
    failed_ops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACCT_TYPES, 0))
    total_time_ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACCT_TYPES, 0))
    last_access_ns: int = 0
    account_invalid: bool = True
    account_failed: bool = True

    def done(self, kind: str, size: int, latency_ns: int, failed: bool, now_ns: int) -> None:
        """block_acct_done / block_acct_failed for one request that ended at `now_ns`."""
        if failed:
            self.failed_ops[kind] += 1
        else:
            self.nr_bytes[kind] += size
            self.nr_ops[kind] += 1
        if not failed or self.account_failed:
            self.total_time_ns[kind] += latency_ns
            self.last_access_ns = now_ns
