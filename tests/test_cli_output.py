"""What the command line prints: violations in text mode, verdicts in JSON, JUnit XML."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from click.testing import CliRunner

from sim.cli import main
from tests.helpers import needs_qemu

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = str(ROOT / "scenarios" / "thread" / "snapshot-breaks-device-bitmap.jsonl")
FUZZ_FAILURE = str(
    ROOT / "fuzz" / "corpus" / "qemu-2.5" / "bitmap-addressability-85ecde8043f0.jsonl"
)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_text_mode_prints_each_violation_of_a_mismatch() -> None:
    code, out = run("replay", "--invariants", "all", SNAPSHOT)
    assert code == 1
    assert "expected 0 item(s), got 2" in out
    assert "step 3: [bitmap-addressability] bitmap 'b0' created at 'drive0'" in out
    assert "[bitmap-soundness]" in out


def test_text_mode_prints_the_expected_violation_of_a_fuzz_failure() -> None:
    code, out = run("replay", FUZZ_FAILURE)
    pinned = json.loads(Path(FUZZ_FAILURE).read_text().splitlines()[-1])["final-expect"]
    message = pinned["violations"][0]["message"]
    assert code == 0, out
    assert "1 expected violation" in out
    assert (
        f"expected: step {pinned['violations'][0]['step']}: [bitmap-addressability] {message}"
        in out
    )


def test_json_with_several_traces_names_each_trace_and_its_verdict() -> None:
    code, out = run("replay", "--json", "--invariants", "all", SNAPSHOT, FUZZ_FAILURE)
    assert code == 1
    docs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    frames = [d for d in docs if "trace-file" in d and "verdict" not in d]
    verdicts = [d for d in docs if "verdict" in d]
    assert [d["trace-file"] for d in frames] == [SNAPSHOT, FUZZ_FAILURE]
    assert [(d["trace-file"], d["verdict"]) for d in verdicts] == [
        (SNAPSHOT, "fail"),
        (FUZZ_FAILURE, "pass"),  # its one pinned violation, and nothing else
    ]
    assert len(verdicts[0]["violations"]) == 2
    # each trace's block: its frame, its steps, its final state, its verdict
    first = docs.index(frames[1])
    assert "final" in docs[first - 2] and docs[first - 1]["verdict"] == "fail"


def test_junit_report_has_a_case_per_trace_and_a_failure_for_the_violation(tmp_path: Path) -> None:
    out = tmp_path / "junit.xml"
    code, _ = run("replay", "--junit", str(out), "--invariants", "all", SNAPSHOT, FUZZ_FAILURE)
    assert code == 1
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("file") for c in cases] == [SNAPSHOT, FUZZ_FAILURE]
    failure = cases[0].find("failure")
    assert failure is not None and "bitmap-addressability" in (failure.text or "")
    code, _ = run("replay", "--junit", str(out), SNAPSHOT)
    assert code == 0
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("tests") == "1"


@pytest.mark.qemu
@needs_qemu
def test_diff_json_and_junit(tmp_path: Path) -> None:
    junit = tmp_path / "diff.xml"
    code, out = run("diff", "--json", "--junit", str(junit), SNAPSHOT)
    assert code == 0, out
    doc = json.loads(out.splitlines()[0])
    assert doc["trace-file"] == SNAPSHOT and doc["verdict"] == "identical"
    assert doc["differences"] == []
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"
