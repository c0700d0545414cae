"""Write random traces of block jobs over blkdebug (seeded), to diff against QEMU 7.2.

Usage: python3 scripts/blkdebug_job_traces.py FIRST_SEED COUNT OUT_DIR
Then `python3 -m sim diff --json OUT_DIR/*.jsonl` runs each on real QEMU 7.2 and
on the simulator (image contents included).  Trace `bjN` comes from seed N alone.

Each trace makes small qcow2 images (4 or 20 MiB, some with a backing image) and a
target (qcow2 or raw) by blockdev-create, writes data into them by qemu-io with
plain opens, then opens the job's graph with one node's file over a blkdebug node
(one or two inject-error rules, `sector` only under raw, where it is a guest
offset; once, immediately, iotype, state, set-state at random) and runs one job:
blockdev-backup, blockdev-mirror, an intermediate or active block-commit, or a
block-stream, with random error policies.  What follows the job's start (waits for
its events, block-job-resume after a `stop`, block-job-complete of a READY job) is
chosen by running the trace so far on the simulator: where QEMU takes another way,
its wait times out, which `sim diff` reports as a difference.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from blkdebug_qcow2_traces import write_traces  # the script's folder is on sys.path

QCOW2_EVENTS = [
    "l1_update", "l2_load", "l2_update", "l2_alloc_write", "cluster_alloc",
    "cluster_alloc_space", "refblock_load", "refblock_update_part", "refblock_alloc",
    "cow_read", "cow_write", "read_backing_aio", "read_aio", "write_aio",
    "flush_to_os", "flush_to_disk", "pwritev", "pwritev_zero", "pwritev_done",
]  # fmt: skip
RAW_EVENTS = ["read_aio", "write_aio", "pwritev", "pwritev_zero", "pwritev_done", "flush_to_os"]
K, M = 1 << 10, 1 << 20
LENGTHS = [4 * K, 64 * K, 128 * K, 192 * K, 512 * K, M, 3 * M // 2]
POLICIES = ["report", "ignore", "stop", "enospc"]


class Trace:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.seed = seed
        header = {"trace": 1, "name": f"bj{seed}", "drives": [], "policy": "qemu-7.2", "seed": 0}
        self.lines = [json.dumps(header)]

    def add(self, step: dict[str, Any]) -> None:
        self.lines.append(json.dumps(step))

    def execute(self, command: str, **arguments: Any) -> None:
        self.add({"execute": command, "arguments": arguments})

    def hmp(self, node: str, command: str) -> None:
        line = f'qemu-io {node} "{command}"'
        self.execute("human-monitor-command", **{"command-line": line})

    def create(self, name: str, size: int, fmt: str, backing_file: str | None = None) -> None:
        """blockdev-create of file NAME and, for qcow2, its format layer."""
        jobs = ["f" + name, "q" + name] if fmt == "qcow2" else ["f" + name]
        options: dict[str, Any] = {"driver": "file", "filename": name, "size": 0}
        if fmt == "raw":
            options["size"] = size
        self.execute("blockdev-create", **{"job-id": jobs[0], "options": options})
        self.wait_concluded(jobs[0])
        if fmt != "qcow2":
            return
        self.execute("blockdev-add", driver="file", filename=name, **{"node-name": "cp"})
        qcow2: dict[str, Any] = {"driver": "qcow2", "file": "cp", "size": size}
        if backing_file:
            qcow2.update({"backing-file": backing_file, "backing-fmt": "qcow2"})
        self.execute("blockdev-create", **{"job-id": jobs[1], "options": qcow2})
        self.wait_concluded(jobs[1])
        self.execute("blockdev-del", **{"node-name": "cp"})

    def wait_concluded(self, job: str) -> None:
        data = {"id": job, "status": "concluded"}
        self.add({"wait": {"event": "JOB_STATUS_CHANGE", "data": data}})
        self.execute("job-dismiss", id=job)

    def fill(self, name: str, size: int, writes: int) -> None:
        """Data written into image NAME by an open without blkdebug (its backing chain
        opened by the names in the headers)."""
        node = "w"
        file = {"driver": "file", "filename": name}
        self.execute("blockdev-add", driver="qcow2", file=file, **{"node-name": node})
        for _ in range(writes):
            length = self.r.choice(LENGTHS)
            offset = self.r.randrange(0, size - length + 1, 4 * K)
            if self.r.random() < 0.15:
                self.hmp(node, f"write -z {offset} {length}")
            else:
                self.hmp(node, f"write -P 0x{self.r.randint(1, 0x7F):02x} {offset} {length}")
        self.execute("blockdev-del", **{"node-name": node})

    def rules(self, parent: str, size: int) -> dict[str, Any]:
        r = self.r
        events = QCOW2_EVENTS if parent == "qcow2" else RAW_EVENTS
        rules = []
        for _ in range(r.randint(1, 2)):
            rule: dict[str, Any] = {"event": r.choice(events)}
            if parent == "raw" and r.random() < 0.5:
                rule["sector"] = r.randrange(0, size // 512, 8)
            if r.random() < 0.3:
                rule["errno"] = 28
            if r.random() < 0.6:
                rule["once"] = True
            if r.random() < 0.2:
                rule["iotype"] = r.choice(["read", "write", "write-zeroes"])
            if r.random() < 0.2:
                rule["immediately"] = True
            if r.random() < 0.15:
                rule["state"] = r.randint(1, 2)
            rules.append(rule)
        out: dict[str, Any] = {"inject-error": rules}
        if r.random() < 0.2:
            out["set-state"] = [{"event": r.choice(events), "new_state": 2}]
        return out

    def open(
        self, node: str, name: str, fmt: str, debug: dict[str, Any] | None, **extra: Any
    ) -> None:
        file: dict[str, Any] = {"driver": "file", "filename": name, "node-name": node + "f"}
        if debug is not None:
            file = {"driver": "blkdebug", "node-name": node + "d", "image": file, **debug}
        self.execute("blockdev-add", driver=fmt, file=file, **{"node-name": node}, **extra)


def sim_events(lines: list[str]) -> tuple[list[dict[str, Any]], int]:
    """The simulator's events for the trace `lines` followed by a long advance, and how
    many of them came before the advance."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join([*lines, json.dumps({"advance": 600})]) + "\n")
        path = f.name
    out = subprocess.run(
        [sys.executable, "-m", "sim", "replay", "--json", path],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    Path(path).unlink()
    steps = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    before = sum(len(s.get("events", [])) for s in steps if "step" in s)
    before -= len(steps[-2].get("events", [])) if len(steps) > 1 else 0
    final = steps[-1].get("final", {}) if steps else {}
    return final.get("events", []), before


def run_job(t: Trace, job: str) -> None:
    """The steps after the job's start, as the simulator answers them."""
    seen = 0  # events of the job handled so far (since its start)
    _, start = sim_events(t.lines[:-1])
    for _ in range(8):
        events, _before = sim_events(t.lines)
        mine = [e for e in events[start:] if e["data"].get("device", e["data"].get("id")) == job]
        decided = False
        for i, ev in enumerate(mine[seen:], seen):
            name = ev["event"]
            if name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
                t.add({"wait": {"event": name, "data": {"device": job}}})
                return
            if name == "BLOCK_JOB_READY":
                t.add({"wait": {"event": name, "data": {"device": job}}})
                if t.r.random() < 0.7:
                    t.execute("block-job-complete", device=job)
                else:
                    t.execute("block-job-cancel", device=job)
                seen, decided = i + 1, True
                break
            if name == "BLOCK_JOB_ERROR" and ev["data"]["action"] == "stop":
                data = {"device": job, "action": "stop"}
                t.add({"wait": {"event": name, "data": data}})
                t.execute("block-job-resume", device=job)
                seen, decided = i + 1, True
                break
        if not decided:
            break
    t.execute("block-job-cancel", device=job, force=True)
    t.add({"wait": {"event": "BLOCK_JOB_CANCELLED", "data": {"device": job}}})


def trace(seed: int) -> str:
    t = Trace(seed)
    r = t.r
    size = r.choice([4 * M, 4 * M, 20 * M])
    kind = r.choice(["backup", "mirror", "commit", "active-commit", "stream"])
    policy = r.choice(POLICIES)
    if kind in ("backup", "mirror"):
        backing = r.random() < 0.3
        if backing:
            t.create("sb.qcow2", size, "qcow2")
            t.fill("sb.qcow2", size, r.randint(1, 3))
        t.create("s.qcow2", size, "qcow2", "sb.qcow2" if backing else None)
        t.fill("s.qcow2", size, r.randint(1, 5))
        tfmt = r.choice(["qcow2", "raw"])
        tname = "t.qcow2" if tfmt == "qcow2" else "t.img"
        t.create(tname, size, tfmt)
        on_source = r.random() < 0.5
        sdebug = t.rules("qcow2", size) if on_source else None
        tdebug = None if on_source else t.rules(tfmt, size)
        if backing:
            t.open("sb", "sb.qcow2", "qcow2", None)
            t.open("s", "s.qcow2", "qcow2", sdebug, backing="sb")
        else:
            t.open("s", "s.qcow2", "qcow2", sdebug)
        t.open("t", tname, tfmt, tdebug)
        errors = {"on-source-error": r.choice(POLICIES), "on-target-error": r.choice(POLICIES)}
        if kind == "backup":
            sync = r.choice(["full", "top"]) if backing else "full"
            t.execute(
                "blockdev-backup", device="s", target="t", sync=sync, **{"job-id": "j"}, **errors
            )
        else:
            t.execute(
                "blockdev-mirror", device="s", target="t", sync="full", **{"job-id": "j"}, **errors
            )
        run_job(t, "j")
        for node in ("t", "s", "sb") if backing else ("t", "s"):
            t.execute("blockdev-del", **{"node-name": node})
        return "\n".join(t.lines) + "\n"
    # commit / stream: b <- m <- s (active commit and stream: b <- s, sometimes b <- m <- s)
    three = kind == "commit" or r.random() < 0.4
    t.create("b.qcow2", size, "qcow2")
    t.fill("b.qcow2", size, r.randint(1, 3))
    below = "b.qcow2"
    if three:
        t.create("m.qcow2", size, "qcow2", "b.qcow2")
        t.fill("m.qcow2", size, r.randint(1, 4))
        below = "m.qcow2"
    t.create("s.qcow2", size, "qcow2", below)
    t.fill("s.qcow2", size, r.randint(1, 4))
    names = ["b", "m", "s"] if three else ["b", "s"]
    debug_on = r.choice(names)
    prev = None
    for name in names:
        debug = t.rules("qcow2", size) if name == debug_on else None
        extra = {"backing": prev} if prev else {}
        t.open(name, name + ".qcow2", "qcow2", debug, **extra)
        prev = name
    if kind == "commit":
        t.execute(
            "block-commit",
            device="s",
            **{"job-id": "j", "top-node": "m", "base-node": "b", "on-error": policy},
        )
    elif kind == "active-commit":
        t.execute(
            "block-commit", device="s", **{"job-id": "j", "base-node": "b", "on-error": policy}
        )
    else:
        t.execute("block-stream", device="s", **{"job-id": "j", "on-error": policy})
    run_job(t, "j")
    for name in reversed(names):
        t.execute("blockdev-del", **{"node-name": name})
    return "\n".join(t.lines) + "\n"


def main(argv: list[str]) -> None:
    write_traces(argv, "bj", trace, __doc__ or "")


if __name__ == "__main__":
    main(sys.argv[1:])
