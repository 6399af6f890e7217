"""MoBA, Mixture of Block Attention (Lu et al. 2025, arXiv 2502.13189).

Each query head gates every key block of ``block_size`` tokens by ``q . mean(block keys)``, takes
its own block and the ``top_k - 1`` highest-gated earlier ones, and runs one softmax over their
union: the authors' ``moba_attn_varlen_naive`` (``MoonshotAI/MoBA``). Blocks are index blocks of
the key row; for ``T != S`` the key row is laid out by position. See docs/attention.md#moba.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from lcm.attention import core
from lcm.attention import masks as masks_lib
from lcm.attention.sparse import gathered, kernel_slots

_F32 = jnp.float32
_HIGHEST = lax.Precision.HIGHEST


def _check(mask, block_size, top_k, query_tile, chunk, kernel):
    sizes = dict(block_size=block_size, top_k=top_k, query_tile=query_tile, chunk=chunk)
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"moba {name} = {value!r}: must be a positive integer")
    kernel_slots.check_kernel(kernel, "moba")
    if mask != masks_lib.Causal():
        raise ValueError(f"moba mask = {mask!r}: must be Causal() (MoBA is causal)")


def query_index(q, k, q_pos):
    """``[B, T]`` key index of each query: itself if ``T == S``, else its position."""
    b, t = q.shape[:2]
    if t == k.shape[1]:
        return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return q_pos.astype(jnp.int32)


def _select_tile(q, index, means, block_size, top_k):
    """Slot ids ``[B,C,N,M]`` (own block first) and validity for queries at key indices
    ``index [B,C]``.

    ``means [B,nb,K,H]`` are the gate keys; ``M = min(top_k, nb)``.
    """
    b, c, n, _ = q.shape
    nb, kh = means.shape[1], means.shape[2]
    # C queries of the tile, J = nb key blocks.
    gate = jnp.einsum(
        "BCKGH,BJKH->BCKGJ",
        q.astype(_F32).reshape(b, c, kh, n // kh, -1),
        means,
        precision=_HIGHEST,
    ).reshape(b, c, n, nb)
    own = jnp.clip(index // block_size, 0, nb - 1).astype(jnp.int32)  # [B, C]
    own_ids = jnp.broadcast_to(own[:, :, None, None], (b, c, n, 1))
    m = min(top_k, nb)
    if m == 1:
        return own_ids, jnp.ones(own_ids.shape, bool)
    earlier = jnp.arange(nb) < own[..., None]  # [B, C, nb]
    gate = jnp.where(earlier[:, :, None, :], gate, -jnp.inf)
    values, picks = lax.top_k(gate, m - 1)
    ids = jnp.concatenate([own_ids, picks.astype(jnp.int32)], -1)
    valid = jnp.concatenate([jnp.ones(own_ids.shape, bool), jnp.isfinite(values)], -1)
    return ids, valid


def moba_selection(q, k, *, block_size, top_k, kv_segment_ids=None, q_pos=None):
    """The blocks each query head attends to: ``(ids [B,T,N,M] int32, valid [B,T,N,M] bool)``.

    Slot 0 is the query's own block; slots 1.. are the top earlier blocks in decreasing gate
    order (ties to the lower index); invalid slots (fewer earlier blocks than ``top_k - 1``) hold
    arbitrary ids. ``M = min(top_k, ceil(S / block_size))``. ``q_pos`` is needed only when
    ``T != S``. For tests and inspection; the attention computes the same selection tile by tile.
    """
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    kb, _, _, ksb = gathered.key_blocks(k, k, kv_seg, kv_seg, block_size)
    index = query_index(q, k, q_pos)
    return _select_tile(q, index, gathered.block_means(kb, ksb), block_size, top_k)


def moba_attention(
    q,
    k,
    v,
    *,
    block_size: int,
    top_k: int,
    q_pos,
    k_pos,
    q_segment_ids=None,
    kv_segment_ids=None,
    scale: float | None = None,
    query_tile: int = 256,
    chunk: int = 128,
    return_lse: bool = False,
    kernel: str = "blockwise",
    interpret=None,
):
    """MoBA attention, ``q [B,T,N,H]``, ``k, v [B,S,K,H]`` -> ``[B,T,N,H]`` (and lse).

    Args:
      block_size: MoBA block (chunk) length.
      top_k: blocks per query, own block included (the paper's 8K runs: 512 and 3).
      q_pos, k_pos, q_segment_ids, kv_segment_ids: as ``core.attend`` (``T != S``: see the
        module docstring).
      scale: softmax scale, default ``1 / sqrt(H)``.
      query_tile: queries selected together (memory ~ query_tile * N * S / block_size).
      chunk: (query, block) pairs per dense product (``blockwise``) or per kernel q block
        (``pallas``, a multiple of 8).
      return_lse: also return the log-sum-exp ``[B,T,N]``.
      kernel: ``blockwise`` (plain JAX) or ``pallas`` (block-sparse kernel; ``block_size`` a
        multiple of 128 unless one block covers the keys).
      interpret: the Pallas kernel's interpret mode (None = automatic).
    """
    _check(masks_lib.Causal(), block_size, top_k, query_tile, chunk, kernel)
    scale = core.default_scale(q.shape[-1]) if scale is None else float(scale)
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    kb, _, _, ksb = gathered.key_blocks(k, k, kv_seg, kv_seg, block_size)
    means = gathered.block_means(lax.stop_gradient(kb), ksb)

    def select(_, q_t, index_t):
        return _select_tile(lax.stop_gradient(q_t), index_t, means, block_size, top_k)

    index = query_index(q, k, q_pos)
    ids, valid = gathered.scan_query_tiles(select, query_tile, q, index)
    out, lse = kernel_slots.pick(kernel, interpret)(
        q, k, v, ids, valid, block=block_size, q_pos=q_pos, k_pos=k_pos, q_seg=q_seg,
        kv_seg=kv_seg, scale=scale, chunk=chunk,
    )  # fmt: skip
    out, lse = gathered.merge_slots(out, lse)
    out = out.astype(q.dtype)
    return (out, lse) if return_lse else out


def moba_reference(
    q, k, v, *, block_size, top_k, q_pos, k_pos, q_segment_ids=None, kv_segment_ids=None, scale=None
):
    """Dense float32 transcription of ``moba_attn_varlen_naive`` (for tests; O(T * S)).

    Causality is by index, as in the naive code; ``k_pos`` is unused and ``q_pos`` only gives
    the queries' key indices when ``T != S`` (``query_index``). The fast path reads causality
    from positions, which agree when positions increase along each document.
    """
    del k_pos
    index = query_index(q, k, q_pos)  # [B, T]
    dtype = q.dtype
    q, k, v = (x.astype(_F32) for x in (q, k, v))
    n, h = q.shape[2:]
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    scale = core.default_scale(h) if scale is None else scale
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    nb = -(-s // block_size)
    key_block = jnp.arange(s) // block_size  # [S]
    onehot = (key_block[None, :] == jnp.arange(nb)[:, None]) & (kv_seg[:, None, :] != 0)
    # J = nb key blocks: onehot [B, J, S] sums each block's keys.
    means = jnp.einsum("BJS,BSKH->BJKH", onehot.astype(_F32), k, precision=_HIGHEST)
    means = means / jnp.maximum(onehot.sum(-1), 1)[..., None, None]
    kr = jnp.repeat(k, g, axis=2)
    vr = jnp.repeat(v, g, axis=2)
    gate = jnp.einsum("BTNH,BJNH->BNTJ", q, jnp.repeat(means, g, axis=2), precision=_HIGHEST)
    q_block = (index // block_size)[:, None, :, None]  # [B, 1, T, 1]
    j = jnp.arange(nb)
    gate = jnp.where(j > q_block, -jnp.inf, gate)
    gate = jnp.where(j == q_block, jnp.inf, gate)
    top_vals, top_idx = lax.top_k(gate, min(top_k, nb))
    need = gate >= top_vals.min(-1, keepdims=True)
    picked = (top_idx[..., None] == jnp.arange(nb)).any(-2)
    need = need & picked  # [B, N, T, nb]
    allowed = need[..., key_block]  # [B, N, T, S]
    visible = (
        allowed
        & (jnp.arange(s) <= index[:, None, :, None])  # the naive code's tril
        & (q_seg[:, None, :, None] == kv_seg[:, None, None, :])
        & (q_seg[:, None, :, None] != 0)
    )
    logits = jnp.einsum("BTNH,BSNH->BNTS", q, kr, precision=_HIGHEST) * scale
    logits = jnp.where(visible, logits, -jnp.inf)
    m = lax.stop_gradient(logits.max(-1, keepdims=True))
    p = jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0))
    total = p.sum(-1, keepdims=True)
    p = p / jnp.where(total > 0, total, 1.0)
    return jnp.einsum("BNTS,BSNH->BTNH", p, vr, precision=_HIGHEST).astype(dtype)


@core.register(
    "moba",
    core.Capabilities(
        custom_logits=False,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=True,
        any_mask=False,
    ),
    config_keys={"block_size": "sparse_block", "top_k": "sparse_top_k", "kernel": "sparse_kernel"},
    describe=functools.partial(kernel_slots.describe_blocks, block_option="block_size"),
)
def _moba_impl(
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
    block_size: int = 512,
    top_k: int = 3,
    query_tile: int = 256,
    chunk: int = 128,
    kernel: str = "blockwise",
    interpret=None,
):
    """``attend(..., impl="moba", block_size=, top_k=, kernel=)``; the mask must be
    ``Causal()``; ``T != S`` as in ``moba_attention``."""
    del logits_fn  # refused by the capability check
    _check(mask, block_size, top_k, query_tile, chunk, kernel)
    out, lse = moba_attention(
        q, k, v, block_size=block_size, top_k=top_k, q_pos=q_pos, k_pos=k_pos,
        q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, scale=scale,
        query_tile=query_tile, chunk=chunk, return_lse=True, kernel=kernel, interpret=interpret,
    )  # fmt: skip
    return out, (lse if return_lse else None)
