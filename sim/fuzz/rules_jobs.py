"""Fuzz rules for block jobs, time, workloads and faults.

Groups `backup`, `mirror`, `commit`, `stream`, `verbs`, `wait`, `time`
(always on), `workload` and `fault`.  Jobs get fresh ids (`job3`); waits
are drawn among the events a job can still emit given its state (see
`expected_events`), so few examples are lost to a wait that can never be
satisfied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from sim.fuzz.choices import Choices, choices, group
from sim.model.job_mirror import MirrorKind
from sim.model.jobs import JOB_VERBS as VERB_TABLE

if TYPE_CHECKING:
    from sim.fuzz.machine import MachineCore as _Base
    from sim.model.jobs import Job
else:
    _Base = object

KiB = 1 << 10
MiB = 1 << 20
# rate limits: slow enough for a job to still run a few steps later, fast enough to end
SPEEDS = (1 * MiB, 16 * MiB, 256 * MiB)
# weighted: a sync=none backup (fleecing) runs until cancelled and keeps its device busy
PLAIN_SYNCS = ("full", "full", "top", "none")
BITMAP_SYNCS = ("incremental", "bitmap", "full", "bitmap", "top", "none")
BITMAP_MODES = ("on-success", "never", "always")
MIRROR_SYNCS = ("full", "top", "none")
JOB_VERBS = ("cancel", "pause", "resume", "complete", "finalize", "dismiss")
SMALL_ADVANCES = (0.0005, 0.005, 0.05)
LARGE_ADVANCES = (0.5, 5.0, 60.0)
WORKLOAD_PATTERNS = ("sequential", "uniform", "zipf", "burst")
# race points (sim-only `until` steps), weighted towards the middle of a job
RACE_POINTS = ("progress",) * 4 + ("chunk", "before-ready", "ready", "ending")
# what lands while a job runs (weighted): guest writes, job verbs, snapshots, bitmap
# commands, transactions, blockdev-del of a node the job uses
LANDINGS = ("write",) * 3 + ("verb", "snapshot", "bitmap") + ("transaction",) * 2 + ("del",)
RACE_KINDS = ("backup", "mirror", "stream", "commit")
# data a race_job writes before its job starts (capped at the disk size)
RACE_DATA = (8 * MiB, 32 * MiB, 64 * MiB, 64 * MiB)


class JobRules(_Base):
    """drive/blockdev-backup, drive/blockdev-mirror, block-commit, block-stream, job verbs,
    waits, advances, workloads and faults."""

    # -- argument builders -----------------------------------------------------------------
    def job_start_args(self, c: Choices, args: dict[str, Any]) -> None:
        """job-id, speed and the auto-* flags every job-starting command takes."""
        if not c.rarely(8):
            args["job-id"] = self.pick(c, [self.fresh("job")], [*self.job_ids(), "1bad"])
        if c.rarely(4):
            args["speed"] = self.pick(c, SPEEDS, (-1,))
        if c.rarely(4):
            args["auto-finalize"] = False
        if c.rarely(4):
            args["auto-dismiss"] = False

    def device_bitmaps(self, name: str) -> list[str]:
        """Names of the bitmaps a backup of `name` (device or node) can use."""
        return [b for a, b in self.bitmap_addresses() if a == name]

    def job_device(self, c: Choices) -> str:
        """A job's `device`: mostly a device, sometimes a node-name."""
        if not c.rarely(6):
            return self.pick(c, self.devices(), ("nosuch",))
        return self.pick(c, self.targets(), ("nosuch",))

    def target_node(self, c: Choices, sink_ok: bool) -> str:
        """A free node for blockdev-backup/mirror, adding one first if there is none:
        a qcow2 node over an image nobody has open, else (`sink_ok`: a backup) null-co.
        A mirror never gets a null-co target it would add itself: the device would
        read zeroes after the pivot, a data loss the checkers rightly report."""
        free = self.free_nodes(sinks=sink_ok or self.invalid)
        if not free and not (self.invalid and c.rarely(4)):
            name, images = self.fresh("tgt"), self.free_images()
            if images:
                file = {"driver": "file", "filename": c.pick(images)}
                self.qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": file})
            elif sink_ok:
                self.qmp("blockdev-add", {"driver": "null-co", "node-name": name, "size": 64 * MiB})
            free = self.free_nodes(sinks=sink_ok or self.invalid)
        return self.pick(c, free, ("nosuch",))

    def backup_args(self, c: Choices, drive: bool) -> dict[str, Any]:
        args: dict[str, Any] = {"device": self.job_device(c)}
        self.job_start_args(c, args)
        own = self.device_bitmaps(str(args["device"]))
        sync = c.pick(BITMAP_SYNCS if own or self.invalid else PLAIN_SYNCS)
        args["sync"] = sync
        if sync in ("incremental", "bitmap") or c.rarely(6):
            args["bitmap"] = self.pick(c, own, ("nosuch", *self.bitmap_names()))
            if sync == "bitmap" or c.rarely(4):
                args["bitmap-mode"] = c.pick(BITMAP_MODES)
        if drive:
            args["target"] = f"{self.fresh('bk')}.qcow2"
            args["format"] = "qcow2"
            images = self.image_files() if self.invalid else self.free_images()
            if c.rarely(6) and images:
                args["target"] = self.pick(c, images)  # an image in use only when invalid
                args["mode"] = "existing"
        else:
            args["target"] = self.target_node(c, sink_ok=True)
        return args

    def mirror_args(self, c: Choices, drive: bool) -> dict[str, Any]:
        args: dict[str, Any] = {"device": self.job_device(c)}
        self.job_start_args(c, args)
        args["sync"] = c.pick(MIRROR_SYNCS)
        if not drive and not self.invalid:
            # blockdev-mirror leaves the target's backing as it was opened (none, for the
            # nodes drawn here): sync=top/none would pivot the device onto a node without
            # the rest of its data, a data loss the checkers rightly report
            args["sync"] = "full"
        if drive:
            args["target"] = f"{self.fresh('mir')}.qcow2"
            args["format"] = "qcow2"
        else:
            args["target"] = self.target_node(c, sink_ok=False)
        if c.rarely(6):
            args["granularity"] = self.pick(c, (65536, 1 << 20), (1000,))
        if c.rarely(6):
            args["copy-mode"] = "write-blocking"
        return args

    def base_args(self, c: Choices, args: dict[str, Any], keys: tuple[str, ...]) -> None:
        """`top-node`/`base-node` from the device's backing chain, top first; half the
        time a `top-node` below the active layer (an intermediate commit)."""
        chain = self.chain_nodes(str(args["device"]))
        for key in keys:
            if key == "top-node" and len(chain) >= 3 and c.boolean():
                args[key] = self.pick(c, chain[1:-1], ("nosuch",))
            elif chain and c.rarely(3):
                args[key] = self.pick(c, chain, ("nosuch",))

    # -- job-starting rules ------------------------------------------------------------------
    @group("backup")
    @rule(c=choices(), drive=st.booleans())
    def backup(self, c: Choices, drive: bool) -> None:
        """drive-backup or blockdev-backup; one time in three QEMU 7.x fleecing instead,
        the backup without a job (iotest 222's image-fleecing): a copy-before-write filter
        and a snapshot-access node by blockdev-add, guest writes through the filter,
        reads of the view; of a fresh node with data (a node a drive writes to would
        need the drive moved onto the filter first: the view is refused once the guest
        wrote, and before that the drive's writes pass the filter by)."""
        if c.rarely(3):
            source = self.fleece_source(c)
            if source is not None:
                self.api_fleecing(c, source)
            return
        self.qmp("drive-backup" if drive else "blockdev-backup", self.backup_args(c, drive))

    @group("mirror")
    @rule(c=choices(), drive=st.booleans())
    def mirror(self, c: Choices, drive: bool) -> None:
        self.qmp("drive-mirror" if drive else "blockdev-mirror", self.mirror_args(c, drive))

    @group("commit")
    @rule(c=choices())
    def commit(self, c: Choices) -> None:
        args: dict[str, Any] = {"device": self.job_device(c)}
        self.job_start_args(c, args)
        self.base_args(c, args, ("top-node", "base-node"))
        self.qmp("block-commit", args)

    @group("stream")
    @rule(c=choices())
    def stream(self, c: Choices) -> None:
        args: dict[str, Any] = {"device": self.job_device(c)}
        self.job_start_args(c, args)
        self.base_args(c, args, ("base-node",))
        self.qmp("block-stream", args)

    # -- verbs -------------------------------------------------------------------------------
    @group("verbs")
    @precondition(lambda self: self.invalid or bool(self.machine.state.jobs))
    @rule(c=choices(), legacy=st.booleans())
    def job_verb(self, c: Choices, legacy: bool) -> None:
        """block-job-* (by device = job id) or job-* (by id) on a live job, mostly with a
        verb its state accepts (JobVerbTable), so jobs get completed and finalized."""
        jobs = self.machine.state.jobs
        job = self.pick(c, jobs) if jobs else None
        job_id = job.id if job is not None and not (self.invalid and c.rarely(8)) else "nosuch"
        verbs = [v for v in JOB_VERBS if job is not None and job.status in VERB_TABLE[v]]
        verb = c.pick(verbs) if verbs and not c.rarely(4) else c.pick(JOB_VERBS)
        if not legacy or verb in ("finalize", "dismiss"):
            self.qmp(f"{'block-job' if legacy else 'job'}-{verb}", {"id": job_id})
            return
        args: dict[str, Any] = {"device": job_id}
        if verb == "cancel" and c.rarely(2):
            args["force"] = c.boolean()
        if verb == "set-speed" or (verb == "pause" and c.rarely(3)):
            verb = "set-speed"
            args["speed"] = self.pick(c, (0, *SPEEDS), (-1,))
        self.qmp(f"block-job-{verb}", args)

    @precondition(lambda self: any(settle_verb(j) for j in self.machine.state.jobs))
    @rule(c=choices(4))
    def settle_job(self, c: Choices) -> None:
        """What management software does with a job that waits for it: complete a READY
        mirror or active commit, finalize a pending job, dismiss a concluded one, resume
        a paused one.  Always on (like time): a READY mirror nobody completes keeps its
        device busy and refuses every later job and snapshot there."""
        jobs = [j for j in self.machine.state.jobs if settle_verb(j)]
        job = c.pick(jobs)
        self.qmp(f"job-{settle_verb(job)}", {"id": job.id})

    # -- time ----------------------------------------------------------------------------------
    @rule(seconds=st.sampled_from(LARGE_ADVANCES + SMALL_ADVANCES))
    def advance(self, seconds: float) -> None:
        """Let time pass, long enough for a job to end (0.5 s and more) or only a few of
        its chunks (5 ms and less)."""
        self.run({"advance": seconds})

    @group("wait")
    @rule(c=choices())
    def wait(self, c: Choices) -> None:
        """Wait for an event a live job can still emit (any event, when invalid)."""
        options: list[tuple[str, dict[str, Any]]] = []
        for job in self.machine.state.jobs:
            options.extend((name, event_match(name, job.id)) for name in expected_events(job))
            if job.status not in ("concluded", "null"):
                options.append(("JOB_STATUS_CHANGE", {"id": job.id}))
        if not options:
            self.run({"advance": SMALL_ADVANCES[-1]})
            return
        event, match = self.pick(c, options)
        self.run({"wait": {"event": event, "data": match}})

    # -- races ---------------------------------------------------------------------------------
    @group("race")
    @precondition(
        lambda self: any(
            j.status in ("running", "ready") and not j.user_paused for j in self.machine.state.jobs
        )
    )
    @rule(c=choices(), decile=st.integers(0, 9))
    def race(self, c: Choices, decile: int) -> None:
        """Move time to a chosen point of a running job (a fraction of its length, its next
        chunk, just before or after READY, its end) and land a guest write, a verb, a
        snapshot, a bitmap command or a transaction right there."""
        jobs = [
            j
            for j in self.machine.state.jobs
            if j.status in ("running", "ready") and not j.user_paused
        ]
        job = c.pick(jobs)
        point = c.pick(RACE_POINTS)
        body: dict[str, Any] = {"job": job.id, "point": point}
        if point == "progress":
            body["fraction"] = round((decile + c.below(10) / 10) / 10, 2)
        self.run({"until": body})
        landing = None
        if c.rarely(5) and job.status in ("running", "ready") and not job.user_paused:
            self.qmp("job-pause", {"id": job.id})  # the landing then meets a paused job
            # half the time a verb: a paused (or, paused in READY, standby) job is where
            # pause, set-speed, cancel and complete meet a job the user stopped
            landing = "verb" if c.boolean() else None
        self.land(c, job.id, landing)

    @group("race")
    @precondition(lambda self: not self.machine.state.jobs and bool(self.devices()))
    @rule(c=choices(64), decile=st.integers(0, 9), kind=st.sampled_from(RACE_KINDS))
    def race_job(self, c: Choices, decile: int, kind: str) -> None:
        """A job with work to do, and one to three commands landed while it runs: the
        progress dimension of races, set up as management software does it.

        Data first (most examples' disks are nearly empty, so their jobs end in a chunk
        or two), sometimes a checkpoint bitmap on the active layer (incremental backup
        bookkeeping, then the backup reads it); stream and commit get an overlay (commit
        sometimes two, to commit the middle layer); time then moves to a decile of the
        job and the landings follow at later points (some at READY, or just after the job
        left running: PENDING when auto-finalize is off, as libvirt runs jobs); two times
        in three the job is then run to its end (READY jobs completed, pending ones
        finalized) or cancelled (half the incremental backups, right after their first
        landing, a guest write, as iotest 257 does), so
        what the landings did meets the checkers' end-of-job comparisons."""
        # Hypothesis draws `kind` and `decile` far from evenly (a default campaign's races
        # were three in four backups, and its generated examples landed in 76 of the 160
        # progress deciles): the last two bytes of `c`, which the decisions below never
        # get to (they spend about 55 at most), spread them over the kinds and deciles
        kind = RACE_KINDS[(RACE_KINDS.index(kind) + c.values[-1]) % len(RACE_KINDS)]
        decile = (decile + c.values[-2]) % 10
        device = c.pick(self.devices())
        size = self.size_of(device)
        amount = min(c.pick(RACE_DATA), size)
        self.qemu_io(device, f"write -P {1 + c.below(250)} 0 {amount}")
        job_id = self.fresh("job")
        start: dict[str, Any] = {"job-id": job_id}
        if c.rarely(4):  # the job then waits in PENDING for job-finalize (libvirt's way)
            start |= {"auto-finalize": False, "auto-dismiss": False}
        # a mirror's pivot drops its source node with every bitmap on it: no checkpoint
        checkpoint = self.fresh("ck") if kind != "mirror" and c.boolean() else None
        reads_bitmap = False  # a backup of the checkpoint's changes (incremental)
        if kind in ("stream", "commit"):
            args: dict[str, Any] = {"device": device, **start}
            overlay = self.race_overlay(device)
            if kind == "commit":
                self.qemu_io(device, f"write -P {1 + c.below(250)} 0 {amount // 2}")
                if c.boolean():  # commit the middle of three layers (not the active one)
                    self.race_overlay(device)
                    self.qemu_io(device, f"write -P {1 + c.below(250)} {amount // 4} 1M")
                    args["top-node"] = overlay
            if checkpoint is not None:  # on the node that stays: the top, or commit's base
                chain = self.chain_nodes(device)
                node = chain[-1] if kind == "commit" and chain else self.top_node(device)
                self.qmp("block-dirty-bitmap-add", {"node": node, "name": checkpoint})
            self.qmp("block-stream" if kind == "stream" else "block-commit", args)
        else:
            if checkpoint is not None:
                self.qmp(
                    "block-dirty-bitmap-add", {"node": self.top_node(device), "name": checkpoint}
                )
                self.qemu_io(device, f"write -P {1 + c.below(250)} {amount // 4} {amount // 2}")
            target = {"target": f"{self.fresh('rt')}.qcow2", "format": "qcow2", "sync": "full"}
            if kind == "backup" and checkpoint is not None and not c.rarely(4):
                target |= {"sync": "incremental", "bitmap": checkpoint}
                if c.boolean():
                    target |= {"sync": "bitmap", "bitmap-mode": c.pick(BITMAP_MODES)}
            command = "drive-backup" if kind == "backup" else "drive-mirror"
            self.qmp(command, {"device": device, **start, **target})
            reads_bitmap = "bitmap" in target
        fraction = (decile + c.below(10) / 10) / 10
        # iotest 257 cancels half its incremental backups, right after the guest write
        # that the frozen bitmap's successor records (the cancel then merges it back)
        cancel = reads_bitmap and c.boolean()
        # a mirror's first landing is a guest write half the time, while it copies (behind
        # its position: what it copied already must be copied again)
        write_first = reads_bitmap or (kind == "mirror" and c.boolean())
        landed = False
        for _ in range(1 + c.below(3)):
            job = self.machine.state.find_job(job_id)
            if job is None or job.status not in ("running", "ready") or job.user_paused:
                break
            body: dict[str, Any] = {"job": job_id, "point": "progress"}
            early = False
            if write_first and not landed:  # the first write lands while it copies
                body["fraction"] = round(fraction, 2)
            elif c.rarely(6):  # just after it left running: PENDING, or before the pivot
                body["point"] = "ending"
            elif job.kind.has_ready and c.rarely(4):
                # copied all but not READY yet: a pivot asked for before BLOCK_JOB_READY
                # (management software that polls query-jobs instead of waiting for it)
                body["point"], early = "before-ready", True
            elif job.kind.has_ready and c.boolean():  # held in READY, as libvirt's blockcopy
                body["point"] = "ready"
            else:
                body["fraction"] = round(fraction, 2)
            self.run({"until": body})
            if early:
                self.qmp("job-complete", {"id": job_id})
            # iotest 257: a backup reading a bitmap first meets a guest write, which the
            # frozen bitmap's successor records; before a cancel, and half the time else,
            # outside what the checkpoint recorded before the backup (the middle half of
            # the data), so the successor holds bits the bitmap did not
            if reads_bitmap and not landed and (cancel or c.boolean()):
                offset = c.pick((0, amount // 8, amount * 7 // 8)) // (64 * KiB) * (64 * KiB)
                self.qemu_io(device, f"write -P {1 + c.below(250)} {offset} 64k")
            else:
                self.land(c, job_id, "write" if write_first and not landed else None)
            landed = True
            if cancel:
                break
            fraction += (1 - fraction) * c.between(1, 9) / 10
        if reads_bitmap or not c.rarely(3):
            cancel = cancel or (not reads_bitmap and c.rarely(4))
            self.finish_job(job_id, cancel, late_cancel="auto-dismiss" in start and c.boolean())

    def chain_bitmaps(self, device: str) -> list[tuple[str, str]]:
        """(node, name) of the bitmaps addressed by `device` or by a node of its chain."""
        names = {device, *self.chain_nodes(device)}
        return [a for a in self.bitmap_addresses() if a[0] in names]

    def top_node(self, device: str) -> str:
        """The node name of `device`'s active layer (below any job filter), as management
        software names the node of a checkpoint bitmap; the device when it has none."""
        chain = self.chain_nodes(device)
        return chain[0] if chain else device

    def race_overlay(self, device: str) -> str:
        """blockdev-snapshot-sync of `device` onto a new qcow2 overlay; its node name."""
        overlay = self.fresh("rov")
        args = {"device": device, "snapshot-file": f"{overlay}.qcow2", "format": "qcow2"}
        self.qmp("blockdev-snapshot-sync", {**args, "snapshot-node-name": overlay})
        return overlay

    def finish_job(self, job_id: str, cancel: bool = False, late_cancel: bool = False) -> None:
        """Run a job to its end as management software does: resume it if the user paused
        it, complete it once READY, finalize it if it waits for that, wait for its end;
        or (`cancel`) give up on it: job-cancel, then the same.  `late_cancel`: a cancel
        that arrives once the job has concluded, before the dismiss (a user's abort
        racing with the job's end; QEMU refuses it)."""
        job = self.machine.state.find_job(job_id)
        if cancel and job is not None and job.status in VERB_TABLE["cancel"]:
            self.qmp("job-cancel", {"id": job_id})
        for _ in range(5):
            job = self.machine.state.find_job(job_id)
            if job is None:
                return
            verb = settle_verb(job)
            if late_cancel and job.status == "concluded":
                self.qmp("job-cancel", {"id": job_id})
                late_cancel = False
            if verb in ("resume", "finalize", "dismiss") or (
                verb == "complete" and not job.completion_requested
            ):
                self.qmp(f"job-{verb}", {"id": job_id})
                continue
            events = expected_events(job)
            if not events:
                return
            self.run({"wait": {"event": events[0], "data": event_match(events[0], job_id)}})

    def land(self, c: Choices, job_id: str, landing: str | None = None) -> None:
        """One command that races with the job `job_id` (or with whatever runs): a
        `landing` of LANDINGS, drawn when not given."""
        landing = landing or c.pick(LANDINGS)
        job = next((j for j in self.machine.state.jobs if j.id == job_id), None)
        devices = self.devices()
        if not devices:
            reject()
        device = c.pick(devices)
        size = self.size_of(device)
        if landing == "verb" and job is not None:
            # mostly a verb the job's state accepts (JobVerbTable), sometimes any verb
            verbs = [v for v in (*JOB_VERBS, "set-speed") if job.status in VERB_TABLE[v]]
            verb = c.pick(verbs if verbs and not c.rarely(4) else (*JOB_VERBS, "set-speed"))
            if verb == "set-speed":
                self.qmp("block-job-set-speed", {"device": job_id, "speed": c.pick(SPEEDS)})
            else:
                self.qmp(f"job-{verb}", {"id": job_id})
        elif landing == "snapshot":
            args = {"device": device, "snapshot-file": f"{self.fresh('race')}.qcow2"}
            self.qmp("blockdev-snapshot-sync", {**args, "format": "qcow2"})
        elif landing == "del":  # blockdev-del of a node of the device's chain: in use
            self.qmp("blockdev-del", {"node-name": self.pick(c, self.chain_nodes(device))})
        elif landing == "bitmap":
            bitmaps = self.chain_bitmaps(device)
            if bitmaps and c.boolean():
                node, name = c.pick(bitmaps)
                self.qmp("block-dirty-bitmap-clear", {"node": node, "name": name})
            else:
                node = device if c.rarely(4) else self.top_node(device)
                self.qmp("block-dirty-bitmap-add", {"node": node, "name": self.fresh("rb")})
        elif landing == "transaction":
            self.qmp("transaction", {"actions": self.race_actions(c, device)})
        else:
            length = c.pick((4 * KiB, 64 * KiB, 1 * MiB))
            offset = self.race_offset(c, job, size, length)
            target = device
            if c.rarely(4):  # qemu-io by node name: below any filter the job put on top
                nodes = [n for n in self.io_nodes() if n in self.chain_nodes(device)]
                target = c.pick(nodes or [device])
            self.qemu_io(target, f"write -P {1 + c.below(250)} {offset} {length}")

    def race_offset(self, c: Choices, job: Job | None, size: int, length: int) -> int:
        """Where a landed guest write goes: just ahead of where the job has got to (what
        it copies next), just behind it (what it has copied), or anywhere; a mirror's
        mostly behind (what it must copy again), other jobs' mostly ahead (what a backup
        copies before the write, what a stream must not overwrite)."""
        mirror = job is not None and isinstance(job.kind, MirrorKind)
        where = c.pick(
            ("behind", "behind", "ahead", "anywhere")
            if mirror
            else ("ahead", "ahead", "behind", "anywhere")
        )
        if job is None or job.len <= 0 or where == "anywhere":
            offset = c.below(64) * MiB
        else:
            at = job.offset * size // job.len  # the job's position on the disk
            step = c.between(0, 7) * (512 * KiB)
            offset = at + step if where == "ahead" else at - step - length
        offset -= offset % (4 * KiB)
        return min(max(offset, 0), max(size - length, 0))

    def race_actions(self, c: Choices, device: str) -> list[dict[str, Any]]:
        """A transaction as management software sends one while a job runs: a new
        checkpoint bitmap, with an older one disabled (a checkpoint), a snapshot (an
        external snapshot with its bitmap) or a backup (a backup with its checkpoint);
        sometimes an abort action, so the whole transaction rolls back."""
        add = {"node": self.top_node(device), "name": self.fresh("rb")}
        actions: list[dict[str, Any]] = [{"type": "block-dirty-bitmap-add", "data": add}]
        extra = c.below(4)
        bitmaps = self.chain_bitmaps(device)
        if extra == 0 and bitmaps:
            node, name = c.pick(bitmaps)
            data = {"node": node, "name": name}
            actions.append({"type": "block-dirty-bitmap-disable", "data": data})
        elif extra == 1:
            args = {"device": device, "snapshot-file": f"{self.fresh('race')}.qcow2"}
            actions.append({"type": "blockdev-snapshot-sync", "data": {**args, "format": "qcow2"}})
        elif extra == 2:
            target = {"target": f"{self.fresh('rt')}.qcow2", "format": "qcow2", "sync": "full"}
            actions.append({"type": "drive-backup", "data": {"device": device, **target}})
        if c.rarely(4):
            actions.append({"type": "abort", "data": {}})
        return actions

    @group("race")
    @precondition(lambda self: bool(self.machine.state.jobs))
    @rule(seed=st.integers(0, 1 << 16))
    def tie_break(self, seed: int) -> None:
        """Draw the order of events due at the same instant (PCT-style priorities per job
        and for the guest), written into the trace so the replay is exact."""
        self.run({"tie-break": {"seed": seed}})

    # -- sim-only steps ------------------------------------------------------------------------
    @group("workload")
    @rule(
        c=choices(),
        pattern=st.sampled_from(WORKLOAD_PATTERNS),
        rate=st.sampled_from((20, 200)),
        size=st.sampled_from((4096, 65536)),
        duration=st.sampled_from((0.1, 1.0)),
        read_ratio=st.sampled_from((0, 0.5)),
        fill=st.integers(1, 255),
    )
    def workload(
        self,
        c: Choices,
        pattern: str,
        rate: int,
        size: int,
        duration: float,
        read_ratio: float,
        fill: int,
    ) -> None:
        """A guest issuing I/O in the background while time advances."""
        body: dict[str, Any] = {
            "device": self.pick(c, self.devices()),
            "pattern": pattern,
            "rate": rate,
            "size": size,
            "duration": duration,
            "read-ratio": read_ratio,
            "fill": fill,
        }
        self.run({"workload": body})

    @group("fault")
    @rule(
        c=choices(),
        op=st.sampled_from(("write", "read")),
        errno=st.sampled_from(("EIO", "ENOSPC")),
        chunk=st.integers(0, 63),
        length=st.sampled_from((64 * KiB, 1 * MiB, 16 * MiB)),
        count=st.sampled_from((1, 3, 1000)),
    )
    def fault(self, c: Choices, op: str, errno: str, chunk: int, length: int, count: int) -> None:
        """Arm an injected I/O error (blkdebug's inject-error) on a node of the graph."""
        node = self.pick(c, self.targets())
        offset = min(chunk * MiB, max(self.size_of(node) - 512, 0))
        body = {"node": node, "op": op, "errno": errno, "offset": offset, "length": length}
        body["count"] = count
        self.run({"fault": body})

    # provided by BlockApiRules (declared for the type checker)
    if TYPE_CHECKING:

        def api_fleecing(self, c: Choices, source: str | None = None) -> None: ...
        def fleece_source(self, c: Choices) -> str | None: ...


def settle_verb(job: Job) -> str | None:
    """The verb that moves a job on that waits for the user, if it waits."""
    if job.user_paused and job.status in ("paused", "standby", "ready", "running"):
        return "resume"
    return {"ready": "complete", "pending": "finalize", "concluded": "dismiss"}.get(job.status)


def event_match(event: str, job_id: str) -> dict[str, str]:
    """The `data` a wait for a job's event matches on: BLOCK_JOB_PENDING names the job
    by `id` (as JOB_STATUS_CHANGE does), the other BLOCK_JOB_* events by `device`."""
    return {"id": job_id} if event == "BLOCK_JOB_PENDING" else {"device": job_id}


def expected_events(job: Job) -> list[str]:
    """BLOCK_JOB_* events `job` can still emit without anyone acting on it."""
    if job.status in ("concluded", "null"):
        return []
    if job.status == "pending" or job.user_paused:
        return []
    if job.cancelled:
        return ["BLOCK_JOB_CANCELLED"]
    ends = ["BLOCK_JOB_COMPLETED"] if job.auto_finalize else ["BLOCK_JOB_PENDING"]
    has_ready = job.kind.has_ready
    if has_ready and not job.ready:
        return ["BLOCK_JOB_READY"]
    if has_ready and not job.completion_requested:
        return []  # a READY mirror waits for complete/cancel
    return ends
