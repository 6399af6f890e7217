"""Accelerator facts for memory-fit, roofline and MFU figures: the one table of them in lcm.

Per chip (one JAX device): HBM capacity, dense bfloat16 peak, HBM bandwidth.

- TPUs, as Google Cloud's system-architecture pages state them (cloud.google.com/tpu/docs/v4,
  /v5e, /v5p, /v6e, read 2026-12). v4 and v5p chips have two TensorCores that JAX runs as one
  megacore device (``lcm.compile.topology`` asks for that layout), so one device is one chip.
  A float32 matmul at JAX's default precision runs as bfloat16 passes on a TPU, so the bf16
  peak is the peak for float32 compute too.
- NVIDIA GPUs, from NVIDIA's datasheets (A100: "NVIDIA A100 Tensor Core GPU" datasheet; H100
  and H200: the H100 / H200 Tensor Core GPU datasheets, SXM parts): dense (not 2:4 sparse)
  BF16 and TF32 tensor-core peaks; float32 compute is counted at the TF32 peak, the tensor-core
  path XLA uses for float32 matmuls on these GPUs.
"""

from __future__ import annotations

import dataclasses
import re

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # TPU topology-name prefix (v4, v5e, v5p, v6e) or GPU name
    device_kind: str  # jax Device.device_kind (a GPU's kind starts with it)
    hbm_bytes: int
    bf16_flops: float  # dense peak, FLOP/s
    hbm_bytes_per_s: float
    f32_flops: float | None = None  # None: float32 runs at the bf16 peak (TPU)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for compute dtype ``"bfloat16"`` or ``"float32"``."""
        if dtype == "float32" and self.f32_flops is not None:
            return self.f32_flops
        return self.bf16_flops


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275e12, 1228e9),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 197e12, 819e9),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459e12, 2765e9),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, 918e12, 1640e9),
}
GPUS = {
    "a100": Chip("a100", "NVIDIA A100", 80 * GIB, 312e12, 2039e9, f32_flops=156e12),
    "h100": Chip("h100", "NVIDIA H100", 80 * GIB, 989e12, 3350e9, f32_flops=494e12),
    "h200": Chip("h200", "NVIDIA H200", 141 * GIB, 989e12, 4800e9, f32_flops=494e12),
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


def for_device(device) -> Chip | None:
    """The chip of a TPU or NVIDIA GPU device (None when this table does not know it)."""
    kind = device.device_kind
    for chip in CHIPS.values():
        if kind == chip.device_kind:
            return chip
    for chip in GPUS.values():
        if kind.startswith(chip.device_kind):
            return chip
    return None
