"""Ring attention: sequence (context) parallel attention over one mesh axis.

Liu, Zaharia & Abbeel, "Ring Attention with Blockwise Transformers for Near-Infinite Context"
(2023). Each device keeps its query shard; key/value shards (with their positions and segment
ids) travel around the ring by ``lax.ppermute``, one hop per step. Every step attends the local
queries to the visiting shard with a tile function returning ``(out, lse)``, and the partial
results are merged exactly by log-sum-exp.

The backward pass is its own ring (custom VJP). It recomputes probabilities from the GLOBAL
log-sum-exp and output saved by the forward (per-step statistics would give wrong dQ/dK), keeps
dQ local, and sends dK/dV around the ring together with K/V, so after ``n`` hops they arrive
back on the device that owns those keys. Nothing is ever all-gathered.

Masks are functions of positions, so load-balanced token layouts need no special cases in the
ring: permute tokens (and their positions/segment ids) with ``layout_permutation`` before
sharding, and causal work is spread evenly (``striped``: Brandon et al. 2023, arXiv 2311.09431;
``zigzag``: chunks r and 2n-1-r on device r, as in Llama-3 context parallelism).

This module knows only the axis name and two tile callables; ``lcm.attention`` wires it to the
blockwise (or Pallas) tiles and wraps it in ``jax.shard_map``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# fwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg) -> (out [B,T,N,H] f32, lse [B,N,T] f32)
# bwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg, lse, delta, dout) -> (dq, dk, dv), where
#   delta [B,N,T] = rowsum(dout * out) - dlse (flash backward D, lse cotangent folded in)
TileFwd = Callable[..., tuple[jax.Array, jax.Array]]
TileBwd = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]

LAYOUTS = ("contiguous", "striped", "zigzag")


def merge(out_a, lse_a, out_b, lse_b):
    """Exact softmax merge of attention over two disjoint key sets.

    ``out`` is ``[B,T,N,H]`` normalized within its key set, ``lse`` is ``[B,N,T]``; ``-inf``
    lse (no visible key) contributes nothing, and two empty sets give zeros, not NaN.
    """
    lse = jnp.logaddexp(lse_a, lse_b)
    safe = jnp.where(jnp.isneginf(lse), 0.0, lse)
    w_a = jnp.exp(lse_a - safe).transpose(0, 2, 1)[..., None]  # [B,T,N,1]
    w_b = jnp.exp(lse_b - safe).transpose(0, 2, 1)[..., None]
    return w_a * out_a + w_b * out_b, lse


def _rotate(axis_name: str, n: int, *xs):
    perm = [(i, (i + 1) % n) for i in range(n)]
    return tuple(jax.lax.ppermute(x, axis_name, perm) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def ring_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile):
    """Attention of local queries over the keys of every device on ``axis_name``.

    Call inside ``shard_map``; all arrays are the local shards: q ``[B,T,N,H]``, k/v
    ``[B,S,K,H]``, positions and segment ids ``[B,T]``/``[B,S]`` int32.

    Returns:
      ``(out [B,T,N,H] float32, lse [B,N,T] float32)`` over the global key set.
    """
    return _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile)[0]


def _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile):
    n = jax.lax.axis_size(axis_name)

    def step(carry, _):
        out, lse, kv = carry
        out_t, lse_t = fwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3])
        out, lse = merge(out, lse, out_t, lse_t)
        # The permute reads the same operands as the tile, so XLA can overlap the two.
        return (out, lse, _rotate(axis_name, n, *kv)), None

    # Carries built with *_like keep the inputs' varying-over-mesh-axes type inside shard_map.
    init = (
        jnp.zeros_like(q, jnp.float32),
        jnp.full_like(q[..., 0], -jnp.inf, jnp.float32).transpose(0, 2, 1),
        (k, v, k_pos, k_seg),
    )
    (out, lse, kv), _ = jax.lax.scan(step, init, None, length=n - 1)
    out_t, lse_t = fwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3])
    out, lse = merge(out, lse, out_t, lse_t)
    return (out, lse), (q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)


def _ring_fwd_rule(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile):
    del bwd_tile
    return _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile)


def _ring_bwd_rule(axis_name, fwd_tile, bwd_tile, residuals, cotangents):
    del fwd_tile
    q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = residuals
    dout, dlse = cotangents
    # d lse_i / d s_ij = p_ij, so an lse cotangent just shifts flash backward's row term D.
    delta = jnp.einsum("BTNH,BTNH->BNT", dout.astype(jnp.float32), out) - dlse
    n = jax.lax.axis_size(axis_name)

    def step(carry, _):
        dq, kv, dk, dv = carry
        dq_t, dk_t, dv_t = bwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3], lse, delta, dout)
        dk, dv = dk + dk_t.astype(jnp.float32), dv + dv_t.astype(jnp.float32)
        rotated = _rotate(axis_name, n, *kv, dk, dv)
        return (dq + dq_t.astype(jnp.float32), rotated[:4], *rotated[4:]), None

    init = (
        jnp.zeros_like(q, jnp.float32),
        (k, v, k_pos, k_seg),
        jnp.zeros_like(k, jnp.float32),
        jnp.zeros_like(v, jnp.float32),
    )
    # n hops bring every dK/dV accumulator back to the device owning those keys.
    (dq, _, dk, dv), _ = jax.lax.scan(step, init, None, length=n)
    zeros = [np.zeros(x.shape, jax.dtypes.float0) for x in (q_pos, k_pos, q_seg, k_seg)]
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), *zeros)


ring_attention.defvjp(_ring_fwd_rule, _ring_bwd_rule)


def layout_permutation(length: int, num_shards: int, layout: str) -> np.ndarray:
    """``perm[p]`` = original token index stored at physical slot ``p``.

    Shard r owns slots ``[r*length/n, (r+1)*length/n)``. ``contiguous`` is the identity,
    ``striped`` puts token t on shard ``t % n``, ``zigzag`` gives shard r the chunks r and
    2n-1-r of size ``length/(2n)``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"ring layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    chunks = num_shards * (2 if layout == "zigzag" else 1)
    if length % chunks:
        raise ValueError(
            f"sequence length {length} must be a multiple of {chunks} for the {layout!r} "
            f"layout over {num_shards} shards"
        )
    idx = np.arange(length)
    if layout == "contiguous":
        return idx
    if layout == "striped":
        return idx.reshape(length // num_shards, num_shards).T.reshape(-1)
    c = length // chunks
    parts = idx.reshape(chunks, c)
    return np.concatenate(
        [np.concatenate([parts[r], parts[chunks - 1 - r]]) for r in range(num_shards)]
    )
