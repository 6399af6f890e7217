"""TPU chip facts for memory-fit and roofline reports: the one table of them in lcm.

Per chip (one JAX device): HBM capacity, dense bfloat16 peak and HBM bandwidth, as Google Cloud's
TPU system-architecture pages state them (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e, read
2026-12). v4 and v5p chips have two TensorCores that JAX runs as one megacore device
(``topology.devices`` asks for that layout), so one device is one chip everywhere.
"""

from __future__ import annotations

import dataclasses
import re

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # topology-name prefix: v4, v5e, v5p, v6e
    device_kind: str  # jax Device.device_kind of the compile-only devices
    hbm_bytes: int
    bf16_flops: float  # dense peak, FLOP/s
    hbm_bytes_per_s: float


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275e12, 1228e9),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 197e12, 819e9),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459e12, 2765e9),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, 918e12, 1640e9),
}

_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
    """``"v5p:4x4x4"`` -> (the v5p chip, (4, 4, 4)); a clear error for anything else."""
    match = _TOPOLOGY.match(name)
    if not match:
        raise ValueError(
            f"topology = {name!r}: expected <chip>:<dims> with chip one of "
            f"{', '.join(CHIPS)}, e.g. v5e:2x2, v4:2x2x1, v5p:4x4x4, v6e:16x16"
        )
    return CHIPS[match.group(1)], tuple(int(d) for d in match.group(2).split("x"))
