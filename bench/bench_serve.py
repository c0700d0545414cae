"""Load test of `blocksim serve`: many QMP clients on loopback, no lost answer, flat memory.

N clients (default 16) connect at once to one `blocksim serve` (a
subprocess, loopback TCP), negotiate, and each sends M commands (default
10,000) pipelined 32 at a time without newlines: queries, bitmap add /
clear / remove of the client's own bitmaps, guest writes through HMP
qemu-io, bitmap hashes, and one line of garbage in every 50.  Every request
carries an id; the run fails if any id is not answered exactly once or an
answer is not the expected kind (`return` for commands, a JSON parse error
for garbage).

Figures printed: commands per second, and the server's resident memory
(VmRSS) when the clients connect, after half the commands and at the end.
Targets: 0 lost answers; memory at the end within 1.25x of memory at half
time (flat: nothing grows per command); throughput is reported, not judged.

    python bench/bench_serve.py [--clients N] [--commands M]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DRIVE = "id=drive0,node-name=fmt0,file-node-name=proto0,format=qcow2,size=1G"
WINDOW = 32
GARBAGE_EVERY = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def request(client: int, i: int) -> tuple[bytes, str]:
    """The i-th request of a client and the answer kind it must get."""
    rid = f"c{client}-{i}"
    if i % GARBAGE_EVERY == GARBAGE_EVERY - 1:
        return b"{nonsense}", "garbage"
    kind = i % 6
    bitmap = f"c{client}b{(i // 6) % 4}"
    if kind == 0:
        cmd: dict[str, Any] = {"execute": "query-version"}
    elif kind == 1:
        cmd = {"execute": "block-dirty-bitmap-add", "arguments": {"node": "fmt0", "name": bitmap}}
    elif kind == 2:
        line = f'qemu-io drive0 "write -P {client % 250} {(i * 4096) % (1 << 30)} 4k"'
        cmd = {"execute": "human-monitor-command", "arguments": {"command-line": line}}
    elif kind == 3:
        cmd = {
            "execute": "x-debug-block-dirty-bitmap-sha256",
            "arguments": {"node": "fmt0", "name": bitmap},
        }
    elif kind == 4:
        cmd = {"execute": "query-block"}
    else:
        cmd = {
            "execute": "block-dirty-bitmap-remove",
            "arguments": {"node": "fmt0", "name": bitmap},
        }
    cmd["id"] = rid
    return json.dumps(cmd).encode(), "return"


async def client(port: int, index: int, commands: int, progress: list[int]) -> dict[str, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # greeting
    writer.write(b'{"execute": "qmp_capabilities"}')
    await reader.readline()
    answered: dict[str, int] = {}
    stats = {"ok": 0, "garbage": 0, "bad": 0}
    expected = {}
    sent = 0
    garbage_pending = 0
    while sent < commands or len(expected) + garbage_pending > 0:
        while sent < commands and len(expected) + garbage_pending < WINDOW:
            data, kind = request(index, sent)
            if kind == "garbage":
                garbage_pending += 1
            else:
                expected[f"c{index}-{sent}"] = kind
            writer.write(data)
            sent += 1
        await writer.drain()
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)
        if "event" in msg:
            continue
        rid = msg.get("id")
        if rid is None:
            if "JSON parse error" in msg.get("error", {}).get("desc", ""):
                stats["garbage"] += 1
                garbage_pending -= 1
            else:
                stats["bad"] += 1
            continue
        answered[rid] = answered.get(rid, 0) + 1
        if expected.pop(rid, None) is None:
            stats["bad"] += 1
        else:
            stats["ok"] += 1
        progress[0] += 1
    writer.close()
    stats["lost"] = len(expected) + garbage_pending + (commands - sent)
    stats["duplicates"] = sum(1 for n in answered.values() if n > 1)
    return stats


async def run(clients: int, commands: int, pid: int, port: int) -> dict[str, Any]:
    progress = [0]
    rss = {"start": rss_kib(pid)}
    total = clients * commands * (GARBAGE_EVERY - 1) // GARBAGE_EVERY

    async def sampler() -> None:
        while progress[0] < total // 2:
            await asyncio.sleep(0.05)
        rss["half"] = rss_kib(pid)

    t0 = time.perf_counter()
    sample = asyncio.create_task(sampler())
    results = await asyncio.gather(*(client(port, c, commands, progress) for c in range(clients)))
    wall = time.perf_counter() - t0
    rss["end"] = rss_kib(pid)
    sample.cancel()
    summary = {k: sum(r[k] for r in results) for k in results[0]}
    return {"wall_s": wall, "rss_kib": rss, **summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--commands", type=int, default=10_000)
    ap.add_argument(
        "--json",
        metavar="FILE",
        help="also write the figures as JSON (bench/results/serve.json is what README.md's "
        "load paragraph is rendered from: scripts/readme_numbers.py)",
    )
    args = ap.parse_args()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "sim", "serve", "--tcp", f"127.0.0.1:{port}", "--drive", DRIVE]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # up to 60 s: a loaded machine starts Python slowly
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        out = asyncio.run(run(args.clients, args.commands, proc.pid, port))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    n = args.clients * args.commands
    rss = out["rss_kib"]
    growth = rss["end"] / max(rss.get("half", rss["end"]), 1)
    print(f"{args.clients} clients x {args.commands} commands = {n} requests")
    print(
        f"  answered: {out['ok']} commands, {out['garbage']} garbage lines; lost {out['lost']}, "
        f"duplicates {out['duplicates']}, unexpected {out['bad']}   (target: 0 lost)"
    )
    print(f"  throughput: {n / out['wall_s']:.0f} requests/s ({out['wall_s']:.1f} s wall)")
    print(f"  server RSS: {rss['start'] / 1024:.1f} MiB at start, "
          f"{rss.get('half', 0) / 1024:.1f} MiB at half, {rss['end'] / 1024:.1f} MiB at end; "
          f"end/half = {growth:.3f} (target <= 1.25)")  # fmt: skip
    ok = out["lost"] == 0 and out["bad"] == 0 and out["duplicates"] == 0 and growth <= 1.25
    print("PASS" if ok else "FAIL")
    if args.json:
        shown = " ".join(["python", "bench/bench_serve.py", *sys.argv[1:]])
        doc = {
            "command": shown.split(" --json")[0],
            "clients": args.clients,
            "commands": args.commands,
            "requests": n,
            "lost": out["lost"],
            "duplicates": out["duplicates"],
            "unexpected": out["bad"],
            "wall_s": round(out["wall_s"], 1),
            "requests_per_s": round(n / out["wall_s"]),
            "rss_mib": {k: round(v / 1024, 1) for k, v in rss.items()},
            "end_over_half": round(growth, 3),
            "load_average": round(os.getloadavg()[0], 1),
            "cores": os.cpu_count(),
            "passed": ok,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
