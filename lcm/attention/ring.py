"""Ring attention: K/V shards travel the context axis while each device attends its queries.

Liu, Zaharia & Abbeel, "Ring Attention with Blockwise Transformers for Near-Infinite Context"
(2023). K/V shards travel the ring by ``lax.ppermute`` and partial results merge by log-sum-exp;
the custom-VJP backward is its own ring. The layouts of ``lcm.attention.layouts`` need no
special cases, since masks read positions. See docs/attention.md#ring.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels_pallas.common import name_residuals
from lcm.attention import context, core
from lcm.attention.merge import merge_attention


def _rotate(axis_name: str, stride: int, *xs):
    """Every device's ``xs`` to the device ``stride`` places further along the axis."""
    n = jax.lax.axis_size(axis_name)
    if stride == n:
        return xs
    perm = [(i, (i + stride) % n) for i in range(n)]
    return tuple(jax.lax.ppermute(x, axis_name, perm) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def ring_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile, stride):
    """Attention of local queries over the keys of every ``stride``-th device on ``axis_name``
    (this one included): ``axis_size / stride`` hops of a ring that moves ``stride`` places.

    Call inside ``shard_map``; all arrays are the local shards: q ``[B,T,N,H]``, k/v
    ``[B,S,K,H]``, positions and segment ids ``[B,T]``/``[B,S]`` int32. ``stride`` 1 is the
    plain ring; ``usp`` rings across its Ulysses groups with stride = the Ulysses degree.

    Returns:
      ``(out [B,T,N,H] float32, lse [B,T,N] float32)`` over the ring's key set.
    """
    return _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, stride)[0]


def _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, stride):
    hops = jax.lax.axis_size(axis_name) // stride

    def step(carry, _):
        out, lse, kv = carry
        out_t, lse_t = fwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3])
        out, lse = merge_attention([out, out_t], [lse, lse_t])
        # The permute reads the same operands as the tile, so XLA can overlap the two.
        return (out, lse, _rotate(axis_name, stride, *kv)), None

    # Carries built with *_like keep the inputs' varying-over-mesh-axes type inside shard_map.
    init = (
        jnp.zeros_like(q, jnp.float32),
        jnp.full_like(q[..., 0], -jnp.inf, jnp.float32),
        (k, v, k_pos, k_seg),
    )
    (out, lse, kv), _ = jax.lax.scan(step, init, None, length=hops - 1)
    out_t, lse_t = fwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3])
    out, lse = name_residuals(*merge_attention([out, out_t], [lse, lse_t]))
    return (out, lse), (q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)


def _ring_fwd_rule(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile, stride):
    del bwd_tile
    return _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, stride)


def _ring_bwd_rule(axis_name, fwd_tile, bwd_tile, stride, residuals, cotangents):
    del fwd_tile
    q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = residuals
    dout, dlse = cotangents

    def step(carry, _):
        dq, kv, dk, dv = carry
        dq_t, dk_t, dv_t = bwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3], out, lse, dout, dlse)
        dk, dv = dk + dk_t.astype(jnp.float32), dv + dv_t.astype(jnp.float32)
        rotated = _rotate(axis_name, stride, *kv, dk, dv)
        return (dq + dq_t.astype(jnp.float32), rotated[:4], *rotated[4:]), None

    init = (
        jnp.zeros_like(q, jnp.float32),
        (k, v, k_pos, k_seg),
        jnp.zeros_like(k, jnp.float32),
        jnp.zeros_like(v, jnp.float32),
    )
    # A full circle of hops brings every dK/dV accumulator back to the device owning its keys.
    hops = jax.lax.axis_size(axis_name) // stride
    (dq, _, dk, dv), _ = jax.lax.scan(step, init, None, length=hops)
    zeros = context.float0_like(q_pos, k_pos, q_seg, k_seg)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), *zeros)


ring_attention.defvjp(_ring_fwd_rule, _ring_bwd_rule)


@core.register("ring", context.CAPABILITIES, config_keys=context.CONFIG_KEYS,
               describe=context.describe)  # fmt: skip
def ring_impl(
    q,
    k,
    v,
    *,
    mask,
    q_pos,
    k_pos,
    q_segment_ids,
    kv_segment_ids,
    logits_fn,
    scale,
    return_lse,
    axis_name: str = "context",
    mesh: jax.sharding.Mesh | None = None,
    layout: str | None = None,
    inner: str = "blockwise",
    block_q: int = 128,
    block_kv: int = 128,
):
    """``attend(..., impl="ring")``: queries and keys sharded along the sequence on ``axis_name``.

    Needs a mesh in context with that axis (``context.sharded_call``). Arrays are global and
    already in the token order of ``layout`` (``layouts.permute``); masks read true positions,
    so ``layout`` only sets the divisibility the layout needs (zigzag: 2n chunks). Per-device
    lengths need not be multiples of the blocks (tiles pad). ``inner`` computes each step's
    tile: ``blockwise`` (plain JAX, any mask and logits hook) or ``pallas`` (flash /
    block-sparse kernels, no hook). Returns ``(out, lse or None)``.
    """
    body = functools.partial(ring_attention, stride=1)
    return context.sharded_call(
        "ring", body, q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos,
        q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, logits_fn=logits_fn,
        scale=scale, return_lse=return_lse, axis_name=axis_name, mesh=mesh, layout=layout,
        inner=inner, block_q=block_q, block_kv=block_kv,
    )  # fmt: skip
