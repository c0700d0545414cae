"""`blocksim serve` driven by real clients: qemu.qmp, qmp-shell, several monitors at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient

from sim.replay import replay
from sim.trace import load_trace
from tests.serve_helpers import ROOT, blocksim_serve

WRITE = {"command-line": 'qemu-io drive0 "write -P 0x5 0 1M"'}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _connect(sock: Path, name: str) -> QMPClient:
    client = QMPClient(name)
    await client.connect(str(sock))
    return client


def test_qemu_qmp_client_events_reach_every_monitor(tmp_path: Path) -> None:
    async def flow(sock: Path) -> tuple[list[Any], list[Any], dict[str, Any]]:
        a = await _connect(sock, "a")
        b = await _connect(sock, "b")
        seen_a, seen_b = EventListener(), EventListener()
        a.register_listener(seen_a)
        b.register_listener(seen_b)
        assert a.greeting.QMP.version["qemu"]["major"] == 7  # type: ignore[union-attr]
        await a.execute("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
        await a.execute("human-monitor-command", WRITE)
        await a.execute(
            "drive-backup", {"device": "drive0", "sync": "full", "target": "t.qcow2", "job-id": "j"}
        )
        done = await b.execute("x-blocksim-wait", {"event": "BLOCK_JOB_COMPLETED"})
        try:
            await a.execute("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
            raise AssertionError("duplicate bitmap accepted")
        except ExecuteError as exc:
            assert exc.error.error.desc == "Bitmap already exists: b0"
        await a.execute("x-blocksim-advance", {"seconds": 1})
        await b.execute("query-jobs")  # every event b will see was sent before this answer
        ea, eb = seen_a.clear(), seen_b.clear()
        await a.disconnect()
        await b.disconnect()
        return ea, eb, dict(done)  # type: ignore[arg-type]

    with blocksim_serve(tmp_path) as sock:
        ea, eb, done = run(flow(sock))
    names = [e["event"] for e in ea]
    assert names[0] == "JOB_STATUS_CHANGE" and "BLOCK_JOB_COMPLETED" in names
    assert [dict(e) for e in ea] == [dict(e) for e in eb]  # both monitors, same events
    assert done["data"]["device"] == "j" and done["data"]["offset"] == 64 << 20
    first, last = ea[0]["timestamp"], ea[-1]["timestamp"]
    assert first == {"seconds": 0, "microseconds": 0}  # simulated time starts at 0
    assert (last["seconds"], last["microseconds"]) > (0, 0)


def test_recorded_session_replays_identically(tmp_path: Path) -> None:
    out = tmp_path / "session.jsonl"
    answers: list[Any] = []

    async def flow(sock: Path) -> None:
        c = await _connect(sock, "rec")
        for cmd, args in [
            ("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"}),
            ("human-monitor-command", WRITE),
            ("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov.qcow2",
                                        "snapshot-node-name": "ov0"}),
            ("drive-backup", {"device": "drive0", "sync": "incremental", "bitmap": "b0",
                              "target": "inc.qcow2"}),
            ("drive-mirror", {"device": "drive0", "sync": "full", "target": "m.qcow2",
                              "job-id": "m"}),
        ]:  # fmt: skip
            try:
                answers.append(await c.execute(cmd, args))
            except ExecuteError as exc:
                answers.append(exc.error.error.desc)
        await c.execute("x-blocksim-wait", {"event": "BLOCK_JOB_READY", "data": {"device": "m"}})
        await c.execute("x-blocksim-advance", {"seconds": 0.5})
        await c.execute("block-job-complete", {"device": "m"})
        await c.execute("x-blocksim-wait", {"event": "BLOCK_JOB_COMPLETED"})
        answers.append(await c.execute("query-named-block-nodes"))
        await c.execute("quit")
        try:
            await c.disconnect()
        except EOFError:  # the server hung up after quit, as QEMU does
            pass

    with blocksim_serve(tmp_path, "--record-trace", str(out)) as sock:
        run(flow(sock))
    assert answers[3] == "Bitmap 'b0' could not be found"  # the bitmap stayed under the snapshot
    trace = load_trace(out)
    assert trace.final_expect is not None and trace.final_expect["events"]
    result = replay(trace)
    assert result.ok, result.mismatches
    kinds = [s.kind for s in trace.steps]
    assert kinds.count("wait") == 2 and kinds.count("advance") == 1
    assert result.steps[-1].response["return"] == answers[-1]


def test_garbage_on_the_socket_never_ends_the_session(tmp_path: Path) -> None:
    async def flow(sock: Path) -> str:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        await reader.readline()
        writer.write(b"\xff\x00{{{]]]}}}nonsense{'execute':'qmp_capabilities'}")
        writer.write(b'{"execute": "query-version", "id": "x"}')
        await writer.drain()
        while True:
            line = await reader.readline()
            if b'"id": "x"' in line:
                writer.close()
                return line.decode()

    with blocksim_serve(tmp_path) as sock:
        line = run(flow(sock))
        assert '"return"' in line
        line = run(flow(sock))  # the server still accepts clients
        assert '"return"' in line


def test_qmp_shell_in_a_subprocess(tmp_path: Path) -> None:
    with blocksim_serve(tmp_path) as sock:
        script = (
            "block-dirty-bitmap-add node=drive0 name=b0 granularity=65536\n"
            "query-block\n"
            "block-dirty-bitmap-add node=drive0 name=b0\n"
        )
        shell = [sys.executable, "-m", "qemu.qmp.qmp_shell", str(sock)]
        proc = subprocess.run(
            shell, input=script, capture_output=True, text=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "Connected to QEMU 7.2.22" in out
    assert '"dirty-bitmaps"' in out and '"name": "b0"' in out
    assert "Bitmap already exists: b0" in out


def test_realtime_pacing_moves_jobs_for_a_polling_client(tmp_path: Path) -> None:
    """The job moves on wall time alone (the client only polls) and no faster than the
    pace: 4 simulated seconds take at least 0.4 s of wall time at x10.  Only lower
    bounds on wall time are asserted, which a busy machine cannot break."""

    async def flow(sock: Path) -> list[tuple[float, str]]:
        c = await _connect(sock, "poll")
        await c.execute("human-monitor-command", WRITE)
        # 16 MiB/s over the 64 MiB disk: 4 simulated seconds, 0.4 s of wall time at x10
        # (without a limit, a disk of holes is copied in well under a millisecond)
        backup = {"device": "drive0", "sync": "full", "target": "t.qcow2", "job-id": "j"}
        t0 = time.monotonic()  # before the request: the job cannot have started earlier
        await c.execute("drive-backup", {**backup, "speed": 16 << 20})
        seen: list[tuple[float, str]] = []
        while time.monotonic() - t0 < 60:
            jobs = await c.execute("query-jobs")
            status = jobs[0]["status"] if jobs else "gone"  # type: ignore[index]
            seen.append((time.monotonic() - t0, status))
            if status == "gone":
                break
            await asyncio.sleep(0.01)
        await c.disconnect()
        return seen

    with blocksim_serve(tmp_path, "--pace", "realtime:10") as sock:
        seen = run(flow(sock))
    assert seen[-1][1] == "gone", f"the job did not end within 60 s of wall time: {seen[-3:]}"
    done_at = next(t for t, status in seen if status not in ("created", "running"))
    # (0.35: a margin for where the rate limit's slices fall; x100 would end it at 0.05)
    assert done_at >= 0.35, f"4 simulated seconds went by in {done_at:.3f} s of wall time"
    # a quiet machine polls while the job runs; a busy one may poll first after its end
    early = [status for t, status in seen if t < 0.35]
    assert set(early) <= {"created", "running"}, early


def test_load_several_clients_pipelined_lose_no_answer() -> None:
    """The small CI part of bench/bench_serve.py: 4 clients x 300 pipelined requests."""
    bench = ROOT / "bench" / "bench_serve.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--clients", "4", "--commands", "300"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lost 0, duplicates 0, unexpected 0" in proc.stdout
    assert "answered: 1176 commands, 24 garbage lines" in proc.stdout
