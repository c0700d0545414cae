"""`blocksim export-iotest`: a trace as a Python qemu-iotest, with its `.out` from QEMU 7.2.

The test is written in the style of QEMU's tests/qemu-iotests/tests/: it
creates one image per header drive with `qemu_img_create`, starts a `VM`
with one `-drive if=none` per drive (the header's node names), then runs
the steps in order:

- guest I/O (`qemu-io DEV "CMD"` through human-monitor-command) as
  `vm.hmp_qemu_io(DEV, CMD, use_log=True)`;
- every other command as `vm.qmp_log(...)`, bare file names put in
  `iotests.test_dir` and filtered back to `TEST_DIR/` in the log;
- a `wait` step as `log(filter_qmp_event(vm.event_wait(NAME, match=...)))`;
- an `advance` step as a comment (simulated time; QEMU runs on its own);

and at the end logs `x-debug-block-dirty-bitmap-sha256` of every named
bitmap the simulator's final state holds on a named node.  Sim-only steps
(`workload`, `fault`) and broken lines cannot be exported.

The `.out` reference is the test's own output on real QEMU 7.2, run with the
`iotests` stand-in in `sim/oracle/iotests/` (the part of QEMU's module the
export uses); `ExportResult` also says which of the trace's `expect`s QEMU
answered differently.
"""

from __future__ import annotations

import json
import os
import pprint
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.errors import TraceError
from sim.oracle.guards import place_files
from sim.oracle.qemu_runner import find_qemu
from sim.trace import Trace

HARNESS_DIR = Path(__file__).resolve().parent / "iotests"
_MARK = "/@TEST_DIR@"
_HMP_QEMU_IO = re.compile(r'qemu-io (?P<dev>\S+) "(?P<cmd>[^"]*)"\Z')


@dataclass
class ExportResult:
    """What `export_iotest` wrote, and how QEMU's answers compare with the trace."""

    test: Path
    out: Path
    responses: list[dict[str, Any]] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)


def _py(value: Any, indent: int = 0) -> str:
    text = pprint.pformat(value, width=96 - indent, sort_dicts=False)
    text = re.sub(
        r"'" + re.escape(_MARK) + r"/([^']*)'", r"os.path.join(iotests.test_dir, '\1')", text
    )
    return text.replace("\n", "\n" + " " * indent)


def test_name(trace: Trace) -> str:
    raw = trace.header.name or Path(trace.path).stem or "blocksim-trace"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-").lower() or "blocksim-trace"


def render(trace: Trace, final_bitmaps: list[tuple[str, str]]) -> str:
    """The Python source of the iotest for `trace` (raises TraceError if unexportable)."""
    h = trace.header
    fmts = sorted({d.format for d in h.drives}) or ["qcow2"]
    lines = [
        "#!/usr/bin/env python3",
        "# group: rw quick",
        "#",
        f"# {test_name(trace)}: exported from a blocksim trace by `blocksim export-iotest`.",
    ]
    for chunk in _wrap(h.description):
        lines.append(f"# {chunk}")
    lines += [
        "#",
        "# Expected output: the .out file next to this test, taken from QEMU 7.2.",
        "",
        "import os",
        "",
        "import iotests",
        "from iotests import filter_qmp_event, filter_qmp_testfiles, log, qemu_img_create",
        "",
        f"iotests.script_initialize(supported_fmts={fmts!r})",
        "",
    ]
    for d in h.drives:
        var = _ident(d.id) + "_img"
        lines.append(f"{var} = os.path.join(iotests.test_dir, {d.id + '.' + d.format!r})")
        lines.append(f"qemu_img_create('-f', {d.format!r}, {var}, {str(d.size)!r})")
    lines += ["", "vm = iotests.VM()"]
    for d in h.drives:
        var = _ident(d.id) + "_img"
        opts = f"if=none,id={d.id},file={{{var}}},format={d.format},node-name={d.node_name}"
        if d.file_node_name:
            opts += f",file.node-name={d.file_node_name}"
        if d.discard != "ignore":
            opts += f",discard={d.discard}"
        lines.append(f"vm.add_args('-drive', f'{opts}')")
    lines += ["vm.launch()", ""]
    for index, step in enumerate(trace.steps, start=1):
        lines += _step(index, step)
    if final_bitmaps:
        lines += ["", "log('--- final bitmaps')"]
        for node, name in final_bitmaps:
            lines.append(
                f"vm.qmp_log('x-debug-block-dirty-bitmap-sha256', node={node!r}, name={name!r})"
            )
    lines += ["", "vm.shutdown()", ""]
    return "\n".join(lines)


def _ident(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if ident[:1].isalpha() else f"d_{ident}"


def _wrap(text: str, width: int = 86) -> list[str]:
    out: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        out.append(line)
    return out


def _step(index: int, step: Any) -> list[str]:
    kind = step.kind
    if kind == "bad":
        raise TraceError(f"step {index} is broken: {step.error}", step.line)
    if kind in ("workload", "fault"):
        raise TraceError(f"step {index} is a sim-only {kind!r} step: QEMU cannot run it", step.line)
    if kind == "advance":
        return [f"# step {index}: advance {step.body['advance']} s of simulated time (none here)"]
    if kind == "wait":
        w = step.body["wait"]
        match = {"data": w["data"]} if w.get("data") else None
        call = f"vm.event_wait({w['event']!r}, match={_py(match, 20)})"
        return [f"log('--- step {index}: wait {w['event']}')", f"log(filter_qmp_event({call}))"]
    name = step.body["execute"]
    args = step.body.get("arguments", {})
    head = f"log('--- step {index}: {name}')"
    if name == "human-monitor-command" and set(args) == {"command-line"}:
        m = _HMP_QEMU_IO.match(args["command-line"])
        if m is not None:
            return [head, f"vm.hmp_qemu_io({m['dev']!r}, {m['cmd']!r}, use_log=True)"]
    placed = place_files(name, args, _MARK)
    filters = ", filters=[filter_qmp_testfiles]" if _MARK in json.dumps(placed) else ""
    if not placed:
        return [head, f"vm.qmp_log({name!r}{filters})"]
    one_line = f"vm.qmp_log({name!r}{filters}, **{_py(placed)})"
    if len(one_line) <= 96 and "\n" not in one_line:
        return [head, one_line]
    pad = " " * len("vm.qmp_log(")
    return [head, f"vm.qmp_log({name!r}{filters},", f"{pad}**{_py(placed, len(pad) + 2)})"]


def run_test(test: Path, qemu: str | None = None, timeout: float = 300.0) -> str:
    """Run an exported test with the `iotests` stand-in on real QEMU; its stdout."""
    system, img = find_qemu(qemu)
    with tempfile.TemporaryDirectory(prefix="blocksim-iotest-") as scratch:
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(HARNESS_DIR), os.environ.get("PYTHONPATH", "")]),
            TEST_DIR=scratch,
            QEMU_PROG=system,
            QEMU_IMG_PROG=img,
            IMGFMT="qcow2",
        )
        proc = subprocess.run(
            [sys.executable, str(test)], capture_output=True, text=True, env=env, timeout=timeout
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{test.name} failed on QEMU: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def export_iotest(trace: Trace, out_dir: Path, qemu: str | None = None) -> ExportResult:
    """Write TEST and TEST.out into `out_dir`; the .out from a run on QEMU 7.2."""
    from sim.qmp.cmd_query import final_state
    from sim.replay import Replayer

    replayer = Replayer(trace)
    replayer.run()
    final = final_state(replayer.machine)
    bitmaps = [
        (n["node-name"], b["name"])
        for n in final["nodes"]
        if not n["node-name"].startswith("#")
        for b in n["dirty-bitmaps"]
        if b.get("name")
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    name = test_name(trace)
    test = out_dir / name
    test.write_text(render(trace, bitmaps), encoding="utf-8")
    test.chmod(0o755)
    output = run_test(test, qemu)
    out = out_dir / f"{name}.out"
    out.write_text(output, encoding="utf-8")
    result = ExportResult(test, out)
    result.responses = _responses(output)
    result.differences = compare_expects(trace, result.responses)
    return result


def _responses(output: str) -> list[dict[str, Any]]:
    """Per step, the last JSON line the test logged for it (the answer or the event)."""
    answers: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in output.splitlines():
        if line.startswith("--- step "):
            if current is not None:
                answers.append(current)
            current = {"step": int(line.split()[2].rstrip(":")), "answer": None}
        elif line.startswith("--- final"):
            if current is not None:
                answers.append(current)
            current = None
        elif current is not None and line.startswith("{"):
            current["answer"] = json.loads(line)
    if current is not None:
        answers.append(current)
    return answers


def compare_expects(trace: Trace, responses: list[dict[str, Any]]) -> list[str]:
    """Steps whose `expect` QEMU answered differently (node names QEMU invents ignored)."""
    from sim.compare import first_difference

    by_step = {r["step"]: r["answer"] for r in responses}
    out = []
    for index, step in enumerate(trace.steps, start=1):
        if step.expect is None or step.kind not in ("execute", "wait"):
            continue
        got = by_step.get(index)
        if isinstance(got, dict):
            got = {k: v for k, v in got.items() if k not in ("id", "timestamp")}
        if got is None or first_difference(step.expect, got):
            out.append(f"step {index}: trace expects {step.expect}, QEMU answered {got}")
    return out
