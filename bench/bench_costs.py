"""Costs that must grow with what happened, not with the disk: one row per figure.

Each row runs blocksim and, where the work exists on both sides, real QEMU 7.2
in the same run, and prints the ratio against its target:

  traces     recorded traces, one blocksim process vs one QEMU per trace
  steps      the same traces, start-up and final queries excluded on both sides
  one        one 23-step trace, one process each (blocksim as users run it)
  backup     full backup of a sparse 64 GiB disk (wall time and peak memory)
  backup-io  the same with 1000 guest writes/s running (blocksim only)
  writes     1M random 4 KiB writes on a 1 TiB disk with 4 bitmaps (in process), as a
             burst workload applies them (io.write_batch) and one by one (io.write),
             each followed by the first read, which splices the write log in
             (the median of 3 processes each)
  qnbn       query-named-block-nodes after 100k random writes on 1 TiB
  snapshot   a snapshot step at chain depth 50, every checker on (linear?)
  fuzz       `blocksim fuzz --examples 200 --steps 25` vs a bare Hypothesis machine
             with as many rules, whose rules draw one integer and do nothing; both
             counted in state-machine steps (bench/bench_fuzz.py says how)

Every blocksim figure is taken in a child process of its own, so peak memory
is the row's.  The machine is shared: absolute times move with its load, the
ratios of paired runs (taken back to back) much less; the printed verdict is
for this run.  Child processes run without PYTHONDONTWRITEBYTECODE, as an
installed blocksim does (compiled modules cached).

    python bench/bench_costs.py [ROW ...] [--traces N] [--markdown] [--json FILE]

`--json bench/results/costs.json` writes the rows README.md's costs table is made
from (scripts/readme_numbers.py), each with the load average when it was measured;
rows not run this time keep their earlier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
TIB = 1 << 40
ROWS = ["traces", "steps", "one", "backup", "backup-io", "writes", "qnbn", "snapshot", "fuzz"]
ONE_TRACE = ROOT / "scenarios" / "qemu-7.2" / "bk-paused-busy.jsonl"  # 23 steps


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_child(script: str, row: str, *args: str) -> dict[str, Any]:
    """Run `script --child ROW ARGS` in a fresh interpreter; its last stdout line is JSON."""
    out = subprocess.run(
        [sys.executable, script, "--child", row, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {row} failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def in_child(row: str, *args: str) -> dict[str, Any]:
    """Run `--child ROW` of this benchmark in a fresh interpreter."""
    return run_child(__file__, row, *args)


def cpu_s() -> float:
    """CPU seconds of this process and of its children that ended (QEMU, qemu-img)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- traces (rows traces, steps, one) ------------------------------------------------------
def recorded_traces(limit: int) -> list[tuple[Path, Any]]:
    """The first `limit` recorded traces real QEMU can run, with their paths."""
    from sim.oracle.diff import check_runnable
    from sim.trace import load_trace

    files = sorted((ROOT / "scenarios" / "qemu-7.2").rglob("*.jsonl"))
    files += sorted((ROOT / "scenarios" / "qemu-7.2-recorded").rglob("*.jsonl"))
    out = []
    for path in files:
        trace = load_trace(path)
        try:
            check_runnable(trace)
        except Exception:  # noqa: BLE001 - sim-only: not comparable
            continue
        out.append((path, trace))
        if len(out) == limit:
            break
    return out


def qemu_trace_times(traces: list[Any]) -> tuple[float, float, int, float]:
    """(whole runs, steps only, steps, CPU seconds) on real QEMU: one process per trace
    (the CPU of the QEMU processes and of the runner driving them)."""
    from sim.oracle.qemu_runner import QemuRunner

    cpu0 = cpu_s()
    total = steps_only = 0.0
    nsteps = 0
    for trace in traces:
        t0 = time.perf_counter()
        with QemuRunner(trace) as runner:
            runner.start()
            for n, step in enumerate(trace.steps, start=1):
                t1 = time.perf_counter()
                runner.run_step(n, step)
                steps_only += time.perf_counter() - t1
                nsteps += 1
            runner.final_state()
            runner.stop()
        total += time.perf_counter() - t0
    return total, steps_only, nsteps, cpu_s() - cpu0


def replay_all(traces: list[Any]) -> tuple[int, float]:
    """Replay each trace to its end in this process: (steps, wall seconds spent in the
    steps themselves)."""
    from sim.replay import Replayer

    steps_only = 0.0
    nsteps = 0
    for trace in traces:
        r = Replayer(trace)
        for n, step in enumerate(trace.steps, start=1):
            t1 = time.perf_counter()
            r.run_step(n, step)
            steps_only += time.perf_counter() - t1
            nsteps += 1
        r.finish()
    return nsteps, steps_only


def child_traces(paths: list[str]) -> dict[str, Any]:
    """One blocksim process loads and replays every trace (as `blocksim replay DIR`
    would, with the process set-up of its entry point); which traces QEMU can run was
    settled by the parent."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    from sim.entry import tune_collector

    tune_collector()
    import sim.replay  # noqa: F401 - its import counts with the others
    from sim.trace import load_trace

    traces = [load_trace(Path(p)) for p in paths]
    nsteps, steps_only = replay_all(traces)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # the whole process's CPU, interpreter start-up included
    total_cpu = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": wall,
        "cpu": cpu,
        "process_cpu": total_cpu.ru_utime + total_cpu.ru_stime,
        "steps_only": steps_only,
        "steps": nsteps,
    }


def one_trace_blocksim(repeat: int) -> tuple[float, float]:
    """Median wall and CPU time of `blocksim replay TRACE` as a process (after a warm-up)."""
    cmd = [sys.executable, "-m", "sim", "replay", str(ONE_TRACE)]
    env = child_env()
    subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, check=True)  # compile caches
    times, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), cpu_s()
        subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, check=True)
        times.append(time.perf_counter() - t0)
        cpus.append(cpu_s() - c0)
    return statistics.median(times), statistics.median(cpus)


def one_trace_qemu(repeat: int) -> tuple[float, float]:
    """Median wall and CPU time (QEMU's and the runner's) of the trace on real QEMU."""
    from sim.oracle.qemu_runner import run_trace
    from sim.trace import load_trace

    trace = load_trace(ONE_TRACE)
    run_trace(trace)  # the runner's imports are not QEMU's cost
    times, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), cpu_s()
        run_trace(trace)
        times.append(time.perf_counter() - t0)
        cpus.append(cpu_s() - c0)
    return statistics.median(times), statistics.median(cpus)


# -- sparse backup (rows backup, backup-io) ------------------------------------------------
def backup_lines(workload: bool) -> list[str]:
    header = {
        "trace": 1,
        "name": "sparse-64g-backup",
        "drives": [
            {
                "id": "drive0",
                "node-name": "fmt0",
                "file-node-name": "proto0",
                "format": "qcow2",
                "size": 64 * GIB,
            }
        ],
        "policy": "qemu-7.2",
        "seed": 0,
    }
    lines = [json.dumps(header)]
    for i in range(8):  # 8 MiB of data spread over the disk
        cmd = f'qemu-io drive0 "write -P {i + 1} {i * 8}G 1M"'
        lines.append(
            json.dumps({"execute": "human-monitor-command", "arguments": {"command-line": cmd}})
        )
    if workload:
        wl = {"device": "drive0", "pattern": "uniform", "rate": 1000, "size": 4096}
        wl.update({"duration": 100, "read-ratio": 0})  # 100,000 writes (the per-workload cap)
        lines.append(json.dumps({"workload": wl}))
    args = {"device": "drive0", "target": "full.qcow2", "sync": "full", "job-id": "bk"}
    lines.append(json.dumps({"execute": "drive-backup", "arguments": args}))
    lines.append(json.dumps({"wait": {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "bk"}}}))
    return lines


def child_backup(workload: bool) -> dict[str, Any]:
    from sim.replay import Replayer
    from sim.trace import parse_lines

    trace = parse_lines(backup_lines(workload))
    before = peak_mib()
    r = Replayer(trace)
    for n, step in enumerate(trace.steps[:-2], start=1):
        outcome = r.run_step(n, step)
        if outcome.error or "error" in outcome.response:
            raise RuntimeError(f"step {n}: {outcome.error or outcome.response}")
    t0 = time.perf_counter()
    for n, step in enumerate(trace.steps[-2:], start=len(trace.steps) - 1):
        outcome = r.run_step(n, step)
        if outcome.error or "error" in outcome.response:
            raise RuntimeError(f"step {n}: {outcome.error or outcome.response}")
    wall = time.perf_counter() - t0
    m = r.machine
    return {
        "wall": wall,
        "sim_s": m.now_ns / 1e9,
        "peak_mib": peak_mib() - before,
        "guest_writes": len(m.io_log),
    }


def qemu_backup() -> float:
    """Wall time of the backup (drive-backup to BLOCK_JOB_COMPLETED) on real QEMU."""
    from sim.oracle.qemu_runner import QemuRunner
    from sim.trace import parse_lines

    trace = parse_lines(backup_lines(False))
    with QemuRunner(trace) as runner:
        runner.start()
        n = 0
        for n, step in enumerate(trace.steps[:-2], start=1):
            runner.run_step(n, step)
        t0 = time.perf_counter()
        for k in (1, 2):
            got = runner.run_step(n + k, trace.steps[n + k - 1])
            if got.get("error") or got["response"] is None or "error" in got["response"]:
                raise RuntimeError(f"QEMU step {n + k}: {got}")
        return time.perf_counter() - t0


# -- writes and query-named-block-nodes ----------------------------------------------------
def _offsets(n: int, size: int) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(1)
    offsets: list[int] = (rng.integers(0, size // 4096, size=n, dtype=np.int64) * 4096).tolist()
    return offsets


def writes_drive(n: int) -> tuple[Any, Any, list[int]]:
    """The writes rows' set-up: a model state with a 1 TiB qcow2 drive carrying 4
    bitmaps, that drive's BlockBackend, and `n` random 4 KiB-aligned offsets on it."""
    from sim.model import bitmap_ops
    from sim.model.state import BlockState

    state = BlockState("qemu-7.2")
    bb = state.add_drive("drive0", "fmt0", "proto0", "qcow2", TIB)
    for name in ("b0", "b1", "b2", "b3"):
        bitmap_ops.add(state.graph, state.policy, "drive0", name)
    return state, bb, _offsets(n, TIB)


def child_writes(n: int, batch: int) -> dict[str, Any]:
    """Guest writes as the simulator applies them: one by one (`io.write`, what a
    qemu-io write or a workload request does), or `batch` at a time (`io.write_batch`,
    what a burst workload's requests issued at one instant do, BURST_OPS of them)."""
    from sim.model import io

    state, bb, offsets = writes_drive(n)
    root, new_stamp, new_many = bb.root, state.new_stamp, state.stamps.new_many
    assert root is not None
    before = peak_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    if batch == 1:
        for off in offsets:
            io.write(state, bb, root, off, 4096, new_stamp(5))
    else:
        for i in range(0, n, batch):
            part = offsets[i : i + batch]
            io.write_batch(state, bb, root, part, 4096, new_many(5, len(part)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # the first read splices the write log in (the run list, the qcow2 layout): part
    # of what the writes cost
    content = root.content
    assert content is not None
    t1, c1 = time.perf_counter(), time.process_time()
    content.stamp_at(0)
    settle, settle_cpu = time.perf_counter() - t1, time.process_time() - c1
    return {
        "rate": n / (wall + settle),
        "cpu_rate": n / (cpu + settle_cpu),
        "write_rate": n / wall,
        "write_cpu_rate": n / cpu,
        "settle_s": settle,
        "peak_mib": peak_mib() - before,
    }


def child_qnbn(n: int) -> dict[str, Any]:
    from sim.engine.machine import Machine
    from sim.model import io
    from sim.model.state import DriveSpec
    from sim.qmp import commands  # noqa: F401 - registers every command
    from sim.qmp.dispatch import Monitor

    drive = DriveSpec("drive0", "fmt0", "proto0", "qcow2", TIB)
    m = Machine([drive], "qemu-7.2", 0)
    mon = Monitor(m)
    state = m.state
    bb = state.graph.backends["drive0"]
    for off in _offsets(n, TIB):
        io.guest_write(state.graph, bb, bb.root, off, 4096, state.new_stamp(5))
    # the writes' log is spliced in by the first read (a cost of the writes, shown apart)
    assert bb.root is not None and bb.root.content is not None
    t0 = time.perf_counter()
    bb.root.content.stamp_at(0)
    splice_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    first = mon.execute({"execute": "query-named-block-nodes"})
    first_s, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    mon.execute({"execute": "query-named-block-nodes"})
    again_s = time.perf_counter() - t0
    actual = [n.get("image", {}).get("actual-size") for n in first.get("return", [])]
    return {
        "first_s": first_s,
        "first_cpu": first_cpu,
        "again_s": again_s,
        "splice_s": splice_s,
        "actual": actual,
    }


def qemu_qnbn(n: int) -> float | None:
    """Median time of query-named-block-nodes on QEMU over an image with n random writes."""
    qemu, qemu_img, qemu_io = (
        shutil.which(x) for x in ("qemu-system-x86_64", "qemu-img", "qemu-io")
    )
    if not (qemu and qemu_img and qemu_io):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "big.qcow2"
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "1T"], check=True)
        script = "".join(f"write -P 5 {off} 4k\n" for off in _offsets(n, TIB))
        subprocess.run(
            [qemu_io, "-t", "unsafe", "-f", "qcow2", str(img)],
            input=script.encode(),
            check=True,
            capture_output=True,
        )
        sock = Path(tmp) / "qmp.sock"
        blockdev = (
            f"driver=qcow2,node-name=fmt0,file.driver=file,file.node-name=proto0,"
            f"file.filename={img}"
        )
        proc = subprocess.Popen(
            [qemu, "-M", "none", "-nodefaults", "-display", "none",
             "-qmp", f"unix:{sock},server=on,wait=off", "-blockdev", blockdev],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(200):
                if sock.exists():
                    break
                time.sleep(0.05)
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            f = s.makefile("rwb")
            f.readline()

            def ask(cmd: str) -> None:
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line or b'"error"' in line:
                        raise RuntimeError(f"QEMU answered {cmd} with {line!r}")
                    if b'"return"' in line:
                        return

            ask("qmp_capabilities")
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                ask("query-named-block-nodes")
                times.append(time.perf_counter() - t0)
            ask("quit")
            return statistics.median(times)
        finally:
            proc.wait(timeout=30)


# -- snapshot chain --------------------------------------------------------------------------
def snapshot_lines(depth: int) -> list[str]:
    header = {
        "trace": 1,
        "name": "deep-chain",
        "drives": [
            {
                "id": "drive0",
                "node-name": "fmt0",
                "file-node-name": "proto0",
                "format": "qcow2",
                "size": 64 << 20,
            }
        ],
        "policy": "qemu-7.2",
        "seed": 0,
    }
    lines = [json.dumps(header)]
    add = {"node": "drive0", "name": "b0", "persistent": True}
    lines.append(json.dumps({"execute": "block-dirty-bitmap-add", "arguments": add}))
    for i in range(depth):
        cmd = f'qemu-io drive0 "write -P {i % 200 + 1} {i * 65536} 64k"'
        lines.append(
            json.dumps({"execute": "human-monitor-command", "arguments": {"command-line": cmd}})
        )
        snap = {"device": "drive0", "snapshot-file": f"ov{i}.qcow2", "snapshot-node-name": f"ov{i}"}
        lines.append(json.dumps({"execute": "blockdev-snapshot-sync", "arguments": snap}))
    return lines


def child_snapshot(depth: int, checkers: bool) -> dict[str, Any]:
    from sim.check import make_checkers
    from sim.replay import Replayer
    from sim.trace import parse_lines

    trace = parse_lines(snapshot_lines(depth))
    r = Replayer(trace, checkers=make_checkers() if checkers else None)
    times = []
    for n, step in enumerate(trace.steps, start=1):
        t0 = time.perf_counter()
        r.run_step(n, step)
        times.append(time.perf_counter() - t0)
    snaps = times[2::2]
    return {"last_ms": statistics.median(snaps[-3:]) * 1e3}


# -- fuzz --------------------------------------------------------------------------------------
# measured by bench/bench_fuzz.py (the campaign as users run it, the bare machine in a child)


# -- the table -----------------------------------------------------------------------------
class Table:
    """The costs table: one row per measured work (QEMU, blocksim, ratio, target), with
    the load average at the time each row was measured."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.row = ""  # the ROWS name being measured (kept in the JSON, per table row)
        self.meta: list[dict[str, Any]] = []

    def add(self, work: str, qemu: str, sim: str, ratio: str, target: str, met: bool) -> None:
        self.rows.append((work, qemu, sim, ratio, target, "met" if met else "NOT met"))
        self.meta.append({"row": self.row, "load_average": round(os.getloadavg()[0], 1)})
        print(f"{work}: QEMU {qemu or '-'} | blocksim {sim} | {ratio} | target {target}: "
              f"{'met' if met else 'NOT met'}", flush=True)  # fmt: skip

    def markdown(self) -> str:
        head = "| work | real QEMU 7.2 | blocksim | ratio | target | |\n|---|---|---|---|---|---|\n"
        return head + "\n".join("| " + " | ".join(r) + " |" for r in self.rows)

    def to_json(self, command: str, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
        """What `--json FILE` writes; scripts/readme_numbers.py turns it into the README's
        costs table (`from_json(...).markdown()`).  Rows of `earlier` (the file as it was)
        that this run did not measure are kept, in ROWS order, so a run of a few rows
        updates only those."""
        mine = [
            {
                **dict(zip(JSON_KEYS, r, strict=True)),
                **m,
                "command": command,
                "cores": os.cpu_count(),
            }
            for r, m in zip(self.rows, self.meta, strict=True)
        ]
        measured = {m["row"] for m in self.meta}
        kept = [r for r in (earlier or {}).get("rows", []) if r.get("row") not in measured]
        rows = sorted(
            kept + mine, key=lambda r: ROWS.index(r["row"]) if r.get("row") in ROWS else len(ROWS)
        )
        return {"costs": 1, "rows": rows}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Table:
        table = cls()
        table.rows = [tuple(str(r[k]) for k in JSON_KEYS) for r in doc["rows"]]  # type: ignore[misc]
        return table


JSON_KEYS = ("work", "qemu", "blocksim", "ratio", "target", "verdict")


def run_row(row: str, table: Table, args: argparse.Namespace) -> None:
    if row in ("traces", "steps"):
        if getattr(args, "_traces_done", False):
            return
        args._traces_done = True
        found = recorded_traces(args.traces)
        traces = [trace for _, trace in found]
        q_total, q_steps, nsteps, q_cpu = qemu_trace_times(traces)
        s = in_child("traces", *(str(path) for path, _ in found))
        r1 = q_total / s["wall"]
        table.row = "traces"  # both rows come from this one run; each keeps its own name
        table.add(
            f"{len(traces)} recorded traces, one blocksim process vs one QEMU per trace",
            f"{q_total:.1f} s (CPU {q_cpu:.1f} s)",
            f"{s['wall']:.2f} s (CPU {s['cpu']:.2f} s, {s['process_cpu']:.2f} s with start-up)",
            f"{r1:.0f}x faster (CPU: {q_cpu / s['process_cpu']:.0f}x)", ">= 100x", r1 >= 100,
        )  # fmt: skip
        r2 = q_steps / s["steps_only"]
        table.row = "steps"
        table.add(
            "the same, start-up and final queries excluded on both sides",
            f"{q_steps / nsteps * 1e3:.2f} ms a step",
            f"{s['steps_only'] / nsteps * 1e6:.0f} us a step",
            f"{r2:.0f}x faster", ">= 50x", r2 >= 50,
        )  # fmt: skip
    elif row == "one":
        (q, q_cpu), (s, s_cpu) = one_trace_qemu(5), one_trace_blocksim(5)
        table.add(
            "one 23-step trace, one process each",
            f"{q * 1e3:.0f} ms (CPU {q_cpu * 1e3:.0f} ms)",
            f"{s * 1e3:.0f} ms (CPU {s_cpu * 1e3:.0f} ms)",
            (f"{q / s:.2f}x faster" if s < q else f"{s / q:.2f}x slower")
            + f" (CPU: {q_cpu / s_cpu:.2f}x)",
            "faster", s < q,
        )  # fmt: skip
    elif row == "backup":
        q = qemu_backup()
        s = in_child("backup", "0")
        ratio = q / s["wall"]
        table.add(
            "full backup of a sparse 64 GiB disk", f"{q:.2f} s",
            f"{s['wall']:.2f} s, {s['peak_mib']:.0f} MiB (simulated {s['sim_s']:.1f} s)",
            f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower",
            ">= 10x faster, < 200 MiB", ratio >= 10 and s["peak_mib"] < 200,
        )  # fmt: skip
    elif row == "backup-io":
        s = in_child("backup", "1")
        table.add(
            "the same with 1000 guest writes/s running", "",
            f"{s['wall']:.1f} s, {s['peak_mib']:.0f} MiB", "", "< 5 s", s["wall"] < 5,
        )  # fmt: skip
    elif row == "writes":
        from sim.engine.workload import BURST_OPS

        def median_run(batch: int) -> tuple[dict[str, Any], float]:
            """The run of median rate among 3 processes (load spikes), and the highest
            peak memory of the three."""
            runs = [in_child("writes", str(args.writes), str(batch)) for _ in range(3)]
            runs.sort(key=lambda r: float(r["rate"]))
            return runs[1], max(float(r["peak_mib"]) for r in runs)

        s, peak = median_run(BURST_OPS)
        one, _ = median_run(1)
        table.add(
            f"{args.writes:,} random 4 KiB writes on a 1 TiB disk with 4 bitmaps (in process)",
            "",
            f"{s['rate'] / 1e3:.0f}k writes/s (CPU time: {s['cpu_rate'] / 1e3:.0f}k/s) in "
            f"bursts of {BURST_OPS}, +{peak:.0f} MiB (the writes "
            f"{s['write_rate'] / 1e3:.0f}k/s, then the first read {s['settle_s']:.2f} s); "
            f"one by one {one['rate'] / 1e3:.0f}k/s (CPU time: {one['cpu_rate'] / 1e3:.0f}k/s); "
            "median of 3 processes each",
            "",
            ">= 500k/s, < 300 MiB", s["rate"] >= 500e3 and peak < 300,
        )  # fmt: skip
    elif row == "qnbn":
        q = qemu_qnbn(args.qnbn_writes)
        s = in_child("qnbn", str(args.qnbn_writes))
        table.add(
            f"query-named-block-nodes after {args.qnbn_writes // 1000}k writes on 1 TiB",
            f"{q * 1e3:.2f} ms" if q is not None else "",
            f"{s['first_s'] * 1e3:.1f} ms, CPU {s['first_cpu'] * 1e3:.1f} ms "
            f"(again: {s['again_s'] * 1e3:.1f} ms; the writes' log spliced in before it: "
            f"{s['splice_s'] * 1e3:.0f} ms)",
            f"{(q or 0) / s['first_s']:.2f}x" if q else "", "< 10 ms", s["first_s"] < 0.010,
        )  # fmt: skip
    elif row == "snapshot":

        def median_of(depth: int, checkers: str) -> float:  # 3 processes: load spikes
            return statistics.median(
                in_child("snapshot", str(depth), checkers)["last_ms"] for _ in range(3)
            )

        times = {d: median_of(d, "1") for d in (25, 50)}
        bare = median_of(50, "0")
        growth = times[50] / times[25]
        table.add(
            "snapshot step at chain depth 50, all checkers", "",
            f"{times[50]:.2f} ms ({bare:.2f} ms without; depth 25: {times[25]:.2f} ms)",
            f"depth x2 -> time x{growth:.1f}", "linear (x2 or less)", growth <= 2.5,
        )  # fmt: skip
    elif row == "fuzz":
        import bench_fuzz

        n_rules = bench_fuzz.rule_count()
        run = bench_fuzz.campaign(200)
        bare = in_child("bare", "200", str(n_rules))
        rate = run.machine_steps / run.own_s  # state-machine steps, as the bare machine's
        ratio = rate / bare["rate"]
        table.add(
            "`blocksim fuzz --examples 200 --steps 25`, all checkers, as users run it "
            "(state-machine steps: rules run, shrink runs included)",
            f"bare {n_rules}-rule Hypothesis machine: {bare['rate']:,.0f} steps/s "
            f"(200 examples: {bare['wall']:.1f} s)",
            f"{rate:,.0f} steps/s, {run.trace_steps / run.own_s:,.0f} trace steps/s "
            f"(200 examples: {run.own_s:.1f} s)",
            f"{ratio:.2f}x", ">= 0.7x", ratio >= 0.7,
        )  # fmt: skip


def child_main(row: str, rest: list[str]) -> None:
    if row == "traces":
        result = child_traces(rest)
    elif row == "backup":
        result = child_backup(rest[0] == "1")
    elif row == "writes":
        result = child_writes(int(rest[0]), int(rest[1]))
    elif row == "qnbn":
        result = child_qnbn(int(rest[0]))
    elif row == "snapshot":
        result = child_snapshot(int(rest[0]), rest[1] == "1")
    elif row == "bare":
        import bench_fuzz

        steps, wall, _cpu = bench_fuzz.bare(int(rest[1]), int(rest[0]))
        result = {"rate": steps / wall, "steps": steps, "wall": wall}
    else:
        raise SystemExit(f"unknown child row {row}")
    print(json.dumps(result))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", default=ROWS, help=f"rows to run: {', '.join(ROWS)}")
    parser.add_argument("--traces", type=int, default=145, help="recorded traces (rows 1-2)")
    parser.add_argument("--writes", type=int, default=1_000_000, help="writes (row writes)")
    parser.add_argument("--qnbn-writes", type=int, default=100_000, help="writes (row qnbn)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write the rows as JSON too (bench/results/costs.json is what README.md's costs "
        "table is made from: scripts/readme_numbers.py)",
    )
    args = parser.parse_args()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
    sys.path.insert(0, str(ROOT))
    table = Table()
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.1f} on {os.cpu_count()} cores", flush=True)
    for row in args.rows:
        table.row = row
        run_row(row, table, args)
    end = os.getloadavg()[0]
    print(f"load average at end: {end:.1f}")
    if args.markdown:
        print(table.markdown())
    if args.json:
        command = "python bench/bench_costs.py " + " ".join(sys.argv[1:])
        out = Path(args.json)
        earlier = json.loads(out.read_text()) if out.is_file() else None
        doc = table.to_json(command, earlier)
        out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
