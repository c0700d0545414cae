"""Write random traces of qcow2 images over blkdebug (seeded), to diff against QEMU 7.2.

Usage: python3 scripts/blkdebug_qcow2_traces.py FIRST_SEED COUNT OUT_DIR
Then `python3 -m sim diff --json OUT_DIR/*.jsonl` runs each on real QEMU 7.2 and
on the simulator (image contents included).  Trace `bqN` comes from seed N alone:
the same seed gives the same trace.

Each trace makes three 1 GiB qcow2 images by blockdev-create (a quarter of them
with a backing file named in the header, written once or twice by qemu-io), half
of them written first by an open without blkdebug (closed again), then opens each
over a blkdebug node with one or two inject-error rules on the blkdebug events
qcow2 raises (once 70%, an iotype 25%, immediately 20%, a state 20%; a set-state
rule 30%) and sends it 3 to 10 qemu-io requests (writes of several clusters,
across the L2 boundary at 512 MiB, reads, zero writes, flushes), then closes it.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS = [
    "l1_update", "l2_load", "l2_update", "l2_alloc_write", "cluster_alloc",
    "cluster_alloc_space", "refblock_load", "refblock_update_part", "refblock_alloc",
    "cow_read", "cow_write", "read_backing_aio", "read_aio", "write_aio",
    "flush_to_os", "flush_to_disk", "pwritev", "pwritev_zero", "pwritev_done",
]  # fmt: skip
M = 1 << 20
OFFSETS = [0, 4096, 32768, 65536, 98304, 131072, 196608, 512 * M - 65536, 512 * M - 4096, 600 * M]
LENGTHS = ["4k", "32k", "64k", "96k", "128k", "192k", "256k"]


def trace(seed: int) -> str:
    """The trace of `seed`, as JSON lines."""
    r = random.Random(seed)
    lines = [
        json.dumps({"trace": 1, "name": f"bq{seed}", "drives": [], "policy": "qemu-7.2", "seed": 0})
    ]

    def add(step: dict[str, Any]) -> None:
        lines.append(json.dumps(step))

    def hmp(node: str, command: str) -> None:
        line = f'qemu-io {node} "{command}"'
        add({"execute": "human-monitor-command", "arguments": {"command-line": line}})

    def create(tag: str, backing_file: str | None = None) -> None:
        file_job, fmt_job = "f" + tag, "q" + tag
        options = {"driver": "file", "filename": tag + ".qcow2", "size": 0}
        add({"execute": "blockdev-create", "arguments": {"job-id": file_job, "options": options}})
        concluded = {"event": "JOB_STATUS_CHANGE", "data": {"id": file_job, "status": "concluded"}}
        add({"wait": concluded})
        add({"execute": "job-dismiss", "arguments": {"id": file_job}})
        proto = {"driver": "file", "filename": tag + ".qcow2", "node-name": tag + "p"}
        add({"execute": "blockdev-add", "arguments": proto})
        qcow2: dict[str, Any] = {"driver": "qcow2", "file": tag + "p", "size": 1 << 30}
        if backing_file:
            qcow2.update({"backing-file": backing_file, "backing-fmt": "qcow2"})
        add({"execute": "blockdev-create", "arguments": {"job-id": fmt_job, "options": qcow2}})
        concluded = {"event": "JOB_STATUS_CHANGE", "data": {"id": fmt_job, "status": "concluded"}}
        add({"wait": concluded})
        add({"execute": "job-dismiss", "arguments": {"id": fmt_job}})
        add({"execute": "blockdev-del", "arguments": {"node-name": tag + "p"}})

    def request(pattern: int) -> str:
        op = r.choice(["write", "write", "write", "write", "read", "write -z", "flush"])
        if op == "flush":
            return "flush"
        offset = r.choice(OFFSETS)
        length = r.choice(LENGTHS)
        if op == "write":
            return f"write -P 0x{pattern:02x} {offset} {length}"
        return f"{op} {offset} {length}"

    for i in range(3):
        tag = f"i{i}"
        backing = None
        if r.random() < 0.25:
            backing = tag + "b"
            create(backing)
        create(tag, backing + ".qcow2" if backing else None)
        if backing:
            base = {"driver": "file", "filename": backing + ".qcow2"}
            add({
                "execute": "blockdev-add",
                "arguments": {"driver": "qcow2", "node-name": backing, "file": base},
            })  # fmt: skip
            for _ in range(r.randint(1, 2)):
                pattern, offset, length = r.randint(1, 80), r.choice(OFFSETS[:7]), r.choice(LENGTHS)
                hmp(backing, f"write -P 0x{pattern:02x} {offset} {length}")
        file = {"driver": "file", "filename": tag + ".qcow2", "node-name": tag + "f"}
        if r.random() < 0.5:  # written first without blkdebug
            args: dict[str, Any] = {"driver": "qcow2", "node-name": tag, "file": file}
            if backing:
                args["backing"] = backing
            add({"execute": "blockdev-add", "arguments": args})
            for _ in range(r.randint(1, 3)):
                pattern, offset, length = r.randint(1, 80), r.choice(OFFSETS), r.choice(LENGTHS)
                hmp(tag, f"write -P 0x{pattern:02x} {offset} {length}")
            add({"execute": "blockdev-del", "arguments": {"node-name": tag}})
        rules = []
        for _ in range(r.randint(1, 2)):
            rule: dict[str, Any] = {"event": r.choice(EVENTS)}
            if r.random() < 0.7:
                rule["once"] = True
            if r.random() < 0.25:
                rule["iotype"] = r.choice(["read", "write", "flush", "write-zeroes"])
            if r.random() < 0.2:
                rule["immediately"] = True
            if r.random() < 0.2:
                rule["state"] = r.randint(1, 2)
            rules.append(rule)
        debug: dict[str, Any] = {
            "driver": "blkdebug", "node-name": tag + "d", "inject-error": rules, "image": file,
        }  # fmt: skip
        if r.random() < 0.3:
            debug["set-state"] = [{"event": r.choice(EVENTS), "new_state": 2}]
        args = {"driver": "qcow2", "node-name": tag, "file": debug}
        if backing:
            args["backing"] = backing
        add({"execute": "blockdev-add", "arguments": args})
        for _ in range(r.randint(3, 10)):
            hmp(tag, request(r.randint(0x81, 0xFE)))
        add({"execute": "blockdev-del", "arguments": {"node-name": tag}})
        if backing:
            add({"execute": "blockdev-del", "arguments": {"node-name": backing}})
    return "\n".join(lines) + "\n"


def write_traces(argv: list[str], prefix: str, make: Callable[[int], str], usage: str) -> None:
    """FIRST_SEED COUNT OUT_DIR: OUT_DIR/{prefix}{seed}.jsonl from `make(seed)` for each seed."""
    if len(argv) != 3:
        sys.exit(usage)
    first, count, out = int(argv[0]), int(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for seed in range(first, first + count):
        (out / f"{prefix}{seed}.jsonl").write_text(make(seed))


def main(argv: list[str]) -> None:
    write_traces(argv, "bq", trace, __doc__ or "")


if __name__ == "__main__":
    main(sys.argv[1:])
