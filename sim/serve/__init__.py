"""`blocksim serve`: the simulator as a QMP (and NBD) endpoint for real clients.

`session` is one QMP monitor with no I/O (bytes in, messages out; its
`answer_bytes` feeds a monitor in-process), `jsonstream` QEMU's streaming
JSON reader, `wire` QEMU's JSON writer, `host` the simulated process shared
by all monitors (pacing, events), `record` the `--record-trace` writer and
`server` the asyncio sockets.
"""
