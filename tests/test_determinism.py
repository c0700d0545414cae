"""Same trace + seed = byte-identical output, whatever PYTHONHASHSEED is."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import IO

from tests.helpers import ROOT, SCENARIOS

DIFFERENTIAL_SAMPLE = 100  # of the 1,000+ traces of scenarios/differential (time)


def _paths() -> list[str]:
    """Every scenario folder, and a fixed sample of the differential corpus."""
    corpus = SCENARIOS / "differential"
    paths = [
        str(p.relative_to(ROOT))
        for p in sorted(SCENARIOS.iterdir())
        if p != corpus and (p.is_dir() or p.suffix == ".jsonl")
    ]
    sample = sorted(corpus.glob("*.jsonl"))[:DIFFERENTIAL_SAMPLE]
    return paths + [str(p.relative_to(ROOT)) for p in sample]


HASH_SEEDS = ("0", "1", "4242")


def _start(hashseed: str, out: IO[bytes], err: IO[bytes]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    return subprocess.Popen(
        [sys.executable, "-m", "sim", "replay", "--json", "--invariants", "all", *_paths()],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=err,
    )


def test_output_identical_across_hash_seeds() -> None:
    # the replays run side by side, each writing to its own file
    files = [(tempfile.TemporaryFile(), tempfile.TemporaryFile()) for _ in HASH_SEEDS]
    procs = [_start(seed, out, err) for seed, (out, err) in zip(HASH_SEEDS, files, strict=True)]
    outputs = []
    for proc, (out, err) in zip(procs, files, strict=True):
        proc.wait(timeout=600)
        out.seek(0)
        err.seek(0)
        assert proc.returncode in (0, 1), err.read().decode()[-2000:]
        outputs.append(out.read())
        out.close()
        err.close()
    assert len(outputs[0]) > 100_000
    assert outputs[0] == outputs[1] == outputs[2]
