"""All-gather context parallelism: every device gathers all K/V and attends its own queries.

The Llama 3 recipe (Llama Team, "The Llama 3 Herd of Models", 2024, section 3.3.2): K, V, their
positions and segment ids are all-gathered over the context axis (in the token layout in use,
so zigzag balances causal work as it does for ring), each device attends its local queries to
the whole sequence with the inner tiles, and the backward regathers K/V and reduce-scatters
dK/dV. One collective per direction instead of ring's n - 1 hops; the price is the gathered K/V,
O(S) per device while a layer runs (only the local shard is kept for the backward). See
docs/attention.md#all-gather.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels_pallas.common import name_residuals
from lcm.attention import context


def _gather(axis_name: str, *xs):
    return tuple(jax.lax.all_gather(x, axis_name, axis=1, tiled=True) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def gathered_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile):
    """Attention of local queries over the keys of every device on ``axis_name``.

    Call inside ``shard_map`` on local shards (``ring.ring_attention``'s contract); returns
    ``(out [B,T,N,H] float32, lse [B,T,N] float32)``.
    """
    return _fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile)[0]


def _fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile):
    del bwd_tile
    all_k, all_v, all_pos, all_seg = _gather(axis_name, k, v, k_pos, k_seg)
    out, lse = name_residuals(*fwd_tile(q, all_k, all_v, q_pos, all_pos, q_seg, all_seg))
    return (out, lse), (q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)


def _bwd(axis_name, fwd_tile, bwd_tile, residuals, cotangents):
    del fwd_tile
    q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = residuals
    dout, dlse = cotangents
    all_k, all_v, all_pos, all_seg = _gather(axis_name, k, v, k_pos, k_seg)
    dq, dk, dv = bwd_tile(q, all_k, all_v, q_pos, all_pos, q_seg, all_seg, out, lse, dout, dlse)
    # Each device's dK/dV cover every key; the keys' owners sum them (one reduce-scatter).
    dk, dv = (
        jax.lax.psum_scatter(x.astype(jnp.float32), axis_name, scatter_dimension=1, tiled=True)
        for x in (dk, dv)
    )
    zeros = context.float0_like(q_pos, k_pos, q_seg, k_seg)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), *zeros)


gathered_attention.defvjp(_fwd, _bwd)


def _body(q, k, v, q_pos, k_pos, q_seg, k_seg, *, axis_name, fwd_tile, bwd_tile, hops):
    del hops  # every device gathers every shard
    return gathered_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile,
                              bwd_tile)  # fmt: skip


all_gather_impl = context.strategy(
    "all_gather",
    _body,
    doc="""``attend(..., impl="all_gather")``: ``ring``'s arguments and options
    (``context.sharded_call``); K/V gathered instead of passed around the ring.""",
)
