"""JUnit XML for CI: one test case per trace (replay) or per diffed trace (diff).

A case is a dict with `name`, `path`, `verdict` (pass, fail, violation, error)
and `detail`; `fail` and `violation` become `<failure>`, `error` `<error>`.
Nothing in it depends on the clock: the report of the same run is the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET


def junit_xml(suite: str, cases: list[dict[str, Any]]) -> str:
    """The JUnit XML document for `cases` as one test suite."""
    failures = sum(1 for c in cases if c["verdict"] in ("fail", "violation", "different"))
    errors = sum(1 for c in cases if c["verdict"] == "error")
    root = ET.Element("testsuites")
    node = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(cases)),
        failures=str(failures),
        errors=str(errors),
    )
    for case in cases:
        element = ET.SubElement(
            node,
            "testcase",
            classname=suite.replace(" ", "."),
            name=str(case.get("name") or case["path"]),
            file=str(case["path"]),
        )
        detail = str(case.get("detail", ""))
        first = detail.splitlines()[0] if detail else case["verdict"]
        if case["verdict"] in ("fail", "violation", "different"):
            ET.SubElement(
                element, "failure", message=first[:300], type=case["verdict"]
            ).text = detail
        elif case["verdict"] == "error":
            ET.SubElement(element, "error", message=first[:300], type="error").text = detail
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: Path, suite: str, cases: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(suite, cases), encoding="utf-8")
