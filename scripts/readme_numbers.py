"""Regenerate the numbers of README.md from the commands the README shows.

README.md marks each generated region with HTML comments:

    <!-- numbers:NAME (command that produced it) -->
    ...generated text...
    <!-- /numbers:NAME -->

and this script rewrites the text between them.  Regions:

- `layout`: every folder under scenarios/ and what it holds (cheap);
- `matrix`: the policy x invariant table and its trace count, the output of
  `blocksim matrix` over scenarios/ (replays every trace under every policy
  with every checker; expensive, a few minutes).

Usage (from the repository's root):

    python3 scripts/readme_numbers.py            # rewrite every region
    python3 scripts/readme_numbers.py --cheap    # only the cheap ones
    python3 scripts/readme_numbers.py --check    # exit 1 when a region is stale

tests/test_readme_numbers.py checks the cheap region for equality and the
expensive one for its shape (every checker and policy, each cell `holds` or a
breaking trace that exists with its step count, a trace count within 10% of
the corpus').
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# What each folder of scenarios/ holds; a folder without an entry fails the test.
SCENARIO_FOLDERS = {
    "blockapi": "block API commands (blockdev-create, blockdev-reopen, block_resize, "
    "change-backing-file, write thresholds, copy-on-read, blkdebug), recorded on QEMU 7.2",
    "checkers": "hand-written traces that break each invariant checker (some under "
    "`qemu-2.5`, `bb-attached` or `node-only`)",
    "differential": "traces of the differential campaign whose answers match QEMU 7.2, "
    "recorded on it",
    "engine": "block jobs under guest workloads, rate limits and injected faults "
    "(the timelines of the report)",
    "iotests": "qemu-iotests 236 and 281 as traces, recorded on QEMU 7.2",
    "known-differences": "where the model knowingly differs from QEMU 7.2, the "
    "difference pinned (`differential/`: the differential campaign's open classes)",
    "libvirt": "libvirt's block job and backup flows, recorded on QEMU 7.2",
    "nbd": "NBD exports, recorded on QEMU 7.2",
    "qemu-7.2": "hand-written bitmap and job traces recorded on QEMU 7.2 (`generated/`: "
    "seeded random ones); see its README.md",
    "qemu-7.2-recorded": "mostly random traces of sim/fuzz/tracegen.py, recorded on QEMU 7.2",
    "races": "races whose answers do not depend on timing, recorded on QEMU 7.2",
    "recorded": "single QEMU 7.2 behaviours recorded while fixing the model",
    "thread": "the 2016 qemu-block thread's headline: a snapshot makes `(drive0, b0)` "
    "unreachable under `qemu-7.2`, not under `bb-attached`",
}


def layout_region(root: Path = ROOT) -> str:
    """The scenario folders, one line each with what it holds.  No trace counts: folders
    gain scenarios all the time, and the matrix line below the table counts them."""
    scenarios = root / "scenarios"
    lines = ["| folder | what |", "|---|---|"]
    for folder in sorted(p for p in scenarios.iterdir() if p.is_dir()):
        what = SCENARIO_FOLDERS.get(
            folder.name, "(undescribed: add it to scripts/readme_numbers.py)"
        )
        lines.append(f"| `scenarios/{folder.name}/` | {what} |")
    return "\n".join(lines)


def matrix_region(root: Path = ROOT) -> str:
    """`blocksim matrix` over scenarios/: the table and its trace count."""
    sys.path.insert(0, str(root))
    from sim.matrix import markdown, policy_matrix

    files = sorted((root / "scenarios").rglob("*.jsonl"))
    result = policy_matrix(files)
    text = markdown(result)
    return text.replace(f"{root}/", "")


REGIONS: dict[str, tuple[Callable[[], str], bool]] = {
    # name: (generator, cheap)
    "layout": (layout_region, True),
    "matrix": (matrix_region, False),
}

MARK = re.compile(
    r"(?P<open><!-- numbers:(?P<name>[a-z-]+)[^>]*-->\n)(?P<body>.*?)(?P<close><!-- /numbers:(?P=name) -->)",
    re.DOTALL,
)


def regions(text: str) -> dict[str, str]:
    """The generated regions of README text: name -> body (without its markers)."""
    return {m["name"]: m["body"].rstrip("\n") for m in MARK.finditer(text)}


def rewrite(text: str, bodies: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        body = bodies.get(m["name"])
        if body is None:
            return m[0]
        return f"{m['open']}{body}\n{m['close']}"

    return MARK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a region is stale")
    parser.add_argument("--cheap", action="store_true", help="only the cheap regions")
    args = parser.parse_args(argv)
    text = README.read_text()
    present = regions(text)
    missing = sorted(set(REGIONS) - set(present))
    if missing:
        print(f"README.md has no region {missing}", file=sys.stderr)
        return 2
    bodies = {name: gen() for name, (gen, cheap) in REGIONS.items() if cheap or not args.cheap}
    stale = sorted(name for name, body in bodies.items() if present[name] != body)
    if args.check:
        for name in stale:
            print(f"README.md region {name!r} is stale: run scripts/readme_numbers.py")
        return 1 if stale else 0
    README.write_text(rewrite(text, bodies))
    print(
        f"rewrote {', '.join(sorted(bodies))}" + (f" ({', '.join(stale)} changed)" if stale else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
