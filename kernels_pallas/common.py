"""Helpers shared by the kernels: interpret-mode validation and input validation."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.pallas import tpu as pltpu

# TPU vreg tiling: the last block dim is a multiple of 128 lanes, the one before of 8 sublanes
# (or either equals the whole array dim).
NUM_LANES = 128
NUM_SUBLANES = 8

# ``jax.checkpoint`` names of the flash residuals: the output and log-sum-exp a forward rule saves
# for its backward. A remat policy that keeps these names (lcm's ``save_attention``) runs each
# attention forward once; ``nothing_saveable`` reruns it in the backward pass.
OUT_NAME = "attention_out"
LSE_NAME = "attention_lse"


def name_residuals(out, lse):
    """``(out, lse)`` tagged with ``OUT_NAME`` / ``LSE_NAME``. Call it in a ``custom_vjp``
    forward rule on the values it returns both as outputs and as residuals, so a policy that
    saves them leaves nothing of the forward to recompute."""
    return checkpoint_name(out, OUT_NAME), checkpoint_name(lse, LSE_NAME)


def resolve_interpret(interpret: Any, tile_probe: Any = None) -> Any:
    """Validates the ``interpret`` argument of the kernels; returns it unchanged.

    - ``None`` (the default everywhere): every ``pallas_call`` is staged as
      ``lax.platform_dependent(tpu=<compiled Mosaic call>, default=<jax's generic Pallas
      interpreter, interpret=True>)`` (``engine._pallas_call``). The branch is chosen when the
      program is lowered, for the platform it is lowered for: a TPU program gets Mosaic calls
      even when compiled from a CPU host (AOT, compile-only TPU devices), a CPU program gets the
      interpreter (plain HLO, no host callbacks). The host's default backend plays no part.
    - ``False``: always the compiled Mosaic call (lowering for a non-TPU platform fails).
    - ``True``: always jax's generic Pallas interpreter.
    - a ``pltpu.InterpretParams``: always Pallas TPU interpret mode, which simulates VMEM, DMAs
      and semaphores on CPU through host callbacks (race detection with ``detect_races=True``);
      much slower than the generic interpreter and meant for kernel tests.

    ``tile_probe`` (a host callback per computed tile) needs an explicit interpret mode (True or
    ``InterpretParams``): with None or False it raises ``ValueError``.
    """
    if interpret is not None and not isinstance(interpret, bool | pltpu.InterpretParams):
        raise ValueError(
            f"interpret = {interpret!r}: must be None (by lowering platform), False, True or "
            "pltpu.InterpretParams"
        )
    if tile_probe is not None and (interpret is None or interpret is False):
        raise ValueError(
            f"tile_probe needs an explicit interpret mode (True or pltpu.InterpretParams), got "
            f"interpret = {interpret!r}: host callbacks do not run in compiled Mosaic kernels"
        )
    return interpret


def check_block(name: str, block: int, dim_name: str, dim: int, multiple: int) -> None:
    """Raises unless ``block`` tiles ``dim`` and is TPU-legal (a multiple of ``multiple`` or
    the whole dimension)."""
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"{name} = {block!r}: must be a positive int")
    if dim % block:
        raise ValueError(f"{name} = {block} must divide {dim_name} = {dim}")
    if block != dim and block % multiple:
        raise ValueError(
            f"{name} = {block}: must be a multiple of {multiple} (TPU tiling) or equal "
            f"{dim_name} = {dim}"
        )


def check_qkv(q, k, v) -> tuple[int, int, int, int, int, int]:
    """Validates the kernel layout ``q [B,N,T,H]``, ``k, v [B,K,S,H]``; returns B, N, K, T, S, H."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be rank 4 ([B,N,T,H], [B,K,S,H]); got shapes {q.shape}, {k.shape}, "
            f"{v.shape}"
        )
    b, n, t, h = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
    bk, kh, s, hk = k.shape
    if bk != b:
        raise ValueError(f"batch: q has B = {b}, k/v have B = {bk}")
    if hk != h:
        raise ValueError(f"head dim: q has H = {h}, k/v have H = {hk}")
    if n % kh:
        raise ValueError(f"heads: N = {n} query heads must be a multiple of K = {kh} kv heads")
    if h > NUM_LANES and h % NUM_LANES:
        raise ValueError(f"head dim H = {h}: must be <= {NUM_LANES} or a multiple of it")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    return b, n, kh, t, s, h


def check_per_token(name: str, x, batch: int, length: int, length_name: str) -> None:
    """Validates an optional ``[B, length]`` integer array (positions or segment ids)."""
    if x is None:
        return
    if x.shape != (batch, length):
        raise ValueError(
            f"{name}: expected shape [B, {length_name}] = {(batch, length)}, got {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"{name}: expected an integer dtype, got {x.dtype}")
