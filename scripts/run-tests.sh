#!/usr/bin/env bash
# Install what the tests need on a fresh machine, then lint and run them.
# Real QEMU 7.2 (qemu-system-x86, qemu-utils) and headless Chromium come from
# Debian's packages; the tests that need them skip when they cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
# nbdinfo and nbdcopy: the NBD clients blocksim serve's exports are compared with
command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${need[@]}") >/tmp/blocksim-apt.log 2>&1 \
        || echo "warning: could not install ${need[*]} (see /tmp/blocksim-apt.log); their tests will skip"
fi
python3 -m pip install -q -e ".[test]" 2>&1 | grep -v -i "warning: running pip as" || true

ruff check .
ruff format --check .
mypy sim
lint-imports
python3 -m pytest -q "$@"
# Fuzzer power, only when the whole suite is asked for (no arguments), as CI does: the
# default campaign against the 34 one-rule mutants, at most 60 s each, and the table of
# what it found (about 2-3 minutes on a quiet 2-core machine; tests/test_fuzz_power.py); every
# mutant must be found (this replaced the older 11-mutant matrix).
if [ "$#" -eq 0 ]; then
    python3 -m pytest -q -s -m slow tests/test_fuzz_power.py
    # README.md's policy x invariant matrix against `blocksim matrix` now (about a minute)
    python3 -m pytest -q -m slow tests/test_readme_numbers.py
fi
