"""Write qemu-iotests 257, 124 and tests/copy-before-write (QEMU 7.2) as unrecorded
traces.

Usage: python3 scripts/iotest_traces.py OUT_DIR [--record RUNS --json FILE]
Then `python3 -m sim record OUT_DIR/X.jsonl -o scenarios/iotests/X.jsonl` records
each on QEMU 7.2 (iotest-124-transaction-failure with `--runs 20`: QEMU races
there, see its description).  Each trace follows its test step for step: the QMP commands
the test sends (`vm.qmp_log`, `vm.command`), qemu-io through
`human-monitor-command`, `vm.run_job` as waits for JOB_STATUS_CHANGE with the
verbs run_job sends.  `vm.query_bitmaps` (query-named-block-nodes, of which
the test logs the bitmaps) becomes `x-debug-block-dirty-bitmap-sha256` of the
named bitmap: query-named-block-nodes also reports each image's
`actual-size`, which depends on ext4 writeback (two recordings of the same
trace on QEMU 7.2 differ by an extent index block), so a recorded answer
with it cannot be replayed exactly.  The anonymous successor 257 counts while
the job is pending appears in no such answer; the final state and the events
carry the rest.  What a trace cannot say (qemu-img compare/rebase of the
images after the VM is gone, Python-side bitmap emulation) is left out.

`--record RUNS` then records every trace written on real QEMU 7.2 afresh
(`python3 -m sim record --runs RUNS`, into OUT_DIR/recorded/) and replays each
fresh recording on the simulator (`python3 -m sim replay`); `--json FILE` keeps
what each gave (bench/results/iotests.json is what README.md's "N of N replay
exactly" is rendered from: scripts/readme_numbers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZE = 64 * 1024 * 1024
GRANULARITY = 64 * 1024

# 257's GROUPS: (pattern byte, offset, size)
GROUPS = [
    [("0x49", 0x0000000, GRANULARITY), ("0x6c", 0x0100000, GRANULARITY),
     ("0x6f", 0x2000000, GRANULARITY), ("0x76", 0x3FF0000, GRANULARITY)],
    [("0x65", 0x0000000, GRANULARITY), ("0x77", 0x00F8000, GRANULARITY),
     ("0x72", 0x2008000, GRANULARITY), ("0x69", 0x3FE0000, GRANULARITY)],
    [("0x74", 0x0010000, GRANULARITY), ("0x69", 0x00E8000, GRANULARITY),
     ("0x6e", 0x2018000, GRANULARITY), ("0x67", 0x3FE0000, 2 * GRANULARITY)],
    [("0xaa", 0x0010000, 3 * GRANULARITY), ("0xbb", 0x00D8000, GRANULARITY),
     ("0xcc", 0x2028000, GRANULARITY), ("0xdd", 0x3FC0000, GRANULARITY)],
]  # fmt: skip


class TraceWriter:
    """Lines of one trace: a header, steps and `//` comments."""

    def __init__(
        self, name: str, description: str, drives: list[dict[str, Any]] | None = None
    ) -> None:
        header = {"trace": 1, "name": name, "drives": drives or [], "policy": "qemu-7.2",
                  "seed": 0, "description": description}  # fmt: skip
        self.lines = [json.dumps(header)]

    def note(self, text: str) -> None:
        self.lines.append(f"// {text}")

    def qmp(self, cmd: str, args: dict[str, Any] | None = None) -> None:
        step: dict[str, Any] = {"execute": cmd}
        if args is not None:
            step["arguments"] = args
        self.lines.append(json.dumps(step))

    def wait(self, event: str, data: dict[str, Any]) -> None:
        self.lines.append(json.dumps({"wait": {"event": event, "data": data}}))

    def hmp_io(self, node: str, cmd: str) -> None:
        self.qmp("human-monitor-command", {"command-line": f'qemu-io {node} "{cmd}"'})

    def run_job(
        self,
        job: str,
        auto_finalize: bool = True,
        auto_dismiss: bool = False,
        pre_finalize: Any = None,
        cancel: bool = False,
    ) -> None:
        """iotests VM.run_job for a job that reaches `pending` (auto_finalize off) or
        concludes: its verbs, in the order run_job sends them."""
        if not auto_finalize:
            self.wait("JOB_STATUS_CHANGE", {"id": job, "status": "pending"})
            if pre_finalize is not None:
                pre_finalize()
            self.qmp("job-cancel" if cancel else "job-finalize", {"id": job})
        self.wait("JOB_STATUS_CHANGE", {"id": job, "status": "concluded"})
        if not auto_dismiss:
            self.qmp("job-dismiss", {"id": job})
        self.wait("JOB_STATUS_CHANGE", {"id": job, "status": "null"})

    def write(self, path: Path) -> None:
        path.write_text("\n".join(self.lines) + "\n")


def create_image(t: TraceWriter) -> None:
    """The test image `img` as qemu-img create makes it: a file, then qcow2 on it, by
    blockdev-create jobs (the file node is deleted again)."""
    t.qmp("blockdev-create", {"job-id": "img-file",
                              "options": {"driver": "file", "filename": "img", "size": 0}})  # fmt: skip
    t.run_job("img-file")
    t.qmp("blockdev-add", {"driver": "file", "node-name": "img-file", "filename": "img"})
    t.qmp("blockdev-create", {"job-id": "img-fmt",
                              "options": {"driver": "qcow2", "file": "img-file", "size": SIZE}})  # fmt: skip
    t.run_job("img-fmt")
    t.qmp("blockdev-del", {"node-name": "img-file"})


def create_target(t: TraceWriter, name: str, filename: str, size: int = SIZE) -> None:
    """257's Drive.create_target: blockdev-create file + qcow2, each run as a job."""
    file_node = f"file_{filename}"
    t.qmp("blockdev-create", {"job-id": "bdc-file-job",
                              "options": {"driver": "file", "filename": filename, "size": 0}})  # fmt: skip
    t.run_job("bdc-file-job")
    t.qmp("blockdev-add", {"driver": "file", "node-name": file_node, "filename": filename})
    t.qmp("blockdev-create", {"job-id": "bdc-fmt-job",
                              "options": {"driver": "qcow2", "file": file_node, "size": size}})  # fmt: skip
    t.run_job("bdc-fmt-job")
    t.qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": file_node})


def blockdev_backup(t: TraceWriter, device: str, target: str, sync: str, **kw: Any) -> None:
    args = {"device": device, "target": target, "sync": sync, "filter-node-name": "backup-top"}
    args.update({k.replace("_", "-"): v for k, v in kw.items() if v is not None})
    t.qmp("blockdev-backup", args)


def perform_writes(t: TraceWriter, n: int, node: str = "drive0") -> None:
    t.note(f"--- Write #{n} ---")
    for byte, offset, size in GROUPS[n]:
        t.hmp_io(node, f"write -P{byte} 0x{offset:07x} 0x{size:x}")
    query_bitmaps(t, n > 0)


def query_bitmaps(t: TraceWriter, has_bitmap: bool = True) -> None:
    """vm.query_bitmaps, as far as a recorded answer can replay (module docstring)."""
    if has_bitmap:
        t.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": "bitmap0"})


def reference_backup(t: TraceWriter, n: int) -> None:
    t.note(f"--- Reference Backup #{n} ---")
    create_target(t, f"ref_target_{n}", f"fbackup{n}")
    blockdev_backup(t, "drive0", f"ref_target_{n}", "full", job_id=f"ref_backup_{n}")
    t.run_job(f"ref_backup_{n}", auto_dismiss=True)


def backup(t: TraceWriter, n: int, filename: str, sync: str, **kw: Any) -> str:
    t.note(f"--- Test Backup #{n} ---")
    create_target(t, f"backup_target_{n}", filename)
    kw.setdefault("auto_finalize", False)
    blockdev_backup(t, "drive0", f"backup_target_{n}", sync, job_id=f"backup_{n}", **kw)
    return f"backup_{n}"


def test_bitmap_sync(out: Path, bsync: str, msync: str, failure: str | None) -> None:
    """257's test_bitmap_sync (the 'intermediate' failure needs blkdebug set-state)."""
    cond = f"with {failure} failure" if failure else "without failure"
    name = f"iotest-257-{msync}-{bsync}-{failure or 'ok'}"
    t = TraceWriter(
        name,
        f"qemu-iotests 257, Mode {msync}; Bitmap Sync {bsync} {cond}: writes, a reference "
        "full backup, bitmap0 added, more writes, a test backup with the bitmap held "
        "pending while writes go through backup-top, then finalized or cancelled; more "
        "writes and a second bitmap backup (the recovery); bitmap0 removed",
    )
    t.note("--- Preparing image & VM --- (qemu-img create, as blockdev-create)")
    create_image(t)
    file_config: dict[str, Any] = {"driver": "file", "filename": "img"}
    if failure == "intermediate":
        file_config = {
            "driver": "blkdebug", "image": file_config,
            "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2},
                          {"event": "read_aio", "state": 2, "new_state": 3}],
            "inject-error": [{"event": "read_aio", "errno": 5, "state": 3,
                              "immediately": False, "once": True}],
        }  # fmt: skip
    t.qmp("blockdev-add", {"node-name": "drive0", "driver": "qcow2", "file": file_config})
    perform_writes(t, 0)
    reference_backup(t, 0)
    t.note("--- Add Bitmap ---")
    t.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0",
                                     "granularity": GRANULARITY})  # fmt: skip
    perform_writes(t, 1)
    reference_backup(t, 1)
    if failure == "intermediate":
        t.note("Activate blkdebug induced failure for second-to-next read")
        t.hmp_io("drive0", "flush")
    job = backup(t, 1, "bsync1", msync, bitmap="bitmap0", bitmap_mode=bsync)
    if failure == "intermediate":
        t.wait("JOB_STATUS_CHANGE", {"id": job, "status": "aborting"})
        t.qmp("query-jobs")  # run_job logs the job's error
        t.wait("JOB_STATUS_CHANGE", {"id": job, "status": "null"})
    else:
        t.run_job(job, auto_finalize=False, auto_dismiss=True,
                  pre_finalize=lambda: perform_writes(t, 2, "backup-top"),
                  cancel=failure == "simulated")  # fmt: skip
    query_bitmaps(t)
    perform_writes(t, 3)
    reference_backup(t, 2)
    job = backup(t, 2, "bsync2", "bitmap", bitmap="bitmap0", bitmap_mode=bsync)
    t.run_job(job, auto_finalize=False, auto_dismiss=True)
    query_bitmaps(t)
    t.note("--- Cleanup ---")
    t.qmp("block-dirty-bitmap-remove", {"node": "drive0", "name": "bitmap0"})
    t.write(out / f"{name}.jsonl")


def test_backup_api(out: Path) -> None:
    """257's test_backup_api: every malformed or prohibited sync/bitmap/mode mix."""
    t = TraceWriter(
        "iotest-257-backup-api",
        "qemu-iotests 257, API failure tests: blockdev-backup with every sync mode, "
        "no/missing/existing bitmap and each bitmap-mode, refused in QEMU's words",
    )
    create_image(t)
    t.qmp("blockdev-add", {"node-name": "drive0", "driver": "qcow2",
                           "file": {"driver": "file", "filename": "img"}})  # fmt: skip
    create_target(t, "backup_target", "bsync1")
    t.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0",
                                     "granularity": GRANULARITY})  # fmt: skip
    modes = ["on-success", "always", "never", None]
    cases: dict[str, dict[str | None, list[str | None]]] = {
        "incremental": {None: modes, "bitmap404": modes, "bitmap0": ["always", "never"]},
        "bitmap": {None: modes, "bitmap404": modes, "bitmap0": [None]},
        "full": {None: modes[:3], "bitmap404": modes, "bitmap0": ["never", None]},
        "top": {None: modes[:3], "bitmap404": modes, "bitmap0": ["never", None]},
        "none": {None: modes[:3], "bitmap404": modes, "bitmap0": modes},
    }
    for sync, by_bitmap in cases.items():
        t.note(f"-- Sync mode {sync} tests --")
        for bitmap in (None, "bitmap404", "bitmap0"):
            for policy in by_bitmap[bitmap]:
                blockdev_backup(t, "drive0", "backup_target", sync, job_id="api_job",
                                bitmap=bitmap, bitmap_mode=policy)  # fmt: skip
    t.write(out / "iotest-257-backup-api.jsonl")


# --- qemu-iotests 124 -----------------------------------------------------------------------

DRIVE0_124 = {"id": "drive0", "node-name": "drive0-fmt", "file-node-name": "drive0-file",
              "format": "qcow2", "size": SIZE}  # fmt: skip
DEFAULT_PATTERN = (("0x41", "0", "512"), ("0xd5", "1M", "32k"), ("0xdc", "32M", "124k"))
WRITES_1 = (("0xab", "0", "512"), ("0xfe", "16M", "256k"), ("0x64", "32736k", "64k"))
WRITES_2 = (("0x9a", "0", "512"), ("0x55", "8M", "352k"), ("0x78", "15872k", "1M"))


class Test124:
    """124's TestIncrementalBackupBase: drive0 (qemu-img created, the default pattern
    written before launch: here through qemu-io first), its anchor and reference
    backups by drive-backup, incremental targets made as `qemu-img create -b parent`
    (here blockdev-create with backing-file, then mode=existing)."""

    def __init__(self, name: str, description: str, drive0: bool = True) -> None:
        """`drive0`: the -drive of TestIncrementalBackup (False: the blkdebug class adds
        its drive0 by blockdev-add)."""
        self.t = TraceWriter(name, description, [DRIVE0_124] if drive0 else [])
        self.nums: dict[str, int] = {}
        self.last: dict[str, str] = {}
        self.created = 0
        for pattern in DEFAULT_PATTERN if drive0 else ():
            self.t.hmp_io("drive0", "write -P{} {} {}".format(*pattern))

    def backup(self, **args: Any) -> None:
        """do_qmp_backup: drive-backup, then BLOCK_JOB_COMPLETED."""
        args = {k.replace("_", "-"): v for k, v in args.items()}
        self.t.qmp("drive-backup", args)
        self.t.wait("BLOCK_JOB_COMPLETED", {"device": args["device"]})

    def anchor(self, drive: str = "drive0") -> None:
        target = f"{drive}.full.backup.qcow2"
        self.backup(job_id=drive, device=drive, sync="full", format="qcow2", target=target)
        self.last.setdefault(f"{drive}/base", target)

    def add_bitmap(self, name: str, drive: str = "drive0", **kw: Any) -> None:
        self.t.qmp("block-dirty-bitmap-add", {"node": drive, "name": name, **kw})

    def img_create(self, filename: str, backing: str | None, **opts: Any) -> None:
        """qemu-img create -f qcow2 [-b backing -F qcow2] FILE 64M, as blockdev-create."""
        self.created += 1
        node = f"mk{self.created}"
        job = f"mk{self.created}-file"
        self.t.qmp("blockdev-create", {"job-id": job, "options": {"driver": "file",
                                       "filename": filename, "size": 0}})  # fmt: skip
        self.t.run_job(job)
        self.t.qmp("blockdev-add", {"driver": "file", "node-name": node, "filename": filename})
        options: dict[str, Any] = {"driver": "qcow2", "file": node, "size": SIZE, **opts}
        if backing is not None:
            options.update({"backing-file": backing, "backing-fmt": "qcow2"})
        self.t.qmp("blockdev-create", {"job-id": f"{job}-fmt", "options": options})
        self.t.run_job(f"{job}-fmt")
        self.t.qmp("blockdev-del", {"node-name": node})

    def new_target(self, bitmap: str, drive: str = "drive0") -> tuple[str, str]:
        num = self.nums.get(f"{drive}/{bitmap}", 0)
        self.nums[f"{drive}/{bitmap}"] = num + 1
        base = f"{drive}.{bitmap}."
        return f"{base}inc{num}.qcow2", f"{base}ref{num}.qcow2"

    def last_target(self, bitmap: str, drive: str = "drive0") -> str:
        return self.last.get(f"{drive}/{bitmap}", f"{drive}.full.backup.qcow2")

    def prepare(self, bitmap: str, drive: str = "drive0") -> tuple[str, str]:
        target, ref = self.new_target(bitmap, drive)
        self.img_create(target, self.last_target(bitmap, drive))
        return target, ref

    def incremental(self, bitmap: str, drive: str = "drive0") -> None:
        """create_incremental: the target over the last one, then a reference backup."""
        target, ref = self.prepare(bitmap, drive)
        self.backup(job_id=drive, device=drive, sync="incremental", bitmap=bitmap,
                    format="qcow2", target=target, mode="existing")  # fmt: skip
        self.last[f"{drive}/{bitmap}"] = target
        self.backup(job_id=drive, device=drive, sync="full", format="qcow2", target=ref)

    def writes(self, patterns: tuple[tuple[str, str, str], ...], drive: str = "drive0") -> None:
        for pattern in patterns:
            self.t.hmp_io(drive, "write -P{} {} {}".format(*pattern))
        self.t.hmp_io(drive, "flush")

    def note_del(self, drive: str, bitmap: str = "bitmap0") -> None:
        """Bitmap.del_target: the failed target's number is used again."""
        key = f"{drive}/{bitmap}"
        self.nums[key] = self.nums.get(key, 1) - 1

    def sha(self, bitmap: str, drive: str = "drive0") -> None:
        self.t.qmp("x-debug-block-dirty-bitmap-sha256", {"node": drive, "name": bitmap})


def test_124(out: Path) -> None:
    for name, kw in (("simple", {}), ("small-granularity", {"granularity": 32768}),
                     ("large-granularity", {"granularity": 131072})):  # fmt: skip
        x = Test124(
            f"iotest-124-incremental-{name}",
            f"qemu-iotests 124 test_{name.replace('-', '_')}: an anchor backup, bitmap0 "
            f"{kw or ''}, a hollow incremental, then writes and an incremental (each with "
            "its reference backup) twice",
        )
        x.anchor()
        x.add_bitmap("bitmap0", **kw)
        x.incremental("bitmap0")
        x.writes(WRITES_1)
        x.incremental("bitmap0")
        x.writes(WRITES_2)
        x.incremental("bitmap0")
        x.sha("bitmap0")
        x.t.write(out / f"iotest-124-incremental-{name}.jsonl")

    x = Test124(
        "iotest-124-larger-cluster-target",
        "qemu-iotests 124 test_larger_cluster_target: a 128k-cluster anchor (mode=existing), "
        "bitmap0 dirtied, an incremental into a 128k-cluster target without backing file",
    )
    x.img_create("drive0.full.backup.qcow2", None, **{"cluster-size": 131072})
    x.backup(device="drive0", sync="full", format="qcow2", target="drive0.full.backup.qcow2",
             mode="existing")  # fmt: skip
    x.add_bitmap("bitmap0")
    x.writes(WRITES_1)
    target, ref = x.new_target("bitmap0")
    x.img_create(target, None, **{"cluster-size": 131072})
    x.backup(device="drive0", sync="incremental", bitmap="bitmap0", format="qcow2",
             target=target, mode="existing")  # fmt: skip
    x.backup(job_id="drive0", device="drive0", sync="full", format="qcow2", target=ref)
    x.sha("bitmap0")
    x.t.write(out / "iotest-124-larger-cluster-target.jsonl")

    x = Test124(
        "iotest-124-incremental-transaction",
        "qemu-iotests 124 test_incremental_transaction: bitmap0, writes, bitmap1; one "
        "transaction clears both and starts a full backup; writes; an incremental through "
        "each bitmap",
    )
    x.add_bitmap("bitmap0")
    x.writes(WRITES_1)
    x.add_bitmap("bitmap1")
    x.t.qmp("transaction", {"actions": [
        {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "bitmap0"}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "bitmap1"}},
        {"type": "drive-backup", "data": {"job-id": "drive0", "device": "drive0",
                                          "target": "drive0.full.backup.qcow2",
                                          "sync": "full", "format": "qcow2"}},
    ]})  # fmt: skip
    x.t.wait("BLOCK_JOB_COMPLETED", {"device": "drive0"})
    x.writes(WRITES_2)
    x.incremental("bitmap0")
    x.incremental("bitmap1")
    x.sha("bitmap0")
    x.sha("bitmap1")
    x.t.write(out / "iotest-124-incremental-transaction.jsonl")

    x = Test124(
        "iotest-124-refusals",
        "qemu-iotests 124 test_sync_dirty_bitmap_missing, _not_found, _bad_granularity: "
        "incremental without a bitmap, with an unknown one, and a bitmap of granularity 64000",
    )
    x.t.qmp("drive-backup", {"device": "drive0", "sync": "incremental", "format": "qcow2",
                             "target": "err.qcow2"})  # fmt: skip
    x.t.qmp("drive-backup", {"device": "drive0", "sync": "incremental", "bitmap": "unknown",
                             "format": "qcow2", "target": "err.qcow2"})  # fmt: skip
    x.add_bitmap("bitmap0", granularity=64000)
    x.t.write(out / "iotest-124-refusals.jsonl")


BLKDEBUG_124 = {
    "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
    "inject-error": [{"event": "read_aio", "errno": 5, "state": 2, "immediately": False,
                      "once": True}],
}  # fmt: skip


def blkdebug_drive(x: Test124, drive: str, patterns: tuple[tuple[str, str, str], ...]) -> None:
    """124's blkdebug drive: a qemu-img created image with its pattern written offline
    (here through a temporary node), then blockdev-add qcow2 over blkdebug over file."""
    filename = f"{drive}.qcow2"
    x.img_create(filename, None)
    x.t.qmp("blockdev-add", {"driver": "qcow2", "node-name": "offline",
                             "file": {"driver": "file", "filename": filename}})  # fmt: skip
    for pattern in patterns:
        x.t.hmp_io("offline", "write -P{} {} {}".format(*pattern))
    x.t.qmp("blockdev-del", {"node-name": "offline"})
    image = {"driver": "file", "filename": filename}
    x.t.qmp("blockdev-add", {"node-name": drive, "driver": "qcow2",
                             "file": {"driver": "blkdebug", "image": image, **BLKDEBUG_124}})  # fmt: skip


def test_124_blkdebug(out: Path) -> None:
    """124's test_transaction_failure and test_incremental_failure (blkdebug set-state)."""
    x = Test124(
        "iotest-124-transaction-failure",
        "qemu-iotests 124 test_transaction_failure: drive1 over blkdebug (a read fails once "
        "after the first flush), bitmaps and anchors on both drives, writes; a grouped "
        "transaction of two incrementals: drive1's fails, drive0's is cancelled; the same "
        "transaction again succeeds on both.  In QEMU the two jobs' ends race (which job's "
        "block-copy call or exit bottom half runs first): recorded with `--runs 20`, the "
        "event orders QEMU gave are in final-expect's other-event-orders",
    )
    blkdebug_drive(x, "drive1", (("0x14", "0", "512"), ("0x5d", "1M", "32k"),
                                 ("0xcd", "32M", "124k")))  # fmt: skip
    x.add_bitmap("bitmap0", "drive0")
    x.add_bitmap("bitmap0", "drive1")
    x.anchor("drive0")
    x.anchor("drive1")
    x.writes(WRITES_1, "drive0")
    x.writes((("0xba", "0", "512"), ("0xef", "16M", "256k"), ("0x46", "32736k", "64k")),
             "drive1")  # fmt: skip

    def transaction() -> None:
        t0, _ = x.prepare("bitmap0", "drive0")
        t1, _ = x.prepare("bitmap0", "drive1")
        actions = [
            {"type": "drive-backup", "data": {"job-id": d, "device": d, "target": t,
                                              "sync": "incremental", "format": "qcow2",
                                              "mode": "existing", "bitmap": "bitmap0"}}
            for d, t in (("drive0", t0), ("drive1", t1))
        ]  # fmt: skip
        x.t.qmp("transaction", {"actions": actions, "properties": {"completion-mode": "grouped"}})

    transaction()
    x.t.wait("BLOCK_JOB_CANCELLED", {"device": "drive0"})
    x.t.wait("BLOCK_JOB_COMPLETED", {"device": "drive1"})
    x.t.wait("BLOCK_JOB_ERROR", {"device": "drive1"})
    x.t.qmp("query-block-jobs")
    x.note_del("drive0")
    x.note_del("drive1")
    transaction()
    x.t.wait("BLOCK_JOB_COMPLETED", {"device": "drive0"})
    x.t.wait("BLOCK_JOB_COMPLETED", {"device": "drive1"})
    for d in ("drive0", "drive1"):
        x.last[f"{d}/bitmap0"] = f"{d}.bitmap0.inc0.qcow2"
        _, ref = f"{d}.bitmap0.inc0.qcow2", f"{d}.bitmap0.ref0.qcow2"
        x.backup(job_id=d, device=d, sync="full", format="qcow2", target=ref)
    x.t.qmp("query-block-jobs")
    x.sha("bitmap0", "drive0")
    x.sha("bitmap0", "drive1")
    x.t.write(out / "iotest-124-transaction-failure.jsonl")

    x = Test124(
        "iotest-124-incremental-failure",
        "qemu-iotests 124 test_incremental_failure: drive0 over blkdebug (a read fails once "
        "after the first flush); anchor, bitmap0, writes + flush; the incremental fails "
        "with an I/O error; more writes, and the next incremental succeeds",
        drive0=False,
    )
    blkdebug_drive(x, "drive0", DEFAULT_PATTERN)
    x.anchor("drive0")
    x.add_bitmap("bitmap0")
    x.writes(WRITES_1)
    target, _ = x.prepare("bitmap0")
    x.backup(job_id="drive0", device="drive0", sync="incremental", bitmap="bitmap0",
             format="qcow2", target=target, mode="existing")  # fmt: skip
    x.note_del("drive0")
    x.writes(WRITES_2)
    x.incremental("bitmap0")
    x.sha("bitmap0")
    x.t.write(out / "iotest-124-incremental-failure.jsonl")


def test_copy_before_write(out: Path) -> None:
    """tests/copy-before-write: a copy-before-write filter by blockdev-add whose copies
    fail (blkdebug write_aio on the target, once) or outlive cbw-timeout (the target
    behind a throttle node), under each on-cbw-error.  The iotest's image contents
    are patterns here (0x11 source, 0x22 and 0x33 written) so that `blocksim diff`
    tells which data ended where; what qemu-io prints is not recorded (see
    tests/test_cbw_errors.py)."""
    mib = 1 << 20
    for variant in ("error", "timeout"):
        for policy in ("break-snapshot", "break-guest-write"):
            what = (
                "cbw error with on-cbw-error={}: the copy to the target fails once (blkdebug "
                "write_aio on the target); the guest write and a snapshot-access read"
                if variant == "error"
                else "cbw-timeout with on-cbw-error={}: the target is a throttle node (bps-write "
                "300 KiB/s); the second 512 KiB write's copy waits longer than cbw-timeout (1 s)"
            )
            name = f"iotest-copy-before-write-{variant}-{policy}"
            t = TraceWriter(name, "qemu-iotests tests/copy-before-write, " + what.format(policy))
            t.note(
                "setUp: qemu-img create source and temp (qcow2, 1M), qemu-io -c 'write 0 1M' source"
            )
            for image in ("source", "temp"):
                t.qmp("blockdev-create", {"job-id": f"{image}-f", "options": {
                    "driver": "file", "filename": image, "size": 0}})  # fmt: skip
                t.wait("JOB_STATUS_CHANGE", {"id": f"{image}-f", "status": "concluded"})
                t.qmp("job-dismiss", {"id": f"{image}-f"})
                t.qmp("blockdev-add", {"driver": "file", "node-name": f"{image}-p",
                                       "filename": image})  # fmt: skip
                t.qmp("blockdev-create", {"job-id": f"{image}-q", "options": {
                    "driver": "qcow2", "file": f"{image}-p", "size": mib}})  # fmt: skip
                t.wait("JOB_STATUS_CHANGE", {"id": f"{image}-q", "status": "concluded"})
                t.qmp("job-dismiss", {"id": f"{image}-q"})
                t.qmp("blockdev-del", {"node-name": f"{image}-p"})
            t.qmp("blockdev-add", {"driver": "qcow2", "node-name": "offline",
                                   "file": {"driver": "file", "filename": "source"}})  # fmt: skip
            t.hmp_io("offline", "write -P 0x11 0 1M")
            t.qmp("blockdev-del", {"node-name": "offline"})
            source = {"driver": "qcow2", "file": {"driver": "file", "filename": "source"}}
            args: dict[str, Any] = {"node-name": "cbw", "driver": "copy-before-write",
                                    "on-cbw-error": policy}  # fmt: skip
            if variant == "error":
                inject = {"event": "write_aio", "errno": 5, "immediately": False, "once": True}
                args.update(file=source, target={"driver": "qcow2", "file": {
                    "driver": "blkdebug", "image": {"driver": "file", "filename": "temp"},
                    "inject-error": [inject]}})  # fmt: skip
            else:
                t.qmp("object-add", {"qom-type": "throttle-group", "id": "group0",
                                     "limits": {"bps-write": 300 * 1024}})  # fmt: skip
                args.update({"cbw-timeout": 1, "file": source, "target": {
                    "driver": "throttle", "throttle-group": "group0", "file": {
                        "driver": "qcow2", "file": {"driver": "file", "filename": "temp"}}}})  # fmt: skip
            t.qmp("blockdev-add", args)
            t.qmp("blockdev-add", {"node-name": "access", "driver": "snapshot-access",
                                   "file": "cbw"})  # fmt: skip
            if variant == "error":
                t.hmp_io("cbw", "write -P 0x22 0 1M")
            else:
                t.hmp_io("cbw", "write -P 0x22 0 512K")
                t.note("the second write's copy is held by the throttle group beyond cbw-timeout")
                t.hmp_io("cbw", "write -P 0x33 512K 512K")
            t.hmp_io("access", "read 0 1M")
            t.note("what the snapshot and the source read now (the iotest prints only the above)")
            t.hmp_io("access", "read -P 0x11 0 1M")
            t.hmp_io("cbw", "read 0 1M")
            t.qmp("blockdev-del", {"node-name": "access"})
            t.qmp("blockdev-del", {"node-name": "cbw"})
            if variant == "timeout":
                t.qmp("object-del", {"id": "group0"})
            t.write(out / f"{name}.jsonl")


def write_all(out: Path) -> None:
    """Every trace of the iotests this script converts, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for bsync in ("never", "on-success", "always"):
        for failure in ("simulated", "intermediate", None):
            test_bitmap_sync(out, bsync, "bitmap", failure)
    for msync in ("full", "top"):
        for bsync in ("on-success", "always"):
            for failure in ("simulated", "intermediate", None):
                test_bitmap_sync(out, bsync, msync, failure)
    test_backup_api(out)
    test_124(out)
    test_124_blkdebug(out)
    test_copy_before_write(out)


# traces on whose event order QEMU races: recorded with at least this many runs, so that
# the orders kept cover the ones QEMU gives (20 recordings of 124's transaction failure
# gave 4 orders, 10 others 6)
RACES = {"iotest-124-transaction-failure": 20}


def record_and_replay(out: Path, runs: int) -> dict[str, Any]:
    """Record each trace in `out` on real QEMU 7.2 (`runs` fresh QEMUs each) and replay
    the recording on the simulator: which record, and which of those replay exactly."""
    recorded = out / "recorded"
    recorded.mkdir(exist_ok=True)
    rows = []
    start = time.monotonic()
    load_before = os.getloadavg()[0]
    for trace in sorted(out.glob("*.jsonl")):
        target = recorded / trace.name
        n = max(runs, RACES.get(trace.stem, 0))
        rec = subprocess.run(
            [sys.executable, "-m", "sim", "record", str(trace), "-o", str(target),
             "--runs", str(n)],
            capture_output=True, text=True,
        )  # fmt: skip
        row: dict[str, Any] = {"trace": trace.stem, "runs": n, "recorded": rec.returncode == 0}
        if rec.returncode == 0:
            final = json.loads(target.read_text().splitlines()[-1]).get("final-expect", {})
            row["event_orders"] = 1 + len(final.get("other-event-orders", []))
            rep = subprocess.run(
                [sys.executable, "-m", "sim", "replay", str(target)],
                capture_output=True, text=True,
            )  # fmt: skip
            row["replays_exactly"] = rep.returncode == 0
            if rep.returncode != 0:
                row["replay"] = rep.stdout[-2000:]
        else:
            row["replays_exactly"] = False
            row["record"] = (rec.stdout + rec.stderr)[-2000:]
        print(
            f"{trace.stem}: "
            + ("replays exactly" if row["replays_exactly"] else "recorded, replay differs"
               if row["recorded"] else "not recorded"),
            flush=True,
        )  # fmt: skip
        rows.append(row)
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "command": f"python3 scripts/iotest_traces.py OUT --record {runs} --json FILE",
        "runs": runs,
        "qemu": qemu[0] if qemu else "?",
        "traces": rows,
        "total": len(rows),
        "recorded": sum(r["recorded"] for r in rows),
        "replay_exactly": sum(r["replays_exactly"] for r in rows),
        "wall_s": round(time.monotonic() - start),
        "load_before": round(load_before, 1),
        "load_after": round(os.getloadavg()[0], 1),
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--record",
        type=int,
        metavar="RUNS",
        default=0,
        help="record each on real QEMU 7.2 RUNS times, then replay it",
    )
    parser.add_argument("--json", type=Path, help="with --record: write what each gave")
    args = parser.parse_args()  # fmt: skip
    write_all(args.out)
    if args.record:
        doc = record_and_replay(args.out, args.record)
        print(
            f"{doc['replay_exactly']} of {doc['total']} replay exactly ({doc['recorded']} recorded)"
        )
        if args.json:
            args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
