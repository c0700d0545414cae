"""blocksim: a deterministic simulator and fuzzer for QEMU's block layer."""
