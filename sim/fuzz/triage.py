"""Triage of fuzz failures: which ones a block developer needs to look at.

Every exported failure gets a *class*, listed here in the order a report
shows them (new first):

``new``
    nothing below explains it: look at it.
``artefact``
    a simulator artefact: real QEMU 7.2, given the same trace, answers some
    step before the violation differently, e.g. a job verb finds no job because
    QEMU's job ran to its end sooner (found by `triage_with_qemu`).
``refused-by-qemu``
    the trace needs a step real QEMU refuses while the simulator accepted it:
    under a policy without BdrvChild permissions (qemu-2.5) found at export
    time by replaying it with the model's permission rules on
    (`classify_refused`, sim/model/perms.py); under qemu-7.2 found by
    `triage_with_qemu`, and then a simulator bug in its permission rules.
    Also a step real QEMU 7.2 never completes (it hangs its monitor, crashes
    or aborts there), which the simulator answers with a warning saying so
    (`classify_qemu_stops`, at export time): e.g. qemu-io through a drive
    whose mirror waits to be finalized after job-complete, which QEMU keeps
    drained until then.
``expected``
    a known, documented consequence of the policy (`KNOWN`): e.g. under
    qemu-7.2 a bitmap added by device name stays on its node when a snapshot,
    mirror pivot or commit puts another node under the device, so the device
    name stops finding it (README "Bitmap-placement policies").

`classify_expected` needs only the failure itself and runs at export time;
`triage_with_qemu` runs the failure trace on real QEMU (`blocksim triage
RUN_DIR`).  `--mute expected` keeps a campaign from stopping on expected
failures at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NEW, ARTEFACT, REFUSED, EXPECTED = "new", "artefact", "refused-by-qemu", "expected"
CLASSES = (NEW, ARTEFACT, REFUSED, EXPECTED)
MUTE_EXPECTED = "expected"  # a --mute value: every failure classed expected
CLASS_HELP = {
    NEW: "nothing known explains these: look at them",
    ARTEFACT: "real QEMU answers a step before the violation differently",
    REFUSED: "the trace needs a step real QEMU refuses",
    EXPECTED: "documented consequences of the policy (--mute expected to skip them)",
}

# commands after which a device name may resolve to another node
GRAPH_CHANGES = frozenset(
    {
        "blockdev-snapshot-sync", "blockdev-snapshot", "drive-mirror", "blockdev-mirror",
        "block-commit", "block-stream", "block-job-complete", "job-complete", "transaction",
        "x-blockdev-reopen", "blockdev-reopen", "drive-backup", "blockdev-backup",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Known:
    """A documented consequence of a policy, recognised by invariant and message."""

    policies: frozenset[str]
    invariant: str
    pattern: re.Pattern[str]
    reason: str
    after_graph_change: bool = True  # only when a graph change came before the violation
    # and only when this holds of the pattern's match and the steps up to the violating one
    holds: Callable[[re.Match[str], list[dict[str, Any]]], bool] | None = None


def _aborted_always_backup(match: re.Match[str], steps: list[dict[str, Any]]) -> bool:
    """The failed step is a transaction holding a backup of the changed bitmap with
    bitmap-mode=always."""
    step = steps[-1]
    if _command(step) != "transaction":
        return False
    actions = (step.get("arguments") or {}).get("actions") or []
    return any(
        isinstance(a, dict)
        and a.get("type") in ("drive-backup", "blockdev-backup")
        and isinstance(a.get("data"), dict)
        and a["data"].get("bitmap") == match["name"]
        and a["data"].get("bitmap-mode") == "always"
        for a in actions
    )


QEMU_IO_NODE = re.compile(r"^qemu-io (\S+) ")


def _write_through_cbw_into_a_drive(match: re.Match[str], steps: list[dict[str, Any]]) -> bool:
    """The violating step is a qemu-io through a copy-before-write filter (added by
    blockdev-add) whose `target` names a node of the trace's drives (one no blockdev-add
    made): the filter's copies land in that drive."""
    io = (
        QEMU_IO_NODE.match(_shown(steps[-1]))
        if _command(steps[-1]) == "human-monitor-command"
        else None
    )
    if io is None:
        return False
    added: dict[str, dict[str, Any]] = {}
    for step in steps[:-1]:
        args = step.get("arguments")
        if _command(step) == "blockdev-add" and isinstance(args, dict):
            added[str(args.get("node-name"))] = args
    cbw = added.get(io[1])
    if cbw is None or cbw.get("driver") != "copy-before-write":
        return False
    target = cbw.get("target")
    return isinstance(target, str) and target not in added


DEVICE_FOLLOWS_ROOT = frozenset({"qemu-7.2", "qemu-2.5"})
EVERY_POLICY = frozenset({"qemu-7.2", "qemu-2.5", "bb-attached", "node-only"})

KNOWN = (
    Known(
        DEVICE_FOLLOWS_ROOT,
        "bitmap-addressability",
        re.compile(r"is no longer reachable at that address: .* now (resolves to|finds another)"),
        "the device name now resolves to the new top node; the bitmap stayed on its node "
        "(QEMU 7.2 behaviour, recorded: scenarios/thread/snapshot-breaks-device-bitmap.jsonl)",
    ),
    Known(
        DEVICE_FOLLOWS_ROOT,
        "bitmap-soundness",
        re.compile(r"does not mark .* the guest wrote through device"),
        "the bitmap stayed on a node the device's writes no longer reach after a graph "
        "change (QEMU 7.2 behaviour, recorded: scenarios/thread/snapshot-breaks-device-bitmap"
        ".jsonl)",
    ),
    Known(
        DEVICE_FOLLOWS_ROOT,
        "bitmap-addressability",
        re.compile(r"was destroyed without being removed: it was last on \S+ filter node"),
        "added by device name while a job's filter was the device's root node, the bitmap "
        "went onto that filter, which goes away with its bitmaps when the job ends (QEMU 7.2 "
        "behaviour: scenarios/checkers/addr-mirror-filter-captures-bitmap.jsonl)",
    ),
    Known(
        DEVICE_FOLLOWS_ROOT,
        "bitmap-addressability",
        re.compile(r"was destroyed without being removed: it was last on node '[^']*'; "),
        "the bitmap stayed on its node when a graph change put another node under the "
        "device; a mirror pivot, commit or stream then dropped that node from the graph and "
        "QEMU deletes a node with its bitmaps (QEMU 7.2 behaviour, recorded: "
        "scenarios/checkers/addr-mirror-pivot-destroys-source-bitmap.jsonl)",
    ),
    Known(
        EVERY_POLICY,
        "transaction-atomicity",
        re.compile(
            r"^transaction failed but left the block layer changed: "
            r"bitmap '(?P<name>[^']*)' on \S+ changed its bits$"
        ),
        "a transaction that prepared a backup with bitmap-mode=always and then failed: "
        "backup_abort syncs the bitmap as if the job had failed having copied nothing, so "
        "the bitmap takes the job's whole copy bitmap (QEMU 7.2 behaviour, recorded: "
        "scenarios/checkers/atom-aborted-backup-always-dirties-bitmap.jsonl)",
        after_graph_change=False,
        holds=_aborted_always_backup,
    ),
    Known(
        EVERY_POLICY,
        "no-lost-guest-data",
        re.compile(r"^device '[^']*' lost guest data in human-monitor-command: "),
        "a write through a copy-before-write filter whose target is a drive's node: the "
        "filter copies its source's old clusters into that drive, which then reads them "
        "(QEMU 7.2 behaviour, recorded: scenarios/checkers/loss-cbw-target-is-drive-node.jsonl)",
        after_graph_change=False,
        holds=_write_through_cbw_into_a_drive,
    ),
)

# what the simulator warns when a step would crash or hang real QEMU 7.2 (sim/qmp/*)
QEMU_STOPS = re.compile(r"real QEMU 7\.2 (hangs|crashes|aborts)")


def _command(step: dict[str, Any]) -> str:
    return str(step.get("execute", ""))


def _shown(step: dict[str, Any]) -> str:
    """A step as a reader knows it: the command, or the HMP command line."""
    args = step.get("arguments")
    if _command(step) == "human-monitor-command" and isinstance(args, dict):
        return str(args.get("command-line", ""))
    return _command(step)


def classify_expected(
    policy: str, kind: str, message: str, steps: list[dict[str, Any]], step: int | None = None
) -> tuple[str, str]:
    """(EXPECTED, reason) when a `KNOWN` consequence of `policy` explains the failure,
    else (NEW, ""); `step` is the 1-based step of the violation (default: the last)."""
    upto = steps[: step if step else len(steps)]
    changed = any(_command(s) in GRAPH_CHANGES for s in upto)
    for known in KNOWN:
        if policy not in known.policies or kind != known.invariant:
            continue
        if known.after_graph_change and not changed:
            continue
        match = known.pattern.search(message)
        if match is None:
            continue
        if known.holds is not None and not (upto and known.holds(match, upto)):
            continue
        return EXPECTED, known.reason
    return NEW, ""


PERMISSION_CONFLICT = "Permission conflict"  # how QEMU 7.2 words a refused permission


def classify_refused(
    header: dict[str, Any], steps: list[dict[str, Any]], step: int | None = None
) -> tuple[str, str] | None:
    """(REFUSED, why) when the failure's policy models no BdrvChild permissions
    (qemu-2.5) and, replayed with the model's permission rules on (sim/model/perms.py,
    as QEMU 7.2 applies them), a step up to the violation is refused with a permission
    conflict; else None.  Needs no QEMU: the model's rules stand in for it."""
    from dataclasses import replace

    from sim.errors import TraceError
    from sim.model.policy import get_policy
    from sim.replay import Replayer
    from sim.trace import dumps, parse_lines

    try:
        policy = get_policy(str(header.get("policy", "qemu-7.2")))
    except Exception:  # noqa: BLE001 - an unknown policy: nothing to check
        return None
    if policy.permissions:
        return None  # the simulator already refused what QEMU refuses (or triage_with_qemu)
    upto = steps[: step if step else len(steps)]
    lines = [dumps({k: v for k, v in header.items() if k != "invariants"})]
    lines += [dumps({k: v for k, v in s.items() if k != "expect"}) for s in upto]
    try:
        replayer = Replayer(parse_lines(lines, "triage"))
    except TraceError:
        return None
    replayer.machine.state.policy = replace(policy, permissions=True)  # type: ignore[type-var]
    try:
        result = replayer.run()
    except Exception:  # noqa: BLE001 - a replay that breaks decides nothing here
        return None
    for number, outcome in enumerate(result.steps, 1):
        answer = outcome.response.get("return", outcome.response.get("error", {}))
        text = answer if isinstance(answer, str) else str(answer.get("desc", ""))
        if PERMISSION_CONFLICT in text:
            return (
                REFUSED,
                f"under the model's permission rules (sim/model/perms.py, as QEMU 7.2 applies "
                f"them) step {number} ({_shown(upto[number - 1])}) is refused: "
                f"{text.strip()[:300]}",
            )
    return None


def classify_qemu_stops(
    steps: list[dict[str, Any]], warnings: list[list[str]], step: int | None = None
) -> tuple[str, str] | None:
    """(REFUSED, why) when the simulator warned, at a step up to the violation (`step`,
    1-based; default the last), that real QEMU 7.2 hangs, crashes or aborts there: the
    trace needs a step QEMU never completes (`warnings`: each step's warnings, as a
    replay gives them); else None."""
    upto = step if step else len(steps)
    for number, said in enumerate(warnings[:upto], 1):
        for warning in said:
            if QEMU_STOPS.search(warning):
                return (
                    REFUSED,
                    f"real QEMU 7.2 never completes step {number} ({_shown(steps[number - 1])}): "
                    f"{warning}",
                )
    return None


def class_rank(name: str) -> int:
    """Sort key: new first, expected last; an unknown class after new."""
    return CLASSES.index(name) if name in CLASSES else 1


SIDE_BY_SIDE_SUFFIX = ".qemu.json"  # failures/NAME.qemu.json, next to failures/NAME.jsonl


def triage_with_qemu(
    header: dict[str, Any], steps: list[dict[str, Any]], violation_step: int, qemu: str | None
) -> tuple[str, str, dict[str, Any] | None]:
    """Run the failure trace on real QEMU 7.2 (and the simulator) and compare, up to the
    violating step: (REFUSED, why) when QEMU refuses a step the simulator accepted,
    (ARTEFACT, why) for any other difference, (NEW, why) when both agree, or ("", why)
    when the trace cannot run on QEMU (sim-only steps).  The third value is both runs
    side by side (`side_by_side`), None when QEMU did not run the trace."""
    from sim.errors import TraceError
    from sim.oracle import diff_trace
    from sim.trace import dumps, parse_lines

    lines = [dumps({k: v for k, v in header.items() if k != "invariants"})]
    lines += [dumps({k: v for k, v in s.items() if k != "expect"}) for s in steps]
    try:
        report = diff_trace(parse_lines(lines, "triage"), images=False)
    except TraceError as exc:
        return "", f"not checked on QEMU: {exc}", None
    name, why = classify_runs(report, steps, violation_step)
    return name, why, side_by_side(report, steps, violation_step)


# QEMU's answer to a job verb once the job is gone: on real QEMU the job ran to its end
# sooner (its own clock), so the step finds nothing; a timing difference, not a refusal
JOB_GONE = re.compile(r"^(Block job '[^']*'|Job '[^']*'|Job) not found$")


def classify_runs(report: Any, steps: list[dict[str, Any]], violation_step: int) -> tuple[str, str]:
    """The class of a failure from both runs of its trace (a `DiffReport`), up to the
    violating step: REFUSED when QEMU refuses a step the simulator accepted, ARTEFACT when
    QEMU's job had already ended there or QEMU answers any step differently, else NEW."""
    for number, (q, s) in enumerate(zip(report.qemu.steps, report.sim.steps, strict=False), 1):
        if number > violation_step:
            break
        answer = q.get("response") or {}
        if "error" in answer and "error" not in s.response:
            desc = answer["error"].get("desc", "")
            command = _command(steps[number - 1])
            if JOB_GONE.match(desc):
                return (
                    ARTEFACT,
                    f"on real QEMU the job had already ended by step {number} ({command}: "
                    f"{desc}): its job ran faster than the simulator's, not a refusal",
                )
            return REFUSED, f"real QEMU refuses step {number} ({command}): {desc}"
    early = [d for d in report.differences if d.step is not None and d.step <= violation_step]
    if early:
        d = early[0]
        return ARTEFACT, f"real QEMU differs at step {d.step} ({d.command}): {d.detail[:200]}"
    return NEW, "real QEMU 7.2 answers every step as the simulator does"


def side_by_side(report: Any, steps: list[dict[str, Any]], violation_step: int) -> dict[str, Any]:
    """Both runs of a failure trace, step by step, for its report page: the request, what
    real QEMU 7.2 answered (response, events that arrived during the step) and what the
    simulator answered, which steps differ (responses per step; events as the whole
    ordered list, shown at the step the first differing event belongs to) and the
    differences in the order `blocksim diff` lists them."""
    differing = sorted({d.step for d in report.differences if d.step is not None})
    rows = []
    for number, step in enumerate(steps, start=1):
        q = report.qemu.steps[number - 1] if number <= len(report.qemu.steps) else None
        s = report.sim.steps[number - 1] if number <= len(report.sim.steps) else None
        qemu_side: dict[str, Any] = {"response": None, "events": []}
        if q is not None:
            qemu_side = {"response": q.get("response"), "events": list(q.get("events") or [])}
            if q.get("error"):
                qemu_side["error"] = q["error"]
        sim_side: dict[str, Any] = {"response": None, "events": []}
        if s is not None:
            sim_side = {"response": s.response, "events": list(s.events)}
            if s.error:
                sim_side["error"] = s.error
        rows.append(
            {
                "step": number,
                "request": {k: v for k, v in step.items() if k != "expect"},
                "qemu": qemu_side,
                "sim": sim_side,
                "differs": number in differing,
                "violation": number == violation_step,
            }
        )
    return {
        "version": 1,
        "violation_step": violation_step,
        "first_difference": differing[0] if differing else None,
        "differences": [
            {"step": d.step, "where": d.where, "detail": d.detail} for d in report.differences
        ],
        "notes": list(report.notes),
        "steps": rows,
    }
