"""One client script, two servers: an incremental-backup flow on QEMU 7.2 and on blocksim serve.

`tests/clients/incremental_backup.py` is written only against `qemu.qmp`
(plus `nbdinfo` for the pull-mode step); it runs unchanged against both and
every answer, every event and both `nbdinfo --map` outputs must be equal
(node names QEMU invents compared as #auto, as everywhere in blocksim).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.clients.incremental_backup import main
from tests.serve_helpers import blocksim_serve, have_qemu, real_qemu


def _auto(obj: object) -> object:
    return json.loads(re.sub(r"#block\d+", "#auto", json.dumps(obj)))


@pytest.mark.skipif(not have_qemu(), reason="needs qemu-system-x86_64 7.2")
@pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="needs libnbd-bin")
def test_incremental_backup_script_runs_unchanged_on_qemu_and_blocksim(tmp_path: Path) -> None:
    runs = {}
    for name, starter, extra in (
        ("qemu", real_qemu, ()),
        ("sim", blocksim_serve, ("--pace", "realtime:20")),
    ):
        folder = tmp_path / name
        folder.mkdir()
        with starter(folder, *extra) as sock:
            runs[name] = _auto(asyncio.run(main(str(sock), str(folder / "nbd.sock"))))
    qemu, sim = runs["qemu"], runs["sim"]
    assert isinstance(qemu, dict) and isinstance(sim, dict)
    for i, (q, s) in enumerate(zip(qemu["answers"], sim["answers"], strict=True)):
        assert q == s, f"answer {i} differs:\nqemu: {q}\nsim:  {s}"
    assert qemu["events"] == sim["events"]
    dirty = dict(qemu["answers"])["nbdinfo --map=qemu:dirty-bitmap:b0"]
    assert "5242880       65536    1  dirty" in dirty  # the write made before the snapshot
    assert len(qemu["events"]) > 20
