"""Sim-only trace steps as the engine takes them: `workload`, `fault`, `until`.

A trace's sim-only step is a JSON object (docs/sim-only-steps.md).  This module
checks one against the machine it is about to run on and turns it into what the
engine runs (`sim.engine.workload.WorkloadSpec`, `sim.engine.faults.Fault`,
`sim.engine.until.Until`); anything wrong is a TraceError with the step's line,
in the words the trace format uses.  The engine itself knows nothing of traces.
"""

from __future__ import annotations

import math
from typing import Any

from sim.engine.faults import FAULT_KEYS, MAX_COUNT, Fault
from sim.engine.machine import NS_PER_S, Machine
from sim.engine.until import DEFAULT_LIMIT_S, POINTS, Until
from sim.engine.workload import (
    MAX_DURATION_S,
    MAX_MACHINE_OPS,
    MAX_OPS,
    MAX_RATE,
    MAX_REQUEST_BYTES,
    MIN_RATE,
    PATTERNS,
    REQUIRED,
    WORKLOAD_KEYS,
    WorkloadSpec,
)
from sim.errors import TraceError
from sim.model.content import DEFAULT_PATTERN, SECTOR
from sim.model.graph import BlockGraph, BlockNode
from sim.model.job_flow import STRERROR


def parse_workload(m: Machine, body: dict[str, Any], line: int) -> WorkloadSpec:
    """Validate a `workload` step's object against the machine; raises TraceError."""
    extra = sorted(set(body) - set(WORKLOAD_KEYS))
    if extra:
        raise TraceError(
            f"workload: unknown key(s) {extra}; a workload takes {list(WORKLOAD_KEYS)}", line
        )
    missing = [k for k in REQUIRED if k not in body]
    if missing:
        raise TraceError(f"workload: missing {missing}; required: {list(REQUIRED)}", line)
    device = body["device"]
    if not isinstance(device, str) or not device:
        raise TraceError(f"workload: 'device' must be a device or node name, got {device!r}", line)
    bb, root = m.state.resolve_target(device)
    if root is None:
        known = sorted(m.state.graph.backends) + [n.node_name for n in m.state.graph.nodes]
        raise TraceError(
            f"workload: no device or node named {device!r} (known: {', '.join(known)})", line
        )
    pattern = body["pattern"]
    if pattern not in PATTERNS:
        raise TraceError(
            f"workload: 'pattern' must be one of {list(PATTERNS)}, got {pattern!r}", line
        )
    rate = _workload_number(body, "rate", line)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise TraceError(
            f"workload: 'rate' must be in [{MIN_RATE:g}, {MAX_RATE:.0f}] requests per second, "
            f"got {rate!r}",
            line,
        )
    size = body["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % SECTOR:
        raise TraceError(
            f"workload: 'size' must be a positive multiple of 512 bytes, got {size!r}", line
        )
    if size > MAX_REQUEST_BYTES:
        raise TraceError(
            f"workload: 'size' {size} is more than a guest request may be "
            f"({MAX_REQUEST_BYTES} bytes, QEMU's BDRV_REQUEST_MAX_BYTES)",
            line,
        )
    if size > root.size_bytes:
        raise TraceError(
            f"workload: 'size' {size} is larger than {device!r} ({root.size_bytes} bytes)", line
        )
    duration = _workload_number(body, "duration", line)
    if not 0 < duration <= MAX_DURATION_S:
        raise TraceError(
            f"workload: 'duration' must be in (0, {MAX_DURATION_S:.0f}] seconds, got {duration!r}",
            line,
        )
    if rate * duration > MAX_OPS:
        raise TraceError(
            f"workload: rate * duration = {rate * duration:.0f} requests, more "
            f"than the {MAX_OPS} a workload may issue; lower one of them",
            line,
        )
    earlier = sum(w.spec.rate * w.spec.duration_ns / NS_PER_S for w in m.workloads)
    if earlier + rate * duration > MAX_MACHINE_OPS:
        raise TraceError(
            f"workload: with the {earlier:.0f} requests earlier workloads issue, "
            f"{rate * duration:.0f} more pass the {MAX_MACHINE_OPS} one trace may issue",
            line,
        )
    ratio = _workload_number(body, "read-ratio", line, 0.0)
    if not 0.0 <= ratio <= 1.0:
        raise TraceError(f"workload: 'read-ratio' must be between 0 and 1, got {ratio!r}", line)
    fill = body.get("fill", DEFAULT_PATTERN)
    if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
        raise TraceError(f"workload: 'fill' must be a byte (0-255), got {fill!r}", line)
    if ratio < 1.0 and root.read_only:
        raise TraceError(
            f"workload: {device!r} is read-only and read-ratio is {ratio} "
            f"(writes would fail); use read-ratio 1 or a writable device",
            line,
        )
    return WorkloadSpec(
        device,
        pattern,
        float(rate),
        size,
        int(round(duration * NS_PER_S)),
        float(ratio),
        fill,
        line,
    )


def _workload_number(
    body: dict[str, Any], key: str, line: int, default: float | None = None
) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TraceError(f"workload: {key!r} must be a number, got {value!r}", line)
    return float(value)


def parse_fault(m: Machine, spec: dict[str, Any], line: int) -> Fault:
    """Validate a `fault` step's object against the machine; raises TraceError."""
    extra = sorted(set(spec) - set(FAULT_KEYS))
    if extra:
        raise TraceError(f"fault: unknown key(s) {extra}; a fault takes {list(FAULT_KEYS)}", line)
    name = spec.get("node")
    if not isinstance(name, str) or not name:
        raise TraceError(f"fault: 'node' must be a node-name or device name, got {name!r}", line)
    node = resolve_node(m.state.graph, name)
    if node is None:
        raise TraceError(
            f"fault: no node or device named {name!r} (nodes: "
            f"{', '.join(n.node_name for n in m.state.graph.nodes)})",
            line,
        )
    op = spec.get("op")
    if op not in ("read", "write"):
        raise TraceError(f'fault: \'op\' must be "read" or "write", got {op!r}', line)
    errno = spec.get("errno", "EIO")
    if not isinstance(errno, str) or errno not in STRERROR:
        raise TraceError(f"fault: 'errno' must be one of {sorted(STRERROR)}, got {errno!r}", line)
    offset = _fault_int(spec, "offset", 0, line)
    length = _fault_int(spec, "length", node.size_bytes - offset, line)
    if offset >= node.size_bytes or length <= 0:
        raise TraceError(
            f"fault: [offset, offset+length) = [{offset}, {offset + length}) is "
            f"empty or past the end of {name!r} ({node.size_bytes} bytes)",
            line,
        )
    count = _fault_int(spec, "count", 1, line)
    if not 1 <= count <= MAX_COUNT:
        raise TraceError(f"fault: 'count' must be from 1 to 2^31, got {count}", line)
    return Fault(node, op, errno, offset, length, count, line)


def _fault_int(spec: dict[str, Any], key: str, default: int, line: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TraceError(
            f"fault: {key!r} must be a non-negative integer (bytes), got {value!r}", line
        )
    return value


def resolve_node(graph: BlockGraph, name: str) -> BlockNode | None:
    """A node-name, or a device: the node holding its data (filters skipped)."""
    bb = graph.backends.get(name)
    if bb is not None and bb.root is not None:
        return graph.data_node(bb.root)
    return graph.node(name)


def parse_until(body: dict[str, Any], line: int) -> Until:
    """Check an `until` body: job (string), point, fraction (progress only), limit."""
    extra = sorted(set(body) - {"job", "point", "fraction", "limit"})
    if extra:
        raise TraceError(f"until: unknown key(s) {extra}", line)
    job, point = body.get("job"), body.get("point")
    if not isinstance(job, str):
        raise TraceError("until: 'job' must be a job id (a string)", line)
    if point not in POINTS:
        raise TraceError(f"until: 'point' must be one of {', '.join(POINTS)}, got {point!r}", line)
    fraction = body.get("fraction", 0.5)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not 0 <= fraction <= 1
    ):
        raise TraceError(f"until: 'fraction' must be a number from 0 to 1, got {fraction!r}", line)
    limit = body.get("limit", DEFAULT_LIMIT_S)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 86400:
        raise TraceError(f"until: 'limit' must be seconds in (0, 86400], got {limit!r}", line)
    return Until(job, str(point), float(fraction), int(round(float(limit) * NS_PER_S)))
