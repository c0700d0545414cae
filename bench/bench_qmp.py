"""QMP-surface costs: argument checking and the qemu-io fast path, per call.

1. `check_arguments("drive-backup", ...)` on well-formed arguments.  Target:
   under 50 us a call.
2. `qemu_io._fast_path` on the common `write -P` form.  Target: under 20 us a
   line.

Prints each cost and its ratio to the target (below 1.0 meets it).
"""

from __future__ import annotations

import time

from sim.qmp import qemu_io
from sim.qmp.schema import check_arguments

CALLS = 20_000


def per_call_s(fn: object, items: list[object]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)  # type: ignore[operator]
    return (time.perf_counter() - start) / len(items)


def main() -> None:
    args = {"device": "drive0", "target": "t.qcow2", "sync": "full", "job-id": "j"}
    check = per_call_s(lambda a: check_arguments("drive-backup", a), [args] * CALLS)
    lines = [f'qemu-io drive0 "write -P 0x5 {i * 512} 64k"' for i in range(CALLS)]
    fast = per_call_s(qemu_io._fast_path, list(lines))
    for label, cost, target in (
        ("check_arguments(drive-backup)", check, 50e-6),
        ("qemu-io fast path (write -P)", fast, 20e-6),
    ):
        print(
            f"{label:32s} {cost * 1e6:7.2f} us  target {target * 1e6:.0f} us  ratio {cost / target:.2f}"
        )


if __name__ == "__main__":
    main()
