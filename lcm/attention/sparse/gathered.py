"""Attention over per-token selected key blocks, regrouped by block, in plain JAX.

For MoBA (Lu et al. 2025, arXiv 2502.13189), NSA's selection (Yuan et al. 2025, arXiv
2502.11089) and HSA (Hu et al. 2025, arXiv 2504.16795): each query reads its ``M`` selected
blocks ("slots", one softmax each), and ``slot_attention`` regroups (query, slot) pairs by block
into dense products. Causal. See docs/attention.md#gathered-slots.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from lcm.attention import blockwise, core

_F32 = jnp.float32


def key_blocks(k, v, k_pos, kv_seg, block):
    """``k, v [B,S,K,H] -> [B,nb,block,K,H]``; ``k_pos, kv_seg [B,S] -> [B,nb,block]``.

    The tail is padded with segment id 0 (never visible).
    """
    k, v, k_pos, kv_seg = (core.pad_to_multiple(x, block) for x in (k, v, k_pos, kv_seg))
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


def slot_attention(q, k, v, ids, valid, *, block, q_pos, k_pos, q_seg, kv_seg, scale,
                   chunk=128, steps=32):  # fmt: skip
    """Softmax attention of each query over each of its selected key blocks separately.

    Every (query token, query head, slot) is a "pair" reading one key block. Pairs are sorted by
    the (batch, kv head, block) they read and packed into chunks of ``chunk`` pairs that all read
    the same block, each group padded to whole chunks; a chunk is then one dense
    ``[chunk, H] x [H, block]`` product, so a key block is loaded once per chunk rather than once
    per query (the "gather queries by block" layout of MoBA's efficient kernel). Capacity is
    static: at most ``P + G * (chunk - 1)`` slots for ``P`` pairs and ``G`` groups. Chunks run
    in ``steps`` groups under ``lax.scan`` with ``jax.checkpoint``; the queries are gathered
    per chunk before the scan, so the backward's per-step work is O(chunks per step), except
    for accumulating the key/value gradient (O(S) per step, hence few steps).

    Args:
      q: ``[B,T,N,H]``; k, v: ``[B,S,K,H]`` (head n reads kv head ``n // (N/K)``).
      ids: ``[B,T,N,M]`` int key block ids (blocks of ``block`` tokens); valid: ``[B,T,N,M]``
        bool, invalid slots see nothing.
      q_pos, q_seg, k_pos, kv_seg: ``[B,T]`` / ``[B,S]`` positions and segment ids.
      scale: softmax scale.

    Returns:
      ``(out [B,T,N,M,H] float32, lse [B,T,N,M] float32)``; zeros / ``-inf`` where a slot sees
      no key.
    """
    b, t, n, h = q.shape
    kh, m = k.shape[2], ids.shape[-1]
    kb, vb, kpb, ksb = key_blocks(k, v, k_pos, kv_seg, block)
    nb = kb.shape[1]
    pairs, groups = b * t * n * m, b * kh * nb
    head = (jnp.arange(n) // (n // kh))[None, None, :, None]
    group = (jnp.arange(b)[:, None, None, None] * kh + head) * nb + ids
    group = jnp.where(valid, group, groups).reshape(-1).astype(jnp.int32)
    order = jnp.argsort(group, stable=True).astype(jnp.int32)
    sorted_group = group[order]
    counts = jnp.bincount(group, length=groups + 1)[:groups]
    padded = -(-counts // chunk) * chunk
    start = jnp.cumsum(counts) - counts
    padded_start = jnp.cumsum(padded) - padded
    g = jnp.minimum(sorted_group, groups - 1)
    slot = padded_start[g] + jnp.arange(pairs) - start[g]
    num_chunks = -(-(pairs + groups * (chunk - 1)) // chunk)
    steps = min(steps, num_chunks)
    step_chunks = -(-num_chunks // steps)
    capacity = steps * step_chunks * chunk
    slot = jnp.where(sorted_group < groups, slot, capacity)  # invalid pairs: dropped
    chunk_pair = jnp.full((capacity,), pairs, jnp.int32).at[slot].set(order, mode="drop")
    chunk_pair = chunk_pair.reshape(steps, step_chunks, chunk)
    first = jnp.minimum(chunk_pair[..., 0], pairs - 1)
    chunk_group = group[first] % groups  # [steps, step_chunks]

    row = jnp.minimum(chunk_pair, pairs - 1) // m  # the pair's (b, t, n) row
    q_chunks = q.reshape(b * t * n, h)[row]  # [steps, step_chunks, chunk, H]
    token = row // n
    qp_chunks, qs_chunks = q_pos.reshape(-1)[token], q_seg.reshape(-1)[token]

    @jax.checkpoint
    def step(_, xs):
        cp, cg, qc, qp, qs = xs  # [step_chunks, chunk(, H)], [step_chunks]
        real = cp < pairs
        cb, ckh, cblk = cg // (kh * nb), (cg // nb) % kh, cg % nb
        kblk, vblk = kb[cb, cblk, :, ckh], vb[cb, cblk, :, ckh]  # [step_chunks, block, H]
        kp, ks = kpb[cb, cblk], ksb[cb, cblk]  # [step_chunks, block]
        # R = step_chunks chunks, C = chunk query rows each, S = block keys of the chunk's block.
        s = jnp.einsum("RCH,RSH->RCS", qc.astype(_F32), kblk.astype(_F32)) * scale
        visible = real[..., None] & (kp[:, None, :] <= qp[..., None])
        visible = visible & (ks[:, None, :] == qs[..., None]) & (qs != 0)[..., None]
        s = jnp.where(visible, s, -jnp.inf)
        mx = lax.stop_gradient(s.max(-1))
        mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
        p = jnp.exp(s - mx[..., None])
        total = p.sum(-1)
        seen = total > 0
        safe = jnp.where(seen, total, 1.0)
        out = jnp.einsum("RCS,RSH->RCH", p, vblk.astype(_F32)) / safe[..., None]
        return None, (out, jnp.where(seen, mx + jnp.log(safe), -jnp.inf))

    xs = (chunk_pair, chunk_group, q_chunks, qp_chunks, qs_chunks)
    _, (out, lse) = lax.scan(step, None, xs)
    dest = chunk_pair.reshape(-1)  # index ``pairs`` (padding) is out of range: dropped
    out = jnp.zeros((pairs, h), _F32).at[dest].set(out.reshape(-1, h), mode="drop")
    lse = jnp.full((pairs,), -jnp.inf, _F32).at[dest].set(lse.reshape(-1), mode="drop")
    return out.reshape(b, t, n, m, h), lse.reshape(b, t, n, m)


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

    ``rows`` are ``[B,T,...]`` arrays, zero-padded to whole tiles (segment id 0 = padding, so
    pass segment ids when padded rows must be ignored); ``start`` is the index of the tile's
    first token. Each tile is rematerialised in the
    backward. Returns the outputs concatenated back to length T.
    """
    t = rows[0].shape[1]
    c = min(tile, t)
    padded = [core.pad_to_multiple(x, c) for x in rows]
    nt = padded[0].shape[1] // c

    @jax.checkpoint
    def body(_, xs):
        i, *tiles = xs
        return None, fn(i * c, *tiles)

    xs = (jnp.arange(nt), *(blockwise._blocks(x, c) for x in padded))
    _, ys = lax.scan(body, None, xs)
    return jax.tree.map(lambda y: blockwise._unblocks(y)[:, :t], ys)
