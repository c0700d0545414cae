"""Commands QEMU 7.2 certainly refuses, for `tracegen`'s ``invalid`` area.

Each one fails for a reason that does not depend on timing (unknown names,
argument errors, bad sync/bitmap combinations, busy or read-only bitmaps, ...)
and changes nothing, so the model is left as it is.  Bitmap commands are checked
against a copy of the model and only sent if it agrees that QEMU refuses them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sim.fuzz.tracegen_model import (
    BAD_GRANULARITIES,
    BITMAP_NAMES,
    GOOD_GRANULARITIES,
    Drive,
    Machine,
    MiB,
    Node,
    Step,
    execute,
)

if TYPE_CHECKING:
    from sim.fuzz.tracegen import Generator


def invalid(gen: Generator) -> None:
    on = gen.on
    gen.weighted(
        [
            (4, lambda: bad_bitmap_add(gen)),
            (4, lambda: bad_bitmap_op(gen)),
            (2, lambda: bad_merge(gen)),
            (1, lambda: bad_sha256(gen)),
            (1.5, lambda: readonly_bitmap_op(gen)),
            (2 * on("snapshot"), lambda: bad_snapshot(gen)),
            (2.5 * on("backup"), lambda: bad_drive_backup(gen)),
            (0.7 * on("backup"), lambda: bad_blockdev_backup(gen)),
            (0.4 * on("backup"), lambda: bad_blockdev_del(gen)),
            (1.2 * on("mirror"), lambda: bad_mirror(gen)),
            (1.2 * on("commit"), lambda: bad_commit(gen)),
            (1 * on("stream"), lambda: bad_stream(gen)),
            (2, lambda: bad_job_verb(gen)),
            (1.2, lambda: bad_qapi(gen)),
            (0.6 * on("io"), lambda: bad_qemu_io(gen)),
            (0.8 * on("transaction"), lambda: bad_transaction(gen)),
        ]
    )


def refused(gen: Generator, step: Step, check: Callable[[Machine], bool | None]) -> None:
    """Emit `step` if the model (on a copy) says QEMU refuses it."""
    if check(gen.m.copy()) is False:
        gen.emit(step, False, "invalid")


def some_root(gen: Generator) -> tuple[Drive, str]:
    drive = gen.rng.choice(gen.m.drives)
    return drive, gen.root_ref(drive)


def bad_bitmap_add(gen: Generator) -> None:
    rng = gen.rng
    drive, ref = some_root(gen)
    name = rng.choice(BITMAP_NAMES)
    args: dict[str, Any] = {"node": ref, "name": name}
    kind = rng.choice(("dup", "dup", "gran", "gran", "empty", "nonode", "persist", "long"))
    existing = gen.bitmap_refs(lambda n, b: True)
    if kind == "dup" and existing:
        ref, _, bitmap = rng.choice(existing)
        args = {"node": ref, "name": bitmap.name}
        if rng.random() < 0.4:
            args["granularity"] = rng.choice(GOOD_GRANULARITIES)
    elif kind == "empty":
        args["name"] = ""
    elif kind == "nonode":
        args["node"] = rng.choice(("nonode", "drive9", "", "fmt9"))
    elif kind == "long":
        args["name"] = "long-" + "x" * rng.choice((1019, 1030))
    elif kind == "persist":
        files = [n for n in gen.m.nodes() if n.driver == "file" and n.name]
        raws = [d.id for d in gen.m.drives if not gen.m.resolve(d.id).can_persist]  # type: ignore[union-attr]
        targets = [n.name for n in files] + raws
        if not targets:
            return
        args = {"node": rng.choice(targets), "name": name, "persistent": True}
    else:
        args["granularity"] = rng.choice(BAD_GRANULARITIES)
    step = execute("block-dirty-bitmap-add", args)
    refused(
        gen,
        step,
        lambda m: m.add_bitmap(
            args["node"], args["name"], args.get("granularity"), args.get("persistent", False)
        ),
    )


def missing_name(gen: Generator, node: Node | None) -> str:
    names = [n for n in (*BITMAP_NAMES, "nope") if node is None or node.bitmap(n) is None]
    return gen.rng.choice(names)


def bad_bitmap_op(gen: Generator) -> None:
    rng = gen.rng
    op = rng.choice(("remove", "clear", "enable", "disable"))
    if rng.random() < 0.2:
        args = {"node": rng.choice(("nonode", "drive9", "")), "name": rng.choice(BITMAP_NAMES)}
    else:
        node, refs = rng.choice(gen.addressable())
        args = {"node": rng.choice(refs), "name": missing_name(gen, node)}
    step = execute(f"block-dirty-bitmap-{op}", args)
    refused(gen, step, lambda m: m.bitmap_op(op, args["node"], args["name"]))


def bad_merge(gen: Generator) -> None:
    rng = gen.rng
    existing = gen.bitmap_refs(lambda n, b: not b.busy)
    kind = rng.choice(("target", "source", "source-node", "size"))
    args: dict[str, Any]
    if kind == "target" or not existing:
        node, refs = rng.choice(gen.addressable())
        ref = rng.choice(refs)
        args = {
            "node": ref,
            "target": missing_name(gen, node),
            "bitmaps": [rng.choice(BITMAP_NAMES)],
        }
    else:
        ref, node, bitmap = rng.choice(existing)
        sources = gen.merge_sources(node, bitmap)
        if kind == "source":
            bad: Any = missing_name(gen, node)
        elif kind == "source-node":
            bad = {"node": rng.choice(("nonode", "drive9")), "name": bitmap.name}
        else:
            other = gen.bitmap_refs(lambda n, b: n.size != node.size)
            if not other:
                return
            oref, _, obm = rng.choice(other)
            bad = {"node": oref, "name": obm.name}
        sources.insert(rng.randint(0, len(sources)), bad)
        args = {"node": ref, "target": bitmap.name, "bitmaps": sources}
    step = execute("block-dirty-bitmap-merge", args)
    refused(gen, step, lambda m: m.merge(args["node"], args["target"], args["bitmaps"]))


def bad_sha256(gen: Generator) -> None:
    node, refs = gen.rng.choice(gen.addressable())
    args = {"node": gen.rng.choice(refs), "name": missing_name(gen, node)}
    gen.emit(execute("x-debug-block-dirty-bitmap-sha256", args), False, "invalid")


def readonly_bitmap_op(gen: Generator) -> None:
    """A persistent bitmap on a backing node is read-only: no remove, clear, merge into."""
    found = gen.bitmap_refs(lambda n, b: b.readonly is True and not b.busy)
    if not found:
        return
    ref, node, bitmap = gen.rng.choice(found)
    op = gen.rng.choice(("remove", "clear", "merge"))
    if op == "merge":
        args: dict[str, Any] = {"node": ref, "target": bitmap.name, "bitmaps": [bitmap.name]}
        gen.emit(execute("block-dirty-bitmap-merge", args), False, "bitmap", "invalid")
    else:
        args = {"node": ref, "name": bitmap.name}
        gen.emit(execute(f"block-dirty-bitmap-{op}", args), False, "bitmap", "invalid")


def bad_snapshot(gen: Generator) -> None:
    rng = gen.rng
    drive, _ = some_root(gen)
    args: dict[str, Any] = {"device": drive.id, "snapshot-file": gen.file(f"{drive.id}-ov")}
    kind = rng.choice(("taken", "taken", "missing-name", "backing", "nodev"))
    backing = [n for n in drive.chain()[1:] if n.name]
    if kind == "taken":
        taken = [n.name for n in gen.m.nodes() if n.name] + [d.id for d in gen.m.drives]
        args["snapshot-node-name"] = rng.choice(taken)
    elif kind == "missing-name" and drive.root.name:
        args = {"node-name": drive.root.name, "snapshot-file": args["snapshot-file"]}
    elif kind == "backing" and backing:
        args = {"node-name": rng.choice(backing).name, "snapshot-file": args["snapshot-file"]}
        args["snapshot-node-name"] = f"ov{gen.number('ov')}"
    else:
        args["device"] = rng.choice(("nodev", "drive9"))
        args["snapshot-node-name"] = f"ov{gen.number('ov')}"
    args["format"] = "qcow2"
    gen.emit(execute("blockdev-snapshot-sync", args), False, "invalid")


def bad_drive_backup(gen: Generator) -> None:
    rng = gen.rng
    drive, ref = some_root(gen)
    args: dict[str, Any] = {"device": ref, "target": gen.file("bad"), "format": "qcow2"}
    bitmaps = [b.name for b in gen.m.resolve(drive.id).bitmaps]  # type: ignore[union-attr]
    kind = rng.choice(("nodev", "A", "B", "C", "D", "F", "G", "H", "jobid"))
    if kind in ("D", "F", "G") and not bitmaps:
        kind = "C"
    if kind == "nodev":
        args.update({"device": "nodev", "sync": "full"})
    elif kind == "A":
        args["sync"] = rng.choice(("incremental", "bitmap"))
    elif kind == "B":
        args.update({"sync": "incremental", "bitmap": rng.choice([*bitmaps, "nope"])})
        args["bitmap-mode"] = rng.choice(("never", "always"))
    elif kind == "C":
        args.update({"sync": rng.choice(("incremental", "bitmap")), "bitmap": "nope"})
        if args["sync"] == "bitmap":
            args["bitmap-mode"] = "on-success"
    elif kind == "D":
        args.update({"sync": "bitmap", "bitmap": rng.choice(bitmaps)})
    elif kind == "F":
        args.update({"sync": "none", "bitmap": rng.choice(bitmaps), "bitmap-mode": "on-success"})
    elif kind == "G":
        args.update({"sync": rng.choice(("full", "top")), "bitmap": rng.choice(bitmaps)})
        args["bitmap-mode"] = "never"
    elif kind == "H":
        args.update({"sync": "full", "bitmap-mode": rng.choice(("on-success", "always"))})
    else:
        args.update({"sync": "full", "job-id": rng.choice(("0bad", "a b", "-x"))})
    if kind != "jobid":
        args["job-id"] = "bad"
    gen.emit(execute("drive-backup", args), False, "invalid")


def bad_blockdev_backup(gen: Generator) -> None:
    rng = gen.rng
    drive, ref = some_root(gen)
    args: dict[str, Any] = {"device": ref, "target": "nonode", "sync": "full", "job-id": "bad"}
    kind = rng.choice(("target", "same", "size", "nodev"))
    if kind == "same" and drive.root.name:
        args["target"] = drive.root.name
    elif kind == "size":
        other = [d for d in gen.m.drives if d.size != drive.size and d.root.name]
        if other:
            args["target"] = rng.choice(other).root.name
    elif kind == "nodev":
        args.update({"device": "nodev", "target": drive.id})
    gen.emit(execute("blockdev-backup", args), False, "invalid")


def bad_blockdev_del(gen: Generator) -> None:
    names = [n.name for n in gen.m.nodes() if n.name and not n.owned] + ["nonode"]
    gen.emit(execute("blockdev-del", {"node-name": gen.rng.choice(names)}), False, "invalid")


def bad_mirror(gen: Generator) -> None:
    rng = gen.rng
    drive, ref = some_root(gen)
    args: dict[str, Any] = {"device": ref, "target": gen.file("bad"), "format": "qcow2"}
    args["sync"] = "full"
    kind = rng.choice(("nodev", "sync", "granularity", "backing", "node-name", "jobid"))
    backing = [n.name for n in drive.chain()[1:] if n.name]
    if kind == "sync":
        args["sync"] = rng.choice(("incremental", "bitmap"))
    elif kind == "granularity":
        args["granularity"] = rng.choice((1000, 256, 196608, 128 * MiB))
    elif kind == "backing" and backing:
        args["device"] = rng.choice(backing)
    elif kind == "node-name":
        taken = [n.name for n in gen.m.nodes() if n.name]
        args["node-name"] = rng.choice(taken)
    elif kind == "jobid":
        args["job-id"] = rng.choice(("0bad", "a b"))
    else:
        args["device"] = "nodev"
    args.setdefault("job-id", "bad")
    gen.emit(execute("drive-mirror", args), False, "invalid")


def bad_commit(gen: Generator) -> None:
    rng = gen.rng
    drive, ref = some_root(gen)
    chain = drive.chain()
    named = [n for n in chain if n.name]
    args: dict[str, Any] = {"device": ref, "job-id": "bad"}
    kind = rng.choice(("nodev", "self", "same", "foreign", "unknown", "backing", "above"))
    if kind == "self" and drive.root.backing is None:
        pass  # nothing below the root: cannot commit an image into itself
    elif kind == "same" and named:
        node = rng.choice(named).name
        args.update({"top-node": node, "base-node": node})
    elif kind == "foreign" and len(gen.m.drives) > 1 and drive.root.backing is not None:
        other = [n.name for d in gen.m.drives if d is not drive for n in d.chain() if n.name]
        if not other:
            return
        args["base-node"] = rng.choice(other)
    elif kind == "unknown":
        args[rng.choice(("top-node", "base-node"))] = "nonode"
    elif kind == "backing" and len(named) > 1 and named[0] is chain[0]:
        args["device"] = rng.choice(named[1:]).name
    elif kind == "above" and len(chain) > 2 and all(n.name for n in chain[:3]):
        args.update({"top-node": chain[2].name, "base-node": chain[1].name})
    else:
        args["device"] = "nodev"
    gen.emit(execute("block-commit", args), False, "invalid")


def bad_stream(gen: Generator) -> None:
    rng = gen.rng
    drive, ref = some_root(gen)
    args: dict[str, Any] = {"device": ref}
    kind = rng.choice(("nodev", "self", "unknown", "noid", "jobid"))
    backing = [n.name for n in drive.chain()[1:] if n.name]
    if kind == "self" and drive.root.name:
        args["base-node"] = drive.root.name
    elif kind == "unknown":
        args["base-node"] = "nonode"
    elif kind == "noid" and backing:
        gen.emit(execute("block-stream", {"device": rng.choice(backing)}), False, "invalid")
        return
    elif kind == "jobid":
        args["job-id"] = rng.choice(("0bad", "a b"))
    else:
        args["device"] = "nodev"
    args.setdefault("job-id", "bad")
    gen.emit(execute("block-stream", args), False, "invalid")


def bad_job_verb(gen: Generator) -> None:
    rng = gen.rng
    gone = [f"job{i}" for i in range(1, gen.numbers.get("job", 0) + 1)]
    job_id = rng.choice(["nojob", "nojob", *gone])
    if job_id in gen.m.jobs:
        return
    verb = rng.choice(("cancel", "complete", "finalize", "dismiss", "pause", "resume", "set-speed"))
    extra = {"speed": 0} if verb == "set-speed" else {}
    gen.emit(gen.verb(verb, job_id, **extra), False, "invalid")


def bad_qapi(gen: Generator) -> None:
    """Argument errors caught by QMP's input visitor before the command runs."""
    rng = gen.rng
    drive, ref = some_root(gen)
    steps = [
        execute("block-dirty-bitmap-add", {"node": ref}),
        execute("block-dirty-bitmap-add", {"node": ref, "name": "b0", "granularity": "64k"}),
        execute("block-dirty-bitmap-add", {"node": ref, "name": "b0", "granularity": 1 << 32}),
        execute("block-dirty-bitmap-add", {"node": ref, "name": "b0", "frequency": 1}),
        execute("block-dirty-bitmap-merge", {"node": ref, "target": "b0", "bitmaps": [5]}),
        execute("block-dirty-bitmap-clear", {"name": "b0"}),
        execute("drive-backup", {"device": ref, "target": gen.file("bad"), "sync": "fast"}),
        execute("drive-backup", {"device": ref, "target": gen.file("bad")}),
        execute("drive-mirror", {"device": ref, "target": gen.file("bad"), "sync": "full",
                               "filter-node-name": "f0"}),
        execute("block-commit", {"device": ref, "speed": -1}),
        execute("job-cancel", {}),
        execute("block-dirty-bitmap-frobnicate", {"node": ref, "name": "b0"}),
        execute("transaction", {"actions": [{"type": "frobnicate", "data": {}}]}),
    ]  # fmt: skip
    gen.emit(rng.choice(steps), False, "invalid")


def bad_qemu_io(gen: Generator) -> None:
    rng = gen.rng
    drive = rng.choice(gen.m.drives)
    backing = [n.name for n in drive.chain()[1:] if n.name]
    kind = rng.choice(("nodev", "readonly", "verb", "number"))
    line, ref = "write -P 0x11 0 64k", drive.id
    if kind == "readonly" and backing:
        ref = rng.choice(backing)
    elif kind == "verb":
        line = "frobnicate 0 64k"
    elif kind == "number":
        line = "write 0 abc"
    else:
        ref = "nodrive"
    step = execute("human-monitor-command", {"command-line": f'qemu-io {ref} "{line}"'})
    gen.emit(step, True, "io", "invalid")


def bad_transaction(gen: Generator) -> None:
    rng = gen.rng
    drive, ref = some_root(gen)
    kind = rng.choice(("abort", "grouped", "dup-add"))
    add = {"type": "block-dirty-bitmap-add", "data": {"node": ref, "name": "t0"}}
    if kind == "abort":
        actions = [add, {"type": "abort", "data": {}}]
        args: dict[str, Any] = {"actions": actions[rng.randint(0, 1) :]}
    elif kind == "grouped":
        args = {"actions": [add], "properties": {"completion-mode": "grouped"}}
    else:
        if gen.m.resolve(ref).bitmap("t0") is not None:  # type: ignore[union-attr]
            return
        args = {"actions": [add, add]}
    gen.emit(execute("transaction", args), False, "transaction", "invalid")
