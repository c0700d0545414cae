"""Generate random traces with sim.fuzz.tracegen and record them on real QEMU 7.2.

Run from the repository root (no arguments; edit the constants below):

    python fuzz/record_corpus.py

Every seed from FIRST_SEED on gives one trace (10-40 steps, all areas).  Each
trace is recorded twice with sim.oracle.record.record_trace; it is kept only
if both recordings are byte-identical, and written to
scenarios/qemu-7.2-recorded/rec-NNNN.jsonl (numbered in seed order, the seed
is in the header).  Traces whose recording fails (QEMU refused a step, a
wait timed out, QEMU died) or differs between the two runs are skipped and
reported with the first differing step, so that the construct behind it can
be fixed in the generator.  The run stops at COUNT kept traces or when the
folder would exceed MAX_BYTES.  Also reported: steps where QEMU's answer
(return / error / event) differs from what the generator's model expected.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.fuzz.tracegen import generate_with_predictions  # noqa: E402
from sim.oracle.record import record_trace  # noqa: E402
from sim.trace import dumps  # noqa: E402

OUT_DIR = ROOT / "scenarios" / "qemu-7.2-recorded"
COUNT = 400  # traces to keep
FIRST_SEED = 1
MAX_BYTES = 5_000_000
WORKERS = 3
WAIT_TIMEOUT_S = 15.0
BATCH = 24  # seeds handed to the workers at a time


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def steps_for(seed: int) -> int:
    """The length of the trace for `seed` (10-40 steps, like the reference traces)."""
    return random.Random(f"steps-{seed}").randint(10, 40)


def record(seed: int) -> dict[str, object]:
    """Generate the trace of `seed`, record it twice; the outcome as a plain dict."""
    steps, predictions = generate_with_predictions(seed, None, steps_for(seed))
    with tempfile.TemporaryDirectory(prefix="blocksim-corpus-") as tmp:
        src = Path(tmp) / "trace.jsonl"
        src.write_text("\n".join(dumps(s) for s in steps) + "\n", encoding="utf-8")
        texts = []
        for run in (1, 2):
            out = Path(tmp) / f"run{run}.jsonl"
            for attempt in (1, 2):
                try:
                    record_trace(src, out, wait_timeout_s=WAIT_TIMEOUT_S)
                    break
                except Exception as exc:  # TraceError, OracleError, QemuDied: all mean "skip"
                    if attempt == 1 and "did not come up" in str(exc):
                        continue  # QEMU was slow to start on a busy host: try once more
                    return {"seed": seed, "status": "failed", "why": f"run {run}: {exc}"}
            texts.append(out.read_text(encoding="utf-8"))
    if texts[0] != texts[1]:
        return {"seed": seed, "status": "nondeterministic", "why": first_difference(*texts)}
    return {
        "seed": seed,
        "status": "ok",
        "text": texts[0],
        "surprises": surprises(texts[0], predictions),
    }


def first_difference(a: str, b: str) -> str:
    """The first line where two recordings differ, and the command on it."""
    for number, (x, y) in enumerate(zip(a.splitlines(), b.splitlines(), strict=False), 1):
        if x != y:
            if x.startswith('{"final-expect"'):
                return f"final-expect differs: {diff_final(x, y)}"
            return f"line {number}: {x[:300]}\n    vs: {y[:300]}"
    return "different number of lines"


def diff_final(x: str, y: str) -> str:
    fx, fy = json.loads(x)["final-expect"], json.loads(y)["final-expect"]
    for key in fx:
        if fx[key] != fy.get(key):
            if key == "events":
                for i, (ex, ey) in enumerate(zip(fx[key], fy[key], strict=False)):
                    if ex != ey:
                        return f"events[{i}]: {json.dumps(ex)} vs {json.dumps(ey)}"
            return f"{key}: {json.dumps(fx[key])[:300]} vs {json.dumps(fy.get(key))[:300]}"
    return "?"


def surprises(text: str, predictions: list[str | None]) -> list[str]:
    """Steps whose answer is not the kind (ok / error / event) the model predicted."""
    lines = [json.loads(line) for line in text.splitlines()[1:-1]]
    out = []
    for step, predicted in zip(lines, predictions, strict=True):
        expect = step.get("expect", {})
        got = "event" if "event" in expect else "error" if "error" in expect else "ok"
        if predicted is not None and predicted != got:
            body = {k: v for k, v in step.items() if k != "expect"}
            out.append(
                f"expected {predicted}, got {json.dumps(expect)[:200]}: {json.dumps(body)[:300]}"
            )
    return out


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    kept, total, seed = 0, 0, FIRST_SEED
    skipped: list[dict[str, object]] = []
    surprised = 0
    with ProcessPoolExecutor(WORKERS) as pool:
        while kept < COUNT:
            seeds = list(range(seed, seed + BATCH))
            seed += BATCH
            for result in pool.map(record, seeds):  # in seed order: stable numbering
                if kept >= COUNT:
                    break
                if result["status"] != "ok":
                    skipped.append(result)
                    say(f"seed {result['seed']}: {result['status']}: {result['why']}")
                    continue
                text = str(result["text"])
                if total + len(text.encode()) > MAX_BYTES:
                    say(f"size limit reached ({total} bytes)")
                    return report(kept, skipped, surprised)
                kept += 1
                name = f"rec-{kept:04d}"
                header, rest = text.split("\n", 1)
                head = json.loads(header)
                head["name"] = name
                (OUT_DIR / f"{name}.jsonl").write_text(dumps(head) + "\n" + rest, encoding="utf-8")
                total += len(text.encode())
                for line in result["surprises"]:  # type: ignore[union-attr]
                    surprised += 1
                    say(f"seed {result['seed']} ({name}): model {line}")
    return report(kept, skipped, surprised)


def report(kept: int, skipped: list[dict[str, object]], surprised: int) -> int:
    failed = [s for s in skipped if s["status"] == "failed"]
    flaky = [s for s in skipped if s["status"] == "nondeterministic"]
    say(
        f"kept {kept} traces in {os.path.relpath(OUT_DIR, ROOT)}; skipped {len(failed)} failed "
        f"and {len(flaky)} nondeterministic recordings; {surprised} answers the model did "
        "not expect"
    )
    for item in flaky:
        say(f"  nondeterministic: seed {item['seed']}: {item['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
