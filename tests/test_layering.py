"""The layering rules of docs/architecture.md: each dependency has one home, the model is pure."""

from __future__ import annotations

import ast
from pathlib import Path

import sim

SIM = Path(sim.__file__).parent

# module prefix -> folders (relative to sim/) allowed to import it
HOMES = {
    "simpy": ("engine/",),
    "matplotlib": ("report/",),
    "hypothesis": ("fuzz/",),
    "qemu": ("oracle/",),
    "random": ("engine/", "fuzz/"),
    "time": ("oracle/", "fuzz/", "report/"),
    "click": ("cli.py",),
    "dask": ("cluster.py",),
    "distributed": ("cluster.py",),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_each_dependency_lives_in_its_home() -> None:
    offenders = []
    for path in sorted(SIM.rglob("*.py")):
        rel = path.relative_to(SIM).as_posix()
        for dep in _imports(path):
            homes = HOMES.get(dep)
            if homes is not None and not rel.startswith(homes):
                offenders.append(f"{rel} imports {dep} (allowed in {homes})")
    assert not offenders, "\n".join(offenders)


def test_model_knows_nothing_of_time_qmp_or_engine() -> None:
    for path in sorted((SIM / "model").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for forbidden in ("sim.engine", "sim.qmp", "import simpy", "import json"):
            assert forbidden not in text, f"{path.name} uses {forbidden}"


def test_public_api() -> None:
    assert sim.__all__[:2] == ["replay", "load_trace"]
    assert len(sim.__all__) <= 14
    for name in sim.__all__:
        assert hasattr(sim, name), name


def test_job_status_changes_in_one_module() -> None:
    # every JobSTT transition goes through sim/model/job_flow.py (Job.set_status is
    # defined in jobs.py); the pause/resume mapping is PAUSED_AS, written once
    for path in sorted(SIM.rglob("*.py")):
        rel = path.relative_to(SIM).as_posix()
        text = path.read_text(encoding="utf-8")
        if rel not in ("model/job_flow.py", "model/jobs.py"):
            assert ".set_status(" not in text, f"{rel} changes a job status itself"
        if rel != "model/jobs.py":
            assert '"standby" if' not in text and "'standby' if" not in text, rel


def test_job_kinds_are_not_probed() -> None:
    # job kinds declare what they do (sim/model/job_driver.py); nobody guesses it
    # from which attributes a kind happens to have
    for path in sorted(SIM.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for probe in ("getattr(kind", "hasattr(kind", "getattr(job.kind", "getattr(j.kind"):
            assert probe not in text, f"{path.relative_to(SIM)} probes a job kind: {probe}"


def test_the_engine_raises_no_trace_errors() -> None:
    """Sim-only step objects are checked by sim.sim_only (the trace's words); the engine
    takes the specs it builds and knows nothing of traces."""
    import importlib

    for name in ("machine", "workload", "faults", "until", "jobs", "timing"):
        module = importlib.import_module(f"sim.engine.{name}")
        assert not hasattr(module, "TraceError"), name
