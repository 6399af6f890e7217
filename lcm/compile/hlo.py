"""What a compiled program does, read from its optimized HLO text.

Counts collectives by kind (with their result bytes and the bytes each device sends), Mosaic
kernels (``tpu_custom_call``) and host callbacks. Each is counted twice: ``ops`` as written in
the program, and ``executed`` with every op multiplied by the trip counts of the while loops
around it, which is what one step moves. A loop's trip count is XLA's ``known_trip_count`` when
recorded, else read from its condition when that is ``counter < constant`` (the loops of
``lax.scan``: layers, ring hops); loops with data-dependent conditions (a tile loop that skips
empty tiles) count once, and ``unknown_trip_loops`` says how many such loops there were.
Asynchronous collectives are counted once, at their ``-done`` half, whose result is the
collective's output; ``overlapped`` counts those whose ``-start`` and ``-done`` bracket
computation in the schedule (a dot or a fusion around one, a kernel call or a loop between
them: the transfer hides behind compute).

Result bytes overstate some collectives and understate others: a reduce-scatter's result is
1/g of what it reduces, an all-reduce's is the whole buffer. ``wire_bytes`` is what each device
sends under the bandwidth-optimal ring algorithms (Patarasuk & Yuan 2009, "Bandwidth optimal
all-reduce algorithms for clusters of workstations"), from the op's group size g: all-gather
and all-to-all (g-1)/g of the result, reduce-scatter (g-1) results, all-reduce 2(g-1)/g of the
result (a reduce-scatter then an all-gather), collective-permute its result. It is the figure
that compares strategies: XLA on TPU may compile a ``psum_scatter`` as an all-reduce and a
dynamic-slice: its result is g times a reduce-scatter's, but it sends only twice as much.
"""

from __future__ import annotations

import dataclasses
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}  # fmt: skip
_ARRAY = re.compile(r"\b(pred|[su](?:8|16|32|64)|bf16|f16|f32|f64|c64|f8\w*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) ([a-z][\w\-]*)\(")
_CALLS = re.compile(
    r"\b(?:calls|body|to_apply|true_computation|false_computation)=%?([\w.\-]+)"
    r"|branch_computations=\{([^}]*)\}"
)
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONSTANT = re.compile(r"^\s*%?([\w.\-]+) = s32\[\]\S* constant\((\d+)\)")
_LESS_THAN = re.compile(r"^\s*ROOT .* compare\(%?[\w.\-]+, %?([\w.\-]+)\), direction=LT")
_HOST = ("callback", "host_compute", "HostTransfer")
# Ops that hide a transfer: matrix work (a dot, or a fusion around one: kOutput / kCustom), a
# kernel call, or a loop; elementwise kLoop fusions do not count.
_COMPUTE = ("dot", "convolution", "custom-call", "while", "conditional", "call")
_HEAVY_FUSION = re.compile(r"\bkind=k(?:Output|Custom)\b")
_DONE_OF = re.compile(r"-done\(%?([\w.\-]+)")
_GROUPS_LISTED = re.compile(r"\breplica_groups=\{\{([\d,]*)\}")  # {{0,1,2,3},{4,5,6,7}}
_GROUPS_IOTA = re.compile(r"\breplica_groups=\[\d+,(\d+)\]<=")  # [2,4]<=[8], [2,4]<=[4,2]T(1,0)
_GROUPS_ALL = re.compile(r"\breplica_groups=\{\}")  # every device
# mesh['axis_0'=4,'axis_1'=16] {'axis_1'}: the groups span the braced axes (a sub-axis
# 'axis_1':(2)4 spans 4 of them; device_ids=(...) reorders devices, not group sizes)
_GROUPS_MESH = re.compile(r"\breplica_groups=mesh\[([^\]]*)\](?:, device_ids=\S*)? \{([^}]*)\}")
_MESH_AXIS = re.compile(r"'([^']+)'=(\d+)")
_GROUP_AXIS = re.compile(r"'([^']+)'(?::\((\d+)\)(\d+))?")
_PARTITIONS = re.compile(r"\bnum_partitions=(\d+)")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO result type: an array ``bf16[8,128]{...}`` or a tuple of them."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES.get(dtype, 1)
    return total


def group_size(line: str, devices: int) -> int:
    """Devices in each replica group of collective ``line`` (``devices`` when it names none)."""
    if iota := _GROUPS_IOTA.search(line):
        return int(iota.group(1))
    if listed := _GROUPS_LISTED.search(line):
        return listed.group(1).count(",") + 1
    mesh = _GROUPS_MESH.search(line)
    if mesh:
        sizes = {name: int(n) for name, n in _MESH_AXIS.findall(mesh.group(1))}
        group = 1
        for name, _, sub in _GROUP_AXIS.findall(mesh.group(2)):
            group *= int(sub) if sub else sizes[name]
        return group
    if "replica_groups=" in line and not _GROUPS_ALL.search(line):
        groups = line[line.index("replica_groups=") :][:120]
        raise ValueError(f"unrecognised {groups!r} in: {line.strip()[:120]}")
    return devices


def wire_bytes(kind: str, result_bytes: int, group: int) -> int:
    """Bytes each device sends for one ``kind`` collective over ``group`` devices (module doc)."""
    if kind == "collective-permute":
        return result_bytes
    share = {"all-gather": (group - 1) / group, "all-to-all": (group - 1) / group,
             "reduce-scatter": group - 1, "all-reduce": 2 * (group - 1) / group}  # fmt: skip
    if kind not in share:
        raise ValueError(f"kind must be one of {COLLECTIVES}, got {kind!r}")
    return round(result_bytes * share[kind])


@dataclasses.dataclass
class Count:
    ops: int = 0  # as written
    executed: int = 0  # times trip counts
    bytes: int = 0  # executed result bytes
    wire_bytes: int = 0  # executed bytes each device sends (``wire_bytes``)

    def add(self, times: int, nbytes: int, wire: int = 0) -> None:
        self.ops += 1
        self.executed += times
        self.bytes += times * nbytes
        self.wire_bytes += times * wire


@dataclasses.dataclass
class Summary:
    collectives: dict[str, Count]
    mosaic: Count  # Mosaic (Pallas TPU) kernel calls
    host_callbacks: Count  # ops that call back into the host (none may run in a train step)
    unknown_trip_loops: int = 0
    # async collectives whose start and done bracket computation in the schedule
    overlapped: dict[str, Count] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "collectives": {k: dataclasses.asdict(v) for k, v in self.collectives.items()},
            "mosaic_kernels": dataclasses.asdict(self.mosaic),
            "host_callbacks": dataclasses.asdict(self.host_callbacks),
            "unknown_trip_loops": self.unknown_trip_loops,
            "overlapped": {k: dataclasses.asdict(v) for k, v in self.overlapped.items()},
        }


def _computations(text: str) -> tuple[dict[str, list[str]], str]:
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and "=" not in line.split("{", 1)[0].split("(", 1)[0]:
            current = header.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None:
            comps[current].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


def _trip_count(line: str, comps: dict[str, list[str]]) -> int | None:
    """Iterations of the while loop ``line``, or None when they depend on data."""
    known = _TRIP.search(line)
    if known:
        return int(known.group(1))
    cond = re.search(r"\bcondition=%?([\w.\-]+)", line)
    body = comps.get(cond.group(1), []) if cond else []
    constants = dict(m.groups() for m in map(_CONSTANT.match, body) if m)
    for row in body:
        less = _LESS_THAN.match(row)
        if less and less.group(1) in constants:
            return int(constants[less.group(1)])
    return None


def summarize(text: str) -> Summary:
    """Collectives, Mosaic kernels and host callbacks of an optimized HLO module's text."""
    comps, entry = _computations(text)
    times: dict[str, int] = {}
    unknown = set()

    def visit(name: str, n: int) -> None:
        if name not in comps:
            return
        times[name] = times.get(name, 0) + n
        for line in comps[name]:
            inner = n
            if " while(" in line:
                trips = _trip_count(line, comps)
                unknown.update([] if trips is not None else [line])
                inner = n * (1 if trips is None else trips)
            for single, branches in _CALLS.findall(line):
                for callee in [single] if single else re.findall(r"%?([\w.\-]+)", branches):
                    visit(callee, inner)  # a loop's body runs trip-count times

    visit(entry, 1)
    partitions = _PARTITIONS.search(text.split("\n", 1)[0])
    devices = int(partitions.group(1)) if partitions else 1
    summary = Summary({k: Count() for k in COLLECTIVES}, Count(), Count(), len(unknown),
                      {k: Count() for k in COLLECTIVES})  # fmt: skip
    for name, n in times.items():
        computed_since: dict[str, bool] = {}  # open async starts: compute seen since?
        start_groups: dict[str, int] = {}  # async starts: their group size (the done has none)
        for line in comps[name]:
            match = _INSTR.match(line)
            if not match:
                continue
            shape, opcode = match.groups()
            base = opcode.removesuffix("-done")
            if opcode in _COMPUTE or (opcode == "fusion" and _HEAVY_FUSION.search(line)):
                computed_since = dict.fromkeys(computed_since, True)
            if opcode.endswith("-start"):
                started = line.split("=", 1)[0].strip().removeprefix("ROOT ").lstrip("%")
                computed_since[started] = False
                start_groups[started] = group_size(line, devices)
            if base in COLLECTIVES and not opcode.endswith("-start"):
                start = _DONE_OF.search(line)
                group = (
                    start_groups.get(start.group(1), devices)
                    if start
                    else group_size(line, devices)
                )
                nbytes = shape_bytes(shape)
                wire = wire_bytes(base, nbytes, group)
                summary.collectives[base].add(n, nbytes, wire)
                if start and computed_since.pop(start.group(1), False):
                    summary.overlapped[base].add(n, nbytes, wire)
            elif opcode == "custom-call":
                if 'custom_call_target="tpu_custom_call"' in line:
                    summary.mosaic.add(n, 0)
                elif any(h in line for h in _HOST):
                    summary.host_callbacks.add(n, 0)
            elif opcode in ("send", "recv") and "is_host_transfer=true" in line:
                summary.host_callbacks.add(n, 0)
    return summary
