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
from lcm.attention import context
from lcm.attention.merge import merge_attention


def _shift(axis_name: str, places: int, *xs):
    """Every device's ``xs`` to the device ``places`` further along the axis (mod its size)."""
    n = jax.lax.axis_size(axis_name)
    if places % n == 0:
        return xs
    perm = [(i, (i + places) % n) for i in range(n)]
    return tuple(jax.lax.ppermute(x, axis_name, perm) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def ring_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile, stride,
                   hops):  # fmt: skip
    """Attention of local queries over the keys of ``hops`` devices on ``axis_name``: this one
    and those ``stride``, ``2 stride``, ... places before it (a ring whose hops move
    ``stride`` places; ``stride`` 1 is the plain ring, ``usp`` rings across its Ulysses groups
    with stride = the Ulysses degree). ``hops`` is ``axis_size / stride`` for the full ring, or
    fewer when the mask cannot see further (``layouts.ring_hops``).

    Call inside ``shard_map``; all arrays are the local shards: q ``[B,T,N,H]``, k/v
    ``[B,S,K,H]``, positions and segment ids ``[B,T]``/``[B,S]`` int32. Each hop's K/V permute
    is issued beside the tile that uses the current K/V (no data dependence between them), so
    the scheduler overlaps the two; the backward moves the dK/dV accumulators the same way.

    Returns:
      ``(out [B,T,N,H] float32, lse [B,T,N] float32)`` over the ring's key set.
    """
    return _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, stride, hops)[0]


def _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, stride, hops):
    def step(carry, _):
        out, lse, kv = carry
        arriving = _shift(axis_name, stride, *kv)  # the next hop's K/V, while this one computes
        out_t, lse_t = fwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3])
        out, lse = merge_attention([out, out_t], [lse, lse_t])
        return (out, lse, arriving), None

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


def _ring_fwd_rule(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile, stride,
                   hops):  # fmt: skip
    del bwd_tile
    return _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, stride, hops)


def _ring_bwd_rule(axis_name, fwd_tile, bwd_tile, stride, hops, residuals, cotangents):
    """Hop i computes the gradient share of the K/V that arrived, while the next K/V and the
    dK/dV accumulated for the arriving K/V by the devices before travel (both permutes are
    independent of the tile). After the last hop one permute returns each accumulator the
    ``hops - 1`` places back to the device owning its keys."""
    del fwd_tile
    q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = residuals
    dout, dlse = cotangents

    def grads(kv):
        dq, dk, dv = bwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3], out, lse, dout, dlse)
        return dq.astype(jnp.float32), dk.astype(jnp.float32), dv.astype(jnp.float32)

    def hop(dq, kv, acc, move_kv):
        arriving = _shift(axis_name, stride, *kv) if move_kv else kv
        acc = _shift(axis_name, stride, *acc)  # what the devices before summed for this kv
        dq_t, dk_t, dv_t = grads(kv)
        return dq + dq_t, arriving, (acc[0] + dk_t, acc[1] + dv_t)

    def step(carry, _):
        dq, kv, acc = carry
        return hop(dq, kv, acc, move_kv=True), None

    kv = (k, v, k_pos, k_seg)
    dq, dk, dv = grads(kv)
    if hops > 1:
        arriving = _shift(axis_name, stride, *kv)
        carry, _ = jax.lax.scan(step, (dq, arriving, (dk, dv)), None, length=hops - 2)
        dq, _, (dk, dv) = hop(*carry, move_kv=False)
        dk, dv = _shift(axis_name, -(hops - 1) * stride, dk, dv)
    zeros = context.float0_like(q_pos, k_pos, q_seg, k_seg)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), *zeros)


ring_attention.defvjp(_ring_fwd_rule, _ring_bwd_rule)


ring_impl = context.strategy(
    "ring",
    functools.partial(ring_attention, stride=1),
    doc="""``attend(..., impl="ring")``: queries and keys sharded along the sequence on
    ``axis_name``.

    Needs a mesh in context with that axis (``context.sharded_call``). Arrays are global and
    already in the token order of ``layout`` (``layouts.permute``); masks read true positions,
    so ``layout`` only sets the divisibility the layout needs (zigzag: 2n chunks) and which hops
    a windowed mask skips. Per-device lengths need not be multiples of the blocks (tiles pad).
    ``inner`` computes each step's tile: ``blockwise`` (plain JAX, any mask and logits hook) or
    ``pallas`` (flash / block-sparse kernels, no hook). Returns ``(out, lse or None)``.
    """,
)
