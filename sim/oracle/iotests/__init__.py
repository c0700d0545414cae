"""A small stand-in for QEMU's tests/qemu-iotests `iotests` module.

`blocksim export-iotest` writes tests against the `iotests` API; this
folder holds `iotests.py`, the part of that API the exported tests use, so
they run here without a QEMU source tree (put this folder on PYTHONPATH).
Dropped into QEMU's tests/qemu-iotests/tests/, the same file runs with
QEMU's own module.
"""
