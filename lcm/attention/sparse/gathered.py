"""Query-major attention over per-token selected key blocks, in plain JAX.

MoBA (Lu et al. 2025, arXiv 2502.13189), NSA's selection branch (Yuan et al. 2025, arXiv
2502.11089) and HSA (Hu et al. 2025, arXiv 2504.16795) all pick key blocks PER QUERY TOKEN. A
(query tile, key block) visit list would have to hold the union of the picks of every token and
head in the tile, which for top-3 of 64 blocks is nearly every block, so these methods gather
instead, as NSA's kernel does: each query token reads its own ``M`` selected blocks ("slots"),
with one softmax per slot. Callers merge the slots exactly by their log-sum-exps (one softmax
over the union: MoBA, NSA) or mix them with weights (HSA).

Work and memory are O(T * N * M * block * H), never O(T * S): query tiles of ``query_tile``
tokens run one after another under ``lax.scan`` with ``jax.checkpoint`` on the tile, so the
backward recomputes each tile's gathers and logits instead of storing them.

Inside a gathered block a key is visible when it is not after the query (``k_pos <= q_pos``),
has the query's segment id, and neither is padding (segment id 0). Every method here is causal.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from lcm.attention import blockwise

_F32 = jnp.float32


def key_blocks(k, v, k_pos, kv_seg, block):
    """``k, v [B,S,K,H] -> [B,nb,block,K,H]``; ``k_pos, kv_seg [B,S] -> [B,nb,block]``.

    The tail is padded with segment id 0 (never visible).
    """
    k, v, k_pos, kv_seg = (blockwise._pad(x, block) for x in (k, v, k_pos, kv_seg))
    b, s = k_pos.shape
    return tuple(x.reshape(b, s // block, block, *x.shape[2:]) for x in (k, v, k_pos, kv_seg))


def block_means(kb, kv_segb):
    """Mean of each key block over its real (non-padding) tokens: ``[B,nb,K,H] float32``.

    A block with no real token has mean 0.
    """
    real = (kv_segb != 0).astype(_F32)[..., None, None]  # [B, nb, block, 1, 1]
    total = (kb.astype(_F32) * real).sum(2)
    count = real.sum(2)
    return total / jnp.maximum(count, 1.0)


def slot_attention(q, kb, vb, kpb, ksb, q_pos, q_seg, ids, valid, scale):
    """Softmax attention of each query over each of its selected key blocks separately.

    Args:
      q: ``[B,C,N,H]`` queries of one tile.
      kb, vb: ``[B,nb,block,K,H]`` key/value blocks; kpb, ksb: ``[B,nb,block]`` their positions
        and segment ids.
      q_pos, q_seg: ``[B,C]``.
      ids: ``[B,C,N,M]`` int32 block ids per query head (head n reads kv head ``n // (N/K)``).
      valid: ``[B,C,N,M]`` bool; invalid slots see nothing.
      scale: softmax scale.

    Returns:
      ``(out [B,C,N,M,H] float32, lse [B,C,N,M] float32)``, ``-inf`` / zeros where a slot sees
      no key.
    """
    b, _, n, _ = q.shape
    kh = kb.shape[3]
    bi = jnp.arange(b)[:, None, None, None]
    hi = (jnp.arange(n) // (n // kh))[None, None, :, None]
    kg = kb[bi, ids, :, hi]  # [B, C, N, M, block, H]
    vg = vb[bi, ids, :, hi]
    kp, ks = kpb[bi, ids], ksb[bi, ids]  # [B, C, N, M, block]
    s = jnp.einsum("bcnh,bcnmsh->bcnms", q.astype(_F32), kg.astype(_F32)) * scale
    qp = q_pos[:, :, None, None, None]
    qs = q_seg[:, :, None, None, None]
    visible = valid[..., None] & (kp <= qp) & (ks == qs) & (qs != 0)
    s = jnp.where(visible, s, -jnp.inf)
    m = lax.stop_gradient(s.max(-1))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m[..., None])
    total = p.sum(-1)
    seen = total > 0
    safe = jnp.where(seen, total, 1.0)
    out = jnp.einsum("bcnms,bcnmsh->bcnmh", p, vg.astype(_F32)) / safe[..., None]
    return out, jnp.where(seen, m + jnp.log(safe), -jnp.inf)


def merge_slots(out, lse):
    """One softmax over the union of disjoint slots: ``[B,C,N,M,H], [B,C,N,M] -> out, lse``.

    The online-softmax identity (``merge.merge_attention``) along the slot axis.
    """
    m = lax.stop_gradient(lse.max(-1))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse - m[..., None])
    total = w.sum(-1)
    seen = total > 0
    safe = jnp.where(seen, total, 1.0)
    merged = (w[..., None] * out).sum(-2) / safe[..., None]
    return merged, jnp.where(seen, m + jnp.log(safe), -jnp.inf)


def scan_query_tiles(fn: Callable, tile: int, *rows: jax.Array):
    """Maps ``fn(start, *row_tiles) -> pytree of [B,C,...]`` over query tiles of ``tile`` tokens.

    ``rows`` are ``[B,T,...]`` arrays (the last is expected to be segment ids, padded with 0);
    ``start`` is the index of the tile's first token. Each tile is rematerialised in the
    backward. Returns the outputs concatenated back to length T.
    """
    t = rows[0].shape[1]
    c = min(tile, t)
    padded = [blockwise._pad(x, c) for x in rows]
    nt = padded[0].shape[1] // c

    @jax.checkpoint
    def body(_, xs):
        i, *tiles = xs
        return None, fn(i * c, *tiles)

    xs = (jnp.arange(nt), *(blockwise._blocks(x, c) for x in padded))
    _, ys = lax.scan(body, None, xs)
    return jax.tree.map(lambda y: blockwise._unblocks(y)[:, :t], ys)
