"""Metric logging (``metrics.jsonl`` + TensorBoard via tensorboardX), throughput and MFU.

MFU = tokens/s x model FLOPs per token / (devices x per-device peak FLOP/s).

Model FLOPs per token are ``6 x (matmul parameters)`` for the dense layers plus the attention
score/value products, with causal attention counted at half (PaLM appendix B, Chowdhery et al.
2022); recomputation (remat) is not counted. The per-device peak is the chip's dense peak for
the compute dtype from ``lcm.chips`` (TPU, NVIDIA GPU), or ``config.train.peak_flops`` when set.
Simulated CPU devices share one host's cores, so on CPU the denominator is the host's measured
float32 matmul peak once, whatever the device count.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
from tensorboardX import SummaryWriter

from lcm import chips


def train_flops_per_token(spec, seq_len: int) -> float:
    """Forward+backward model FLOPs per trained token (no rematerialization counted)."""
    d, n, k, h, f = spec.d_model, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.mlp_dim
    per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * f
    matmul_params = spec.num_layers * per_layer + d * spec.vocab_size
    causal_fraction = 0.5 if spec.causal else 1.0
    # QK^T and PV: 2 matmuls x 2 flops x seq_len x N x H per token per layer, in the forward.
    attention_fwd = 4 * seq_len * n * h * spec.num_layers * causal_fraction
    return 6.0 * matmul_params + 3.0 * attention_fwd


def peak_flops(devices, dtype: str, per_device: float = 0.0) -> float:
    """The MFU denominator: total peak FLOP/s of ``devices`` for compute ``dtype``.

    ``per_device`` (``config.train.peak_flops``) overrides the table; on CPU it is the host's
    peak, which all simulated devices share.

    Raises:
      ValueError: an accelerator ``lcm.chips`` does not know, with no ``per_device`` given.
    """
    devices = list(devices)
    if devices[0].platform == "cpu":
        return per_device or measure_peak_flops()
    if not per_device:
        chip = chips.for_device(devices[0])
        if chip is None:
            raise ValueError(
                f"config.train.peak_flops = 0 and device kind {devices[0].device_kind!r} is not "
                "in lcm.chips; set train.peak_flops to its per-chip peak FLOP/s"
            )
        per_device = chip.peak_flops(dtype)
    return len(devices) * per_device


def measure_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """Best observed float32 matmul FLOP/s on the default device (after one warm-up)."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


class MetricWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors to TensorBoard.

    Only process 0 writes. On resume at step ``k`` the JSONL lines after ``k`` (written by the
    interrupted run after its last checkpoint) are dropped, as are lines torn by a kill mid-write,
    so the file always holds exactly one record per logged step of the run that produced the
    checkpoint history.
    """

    def __init__(self, workdir: str | pathlib.Path, *, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill mid-write
                if resume_step is not None and record.get("step", 0) <= resume_step:
                    keep.append(line)
            # Atomic: a kill during this rewrite leaves the old file or the new one, never less.
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(f"{line}\n" for line in keep))
            os.replace(tmp, self.path)
        self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
