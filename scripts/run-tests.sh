#!/usr/bin/env bash
# Install what the tests need on a fresh machine, then lint and run them.
# Real QEMU 7.2 comes from Debian's packages; tests that need it skip when it
# cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-img >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            qemu-system-x86 qemu-utils) >/tmp/blocksim-apt.log 2>&1 \
            || echo "warning: could not install QEMU (see /tmp/blocksim-apt.log); QEMU tests will skip"
    fi
fi
# Headless Chromium renders the report page in tests/test_report.py (skipped when absent).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
        >>/tmp/blocksim-apt.log 2>&1 || echo "warning: could not install chromium; the browser test will skip"
fi
python3 -m pip install -q -e ".[test]" 2>&1 | grep -v -i "warning: running pip as" || true

ruff check .
ruff format --check .
python3 -m pytest -q "$@"
