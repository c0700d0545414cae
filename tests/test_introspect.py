"""query-qmp-schema: the SchemaInfo list of the modelled subset, consistent in
itself, derived from the command table, and agreeing with QEMU 7.2's own."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from sim.qmp import (
    commands,  # noqa: F401  (registers every command)
    schema,
)
from sim.qmp.dispatch import COMMANDS, Monitor
from sim.qmp.introspect import EVENTS, RETURNS, schema_info
from tests.test_schema import _Qmp, qemu  # noqa: F401  (the live QEMU fixture)


def _refs(entity: dict[str, Any]) -> list[str]:
    out = [entity[k] for k in ("arg-type", "ret-type", "element-type") if k in entity]
    out += [m["type"] for m in entity.get("members", []) if "type" in m]
    out += [v["type"] for v in entity.get("variants", [])]
    return out


def test_schema_is_consistent_and_deterministic() -> None:
    info = schema_info()
    names = [e["name"] for e in info]
    assert len(names) == len(set(names))
    defined = set(names)
    for entity in info:
        for ref in _refs(entity):
            assert ref in defined, (entity["name"], ref)
    assert [e["name"] for e in info if e["meta-type"] == "command"] == sorted(COMMANDS)
    assert [e["name"] for e in info if e["meta-type"] == "event"] == list(EVENTS)
    assert set(RETURNS) <= set(COMMANDS)
    assert json.dumps(schema_info()) == json.dumps(info)
    numbered = [int(n) for n in names if n.isdigit()]
    assert numbered == sorted(numbered) and numbered[0] == 0  # numbered in order of use


def test_arguments_are_the_command_table_and_unions_show_modelled_variants() -> None:
    by_name = {e["name"]: e for e in schema_info()}
    for name, cmd in COMMANDS.items():
        arg = by_name[by_name[name]["arg-type"]]
        if isinstance(cmd.args, schema.Union):
            assert arg["tag"] == cmd.args.tag
            cases = [v["case"] for v in arg["variants"]]
            assert cases == [c for c, v in cmd.args.variants.items() if v is not None]
            spec = cmd.args.base
        else:
            spec = cmd.args.members
        shown = [(m.name, m.optional) for m in spec if not isinstance(m.type, schema.NotModelled)]
        assert [(m["name"], "default" in m) for m in arg["members"]] == shown
    drivers = by_name[by_name["blockdev-add"]["arg-type"]]
    tag = next(m for m in drivers["members"] if m["name"] == "driver")
    assert "throttle" in by_name[tag["type"]]["values"]
    assert "gluster" not in by_name[tag["type"]]["values"]  # refused: not in the subset


def test_the_command_answers_the_schema() -> None:
    from sim.engine.machine import Machine

    reply = Monitor(Machine()).execute({"execute": "query-qmp-schema"})
    assert reply["return"] == schema_info()


@pytest.mark.qemu
def test_subset_agrees_with_qemu(qemu: _Qmp) -> None:  # noqa: F811
    """Every command and event we list has QEMU's members, optionality and builtin
    types; our enums are QEMU's (a union's tag: the modelled part of it)."""
    theirs = {e["name"]: e for e in qemu.cmd("query-qmp-schema")["return"]}
    ours = {e["name"]: e for e in schema_info()}
    seen: set[tuple[str, str]] = set()

    def same(mine: str, their: str, where: str) -> None:
        if (mine, their) in seen:
            return
        seen.add((mine, their))
        a, b = ours[mine], theirs[their]
        assert a["meta-type"] == b["meta-type"], where
        if a["meta-type"] == "builtin":
            assert mine == their, where
        elif a["meta-type"] == "enum":
            assert set(a["values"]) <= set(b["values"]), where
        elif a["meta-type"] == "array":
            same(a["element-type"], b["element-type"], where + "[]")
        elif a["meta-type"] == "alternate":  # branches by JSON type, in any order
            kinds = {ours[x["type"]]["meta-type"]: x["type"] for x in a["members"]}
            their_kinds = {theirs[y["type"]]["meta-type"]: y["type"] for y in b["members"]}
            if "enum" in their_kinds and "enum" not in kinds:
                their_kinds.setdefault("builtin", their_kinds.pop("enum"))
            assert set(kinds) == set(their_kinds), where
            for kind, x in kinds.items():
                if (
                    kind != "builtin"
                    or ours[x]["meta-type"] == theirs[their_kinds[kind]]["meta-type"]
                ):
                    same(x, their_kinds[kind], where)
        elif a["meta-type"] == "object":
            theirs_m = {m["name"]: m for m in b["members"]}
            for m in a["members"]:
                assert m["name"] in theirs_m, (where, m["name"])
                assert ("default" in m) == ("default" in theirs_m[m["name"]]), (where, m["name"])
                same(m["type"], theirs_m[m["name"]]["type"], f"{where}.{m['name']}")
            their_cases = {v["case"]: v["type"] for v in b.get("variants", [])}
            for v in a.get("variants", []):
                same(v["type"], their_cases[v["case"]], f"{where}/{v['case']}")

    for name, entity in ours.items():
        if entity["meta-type"] in ("command", "event"):
            assert name in theirs, name
            same(entity["arg-type"], theirs[name]["arg-type"], name)
            if entity["meta-type"] == "command" and entity["ret-type"] != "any":
                same(entity["ret-type"], theirs[name]["ret-type"], name + "->")


def test_readme_lists_every_command_and_driver() -> None:
    from pathlib import Path

    from sim.qmp.schema import MODELLED_DRIVERS

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("The complete lists")
    para = " ".join(text[start : text.index("HMP commands:", start)].split())
    listed_cmds = para[para.index("QMP commands:") : para.index("Block drivers")]
    listed_drivers = para[para.index("Block drivers") :]
    assert sorted(c.strip("`. ") for c in listed_cmds.split(":", 1)[1].split(",")) == sorted(
        COMMANDS
    )
    assert sorted(d.strip("`. ") for d in listed_drivers.split(":", 1)[1].split(",")) == sorted(
        MODELLED_DRIVERS
    )


def test_query_answers_have_their_declared_shape() -> None:
    """What the query commands with a declared return type answer fits it."""
    from tests.helpers import io, qmp, run_steps

    info = {e["name"]: e for e in schema_info()}

    def fits(value: Any, name: str, where: str) -> None:
        entity = info[name]
        kind = entity["meta-type"]
        if kind == "builtin":
            expected = {"str": str, "int": int, "bool": bool, "number": (int, float)}
            if name in expected:
                assert isinstance(value, expected[name]), where
        elif kind == "array":
            assert isinstance(value, list), where
            for i, item in enumerate(value):
                fits(item, entity["element-type"], f"{where}[{i}]")
        elif kind == "enum":
            assert value in entity["values"], where
        elif kind == "object":
            assert isinstance(value, dict), where
            spec = {m["name"]: m for m in entity["members"]}
            for variant in entity.get("variants", []):
                if value.get(entity["tag"]) == variant["case"]:
                    spec.update({m["name"]: m for m in info[variant["type"]]["members"]})
            assert set(value) <= set(spec), (where, set(value) - set(spec))
            for key, m in spec.items():
                if key in value:
                    fits(value[key], m["type"], f"{where}.{key}")
                else:
                    assert "default" in m, (where, key)

    steps = [
        io("write 0 64k"),
        qmp("blockdev-add", driver="null-co", **{"node-name": "t0", "size": 64 << 20}),
        qmp("blockdev-backup", **{"job-id": "j0", "device": "drive0", "target": "t0",
                                  "sync": "full", "speed": 1}),
    ]  # fmt: skip
    queries = ["query-jobs", "query-block-jobs", "query-blockstats", "query-version"]
    r = run_steps(
        [*steps, *(qmp(q) for q in queries), qmp("query-blockstats", **{"query-nodes": True})]
    )
    answers = [s.response["return"] for s in r.steps[len(steps) :]]
    for name, answer in zip([*queries, "query-blockstats"], answers, strict=True):
        assert answer, name
        fits(answer, info[name]["ret-type"], name)


def test_the_schema_does_not_depend_on_which_handler_module_was_imported_first() -> None:
    script = (
        "import json, sys\n"
        "import importlib\n"
        "importlib.import_module(sys.argv[1])\n"
        "import sim.qmp.commands\n"
        "from sim.qmp.introspect import schema_info\n"
        "print(json.dumps(schema_info()))\n"
    )
    outputs = {
        first: subprocess.run(
            [sys.executable, "-c", script, first], capture_output=True, text=True, check=True
        ).stdout
        for first in ("sim.qmp.commands", "sim.qmp.cmd_query", "sim.qmp.cmd_job")
    }
    assert len(set(outputs.values())) == 1, sorted(outputs)
