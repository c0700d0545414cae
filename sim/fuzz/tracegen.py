"""Seeded random QMP traces that replay deterministically on real QEMU 7.2.

    generate_trace(seed, areas=None, steps=25) -> [header, step, step, ...]

The traces look like the recorded ones in scenarios/: one or two drives
(qcow2, rarely a raw second one) of 16-64 MiB; dirty-bitmap commands, qemu-io
guest I/O, snapshots, backups, mirrors, commits, streams and transactions,
with a share of commands that QEMU refuses.
They carry no ``expect``; `fuzz/record_corpus.py` records them on real QEMU.

Areas (the ``description`` lists those a trace touched): bitmap, io,
snapshot, backup, mirror, commit, stream, transaction, invalid.  `areas=None`
picks a random mix per seed; a given set restricts the generator to it
(`invalid` off = no command that QEMU is expected to refuse).

Determinism on real QEMU (the README's rules) is built in:

- a job is always followed by a wait for its end (``BLOCK_JOB_COMPLETED`` /
  ``BLOCK_JOB_CANCELLED``), or for ``BLOCK_JOB_READY`` / ``BLOCK_JOB_PENDING``
  where it then sits still until a complete/finalize/cancel and its wait;
- a job is only observed (queries, verbs, commands on its drive) while it is
  held still: pending with ``auto-finalize: false``, READY, concluded with
  ``auto-dismiss: false``, or a ``sync: none`` backup (which never finishes);
  no other job starts while one is held;
- guest writes during READY touch fresh 64 KiB chunks only, and the job is
  neither queried nor force-cancelled after them (the mirror copies them in
  the background); after such writes in an active commit, no bitmap command
  until it ends (its copy dirties the base's bitmaps whenever it happens);
- no ``advance``, no sim-only steps, and nothing known to crash or hang QEMU
  7.2: a merge with ``bitmaps: []``; two ``blockdev-snapshot-sync`` in one
  transaction; a ``block-dirty-bitmap-enable`` transaction action that fails
  (e.g. under ``completion-mode: grouped``: SIGSEGV in its abort); qemu-io on
  a drive whose mirror or active commit is pending (hangs: the source stays
  drained); a read through a pending stream of a node without backing file
  (SIGSEGV); a stream job left concluded at the end (query-named-block-nodes,
  which the recorder runs, then crashes);
- never two jobs that both run to their end at the same time (their events
  interleave by timing): a backup pair in one transaction is one finishing
  backup plus one ``sync: none`` backup that only a cancel ends.

A state model (`tracegen_model.Machine`) tracks drives, nodes, bitmaps and
jobs so that commands are mostly valid; `generate_with_predictions` also
returns, per step, what the model expects ("ok", "error", "event", or None
for "not sure"), which `record_corpus` compares with QEMU's answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.fuzz import tracegen_refused as refused
from sim.fuzz import tracegen_txn as txn
from sim.fuzz.tracegen_model import (
    BITMAP_NAMES,
    GOOD_GRANULARITIES,
    Bitmap,
    Drive,
    KiB,
    Machine,
    MiB,
    Node,
    Step,
    execute,
    wait_for,
)

AREAS = (
    "bitmap",
    "io",
    "snapshot",
    "backup",
    "mirror",
    "commit",
    "stream",
    "transaction",
    "invalid",
)
SIZES = (16 * MiB, 24 * MiB, 32 * MiB, 48 * MiB, 64 * MiB)
IO_LENGTHS = (512, 4096, 65536, 131072, 1048576, "4k", "64k", "128k", "192k", "1M", "1024k")
CHUNK = 64 * KiB
# Commands that drain every node (JOB_STATUS_CHANGE pairs from running and READY jobs).
DRAINING = ("transaction", "blockdev-snapshot-sync", "drive-backup", "blockdev-backup")
# Job verbs each held state refuses (resume also fails when the job is not paused).
WRONG_VERBS = {
    "running": ("complete", "finalize", "dismiss", "resume"),
    "ready": ("finalize", "dismiss", "resume"),
    "pending": ("complete", "dismiss", "pause", "resume", "set-speed"),
    "concluded": ("cancel", "complete", "finalize", "pause", "resume", "set-speed"),
}


def generate_trace(seed: int, areas: set[str] | None = None, steps: int = 25) -> list[Step]:
    """A trace for `seed`: the header dict, then about `steps` step dicts (no expects)."""
    return generate_with_predictions(seed, areas, steps)[0]


def generate_with_predictions(
    seed: int, areas: set[str] | None = None, steps: int = 25
) -> tuple[list[Step], list[str | None]]:
    """`generate_trace` plus, per step, the model's expectation ("ok", "error", "event", None)."""
    gen = Generator(seed, areas, steps)
    return gen.run(), gen.predictions


@dataclass(eq=False)
class _Job:
    """A job the trace started and has not yet seen the end of (or not dismissed)."""

    id: str
    kind: str  # backup, mirror, commit, stream
    drive: Drive
    mode: str = "finishes"  # finishes (by itself), ready (mirror, active commit), none (backup)
    filter: bool = True  # a filter on top of the drive while the job lives
    state: str = "running"  # running, ready, pending, concluded
    auto_finalize: bool = True
    auto_dismiss: bool = True
    bitmap: Bitmap | None = None
    finish: Callable[[str], None] = lambda outcome: None  # outcome: complete, soft, cancel
    target_file: tuple[str, str, int] | None = None  # (file, format, size) for blockdev-add
    outcome: str = "complete"  # what finalize will do for a pending mirror/commit
    wrote: bool = False  # guest writes since READY: no more queries
    drained: bool = False  # a drain during the hold left status events behind
    chunks: list[int] = field(default_factory=list)
    actions: int = 0


class Generator:
    """One trace being written: the model, the steps so far, the job being held."""

    def __init__(self, seed: int, areas: set[str] | None, steps: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.target = steps
        self.areas = self._areas(areas)
        self.steps: list[Step] = []
        self.predictions: list[str | None] = []
        self.used: list[str] = []
        self.counter = 0  # file names
        self.numbers: dict[str, int] = {}  # job, ov, mir, tgt
        self.hold: _Job | None = None
        self.files: list[tuple[str, str, int]] = []  # closed backup targets, no backing file
        self.drives: list[dict[str, Any]] = []
        self.m = self._machine()

    # --- set-up -------------------------------------------------------------------------

    def _areas(self, areas: set[str] | None) -> list[str]:
        if areas is not None:
            unknown = sorted(set(areas) - set(AREAS))
            if unknown:
                raise ValueError(f"unknown area(s) {unknown}; known: {list(AREAS)}")
            return [a for a in AREAS if a in areas]
        out = ["bitmap", "io"]
        for area in ("snapshot", "backup", "mirror", "commit", "stream", "transaction"):
            if self.rng.random() < 0.5:
                out.append(area)
        if self.rng.random() < 0.9:
            out.append("invalid")
        return [a for a in AREAS if a in out]

    def _machine(self) -> Machine:
        rng = self.rng
        count = 2 if rng.random() < 0.3 else 1
        drives: list[Drive] = []
        size = rng.choice(SIZES)
        for i in range(count):
            if i and rng.random() < 0.5:
                pass  # same size as drive0: blockdev-backup and cross-drive merges work
            elif rng.random() < 0.8:
                size = rng.choice(SIZES)
            else:
                size = 512 * rng.randint(16 * MiB // 512, 64 * MiB // 512)
            fmt = "raw" if i == 1 and rng.random() < 0.15 else "qcow2"
            proto = f"proto{i}" if rng.random() < 0.85 else None
            spec: dict[str, Any] = {"id": f"drive{i}", "node-name": f"fmt{i}"}
            if proto:
                spec["file-node-name"] = proto
            spec.update({"format": fmt, "size": size})
            self.drives.append(spec)
            root = Node(f"fmt{i}", fmt, size, file=Node(proto, "file", size))
            drives.append(Drive(f"drive{i}", size, fmt, root))
        return Machine(drives)

    # --- output -------------------------------------------------------------------------

    def emit(self, step: Step, prediction: str | bool | None, *areas: str) -> None:
        if step.get("execute") in DRAINING and self.hold is not None:
            self.hold.drained = True  # its status-change pair would confuse a later wait
        if prediction is True:
            prediction = "ok"
        elif prediction is False:
            prediction = "error"
        self.steps.append(step)
        self.predictions.append(prediction)
        for area in areas:
            if area not in self.used:
                self.used.append(area)

    def run(self) -> list[Step]:
        if "bitmap" in self.areas and self.rng.random() < 0.8:
            self.bitmap_add(self.m.drives[0])
        stalls = 0
        while len(self.steps) < self.target and stalls < 200:
            before = len(self.steps)
            if self.hold is not None:
                self.hold_step()
            else:
                self.free_step()
            stalls = stalls + 1 if len(self.steps) == before else 0
        while self.hold is not None:
            # A concluded job may stay listed, but not a stream: query-named-block-nodes
            # (which reads the final state) crashes QEMU 7.2 while one exists.
            if self.hold.state == "concluded" and self.hold.kind != "stream":
                if self.rng.random() < 0.3:
                    break
            self.end_hold()
        used = ", ".join(a for a in AREAS if a in self.used)
        header = {
            "trace": 1,
            "name": f"tracegen-{self.seed:04d}",
            "drives": self.drives,
            "policy": "qemu-7.2",
            "seed": self.seed,
            "description": f"random trace (seed {self.seed}): {used}",
        }
        return [header, *self.steps]

    def number(self, kind: str) -> int:
        self.numbers[kind] = self.numbers.get(kind, 0) + 1
        return self.numbers[kind]

    def file(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}.qcow2"

    def on(self, area: str) -> bool:
        return area in self.areas

    def weighted(self, options: list[tuple[float, Callable[[], Any]]]) -> None:
        options = [(w, f) for w, f in options if w > 0]
        if options:
            weights = [w for w, _ in options]
            self.rng.choices([f for _, f in options], weights)[0]()

    # --- picking things -----------------------------------------------------------------

    def free_drives(self) -> list[Drive]:
        """Drives no held job sits on (a concluded job no longer holds its drive)."""
        h = self.hold
        return [d for d in self.m.drives if h is None or h.state == "concluded" or h.drive is not d]

    def root_ref(self, drive: Drive) -> str:
        """How a command names a drive's top: the drive id, or sometimes the root's node name."""
        if drive.filter is None and drive.root.name and self.rng.random() < 0.25:
            return drive.root.name
        return drive.id

    def addressable(self, m: Machine | None = None) -> list[tuple[Node, list[str]]]:
        m = m or self.m
        nodes = m.nodes() + [d.filter for d in m.drives if d.filter is not None]
        return [(n, m.refs(n)) for n in nodes if m.refs(n)]

    def bitmap_refs(
        self, ok: Callable[[Node, Bitmap], bool], m: Machine | None = None
    ) -> list[tuple[str, Node, Bitmap]]:
        """(name to use for `node`, node, bitmap) for every reachable bitmap passing `ok`."""
        out = []
        for node, refs in self.addressable(m):
            for bitmap in node.bitmaps:
                if ok(node, bitmap):
                    out.append((self.rng.choice(refs), node, bitmap))
        return out

    def pick_offset(self, size: int, length: int) -> int:
        r = self.rng.random()
        top = max(size - length, 0)
        if r < 0.4:
            return self.rng.randrange(top // CHUNK + 1) * CHUNK
        if r < 0.6:
            return self.rng.randrange(top // 4096 + 1) * 4096
        if r < 0.75:
            return self.rng.randrange(top // 512 + 1) * 512
        if r < 0.93:
            return self.rng.randrange(top + 1)
        return size - self.rng.choice((0, 512, 4096, CHUNK))  # at or across the end

    def size_text(self, n: int) -> str:
        r = self.rng.random()
        if n and n % MiB == 0 and r < 0.3:
            return f"{n // MiB}M"
        if n and n % KiB == 0 and r < 0.7:
            return f"{n // KiB}k"
        return str(n)

    @staticmethod
    def length_bytes(text: str | int) -> int:
        if isinstance(text, int):
            return text
        scale = {"k": KiB, "M": MiB}[text[-1]]
        return int(text[:-1]) * scale

    # --- the free loop ------------------------------------------------------------------

    def chained(self, action: Callable[[], None], length: int) -> Callable[[], None]:
        """`action` needs a backing chain of `length` nodes: until one exists, snapshot."""
        if any(len(d.chain()) >= length for d in self.m.drives):
            return action
        return self.snapshot

    def free_step(self) -> None:
        m, on = self.m, self.on
        self.weighted(
            [
                (10 * on("bitmap"), self.bitmap_add),
                (5 * on("bitmap"), self.bitmap_toggle),
                (3 * on("bitmap"), lambda: self.bitmap_op("clear")),
                (3 * on("bitmap"), lambda: self.bitmap_op("remove")),
                (5 * on("bitmap"), self.bitmap_merge),
                (4 * on("bitmap"), self.bitmap_sha256),
                (18 * on("io"), self.io),
                (5 * on("snapshot"), self.snapshot),
                (6 * on("backup"), self.drive_backup),
                (1.5 * on("backup"), self.blockdev_backup),
                (1.5 * on("backup") * bool(self.files), self.blockdev_add),
                (0.5 * on("backup") * bool(m.owned), self.blockdev_del),
                (3 * on("mirror"), self.drive_mirror),
                (3 * on("commit"), self.chained(self.active_commit, 2)),
                (2 * on("commit"), self.chained(self.intermediate_commit, 3)),
                (2 * on("stream"), self.stream),
                (4 * on("transaction"), lambda: txn.transaction(self)),
                (12 * on("invalid"), lambda: refused.invalid(self)),
                (1, self.query),
            ]
        )

    def query(self) -> None:
        command = self.rng.choice(("query-jobs", "query-block-jobs"))
        self.emit(execute(command), True)

    # --- bitmaps ------------------------------------------------------------------------

    def bitmap_add(self, drive: Drive | None = None) -> None:
        rng = self.rng
        if drive is not None:
            node, refs = self.m.resolve(drive.id), [drive.id]
        else:
            nodes = [(n, r) for n, r in self.addressable() if n.driver != "file"]
            roots = [(n, r) for n, r in nodes if any(self.m.drive(x) for x in r)]
            node, refs = rng.choice(roots if roots and rng.random() < 0.7 else nodes)
        assert node is not None
        names = [n for n in BITMAP_NAMES if node.bitmap(n) is None]
        if not names:
            return
        ref = rng.choice(refs)
        args: dict[str, Any] = {"node": ref, "name": rng.choice(names)}
        if rng.random() < 0.5:
            args["granularity"] = rng.choice(GOOD_GRANULARITIES)
        if rng.random() < 0.15:
            args["disabled"] = True
        if node.can_persist and rng.random() < 0.2:
            args["persistent"] = True
        ok = self.m.add_bitmap(
            ref, args["name"], args.get("granularity"), args.get("persistent", False),
            args.get("disabled", False),
        )  # fmt: skip
        self.emit(execute("block-dirty-bitmap-add", args), ok, "bitmap")

    def bitmap_toggle(self) -> None:
        found = self.bitmap_refs(lambda n, b: not b.busy)
        if found:
            ref, _, bitmap = self.rng.choice(found)
            op = self.rng.choice(("enable", "disable"))
            ok = self.m.bitmap_op(op, ref, bitmap.name)
            self.emit(
                execute(f"block-dirty-bitmap-{op}", {"node": ref, "name": bitmap.name}),
                ok,
                "bitmap",
            )

    def bitmap_op(self, op: str) -> None:
        found = self.bitmap_refs(lambda n, b: not b.busy and b.readonly is False)
        if found:
            ref, _, bitmap = self.rng.choice(found)
            ok = self.m.bitmap_op(op, ref, bitmap.name)
            self.emit(
                execute(f"block-dirty-bitmap-{op}", {"node": ref, "name": bitmap.name}),
                ok,
                "bitmap",
            )

    def merge_sources(self, node: Node, target: Bitmap, m: Machine | None = None) -> list[Any]:
        rng = self.rng
        local = [b.name for b in node.bitmaps if not b.busy]
        remote = [
            {"node": ref, "name": b.name}
            for ref, n, b in self.bitmap_refs(lambda n, b: not b.busy and n.size == node.size, m)
        ]
        out: list[Any] = []
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            if remote and (rng.random() < 0.45 or not local):
                out.append(rng.choice(remote))
            elif local:
                out.append(rng.choice(local))
        return out or [target.name]

    def bitmap_merge(self) -> None:
        found = self.bitmap_refs(lambda n, b: not b.busy and b.readonly is False)
        if found:
            ref, node, bitmap = self.rng.choice(found)
            sources = self.merge_sources(node, bitmap)
            args = {"node": ref, "target": bitmap.name, "bitmaps": sources}
            self.emit(
                execute("block-dirty-bitmap-merge", args),
                self.m.merge(ref, bitmap.name, sources),
                "bitmap",
            )

    def bitmap_sha256(self) -> None:
        found = self.bitmap_refs(lambda n, b: True)
        if found:
            ref, _, bitmap = self.rng.choice(found)
            args = {"node": ref, "name": bitmap.name}
            self.emit(execute("x-debug-block-dirty-bitmap-sha256", args), True, "bitmap")

    # --- guest I/O ----------------------------------------------------------------------

    def io(self, drive: Drive | None = None) -> None:
        drive = drive or self.rng.choice(self.m.drives)
        job = self.hold
        if job is not None and job.drive is drive and job.state in ("ready", "pending"):
            line = self.io_while_held(drive, job)
        else:
            line = self.io_line(drive.size)
        if line is not None:
            ref = self.root_ref(drive)
            step = execute("human-monitor-command", {"command-line": f'qemu-io {ref} "{line}"'})
            self.emit(step, True, "io")

    def io_line(self, size: int) -> str:
        rng = self.rng
        op = rng.choices(
            ("write -P", "write", "write -z", "read -P", "read", "discard", "flush"),
            (35, 8, 12, 7, 8, 12, 6),
        )[0]
        if op == "flush":
            return "flush"
        raw = rng.choice(IO_LENGTHS) if rng.random() < 0.85 else rng.randint(1, 330000)
        length = self.length_bytes(raw)
        offset = self.pick_offset(size, length)
        text = raw if isinstance(raw, str) else self.size_text(raw)
        where = f"{self.size_text(offset)} {text}"
        if op.endswith("-P"):
            return f"{op} 0x{rng.randrange(256):02x} {where}"
        return f"{op} {where}"

    def io_while_held(self, drive: Drive, job: _Job) -> str | None:
        """Guest I/O on a drive whose job is READY or pending, where QEMU stays deterministic.

        READY: writes go to fresh 64 KiB chunks (the job copies each once, whenever it
        wakes up).  Pending: a mirror or active commit keeps its source drained, so any
        request on the drive hangs QEMU 7.2; a stream of a node without a backing file
        crashes it on a read through its filter (so: no reads in a pending stream).
        """
        rng = self.rng
        if job.state == "pending":
            if job.kind == "backup" or (job.kind == "commit" and not job.filter):
                return self.io_line(drive.size)
            if job.kind == "stream":
                return rng.choice(("flush", self.write_line(drive.size)))
            return None
        if rng.random() < 0.3:
            return rng.choice(("flush", f"read 0 {rng.choice(('4k', '64k'))}"))
        free = [c for c in range(drive.size // CHUNK) if c not in job.chunks]
        chunk = rng.choice(free)
        job.chunks.append(chunk)
        job.wrote = True
        length = rng.choice(("512", "4k", "64k"))
        return f"write -P 0x{rng.randrange(256):02x} {self.size_text(chunk * CHUNK)} {length}"

    def write_line(self, size: int) -> str:
        line = self.io_line(size)
        while not line.startswith("write"):
            line = self.io_line(size)
        return line

    # --- snapshots ----------------------------------------------------------------------

    def snapshot_args(self, drive: Drive) -> tuple[dict[str, Any], str | None]:
        rng = self.rng
        by_node = drive.root.name is not None and rng.random() < 0.3
        args: dict[str, Any] = {"node-name": drive.root.name} if by_node else {"device": drive.id}
        args["snapshot-file"] = self.file(f"{drive.id}-ov")
        name: str | None = None
        if by_node or rng.random() < 0.9:
            name = f"ov{self.number('ov')}"
            while self.m.name_taken(name):
                name = f"ov{self.number('ov')}"
            args["snapshot-node-name"] = name
        if rng.random() < 0.9:
            args["format"] = "qcow2"
        return args, name

    def snapshot(self) -> None:
        drives = [d for d in self.free_drives() if d.filter is None]
        if drives:
            drive = self.rng.choice(drives)
            args, name = self.snapshot_args(drive)
            self.emit(execute("blockdev-snapshot-sync", args), True, "snapshot")
            self.m.snapshot(drive, name)

    # --- jobs: starting -----------------------------------------------------------------

    def job_id(self, drive: Drive, explicit: float = 0.85) -> tuple[str, bool]:
        """(job id, whether to pass it): omitted means the drive id, if that id is free."""
        if self.rng.random() >= explicit and drive.id not in self.m.jobs:
            return drive.id, False
        return f"job{self.number('job')}", True

    def can_start_job(self) -> bool:
        return self.hold is None

    def usable_bitmaps(self, node: Node) -> list[Bitmap]:
        return [b for b in node.bitmaps if not b.busy and b.readonly is False]

    def backup_sync(self, node: Node) -> tuple[dict[str, Any], Bitmap | None]:
        """sync / bitmap / bitmap-mode for a valid backup of `node`, maybe adding a bitmap."""
        rng = self.rng
        sync = rng.choices(("full", "incremental", "bitmap", "top", "none"), (35, 25, 15, 12, 13))[
            0
        ]
        args: dict[str, Any] = {"sync": sync}
        usable = self.usable_bitmaps(node)
        if sync in ("incremental", "bitmap") and not usable:
            sync = args["sync"] = "full"
        if sync == "top" and node.writable_below():
            sync = args["sync"] = "full"  # its backing file cannot be opened a second time
        if sync == "incremental":
            bitmap = rng.choice(usable)
            args["bitmap"] = bitmap.name
            if rng.random() < 0.4:
                args["bitmap-mode"] = "on-success"
            return args, bitmap
        if sync == "bitmap":
            bitmap = rng.choice(usable)
            args.update(
                {
                    "bitmap": bitmap.name,
                    "bitmap-mode": rng.choice(("on-success", "always", "never")),
                }
            )
            return args, bitmap
        if sync in ("full", "top") and usable and rng.random() < 0.25:
            bitmap = rng.choice(usable)
            args.update(
                {"bitmap": bitmap.name, "bitmap-mode": rng.choice(("on-success", "always"))}
            )
            return args, bitmap
        return args, None

    def drive_backup(self) -> None:
        if not self.can_start_job():
            return
        rng = self.rng
        drive = rng.choice(self.m.drives)
        backing = [n for n in drive.chain()[1:] if n.name]
        if backing and rng.random() < 0.08:
            self.backup_of_backing_node(drive, rng.choice(backing))
            return
        ref = self.root_ref(drive)
        job_id, explicit = self.job_id(drive)
        sync, bitmap = self.backup_sync(drive.root)
        target = self.file("bk")
        args: dict[str, Any] = {"device": ref, "target": target}
        fmt = drive.format  # without `format` the target gets the source's (raw: no backing)
        if drive.format != "qcow2" or rng.random() < 0.9:
            args["format"] = fmt = "qcow2"
        if explicit:
            args["job-id"] = job_id
        args.update(sync)
        job = self.new_job(job_id, "backup", drive, args, bitmap)
        if sync["sync"] in ("full", "incremental", "bitmap"):
            job.target_file = (target, fmt, drive.size)
        self.emit(execute("drive-backup", args), True, "backup")
        self.started(job)

    def backup_of_backing_node(self, drive: Drive, node: Node) -> None:
        """Backing nodes may be backed up (by node name, with a job id); no hold."""
        assert node.name is not None
        bitmaps = [b for b in self.usable_bitmaps(node) if not b.persistent]
        args: dict[str, Any] = {"device": node.name, "target": self.file("bk"), "format": "qcow2"}
        job_id = f"job{self.number('job')}"
        args["job-id"] = job_id
        bitmap = None
        if bitmaps and self.rng.random() < 0.5:
            bitmap = self.rng.choice(bitmaps)
            args.update({"sync": "incremental", "bitmap": bitmap.name})
        else:
            args["sync"] = "full" if node.writable_below() else self.rng.choice(("full", "top"))
        job = self.new_job(job_id, "backup", drive, args, bitmap, filter=False, hold=False)
        self.emit(execute("drive-backup", args), True, "backup")
        self.started(job)

    def backup_targets(self, source: Node) -> list[tuple[str, Node]]:
        out = []
        for drive in self.m.drives:
            node = drive.root
            if (
                node is not source
                and node.name
                and node.size == source.size
                and drive.filter is None
            ):
                out.append((self.rng.choice([node.name, node.name, drive.id]), node))
        out += [(n.name, n) for n in self.m.owned if n.size == source.size and n.name]
        return out

    def blockdev_backup(self) -> None:
        if not self.can_start_job():
            return
        drive = self.rng.choice(self.m.drives)
        targets = self.backup_targets(drive.root)
        if not targets:
            return
        target_ref, target = self.rng.choice(targets)
        job_id, explicit = self.job_id(drive)
        args: dict[str, Any] = {"device": self.root_ref(drive), "target": target_ref}
        if explicit:
            args["job-id"] = job_id
        sync, bitmap = self.backup_sync(drive.root)
        args.update(sync)
        job = self.new_job(job_id, "backup", drive, args, bitmap)
        self.emit(execute("blockdev-backup", args), True, "backup")
        self.started(job)

    def blockdev_add(self) -> None:
        file, fmt, size = self.files.pop(self.rng.randrange(len(self.files)))
        name = f"tgt{self.number('tgt')}"
        args = {"driver": fmt, "node-name": name, "file": {"driver": "file", "filename": file}}
        self.emit(execute("blockdev-add", args), True, "backup")
        self.m.owned.append(Node(name, fmt, size, file=Node(None, "file", size), owned=True))

    def blockdev_del(self) -> None:
        node = self.rng.choice(self.m.owned)
        self.emit(execute("blockdev-del", {"node-name": node.name}), True, "backup")
        self.m.owned.remove(node)

    def new_job(
        self,
        job_id: str,
        kind: str,
        drive: Drive,
        args: dict[str, Any],
        bitmap: Bitmap | None = None,
        *,
        mode: str = "finishes",
        filter: bool = True,
        hold: bool = True,
    ) -> _Job:
        """Decide auto-finalize / auto-dismiss (into `args`) and register the job."""
        if kind == "backup" and args.get("sync") == "none":
            mode = "none"
        job = _Job(job_id, kind, drive, mode=mode, filter=filter, bitmap=bitmap)
        if hold and mode != "none" and self.rng.random() < 0.15:
            args["auto-finalize"] = job.auto_finalize = False
        if hold and self.rng.random() < 0.1:
            args["auto-dismiss"] = job.auto_dismiss = False
        if bitmap is not None:
            bitmap.busy = True
        self.m.jobs[job_id] = "running"
        return job

    def attach(self, job: _Job) -> None:
        """From now on the drive id names the job's filter (if it has one on top)."""
        if job.filter and job.drive.filter is None:
            job.drive.filter = Node(None, "filter", job.drive.size)

    def started(self, job: _Job) -> None:
        """Wait for what the job does by itself; hold it where it stops."""
        self.attach(job)
        if job.mode == "none":
            self.hold = job
        elif job.mode == "ready":
            self.emit(wait_for("BLOCK_JOB_READY", device=job.id), "event")
            job.state = "ready"
            self.hold = job
        elif not job.auto_finalize:
            self.emit(wait_for("BLOCK_JOB_PENDING", id=job.id), "event")
            job.state = "pending"
            self.hold = job
        else:
            self.emit(wait_for("BLOCK_JOB_COMPLETED", device=job.id), "event")
            self.finished(job, "complete")

    def finished(self, job: _Job, outcome: str) -> None:
        """The job's end event was waited for: apply its effect, then conclude or vanish."""
        job.drive.filter = None
        if job.bitmap is not None:
            job.bitmap.busy = False
        job.finish(outcome)
        self.hold = None
        if job.auto_dismiss:
            self.gone(job)
        else:
            job.state = "concluded"
            job.actions = 0
            self.m.jobs[job.id] = "concluded"
            self.hold = job

    def gone(self, job: _Job) -> None:
        self.m.jobs.pop(job.id, None)
        if job.target_file is not None:
            self.files.append(job.target_file)

    # --- mirror, commit, stream ---------------------------------------------------------

    def drive_mirror(self) -> None:
        if not self.can_start_job():
            return
        rng = self.rng
        drive = rng.choice(self.m.drives)
        source = drive.root
        job_id, explicit = self.job_id(drive)
        sync = rng.choices(("full", "top", "none"), (5, 3, 2))[0]
        args: dict[str, Any] = {"device": self.root_ref(drive), "target": self.file("mirror")}
        args.update({"format": "qcow2", "sync": sync})
        if explicit:
            args["job-id"] = job_id
        name = None
        if rng.random() < 0.8:
            name = f"mir{self.number('mir')}"
            while self.m.name_taken(name):
                name = f"mir{self.number('mir')}"
            args["node-name"] = name

        def finish(outcome: str) -> None:
            if outcome != "complete":
                return
            target = Node(name, "qcow2", drive.size, file=Node(None, "file", drive.size))
            target.backing = {"full": None, "top": source.backing, "none": source}[sync]
            if sync == "none":
                self.m.reopened(source)
                source.writable = True  # a backing file now, but still open read-write
            drive.root = target

        job = self.new_job(job_id, "mirror", drive, args, mode="ready")
        job.finish = finish
        self.emit(execute("drive-mirror", args), True, "mirror")
        self.started(job)

    def active_commit(self) -> None:
        drives = [d for d in self.m.drives if d.root.backing is not None]
        if not drives or not self.can_start_job():
            return
        rng = self.rng
        drive = rng.choice(drives)
        below = [n for n in drive.chain()[1:] if n.name]
        args: dict[str, Any] = {"device": self.root_ref(drive)}
        job_id, explicit = self.job_id(drive)
        if explicit:
            args["job-id"] = job_id
        base = drive.chain()[-1]
        if below and rng.random() < 0.6:
            base = rng.choice(below)
            args["base-node"] = base.name

        def finish(outcome: str) -> None:
            self.m.reopened(base)
            if outcome == "complete":
                drive.root = base
            else:
                base.writable = True  # reopened read-write for the job, and left so

        job = self.new_job(job_id, "commit", drive, args, mode="ready")
        job.finish = finish
        self.emit(execute("block-commit", args), True, "commit")
        self.started(job)

    def intermediate_commit(self) -> None:
        drives = [d for d in self.m.drives if any(n.name and n.backing for n in d.chain()[1:])]
        if not drives or not self.can_start_job():
            return
        rng = self.rng
        drive = rng.choice(drives)
        chain = drive.chain()
        top = rng.choice([n for n in chain[1:] if n.name and n.backing])
        below = chain[chain.index(top) + 1 :]
        args: dict[str, Any] = {"device": self.root_ref(drive)}
        job_id, explicit = self.job_id(drive)
        if explicit:
            args["job-id"] = job_id
        args["top-node"] = top.name
        base = below[-1]
        named = [n for n in below if n.name]
        if named and rng.random() < 0.6:
            base = rng.choice(named)
            args["base-node"] = base.name

        def finish(outcome: str) -> None:
            self.m.reopened(base)
            overlay = self.m.overlay_of(top)
            if outcome == "complete" and overlay is not None:
                overlay.backing = base

        job = self.new_job(job_id, "commit", drive, args, filter=False)
        job.finish = finish
        self.emit(execute("block-commit", args), True, "commit")
        self.started(job)

    def stream(self) -> None:
        if not self.can_start_job():
            return
        rng = self.rng
        drive = rng.choice(self.m.drives)
        if drive.root.backing is None and self.on("snapshot") and rng.random() < 0.6:
            self.snapshot()  # a stream with nothing to stream is rarer
            return
        chain = drive.chain()
        inner = [n for n in chain[1:] if n.name and n.backing]
        if inner and rng.random() < 0.15:
            node = rng.choice(inner)  # stream into an intermediate node: needs a job id
            args: dict[str, Any] = {"device": node.name}
            job_id, explicit = f"job{self.number('job')}", True
        else:
            node = drive.root
            args = {"device": self.root_ref(drive)}
            job_id, explicit = self.job_id(drive)
        if explicit:
            args["job-id"] = job_id
        below = chain[chain.index(node) + 1 :]
        named = [n for n in below if n.name]
        base: Node | None = None
        if named and rng.random() < 0.5:
            base = rng.choice(named)
            args["base-node"] = base.name

        def finish(outcome: str) -> None:
            if outcome == "complete":
                if node is not drive.root:
                    self.m.reopened(node)
                node.backing = base

        job = self.new_job(job_id, "stream", drive, args, filter=node is drive.root)
        job.finish = finish
        self.emit(execute("block-stream", args), True, "stream")
        self.started(job)

    # --- held jobs ----------------------------------------------------------------------

    def hold_step(self) -> None:
        job = self.hold
        assert job is not None
        if job.actions >= 5 or self.rng.random() < 0.3:
            self.end_hold()
            return
        job.actions += 1
        on, state = self.on, job.state
        other = [d for d in self.m.drives if d is not job.drive]
        live = state != "concluded"
        can_query = state != "ready" or not job.wrote
        busy = job.bitmap is not None and job.bitmap.busy
        # An active commit copies writes made while READY into the base in the background,
        # dirtying the base's bitmaps whenever it gets to them: leave bitmaps alone then.
        bitmaps = on("bitmap") and not (job.kind == "commit" and job.wrote)
        self.weighted(
            [
                (3 * can_query, self.hold_query),
                (3 * on("invalid"), self.wrong_verb),
                (2 * on("invalid") * live, self.conflicting_job),
                (3 * bitmaps * busy, self.busy_bitmap_op),
                (3 * bitmaps, self.bitmap_add),
                (1 * bitmaps, self.bitmap_toggle),
                (1 * bitmaps, self.bitmap_sha256),
                (1 * bitmaps, lambda: self.bitmap_op("clear")),
                (3 * on("io"), lambda: self.io(job.drive)),
                (1 * on("io") * bool(other), lambda: self.io(self.rng.choice(other))),
                (1 * on("snapshot") * bool(other) * live, self.snapshot),
                (1 * bitmaps * on("transaction") * live, lambda: txn.bitmap_transaction(self)),
                (1 * (state in ("running", "ready")), self.set_speed),
                (1 * (state == "ready" and not job.drained), self.pause_resume),
            ]
        )

    def hold_query(self) -> None:
        job = self.hold
        assert job is not None
        # query-block-jobs shows `busy`, which a READY mirror flips each time it wakes up.
        if job.state == "ready" or self.rng.random() < 0.5:
            self.emit(execute("query-jobs"), True)
        else:
            self.emit(execute("query-block-jobs"), True)

    def verb(self, verb: str, job_id: str, **extra: Any) -> Step:
        """One job verb, in its job-* or block-job-* spelling."""
        block = self.rng.random() < 0.5
        if verb == "set-speed":
            return execute("block-job-set-speed", {"device": job_id, **extra})
        if verb in ("finalize", "dismiss"):
            return execute(f"block-job-{verb}" if block else f"job-{verb}", {"id": job_id})
        if block or extra:
            return execute(f"block-job-{verb}", {"device": job_id, **extra})
        return execute(f"job-{verb}", {"id": job_id})

    def wrong_verb(self) -> None:
        job = self.hold
        assert job is not None
        verb = self.rng.choice(WRONG_VERBS[job.state])
        extra = {"speed": self.rng.choice((0, MiB))} if verb == "set-speed" else {}
        if job.state in ("running", "ready") and self.rng.random() < 0.2:
            verb, extra = "set-speed", {"speed": -1}
        self.emit(self.verb(verb, job.id, **extra), False, "invalid")

    def set_speed(self) -> None:
        job = self.hold
        assert job is not None
        speed = self.rng.choice((MiB, 4 * MiB, 64 * MiB, 0))
        self.emit(execute("block-job-set-speed", {"device": job.id, "speed": speed}), True)

    def pause_resume(self) -> None:
        """Pause a READY job (standby) and resume it, each followed by its status change."""
        job = self.hold
        assert job is not None
        self.emit(self.verb("pause", job.id), True)
        self.emit(wait_for("JOB_STATUS_CHANGE", id=job.id, status="standby"), "event")
        if self.on("invalid") and self.rng.random() < 0.3:
            self.emit(self.verb("pause", job.id), False, "invalid")  # Job is already paused
        if not job.wrote and self.rng.random() < 0.3:
            self.emit(execute("query-jobs"), True)
        self.emit(self.verb("resume", job.id), True)
        self.emit(wait_for("JOB_STATUS_CHANGE", id=job.id, status="ready"), "event")

    def busy_bitmap_op(self) -> None:
        """Everything that would change a bitmap frozen by a backup is refused."""
        job = self.hold
        assert job is not None and job.bitmap is not None
        bitmap = job.bitmap
        node = next((n for n in self.m.nodes() if bitmap in n.bitmaps), None)
        if node is None or node.name is None:
            return
        rng = self.rng
        op = rng.choice(("remove", "clear", "enable", "disable", "merge", "merge-src", "sha256"))
        args: dict[str, Any]
        if op == "sha256":
            args = {"node": node.name, "name": bitmap.name}
            self.emit(execute("x-debug-block-dirty-bitmap-sha256", args), True, "bitmap")
        elif op == "merge":
            args = {
                "node": node.name,
                "target": bitmap.name,
                "bitmaps": self.merge_sources(node, bitmap),
            }
            self.emit(execute("block-dirty-bitmap-merge", args), False, "bitmap", "invalid")
        elif op == "merge-src":
            others = [b for b in node.bitmaps if not b.busy and b.readonly is False]
            if others:
                target = rng.choice(others).name
                args = {"node": node.name, "target": target, "bitmaps": [bitmap.name]}
                self.emit(execute("block-dirty-bitmap-merge", args), False, "bitmap", "invalid")
        else:
            args = {"node": node.name, "name": bitmap.name}
            self.emit(execute(f"block-dirty-bitmap-{op}", args), False, "bitmap", "invalid")

    def conflicting_job(self) -> None:
        """A second job, or a snapshot, on the held drive: refused (busy / not a root)."""
        job = self.hold
        assert job is not None
        drive, rng = job.drive, self.rng
        new_id = f"job{self.number('job')}"
        kinds = ["backup", "mirror", "stream"]
        if job.kind != "stream":
            kinds.append("snapshot")  # a snapshot goes above a stream's filter
        if job.kind != "commit":
            kinds.append("commit")
        kind = rng.choice(kinds)
        if kind == "backup":
            args = {"device": drive.id, "target": self.file("bad"), "format": "qcow2"}
            args.update({"sync": "full", "job-id": new_id})
            self.emit(execute("drive-backup", args), False, "invalid")
        elif kind == "mirror":
            args = {"device": drive.id, "target": self.file("bad"), "format": "qcow2"}
            args.update({"sync": "full", "job-id": new_id})
            self.emit(execute("drive-mirror", args), False, "invalid")
        elif kind == "stream":
            self.emit(
                execute("block-stream", {"device": drive.id, "job-id": new_id}), False, "invalid"
            )
        elif kind == "commit":
            self.emit(
                execute("block-commit", {"device": drive.id, "job-id": new_id}), False, "invalid"
            )
        else:
            args = {"device": drive.id, "snapshot-file": self.file(f"{drive.id}-ov")}
            args.update({"snapshot-node-name": f"ov{self.number('ov')}", "format": "qcow2"})
            self.emit(execute("blockdev-snapshot-sync", args), False, "invalid")

    def end_hold(self) -> None:
        job = self.hold
        assert job is not None
        rng = self.rng
        if job.state == "concluded":
            self.emit(self.verb("dismiss", job.id), True)
            self.hold = None
            self.gone(job)
        elif job.state == "running":  # a sync=none backup: only a cancel ends it
            extra = {"force": True} if rng.random() < 0.3 else {}
            self.emit(self.verb("cancel", job.id, **extra), True)
            self.emit(wait_for("BLOCK_JOB_CANCELLED", device=job.id), "event")
            self.finished(job, "cancel")
        elif job.state == "pending":
            if rng.random() < 0.75:
                self.emit(self.verb("finalize", job.id), True)
                self.emit(wait_for("BLOCK_JOB_COMPLETED", device=job.id), "event")
                self.finished(job, job.outcome)
            else:
                self.emit(execute("job-cancel", {"id": job.id}), True)
                self.emit(wait_for("BLOCK_JOB_CANCELLED", device=job.id), "event")
                self.finished(job, "cancel")
        else:  # ready
            r = rng.random()
            # A forced cancel does not wait for the copy of guest writes made while READY:
            # its BLOCK_JOB_CANCELLED offset would depend on timing.  Complete and a soft
            # cancel first bring the target in sync.
            if r < 0.25 and not job.wrote:
                if rng.random() < 0.5:
                    self.emit(execute("job-cancel", {"id": job.id}), True)
                else:
                    self.emit(execute("block-job-cancel", {"device": job.id, "force": True}), True)
                self.emit(wait_for("BLOCK_JOB_CANCELLED", device=job.id), "event")
                self.finished(job, "cancel")
                return
            if r < 0.45:
                outcome = "soft"  # cancel after READY: COMPLETED, without the pivot
                self.emit(execute("block-job-cancel", {"device": job.id}), True)
            else:
                outcome = "complete"
                self.emit(self.verb("complete", job.id), True)
            if job.auto_finalize:
                self.emit(wait_for("BLOCK_JOB_COMPLETED", device=job.id), "event")
                self.finished(job, outcome)
            else:
                self.emit(wait_for("BLOCK_JOB_PENDING", id=job.id), "event")
                job.state, job.outcome, job.actions = "pending", outcome, 0
