"""What a real-QEMU runner changes in, or refuses of, a trace step before sending it.

Two jobs, both pure:

- `place_files`: traces name image files bare (``ov0.qcow2``); on real QEMU
  they must land in the runner's scratch folder, so those names become
  absolute paths (trace-format.md, "File names inside a trace").
- `refusal`: steps a real QEMU cannot or must not run.  Sim-only steps
  (`workload`, `fault`), broken lines, and inputs that crash QEMU 7.2
  (each listed in `crash_reason`, verified on the binary): refusing them keeps one bad step
  from killing the whole run.
"""

from __future__ import annotations

import os
from typing import Any

from sim.trace import SIM_ONLY_KINDS, Step

# Which argument holds a bare file name, per command (QEMU 7.2 qapi/block-core.json).
_FILE_ARGS = {
    "blockdev-snapshot-sync": ("snapshot-file",),
    "drive-backup": ("target",),
    "drive-mirror": ("target",),
    "change-backing-file": ("backing-file",),
    "block-stream": ("backing-file",),
    "block-commit": ("backing-file",),
}


def place_files(command: str, arguments: Any, scratch_dir: str) -> Any:
    """`arguments` of `command` with bare file names moved into `scratch_dir`.

    Covers `snapshot-file` of blockdev-snapshot-sync, `target` of
    drive-backup/drive-mirror, `backing-file` of change-backing-file,
    block-stream and block-commit, every `filename` inside blockdev-add,
    blockdev-create and blockdev-reopen, `backing-file` of blockdev-create's
    qcow2 options, and the
    same inside the actions of a `transaction`.  Absolute paths and values of
    the wrong type are left alone (QEMU reports those).  Returns a new value.
    """
    if not isinstance(arguments, dict):
        return arguments
    if command in ("blockdev-add", "blockdev-reopen"):
        return _place_filenames(arguments, scratch_dir)
    if command == "blockdev-create":
        return _place_filenames(arguments, scratch_dir, ("filename", "backing-file"))
    if command == "transaction" and isinstance(arguments.get("actions"), list):
        actions = [_place_action(a, scratch_dir) for a in arguments["actions"]]
        return {**arguments, "actions": actions}
    out = dict(arguments)
    for key in _FILE_ARGS.get(command, ()):
        if key in out:
            out[key] = _in_scratch(out[key], scratch_dir)
    return out


def _place_action(action: Any, scratch_dir: str) -> Any:
    if not isinstance(action, dict) or not isinstance(action.get("type"), str):
        return action
    if "data" not in action:
        return action
    return {**action, "data": place_files(action["type"], action["data"], scratch_dir)}


def _place_filenames(value: Any, scratch_dir: str, keys: tuple[str, ...] = ("filename",)) -> Any:
    if isinstance(value, dict):
        return {
            k: _in_scratch(v, scratch_dir) if k in keys else _place_filenames(v, scratch_dir, keys)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_place_filenames(v, scratch_dir, keys) for v in value]
    return value


def _in_scratch(name: Any, scratch_dir: str) -> Any:
    # a name with a protocol prefix (json:{...}, null-co://) is not a file name to QEMU
    # (path_has_protocol): the files a json:{...} name holds are found from QEMU's
    # working directory, which is the scratch folder
    if not isinstance(name, str) or not name or os.path.isabs(name) or _has_protocol(name):
        return name
    return os.path.join(scratch_dir, name)


def _has_protocol(name: str) -> bool:
    """QEMU's path_has_protocol (POSIX): a ':' comes before any '/'."""
    cut = min((i for i in (name.find(":"), name.find("/")) if i >= 0), default=-1)
    return cut >= 0 and name[cut] == ":"


def refusal(step: Step) -> str | None:
    """Why a real-QEMU runner must not run `step`, or None when it can.

    The message names the trace line, the value at fault and what to do.
    """
    if step.kind == "bad":
        return str(step.error) if step.error else f"line {step.line}: unusable step"
    if step.kind in SIM_ONLY_KINDS:
        return (
            f"line {step.line}: {step.kind!r} steps are simulator-only; a real-QEMU runner "
            f"cannot run them (drive guest I/O with human-monitor-command qemu-io instead)"
        )
    if step.kind != "execute":
        return None
    if step.body.get("execute") == "quit":
        return (
            f"line {step.line}: refusing 'quit': the runner reads the final state and "
            "quits QEMU itself after the last step; remove the quit step"
        )
    reason = crash_reason(step.body.get("execute"), step.body.get("arguments"))
    return f"line {step.line}: {reason}" if reason else None


def crash_reason(command: Any, arguments: Any) -> str | None:
    """Why sending this command would crash QEMU 7.2, or None (each case verified on the binary)."""
    if not isinstance(arguments, dict):
        return None
    if command == "block-dirty-bitmap-merge" and arguments.get("bitmaps") == []:
        return (
            'refusing block-dirty-bitmap-merge with "bitmaps": []: it crashes QEMU 7.2 '
            "(SIGSEGV); give at least one source bitmap"
        )
    if command != "transaction" or not isinstance(arguments.get("actions"), list):
        return None
    actions = [a for a in arguments["actions"] if isinstance(a, dict)]
    for index, action in enumerate(actions):
        data = action.get("data")
        if action.get("type") == "block-dirty-bitmap-merge" and isinstance(data, dict):
            if data.get("bitmaps") == []:
                return (
                    f'refusing transaction action {index} (block-dirty-bitmap-merge) with "bitmaps": '
                    "[]: it crashes QEMU 7.2 (SIGSEGV); give at least one source bitmap"
                )
    snapshots = [a for a in actions if a.get("type") == "blockdev-snapshot-sync"]
    if len(snapshots) > 1:
        # Two snapshots of one device in one transaction abort QEMU 7.2 when the
        # second fails (bdrv_do_drained_end assertion).  Which device a name
        # resolves to depends on the graph at that moment, so refuse them all.
        return (
            f"refusing a transaction with {len(snapshots)} blockdev-snapshot-sync actions: "
            "QEMU 7.2 aborts (bdrv_do_drained_end assertion) when a second snapshot of the "
            "same device fails; use one transaction per snapshot"
        )
    return None
