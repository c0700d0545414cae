"""`blocksim export-iotest`: a fuzz failure as a qemu-iotest whose .out comes from QEMU 7.2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.errors import TraceError
from sim.oracle.iotest_export import export_iotest, render, run_test
from sim.replay import replay
from sim.trace import load_trace, parse_lines
from tests.serve_helpers import ROOT, have_qemu

CORPUS = ROOT / "fuzz" / "corpus" / "qemu-7.2"
SNAPSHOT = CORPUS / "bitmap-addressability-441c8e471c04.jsonl"


@pytest.mark.skipif(not have_qemu(), reason="needs qemu-system-x86_64 7.2")
def test_exported_fuzz_failure_runs_on_qemu_and_matches_its_out(tmp_path: Path) -> None:
    trace = load_trace(SNAPSHOT)
    result = export_iotest(trace, tmp_path)
    assert result.differences == []  # QEMU gives every answer the fuzzer pinned
    out = result.out.read_text()
    assert result.test.read_text().startswith("#!/usr/bin/env python3\n# group: rw quick\n")
    # the .out ends with the bitmap hashes; they are the simulator's final hashes
    sim_final = replay(trace).final
    hashes = {
        (n["node-name"], b["name"]): b["sha256"]
        for n in sim_final["nodes"]
        for b in n["dirty-bitmaps"]
        if b.get("name")
    }
    logged = [json.loads(line) for line in out.splitlines() if line.startswith('{"return"')]
    assert {"return": {"sha256": hashes[("fmt0", "b0")]}} in logged
    assert "TEST_DIR/" in out  # file names filtered as iotests does
    # a second run on a fresh QEMU matches the reference output exactly
    assert run_test(result.test) == out


@pytest.mark.skipif(not have_qemu(), reason="needs qemu-system-x86_64 7.2")
def test_cli_reports_where_qemu_disagrees(tmp_path: Path) -> None:
    trace = tmp_path / "wrong.jsonl"
    lines = [
        {"trace": 1, "name": "wrong", "drives": [{"id": "drive0", "node-name": "fmt0",
                                                  "size": 1048576}]},
        {"execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0", "name": "b0"},
         "expect": {"return": {}}},
        {"execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0", "name": "b0"},
         "expect": {"return": {}}},
    ]  # fmt: skip
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sim", "export-iotest", str(trace), "-o", str(tmp_path / "t")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "step 2: trace expects {'return': {}}" in proc.stdout
    assert "Bitmap already exists: b0" in (tmp_path / "t" / "wrong.out").read_text()


def test_sim_only_steps_cannot_be_exported() -> None:
    header = '{"trace": 1, "drives": [{"id": "d0", "node-name": "n0", "size": 1048576}]}'
    trace = parse_lines([header, '{"workload": {"device": "d0", "pattern": "seq"}}'])
    with pytest.raises(TraceError, match="sim-only 'workload' step"):
        render(trace, [])


def test_rendered_test_is_python_with_iotests_calls() -> None:
    source = render(load_trace(SNAPSHOT), [("fmt0", "b0")])
    compile(source, "exported", "exec")
    assert "vm.qmp_log('blockdev-snapshot-sync', filters=[filter_qmp_testfiles]" in source
    assert "os.path.join(iotests.test_dir, 'ov" in source
    assert "vm.qmp_log('x-debug-block-dirty-bitmap-sha256', node='fmt0', name='b0')" in source
