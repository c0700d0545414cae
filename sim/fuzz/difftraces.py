"""Differential traces drawn from the fuzzer's own rules.

Theory of operation.  `DifferentialMachine` is the fuzz state machine
(`BlockMachine`: the same rules, the same argument builders, the same live
names) restricted to steps whose answer on real QEMU 7.2 does not depend on
timing, so that every trace it draws can be diffed against the real binary:

- no `advance`, no sim-only steps (`workload`, `fault`), no free `wait`s;
- after every step, each job that is still moving is waited for until it
  holds still (`settle`): READY (a mirror or an active commit), pending
  (``auto-finalize: false``), concluded (``auto-dismiss: false``), paused by
  the user, or running as a ``sync: none`` backup (which copies only before
  guest writes, synchronously);
- a job started with a rate limit is at once either given ``speed: 0`` or
  cancelled (both take effect at once in QEMU);
- before guest I/O that would move a held job (a write, discard or flush
  through the drive a READY mirror, commit or paused job copies from), that
  job is ended first (complete, or cancel) and waited for; I/O into a job's
  target node is left as drawn (QEMU refuses it: permissions);
- before any guest I/O a pending mirror or active commit is finalized (QEMU
  7.2 keeps its source drained until then: the I/O would never complete);
- a transaction starts at most one job;
- a concluded stream job is dismissed at once (QEMU 7.2 crashes in
  query-named-block-nodes while one is kept);
- queries are always on (`query` in every swarm).

Checkers are off: the verdict is QEMU's answer, not an invariant.
`draw_traces(n, seed)` runs Hypothesis over the machine and returns the
traces of `n` examples (header dict first, then the steps), each a function
of `seed` and its index.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test, rule

from sim.fuzz.choices import Choices, choices, group
from sim.fuzz.machine import BlockMachine
from sim.fuzz.rules_graph import TRANSACTION_ACTIONS
from sim.fuzz.rules_jobs import event_match, expected_events
from sim.model.job_backup import BackupKind
from sim.model.job_mirror import MirrorKind
from sim.model.jobs import Job
from sim.replay import StepOutcome

# Commands that start a job (directly, or as a transaction action).
JOB_STARTS = frozenset(
    {"drive-backup", "blockdev-backup", "drive-mirror", "blockdev-mirror", "block-commit",
     "block-stream"}
)  # fmt: skip
HELD = frozenset({"ready", "standby", "pending", "concluded"})
SLOW = 1 << 20  # the one rate limit kept (bytes/s): a backup sleeps ~1 s after its first 1 MiB
MAX_SETTLE = 12  # waits one settle may add (a job passes READY, PENDING, then its end)
DRAW_ROUND = 50  # examples per Hypothesis run: trace i is example i % 50 of round i // 50
BUF_SIZES = (65536, 1 << 20, 16 << 20)
ERROR_POLICIES = ("report", "ignore", "stop", "enospc")
GROUPS = (
    "bitmap", "io", "snapshot", "blockdev", "backup", "mirror", "commit", "stream", "verbs",
    "transaction", "query", "invalid",
)  # fmt: skip


def is_still(job: Job) -> bool:
    """True when `job` makes no progress on its own: its answers do not depend on timing."""
    if job.status in ("pending", "concluded"):
        return True
    if job.cancelled or getattr(job, "completion_requested", False):
        return False  # on its way to its end
    if job.status in HELD:
        return True
    if job.status == "paused" and job.user_paused:
        return True
    return job.status == "running" and not job.kind.ends_by_itself() and (not job.cancelled)


class DifferentialMachine(BlockMachine):
    """The fuzz machine restricted to timing-independent steps (see the module docstring)."""

    checks: ClassVar[tuple[str, ...] | None] = ()
    groups: ClassVar[tuple[str, ...]] = GROUPS
    name: ClassVar[str] = "differential"
    collected: ClassVar[list[list[dict[str, Any]]]] = []

    def __init__(self) -> None:
        super().__init__()
        self._settling = False

    # -- rules the differential mode leaves out (plain methods: no longer rules) -----------
    def advance(self, seconds: float) -> None:  # type: ignore[override]
        raise AssertionError("not a rule in differential mode")

    def wait(self, c: Choices) -> None:  # type: ignore[override]
        raise AssertionError("not a rule in differential mode")

    # -- swarm: queries always on ------------------------------------------------------------
    def open(self, drives: list[dict[str, Any]], seed: int) -> None:
        self.enabled = self.enabled | {"query"}
        super().open(drives, seed)
        self.header.pop("invariants", None)

    # -- steps -----------------------------------------------------------------------------
    def run(self, step: dict[str, Any]) -> StepOutcome:
        if self._settling:
            return super().run(step)
        if step.get("execute") == "human-monitor-command":
            self.before_io(str(step.get("arguments", {}).get("command-line", "")))
        before = {j.id for j in self.machine.state.jobs}
        outcome = super().run(self.sanitize(step))
        self._settling = True
        try:
            self.rate_limits(before)
            self.settle()
        finally:
            self._settling = False
        return outcome

    def job_start_args(self, c: Choices, args: dict[str, Any]) -> None:
        """As the fuzzer's, but the only rate limit kept is 1 MiB/s (on a backup, see
        `sanitize`): with a faster one, how far the job got by the next command races."""
        super().job_start_args(c, args)
        speed = args.get("speed")
        if isinstance(speed, int) and speed > 0 and speed != SLOW:
            del args["speed"]

    # -- every argument of the job commands and of blockdev-add ---------------------------
    def mirror_args(self, c: Choices, drive: bool) -> dict[str, Any]:
        """The fuzzer's mirror arguments plus buf-size, the error policies, unmap,
        filter-node-name (blockdev-mirror) and replaces (with drive-mirror's node-name)."""
        args = super().mirror_args(c, drive)
        if c.rarely(5):
            args["buf-size"] = self.pick(c, BUF_SIZES, (-1,))
        if c.rarely(5):
            args["on-source-error"] = c.pick(ERROR_POLICIES)
        if c.rarely(5):
            args["on-target-error"] = c.pick(ERROR_POLICIES)
        if c.rarely(6):
            args["unmap"] = c.boolean()
        if not drive and c.rarely(5):
            args["filter-node-name"] = self.fresh("flt")
        if c.rarely(8):
            if drive:
                args["node-name"] = self.fresh("mn")
            g = self.machine.state.graph
            root = g.lookup_bs(str(args["device"]))
            own = [root.node_name] if root is not None and not root.auto_named else []
            args["replaces"] = self.pick(c, own, ("nosuch", *self.node_names()))
        return args

    def backup_args(self, c: Choices, drive: bool) -> dict[str, Any]:
        """The fuzzer's backup arguments plus compress and filter-node-name."""
        args = super().backup_args(c, drive)
        if c.rarely(6):
            args["compress"] = True
        if c.rarely(5):
            args["filter-node-name"] = self.fresh("flt")
        return args

    def base_args(self, c: Choices, args: dict[str, Any], keys: tuple[str, ...]) -> None:
        """The fuzzer's top/base choice; for block-stream sometimes `bottom` instead of a
        base, for both sometimes a `backing-file` (the base's file, or another image)
        and a `filter-node-name`."""
        chain = self.chain_nodes(str(args["device"]))
        if keys == ("base-node",) and len(chain) >= 2 and c.rarely(4):
            args["bottom"] = self.pick(c, chain[1:], ("nosuch",))
        else:
            super().base_args(c, args, keys)
        if c.rarely(4):
            g = self.machine.state.graph
            base = g.node(str(args.get("base-node", "")))
            bottom = g.node(str(args.get("bottom", "")))
            if base is None and bottom is not None:
                base = bottom.backing
            named = [base.image.filename] if base is not None and base.image is not None else []
            # another name only for an image that has no backing file and is not in
            # the device's chain: a header naming its own file, or a file whose chain
            # leads back to it, is a loop qemu-img follows without end
            top = g.lookup_bs(str(args["device"]))
            own = (
                {n.image.filename for n in g.backing_chain(top) if n.image is not None}
                if (top is not None)
                else set()
            )
            others = tuple(
                name
                for name, image in g.images.items()
                if name not in own and image.backing_file is None
            )
            args["backing-file"] = self.pick(c, named, others)
        if c.rarely(5):
            args["filter-node-name"] = self.fresh("flt")

    def blockdev_add_args(self, c: Choices) -> dict[str, Any]:
        """The fuzzer's blockdev-add plus, for a qcow2 node, read-only and an explicit
        `backing` (a named format node)."""
        args = super().blockdev_add_args(c)
        if args.get("driver") != "qcow2":
            return args
        if c.rarely(4):
            args["read-only"] = True
        if "backing" not in args and c.rarely(4):
            formats = [
                n.node_name
                for n in self.machine.state.graph.nodes
                if n.is_format and not n.auto_named
            ]
            args["backing"] = self.pick(c, formats, ("nosuch",))
        return args

    @staticmethod
    def sanitize(step: dict[str, Any]) -> dict[str, Any]:
        """No rate limit but on a backup: a mirror, commit or stream may have sent its
        events before the next command lifts the limit.  No query-commands: the
        simulator lists only the commands it models (a known difference)."""
        command = step.get("execute")
        if command == "query-commands":  # lists the modelled commands only (README)
            step["execute"] = "query-block-jobs"
            step.pop("arguments", None)
            return step
        args = step.get("arguments")
        if not isinstance(args, dict) or command in ("drive-backup", "blockdev-backup"):
            return step
        if command in JOB_STARTS and isinstance(args.get("speed"), int) and args["speed"] > 0:
            del args["speed"]
        return step

    def rate_limits(self, before: set[str]) -> None:
        """A job just started with a rate limit: lift it or cancel it at once."""
        for job in list(self.machine.state.jobs):
            if job.id in before or not job.speed or job.status in HELD:
                continue
            if self._counter % 2:
                self.qmp("block-job-set-speed", {"device": job.id, "speed": 0})
            else:
                self.qmp("block-job-cancel", {"device": job.id})

    def settle(self) -> None:
        """Wait for every moving job until it holds still (or ends)."""
        from hypothesis import reject

        for _ in range(MAX_SETTLE):
            moving = [j for j in self.machine.state.jobs if not is_still(j)]
            if not moving:
                for job in list(self.machine.state.jobs):
                    if job.type == "stream" and job.status == "concluded":
                        # QEMU 7.2 crashes in query-named-block-nodes while a concluded
                        # stream job is kept: dismiss it at once
                        self.run({"execute": "job-dismiss", "arguments": {"id": job.id}})
                return
            job = moving[0]
            if job.user_paused and job.status != "paused":
                self.run({"wait": {"event": "JOB_STATUS_CHANGE", "data": {"id": job.id}}})
                continue
            events = expected_events(job)
            if not events:
                reject()  # nothing will move it: not a trace QEMU answers deterministically
            self.run({"wait": {"event": events[0], "data": event_match(events[0], job.id)}})
        reject()

    def before_io(self, command_line: str) -> None:
        """Finalize pending mirrors; end the held jobs a guest write would move (all but
        writes into a job's target)."""
        parts = command_line.split(None, 2)
        if len(parts) < 3 or parts[0] != "qemu-io":
            return
        self.end_held_jobs(parts[1], parts[2])
        self.finalize_mirrors()  # including the ones ending held jobs just made pending

    def end_held_jobs(self, target: str, io: str) -> None:
        """End the held jobs a guest write to `target` would move."""
        sub = io.strip('"').split()
        if not sub or sub[0] == "read":
            return
        targets = {self.target_name(j) for j in self.machine.state.jobs}
        if target in targets:
            return  # a side write into a job's target: QEMU refuses it (permissions)
        self._settling = True
        try:
            for job in list(self.machine.state.jobs):
                if job.status in ("pending", "concluded"):
                    continue
                if job.user_paused:
                    self.qmp("job-resume", {"id": job.id})
                if job.status in ("ready", "standby") and not job.cancelled:
                    self.qmp("job-complete", {"id": job.id})
                elif job.status not in ("pending", "concluded"):
                    self.qmp("job-cancel", {"id": job.id})
                self.settle()
        finally:
            self._settling = False

    def finalize_mirrors(self) -> None:
        """Finalize every pending mirror and active commit: QEMU 7.2 keeps such a job's
        source drained from the end of its run until it is finalized (mirror_run,
        mirror_exit_common), so guest I/O through the source or a node above it waits
        for ever, and holds the monitor with it."""
        pending = [
            j
            for j in self.machine.state.jobs
            if j.status == "pending" and isinstance(j.kind, MirrorKind)
        ]
        if not pending:
            return
        self._settling = True
        try:
            for job in pending:
                if job.status == "pending":  # a transaction's jobs finalize together
                    self.qmp("job-finalize", {"id": job.id})
            self.settle()
        finally:
            self._settling = False

    def bitmap_addresses(self) -> list[tuple[str, str]]:
        """The fuzzer's bitmap addresses without auto-generated node names: QEMU numbers
        its `#blockNNN` names with its own counter, so such a name reaches no node there."""
        g = self.machine.state.graph
        auto = {n.node_name for n in g.nodes if n.auto_named}
        return [(node, name) for node, name in super().bitmap_addresses() if node not in auto]

    def has_bitmaps(self) -> bool:
        """Is there a bitmap this draw may name (the rules that need one pick from
        `bitmap_addresses`, which leaves out auto-generated node names)?"""
        return bool(self.bitmap_addresses())

    def io_nodes(self) -> list[str]:
        """Every named node: QEMU's permission conflicts are part of what is compared."""
        return self.node_names()

    def target_name(self, job: Job) -> str:
        kind = job.kind
        target = kind.target if isinstance(kind, BackupKind | MirrorKind) else None
        return str(target.node_name or "") if target is not None else ""

    # -- transactions: at most one job -------------------------------------------------------
    @group("transaction")
    @rule(c=choices(64))
    def transaction(self, c: Choices) -> None:
        count = c.between(0 if self.invalid else 1, 3)
        actions, jobs = [], 0
        for _ in range(count):
            kind = c.pick(TRANSACTION_ACTIONS)
            if kind in ("drive-backup", "blockdev-backup"):
                jobs += 1
            if (kind == "abort" and not self.invalid) or (kind.endswith("backup") and jobs > 1):
                kind = "block-dirty-bitmap-add"
            data = self.action_args(c, kind)
            if kind == "block-dirty-bitmap-enable" and (
                (data.get("node"), data.get("name")) not in self.bitmap_addresses()
            ):
                kind = "block-dirty-bitmap-disable"  # a failing enable action kills QEMU 7.2
            actions.append({"type": kind, "data": data})
        args: dict[str, Any] = {"actions": actions}
        if c.rarely(4):
            args["properties"] = {"completion-mode": c.pick(("individual", "grouped"))}
        self.qmp("transaction", args)

    # -- the end of an example: keep its trace ------------------------------------------------
    def teardown(self) -> None:
        import sys

        if self.replayer is not None and sys.exc_info()[0] is None and self.steps:
            self.collected.append([dict(self.header), *self.steps])
        super().teardown()


def draw_traces(count: int, seed: int, steps: int = 20, first: int = 0) -> list[list[dict]]:
    """Traces `first` .. `first + count - 1` of the differential draw with `seed`.

    Trace i is example i % DRAW_ROUND of the Hypothesis run seeded by
    (`seed`, i // DRAW_ROUND), so a campaign can be cut into chunks and
    resumed.  Each trace is the header dict, then the step dicts (no
    expects).  Rounds whose examples were all rejected give fewer traces.
    """
    out: list[list[dict]] = []
    round_number = first // DRAW_ROUND
    skip = first % DRAW_ROUND
    while len(out) < count:
        batch = _draw_round(seed, round_number, steps)
        out.extend(batch[skip:][: count - len(out)])
        skip = 0
        round_number += 1
    for index, trace in enumerate(out, start=first):
        trace[0] = dict(trace[0], name=f"difftrace-{seed}-{index}")
    return out


def _draw_round(seed: int, number: int, steps: int) -> list[list[dict]]:
    import hashlib

    digest = hashlib.sha256(f"blocksim-differential:{seed}:{number}".encode()).digest()
    collected: list[list[dict[str, Any]]] = []
    cls: type[RuleBasedStateMachine] = type(
        f"DifferentialMachine_{number}",
        (DifferentialMachine,),
        {
            "collected": collected,
            "_hypothesis_internal_use_seed": int.from_bytes(digest[:8], "big"),
        },
    )
    test = get_state_machine_test(  # type: ignore[no-untyped-call]
        cls,
        settings=settings(
            max_examples=DRAW_ROUND,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.generate,),
            print_blob=False,
            verbosity=Verbosity.quiet,
        ),
    )
    try:
        test()
    except Unsatisfiable:
        pass
    return collected[:DRAW_ROUND]


__all__ = ["DifferentialMachine", "draw_traces", "is_still"]
