"""Transactions for `tracegen`: groups of bitmap actions, a snapshot with bitmap
actions around it, a drive-backup / blockdev-backup with the bitmap action it
needs, and a pair of backups (one that finishes, one ``sync: none``).

Every transaction is first tried on a copy of the model; only one QEMU will
accept is sent as valid, and is then replayed on the model.  Refused ones (an
abort action, a failing action that undoes the rest, grouped completion with
non-backup actions) leave the model alone.  Worth knowing: once a backup action
was prepared, the drive id names the backup's filter for the later actions of
the transaction (a bitmap-add of an existing name then succeeds, on the filter).
Never generated: two blockdev-snapshot-sync in one transaction, a merge with no
sources, a block-dirty-bitmap-enable action that fails (each crashes QEMU 7.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.fuzz.tracegen_model import (
    BITMAP_NAMES,
    GOOD_GRANULARITIES,
    Bitmap,
    Machine,
    Step,
    execute,
    wait_for,
)

if TYPE_CHECKING:
    from sim.fuzz.tracegen import Generator, _Job


def transaction(gen: Generator) -> None:
    on = gen.on
    gen.weighted(
        [
            (4 * on("bitmap"), lambda: bitmap_transaction(gen)),
            (3 * on("snapshot"), lambda: snapshot_transaction(gen)),
            (
                (4 + 3 * (len(gen.m.drives) > 1)) * on("backup") * gen.can_start_job(),
                lambda: backup_transaction(gen),
            ),
            (
                0.3,
                lambda: gen.emit(execute("transaction", {"actions": []}), True, "transaction"),
            ),
        ]
    )


def txn_bitmap_action(
    gen: Generator, t: Machine, kind: str, removed: list[Bitmap], node_ref: str | None = None
) -> Step | None:
    """One bitmap action valid on the trial machine `t` (and applied to it), or None."""
    rng = gen.rng
    if kind == "add":
        if node_ref is None:
            nodes = [(n, r) for n, r in gen.addressable(t) if n.driver != "file"]
            node_ref = rng.choice(rng.choice(nodes)[1])
        node = t.resolve(node_ref)
        names = [x for x in BITMAP_NAMES if node is not None and node.bitmap(x) is None]
        if not names:
            return None
        data: dict[str, Any] = {"node": node_ref, "name": rng.choice(names)}
        if rng.random() < 0.3:
            data["granularity"] = rng.choice(GOOD_GRANULARITIES)
        ok = t.add_bitmap(node_ref, data["name"], data.get("granularity"))
        return {"type": "block-dirty-bitmap-add", "data": data} if ok else None
    if kind == "merge":
        found = gen.bitmap_refs(lambda n, b: not b.busy and b.readonly is False, t)
        if not found:
            return None
        ref, node, bitmap = rng.choice(found)
        sources = gen.merge_sources(node, bitmap, t)
        ok = t.merge(ref, bitmap.name, sources)
        data = {"node": ref, "target": bitmap.name, "bitmaps": sources}
        return {"type": "block-dirty-bitmap-merge", "data": data} if ok else None
    found = gen.bitmap_refs(lambda n, b: not b.busy and b.readonly is False, t)
    if not found:
        return None
    ref, node, bitmap = rng.choice(found)
    ok = t.bitmap_op(kind, ref, bitmap.name, removed)
    data = {"node": ref, "name": bitmap.name}
    return {"type": f"block-dirty-bitmap-{kind}", "data": data} if ok else None


def apply_actions(gen: Generator, actions: list[Step]) -> None:
    """Replay the bitmap and snapshot actions of a successful transaction on the model."""
    removed: list[Bitmap] = []
    m = gen.m
    for action in actions:
        kind, data = action["type"], action["data"]
        if kind == "block-dirty-bitmap-add":
            m.add_bitmap(data["node"], data["name"], data.get("granularity"))
        elif kind == "block-dirty-bitmap-merge":
            m.merge(data["node"], data["target"], data["bitmaps"])
        elif kind.startswith("block-dirty-bitmap-"):
            m.bitmap_op(
                kind.removeprefix("block-dirty-bitmap-"), data["node"], data["name"], removed
            )
        elif kind == "blockdev-snapshot-sync":
            ref = data.get("device") or data["node-name"]
            drive = m.drive(ref) or m.drive_of(m.resolve(ref))  # type: ignore[arg-type]
            assert drive is not None
            m.snapshot(drive, data.get("snapshot-node-name"))
    m.finish_txn(removed)


def failing_action(gen: Generator, actions: list[Step]) -> Step:
    """An action QEMU certainly refuses (the whole transaction is then undone).

    Never the same bitmap-add again once a backup or snapshot action is in the
    transaction: from there on the drive id names the backup's filter or the new
    overlay, where a bitmap-add of an existing name succeeds.
    """
    adds = [a for a in actions if a["type"] == "block-dirty-bitmap-add"]
    if any(
        a["type"] in ("drive-backup", "blockdev-backup", "blockdev-snapshot-sync") for a in actions
    ):
        adds = []
    r = gen.rng.random()
    if adds and r < 0.4:
        return dict(gen.rng.choice(adds))  # the same add again: Bitmap already exists
    if r < 0.7:
        drive = gen.rng.choice(gen.m.drives)
        return {"type": "block-dirty-bitmap-remove", "data": {"node": drive.id, "name": "nope"}}
    return {"type": "abort", "data": {}}


def bitmap_transaction(gen: Generator) -> None:
    t = gen.m.copy()
    removed: list[Bitmap] = []
    kinds = ("add", "add", "remove", "clear", "enable", "disable", "merge", "merge")
    actions = []
    for _ in range(gen.rng.randint(1, 4)):
        action = txn_bitmap_action(gen, t, gen.rng.choice(kinds), removed)
        if action is not None:
            actions.append(action)
    if not actions:
        return
    args: dict[str, Any] = {"actions": actions}
    if gen.on("invalid") and gen.rng.random() < 0.3:
        # A refused enable action crashes QEMU 7.2 when the transaction is undone.
        enables = any(a["type"] == "block-dirty-bitmap-enable" for a in actions)
        if not enables and gen.rng.random() < 0.2:
            args["properties"] = {"completion-mode": "grouped"}
        else:
            actions.insert(gen.rng.randint(1, len(actions)), failing_action(gen, actions))
        gen.emit(execute("transaction", args), False, "transaction", "bitmap", "invalid")
        return
    gen.emit(execute("transaction", args), True, "transaction", "bitmap")
    apply_actions(gen, actions)


def snapshot_transaction(gen: Generator) -> None:
    drives = [d for d in gen.free_drives() if d.filter is None]
    if not drives:
        return
    rng = gen.rng
    drive = rng.choice(drives)
    t = gen.m.copy()
    removed: list[Bitmap] = []
    actions = []
    for _ in range(rng.choice((0, 0, 1, 2))):
        kind = rng.choice(("add", "disable", "clear", "merge"))
        action = txn_bitmap_action(gen, t, kind, removed)
        if action is not None:
            actions.append(action)
    args, name = gen.snapshot_args(drive)
    actions.append({"type": "blockdev-snapshot-sync", "data": args})
    t_drive = t.drive(drive.id)
    assert t_drive is not None
    t.snapshot(t_drive, name)
    for _ in range(rng.choice((0, 1, 1, 2))):
        action = txn_bitmap_action(gen, t, "add", removed, drive.id)
        if action is not None:
            actions.append(action)
    areas = ["transaction", "snapshot"] + ["bitmap"] * (len(actions) > 1)
    if gen.on("invalid") and rng.random() < 0.25:
        if rng.random() < 0.5:
            taken = [n.name for n in gen.m.nodes() if n.name] + [d.id for d in gen.m.drives]
            args["snapshot-node-name"] = rng.choice(taken)
        else:
            actions.append(failing_action(gen, actions))
        gen.emit(execute("transaction", {"actions": actions}), False, *areas, "invalid")
        return
    gen.emit(execute("transaction", {"actions": actions}), True, *areas)
    apply_actions(gen, actions)


def backup_pair(gen: Generator) -> None:
    """Two backups in one transaction, one per drive: one that finishes and one
    ``sync: none`` that runs until cancelled.  (Two backups that both finish end in
    an order QEMU does not fix.)  Grouped: the first waits for the second in
    ``waiting``; cancelling the second cancels both.  Individual: the first
    completes, the second is then held like any sync=none backup."""
    rng = gen.rng
    first, second = rng.sample(gen.m.drives, 2)
    jobs: list[_Job] = []
    actions: list[dict[str, Any]] = []
    for drive, none in ((first, False), (second, True)):
        data: dict[str, Any] = {"device": gen.root_ref(drive), "target": gen.file("bk")}
        data["format"] = "qcow2"
        job_id, explicit = gen.job_id(drive)
        if explicit or (jobs and jobs[0].id == job_id):
            job_id = f"job{gen.number('job')}"
            data["job-id"] = job_id
        sync, bitmap = ({"sync": "none"}, None) if none else gen.backup_sync(drive.root)
        if sync["sync"] == "none" and not none:
            sync = {"sync": "full"}
        data.update(sync)
        jobs.append(gen.new_job(job_id, "backup", drive, data, bitmap, hold=False))
        actions.append({"type": "drive-backup", "data": data})
    if rng.random() < 0.5:
        actions.reverse()
    grouped = rng.random() < 0.5
    args: dict[str, Any] = {"actions": actions}
    if grouped:
        args["properties"] = {"completion-mode": "grouped"}
    gen.emit(execute("transaction", args), True, "transaction", "backup")
    done, running = jobs
    for job in jobs:
        gen.attach(job)
    if not grouped:
        gen.emit(wait_for("BLOCK_JOB_COMPLETED", device=done.id), "event")
        gen.finished(done, "complete")  # auto-dismiss: no hold
        gen.hold = running
        return
    gen.emit(wait_for("JOB_STATUS_CHANGE", id=done.id, status="waiting"), "event")
    if rng.random() < 0.5:
        gen.emit(execute("query-jobs"), True)
    gen.emit(gen.verb("cancel", running.id), True)
    gen.emit(wait_for("BLOCK_JOB_CANCELLED", device=running.id), "event")
    gen.emit(wait_for("BLOCK_JOB_CANCELLED", device=done.id), "event")
    gen.finished(running, "cancel")
    gen.finished(done, "cancel")


def backup_transaction(gen: Generator) -> None:
    """A drive-backup inside a transaction, maybe with the bitmap action it needs."""
    rng = gen.rng
    if len(gen.m.drives) > 1 and rng.random() < 0.6:
        backup_pair(gen)
        return
    drive = rng.choice(gen.m.drives)
    ref = gen.root_ref(drive)
    t = gen.m.copy()
    actions: list[Step] = []
    root = t.resolve(ref)
    assert root is not None
    usable = gen.usable_bitmaps(root)
    data: dict[str, Any] = {"device": ref, "target": gen.file("bk"), "format": "qcow2"}
    # completion-mode grouped takes backup actions only: no bitmap action with it
    grouped = rng.random() < 0.3
    variants = ("incremental", "plain") if grouped else ("anchor", "anchor-inc", "clear")
    variant = rng.choice(variants + ("incremental", "plain"))
    bitmap_name = None
    if variant.startswith("anchor") or (variant == "clear" and not usable):
        action = txn_bitmap_action(gen, t, "add", [], drive.id)
        if action is None:
            return
        actions.append(action)
        bitmap_name = action["data"]["name"]
        data["sync"] = "incremental" if variant == "anchor-inc" else "full"
        if variant == "anchor-inc":
            data["bitmap"] = bitmap_name
    elif variant == "clear":
        bitmap_name = rng.choice(usable).name
        actions.append(
            {"type": "block-dirty-bitmap-clear", "data": {"node": ref, "name": bitmap_name}}
        )
        data["sync"] = "full"
    elif variant == "incremental" and usable:
        bitmap_name = rng.choice(usable).name
        data.update({"sync": rng.choice(("incremental", "bitmap")), "bitmap": bitmap_name})
        if data["sync"] == "bitmap":
            data["bitmap-mode"] = rng.choice(("on-success", "always", "never"))
    else:
        data["sync"] = "full" if root.writable_below() else rng.choice(("full", "top"))
    job_id, explicit = gen.job_id(drive)
    if explicit:
        data["job-id"] = job_id
    kind = "drive-backup"
    targets = gen.backup_targets(drive.root)
    if targets and rng.random() < 0.3:
        kind = "blockdev-backup"  # onto another drive's root or a blockdev-add'ed node
        del data["format"]
        data["target"] = rng.choice(targets)[0]
    job = gen.new_job(job_id, "backup", drive, data)
    actions.append({"type": kind, "data": data})
    args: dict[str, Any] = {"actions": actions}
    if grouped:
        args["properties"] = {"completion-mode": "grouped"}
    before = actions[:-1]
    after: list[Step] = []
    if not grouped and gen.on("bitmap") and rng.random() < 0.2:
        # Lands on the backup's filter (drive0 names it from here on): gone with the job.
        names = [b.name for b in root.bitmaps] or list(BITMAP_NAMES)
        after.append(
            {
                "type": "block-dirty-bitmap-add",
                "data": {"node": drive.id, "name": rng.choice(names)},
            }
        )
        actions.extend(after)
    areas = ("transaction", "backup") + ("bitmap",) * (len(actions) > 1)
    if gen.on("invalid") and rng.random() < 0.2:
        actions.append(failing_action(gen, actions))
        gen.m.jobs.pop(job_id)
        gen.emit(execute("transaction", args), False, *areas, "invalid")
        return
    gen.emit(execute("transaction", args), True, *areas)
    apply_actions(gen, before)
    # The job's bitmap is the model's object, which exists only after the replay.
    if "bitmap" in data:
        node = gen.m.resolve(ref)
        job.bitmap = node.bitmap(data["bitmap"]) if node is not None else None
        if job.bitmap is not None:
            job.bitmap.busy = True
    gen.attach(job)
    apply_actions(gen, after)
    if data["sync"] != "top" and kind == "drive-backup":
        job.target_file = (data["target"], "qcow2", drive.size)
    gen.started(job)
