"""HSA, hierarchical sparse attention (Hu et al. 2025, RAMba, arXiv 2504.16795; HSA-UltraLong,
arXiv 2511.23319).

Each query scores the complete earlier chunks by their landmarks (mean keys), attends inside each
of its ``top_k`` chunks with a separate softmax and mixes the outputs by retrieval weights
(``softmax`` or ``stick_breaking``), so retrieval scores get gradients. See docs/attention.md#hsa.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lcm.attention import core
from lcm.attention import masks as masks_lib
from lcm.attention.sparse import gathered, kernel_slots

_F32 = jnp.float32
_HIGHEST = lax.Precision.HIGHEST
WEIGHTINGS = ("softmax", "stick_breaking")


def _check(q, k, mask, chunk_size, top_k, weighting, query_tile, chunk, kernel):
    sizes = dict(chunk_size=chunk_size, top_k=top_k, query_tile=query_tile, chunk=chunk)
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"hsa {name} = {value!r}: must be a positive integer")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"hsa weighting = {weighting!r}: allowed: {', '.join(WEIGHTINGS)}")
    kernel_slots.check_kernel(kernel, "hsa")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"hsa is self-attention: q length {q.shape[1]} != k length {k.shape[1]}")
    if mask != masks_lib.Causal():
        raise ValueError(f"hsa mask = {mask!r}: must be Causal() (HSA is causal)")


def retrieval_weights(scores, valid, weighting):
    """Mixing weights ``[..., M]`` from selected scores (decreasing order); 0 where invalid."""
    s = jnp.where(valid, scores, 0.0)
    if weighting == "softmax":
        m = lax.stop_gradient(jnp.where(valid, s, -jnp.inf).max(-1, keepdims=True))
        e = jnp.where(valid, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
        return e / jnp.maximum(e.sum(-1, keepdims=True), jnp.finfo(_F32).tiny)
    breaks = jnp.cumsum(jnp.where(valid, jax.nn.softplus(s), 0.0), -1)
    return jnp.where(valid, jnp.exp(s - breaks), 0.0)


def _select_tile(q, start, landmarks, chunk_size, top_k, scale):
    """``(ids, scores, valid) [B,C,N,M]``, ``M = min(top_k, nc)``, for queries from ``start``."""
    b, c, n, _ = q.shape
    nc, kh = landmarks.shape[1], landmarks.shape[2]
    # C queries of the tile, J = nc chunks.
    scores = scale * jnp.einsum(
        "BCKGH,BJKH->BCKGJ",
        q.astype(_F32).reshape(b, c, kh, n // kh, -1),
        landmarks,
        precision=_HIGHEST,
    ).reshape(b, c, n, nc)
    own = (start + jnp.arange(c)) // chunk_size
    earlier = jnp.arange(nc)[None, :] < own[:, None]
    scores = jnp.where(earlier[None, :, None, :], scores, -jnp.inf)
    values, ids = lax.top_k(scores, min(top_k, nc))
    return ids.astype(jnp.int32), values, jnp.isfinite(values)


def hsa_attention(
    q,
    k,
    v,
    *,
    chunk_size: int,
    top_k: int,
    q_pos,
    k_pos,
    weighting: str = "softmax",
    q_segment_ids=None,
    kv_segment_ids=None,
    scale: float | None = None,
    query_tile: int = 256,
    chunk: int = 128,
    kernel: str = "blockwise",
    interpret=None,
):
    """HSA, ``q [B,T,N,H]``, ``k, v [B,T,K,H]`` -> ``[B,T,N,H]``.

    Args:
      chunk_size: chunk length (64 in the RAMba code).
      top_k: chunks retrieved per token.
      weighting: ``softmax`` or ``stick_breaking``.
      scale: softmax scale inside chunks and for retrieval scores, default ``1 / sqrt(H)``.
      query_tile: queries selected together.
      chunk: (query, chunk) pairs per dense product in ``gathered.slot_attention`` (or per
        kernel q block with ``kernel="pallas"``).
      kernel: ``blockwise`` (plain JAX) or ``pallas`` (the block-sparse kernel through
        ``kernel_slots``); interpret: its interpret mode (None = automatic).
    """
    _check(q, k, masks_lib.Causal(), chunk_size, top_k, weighting, query_tile, chunk, kernel)
    scale = core.default_scale(q.shape[-1]) if scale is None else float(scale)
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    kb, _, _, ksb = gathered.key_blocks(k, k, kv_seg, kv_seg, chunk_size)
    landmarks = gathered.block_means(kb, ksb)  # [B, nc, K, H], differentiable

    def select(start, q_t, _):
        ids, _, valid = _select_tile(
            lax.stop_gradient(q_t), start, lax.stop_gradient(landmarks), chunk_size, top_k, scale
        )
        return ids, valid

    ids, valid = gathered.scan_query_tiles(select, query_tile, q, q_seg)
    # The selected chunks' scores again, now differentiable w.r.t. q and the landmarks.
    b, _, n, _ = q.shape
    kh = k.shape[2]
    head = (jnp.arange(n) // (n // kh))[None, None, :, None]
    chosen = landmarks[jnp.arange(b)[:, None, None, None], ids, head]  # [B, T, N, M, H]
    # M = selected chunks (slots).
    scores = scale * jnp.einsum("BTNH,BTNMH->BTNM", q.astype(_F32), chosen, precision=_HIGHEST)
    out, _ = kernel_slots.pick(kernel, interpret)(
        q, k, v, ids, valid, block=chunk_size, q_pos=q_pos, k_pos=k_pos, q_seg=q_seg,
        kv_seg=kv_seg, scale=scale, chunk=chunk,
    )  # fmt: skip
    w = retrieval_weights(scores, valid, weighting)
    return (w[..., None] * out).sum(-2).astype(q.dtype)


def hsa_reference(
    q,
    k,
    v,
    *,
    chunk_size,
    top_k,
    q_pos,
    k_pos,
    weighting="softmax",
    q_segment_ids=None,
    kv_segment_ids=None,
    scale=None,
):
    """Dense float32 HSA with one masked ``[T, S]`` softmax per retrieved chunk (tests only)."""
    dtype = q.dtype
    q, k, v = (x.astype(_F32) for x in (q, k, v))
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    scale = core.default_scale(h) if scale is None else scale
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    nc = -(-s // chunk_size)
    key_chunk = jnp.arange(s) // chunk_size
    onehot = (key_chunk[None, :] == jnp.arange(nc)[:, None]) & (kv_seg[:, None, :] != 0)
    # J = nc chunks: onehot [B, J, S] sums each chunk's keys.
    lmk = jnp.einsum("BJS,BSKH->BJKH", onehot.astype(_F32), k, precision=_HIGHEST)
    lmk = lmk / jnp.maximum(onehot.sum(-1), 1)[..., None, None]
    scores = scale * jnp.einsum(
        "BTNH,BJNH->BTNJ", q, jnp.repeat(lmk, g, axis=2), precision=_HIGHEST
    )
    past = jnp.arange(nc)[None, :] * chunk_size + chunk_size <= jnp.arange(t)[:, None]
    scores = jnp.where(past[None, :, None, :], scores, -jnp.inf)
    values, ids = lax.top_k(scores, min(top_k, nc))  # [B, T, N, M]
    valid = jnp.isfinite(values)
    if weighting == "softmax":
        w = jax.nn.softmax(jnp.where(valid, values, -1e30), axis=-1) * valid
    else:
        sp = jnp.where(valid, jax.nn.softplus(jnp.where(valid, values, 0.0)), 0.0)
        w = jnp.where(valid, jnp.exp(jnp.where(valid, values, 0.0) - jnp.cumsum(sp, -1)), 0.0)
    logits = scale * jnp.einsum("BTNH,BSNH->BNTS", q, jnp.repeat(k, g, axis=2), precision=_HIGHEST)
    base = (
        (k_pos[:, None, None, :] <= q_pos[:, None, :, None])
        & (q_seg[:, None, :, None] == kv_seg[:, None, None, :])
        & (q_seg[:, None, :, None] != 0)
    )
    out = jnp.zeros((b, t, n, h), _F32)
    for i in range(values.shape[-1]):
        chosen = jnp.moveaxis(ids[..., i], 2, 1)[..., None] == key_chunk  # [B, N, T, S]
        vis = base & chosen & jnp.moveaxis(valid[..., i], 2, 1)[..., None]
        x = jnp.where(vis, logits, -jnp.inf)
        m = lax.stop_gradient(x.max(-1, keepdims=True))
        p = jnp.exp(x - jnp.where(jnp.isfinite(m), m, 0.0))
        p = p / jnp.maximum(p.sum(-1, keepdims=True), jnp.finfo(_F32).tiny)
        o = jnp.einsum("BNTS,BSNH->BTNH", p, jnp.repeat(v, g, axis=2), precision=_HIGHEST)
        out = out + w[..., i, None] * o
    return out.astype(dtype)


@core.register(
    "hsa",
    core.Capabilities(
        custom_logits=False,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=False,
        any_mask=False,
    ),
    config_keys={
        "chunk_size": "sparse_block",
        "top_k": "sparse_top_k",
        "weighting": "hsa_weighting",
        "kernel": "sparse_kernel",
    },
    describe=functools.partial(kernel_slots.describe_blocks, block_option="chunk_size"),
)
def _hsa_impl(
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
    chunk_size: int = 64,
    top_k: int = 8,
    weighting: str = "softmax",
    query_tile: int = 256,
    chunk: int = 128,
    kernel: str = "blockwise",
    interpret=None,
):
    """``attend(..., impl="hsa", chunk_size=, top_k=, weighting=, kernel=)``; causal mask."""
    del logits_fn, return_lse  # refused by the capability check
    _check(q, k, mask, chunk_size, top_k, weighting, query_tile, chunk, kernel)
    out = hsa_attention(
        q, k, v, chunk_size=chunk_size, top_k=top_k, q_pos=q_pos, k_pos=k_pos,
        weighting=weighting, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
        scale=scale, query_tile=query_tile, chunk=chunk, kernel=kernel, interpret=interpret,
    )  # fmt: skip
    return out, None
