"""``blockwise``: flash-style attention in plain JAX, skipping empty tiles.

Online softmax over (query block, key block) tiles (Milakov & Gimelshein 2018, arXiv
1805.02867; FlashAttention, Dao et al. 2022, arXiv 2205.14135; FlashAttention-2, Dao 2023,
arXiv 2307.08691), visiting only the non-empty tiles of ``tiles.visit_lists`` (full ones without
the mask). The ``jax.custom_vjp`` backward recomputes tiles from the saved log-sum-exp; it is
first-order reverse mode only. See docs/attention.md#blockwise.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas.common import name_residuals
from lcm.attention import core, tiles
from lcm.attention import masks as masks_lib

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class _Static:
    """Hashable, non-differentiable settings of one call."""

    mask: masks_lib.Mask
    logits_fn: Callable[..., jax.Array] | None
    scale: float
    block_q: int
    block_kv: int


@core.register(
    "blockwise",
    core.Capabilities(
        custom_logits=True,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=True,
    ),
    config_keys={"block_q": "block_q", "block_kv": "block_kv"},
    describe=core.tiled,
)
def blockwise_attention(
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
    block_q: int = 128,
    block_kv: int = 128,
):
    """Tiled attention; arguments as ``core.attend`` plus tile lengths ``block_q, block_kv``.

    Blocks longer than the sequence shrink to it (decoding a single query uses ``Cq = 1``).
    The default 128 was the fastest of 64..1024 for causal fwd+bwd at T = 4096, N = 8, H = 64
    on a 2-core CPU (``experiments/bench/attention.py``); accelerators want larger tiles.
    Returns ``(out, lse or None)``.
    """
    static, padded = _setup(
        q, k, v, q_pos, k_pos, q_segment_ids, kv_segment_ids, mask, logits_fn, scale, block_q,
        block_kv,
    )  # fmt: skip
    out, lse = _flash(static, *padded)
    t = q.shape[1]
    return out[:, :t], (lse[:, :t] if return_lse else None)


def ring_tiles(*, mask, logits_fn, scale, block_q: int = 128, block_kv: int = 128):
    """Tile functions for ``lcm.attention.ring``: blockwise attention of the local queries over
    one visiting key shard.

    ``fwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg) -> (out, lse [B,T,N])`` and
    ``bwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, d_out, d_lse) -> (dq, dk, dv)``,
    where the backward is driven by the GLOBAL (merged) ``out`` and ``lse`` and their
    cotangents, so the per-shard gradients sum to the exact ones.
    """

    def fwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg):
        st, padded = _setup(
            q, k, v, q_pos, k_pos, q_seg, k_seg, mask, logits_fn, scale, block_q, block_kv
        )
        out, lse = _forward(st, *padded)
        return out[:, : q.shape[1]], lse[:, : q.shape[1]]

    def bwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, d_out, d_lse):
        st, padded = _setup(
            q, k, v, q_pos, k_pos, q_seg, k_seg, mask, logits_fn, scale, block_q, block_kv
        )
        delta = _delta(out, d_out, d_lse)
        rows = (core.pad_to_multiple(x, st.block_q) for x in (lse, delta, d_out))
        dq, dk, dv = _backward(st, *padded, *rows)
        return dq[:, : q.shape[1]], dk[:, : k.shape[1]], dv[:, : k.shape[1]]

    return fwd_tile, bwd_tile


def _setup(q, k, v, q_pos, k_pos, q_segment_ids, kv_segment_ids, mask, logits_fn, scale,
           block_q, block_kv):  # fmt: skip
    """Validates block sizes, pads to whole blocks and builds the tile visit lists."""
    for name, value in (("block_q", block_q), ("block_kv", block_kv)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"blockwise {name} = {value!r}: must be a positive integer")
    cq, ck = min(block_q, q.shape[1]), min(block_kv, k.shape[1])
    static = _Static(mask, logits_fn, scale, cq, ck)
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    q, q_pos, q_seg = (core.pad_to_multiple(x, cq) for x in (q, q_pos, q_seg))
    k, v, k_pos, kv_seg = (core.pad_to_multiple(x, ck) for x in (k, v, k_pos, kv_seg))
    classes = tiles.classify_tiles(
        mask, tiles.block_ranges(q_pos, q_seg, cq), tiles.block_ranges(k_pos, kv_seg, ck)
    )
    return static, (q, k, v, q_pos, k_pos, q_seg, kv_seg, tiles.visit_lists(classes))


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """``[B, L, ...] -> [L / block, B, block, ...]``."""
    b, length = x.shape[:2]
    x = x.reshape(b, length // block, block, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unblocks(x: jax.Array) -> jax.Array:
    """Inverse of ``_blocks``."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _dot_logits(q, k, q_pos, k_pos, *, scale):
    """Plain ``scale * q.k`` with the logits hook's signature: ``[B, N, Tq, Sk] float32``."""
    del q_pos, k_pos
    b, tq, n, h = q.shape
    kh = k.shape[2]
    s = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q.reshape(b, tq, kh, n // kh, h), k, preferred_element_type=_F32
    )
    return (s * scale).reshape(b, n, tq, k.shape[1])


def _tile_logits(st: _Static, q_i, k_j, qp_i, kp_j) -> jax.Array:
    """Logits of one tile, grouped by kv head: ``[B, K, G, Cq, Ck] float32``."""
    fn = st.logits_fn or _dot_logits
    s = fn(q_i, k_j, qp_i, kp_j, scale=st.scale).astype(_F32)
    b, n, cq, ck = s.shape
    kh = k_j.shape[2]
    return s.reshape(b, kh, n // kh, cq, ck)


def _apply_mask(st: _Static, s, qp_i, qs_i, kp_j, ks_j):
    visible = masks_lib.visibility(st.mask, qp_i, kp_j, qs_i, ks_j)  # [B, Cq, Ck]
    return jnp.where(visible[:, None, None], s, -jnp.inf)


def _finite(x: jax.Array) -> jax.Array:
    """``-inf`` (a row with nothing visible yet) -> 0, so ``exp(s - x)`` stays 0, not NaN."""
    return jnp.where(jnp.isneginf(x), 0.0, x)


def _visit(visits: tiles.VisitLists, i, body, carry, masked_body):
    """Runs ``body`` over query block i's full tiles, then ``masked_body`` over its partial ones."""
    carry = lax.fori_loop(
        0, visits.full_count[i], lambda t, c: body(visits.full_idx[i, t], c), carry
    )
    return lax.fori_loop(
        0, visits.partial_count[i], lambda t, c: masked_body(visits.partial_idx[i, t], c), carry
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, q_pos, k_pos, q_seg, kv_seg, visits):
    return _forward(st, q, k, v, q_pos, k_pos, q_seg, kv_seg, visits)


def _forward(st: _Static, q, k, v, q_pos, k_pos, q_seg, kv_seg, visits):
    """Padded inputs -> ``(out [B, T', N, H] q.dtype, lse [B, T', N] float32)``."""
    b, _, n, h = q.shape
    kh = k.shape[2]
    g = n // kh
    kb, vb = _blocks(k, st.block_kv), _blocks(v, st.block_kv)  # [nk, B, Ck, K, H]
    kpb, ksb = _blocks(k_pos, st.block_kv), _blocks(kv_seg, st.block_kv)  # [nk, B, Ck]

    def q_block(_, xs):
        i, q_i, qp_i, qs_i = xs  # q_i [B, Cq, N, H]

        def tile(masked, j, carry):
            o, m, l = carry  # [B, K, G, Cq, H], [B, K, G, Cq], [B, K, G, Cq]
            s = _tile_logits(st, q_i, kb[j], qp_i, kpb[j])
            if masked:
                s = _apply_mask(st, s, qp_i, qs_i, kpb[j], ksb[j])
            m_new = jnp.maximum(m, s.max(-1))
            m_fin = _finite(m_new)
            p = jnp.exp(s - m_fin[..., None])
            corr = jnp.exp(m - m_fin)
            pv = jnp.einsum(
                "BKGTS,BSKH->BKGTH", p.astype(v.dtype), vb[j], preferred_element_type=_F32
            )
            return o * corr[..., None] + pv, m_new, l * corr + p.sum(-1)

        cq = q_i.shape[1]
        init = (
            jnp.zeros((b, kh, g, cq, h), _F32),
            jnp.full((b, kh, g, cq), -jnp.inf, _F32),
            jnp.zeros((b, kh, g, cq), _F32),
        )
        o, m, l = _visit(
            visits, i, functools.partial(tile, False), init, functools.partial(tile, True)
        )
        seen = l > 0
        safe_l = jnp.where(seen, l, 1.0)
        o = o / safe_l[..., None]
        lse = jnp.where(seen, m + jnp.log(safe_l), -jnp.inf)
        # Back to [B, Cq, N, H] and [B, Cq, N].
        o = jnp.moveaxis(o, 3, 1).reshape(b, cq, n, h)
        return None, (o.astype(q.dtype), jnp.moveaxis(lse, 3, 1).reshape(b, cq, n))

    nq = q.shape[1] // st.block_q
    xs = (
        jnp.arange(nq),
        _blocks(q, st.block_q),
        _blocks(q_pos, st.block_q),
        _blocks(q_seg, st.block_q),
    )
    _, (o, lse) = lax.scan(q_block, None, xs)
    return _unblocks(o), _unblocks(lse)


def _flash_fwd(st, q, k, v, q_pos, k_pos, q_seg, kv_seg, visits):
    out, lse = name_residuals(*_forward(st, q, k, v, q_pos, k_pos, q_seg, kv_seg, visits))
    return (out, lse), (q, k, v, q_pos, k_pos, q_seg, kv_seg, visits, out, lse)


def _flash_bwd(st: _Static, res: tuple[Any, ...], cts):
    q, k, v, q_pos, k_pos, q_seg, kv_seg, visits, out, lse = res
    d_out, d_lse = cts
    delta = _delta(out, d_out, d_lse)
    dq, dk, dv = _backward(st, q, k, v, q_pos, k_pos, q_seg, kv_seg, visits, lse, delta, d_out)
    return dq, dk, dv, None, None, None, None, None


def _delta(out, d_out, d_lse):
    """Flash backward's row term ``rowsum(d_out * out)``, minus the lse cotangent (``d lse_i /
    d s_ij = p_ij``, so an lse cotangent shifts it): ``[B, T, N] float32``."""
    return jnp.einsum("BTNH,BTNH->BTN", d_out.astype(_F32), out.astype(_F32)) - d_lse


def _backward(st: _Static, q, k, v, q_pos, k_pos, q_seg, kv_seg, visits, lse, delta, d_out):
    """Padded inputs, row statistics and output cotangent -> ``(dq, dk, dv)``."""
    b, _, n, h = q.shape
    kh = k.shape[2]
    g = n // kh
    kb, vb = _blocks(k, st.block_kv), _blocks(v, st.block_kv)
    kpb, ksb = _blocks(k_pos, st.block_kv), _blocks(kv_seg, st.block_kv)

    def grouped(x):  # [B, Cq, N] -> [B, K, G, Cq]
        return jnp.moveaxis(x.reshape(x.shape[0], x.shape[1], kh, g), 1, 3)

    def q_block(acc, xs):
        i, q_i, do_i, lse_i, delta_i, qp_i, qs_i = xs
        q32 = q_i.astype(_F32)
        do_g = do_i.reshape(b, do_i.shape[1], kh, g, h)  # [B, Cq, K, G, H]
        lse_i, delta_i = _finite(grouped(lse_i)), grouped(delta_i)

        def tile(masked, j, carry):
            dq, dk, dv = carry
            k_j, v_j = kb[j], vb[j]

            def logits(qq, kk):
                return _tile_logits(st, qq.astype(q.dtype), kk.astype(k.dtype), qp_i, kpb[j])

            s, pullback = jax.vjp(logits, q32, k_j.astype(_F32))
            if masked:
                s = _apply_mask(st, s, qp_i, qs_i, kpb[j], ksb[j])
            p = jnp.exp(s - lse_i[..., None])  # [B, K, G, Cq, Ck]
            dv_j = jnp.einsum(
                "BKGTS,BTKGH->BSKH", p.astype(do_i.dtype), do_g, preferred_element_type=_F32
            )
            dp = jnp.einsum("BTKGH,BSKH->BKGTS", do_g, v_j, preferred_element_type=_F32)
            dq_j, dk_j = pullback(p * (dp - delta_i[..., None]))
            dk = lax.dynamic_update_index_in_dim(dk, dk[j] + dk_j, j, 0)
            dv = lax.dynamic_update_index_in_dim(dv, dv[j] + dv_j, j, 0)
            return dq + dq_j, dk, dv

        dq, dk, dv = _visit(
            visits,
            i,
            functools.partial(tile, False),
            (jnp.zeros(q_i.shape, _F32), *acc),
            functools.partial(tile, True),
        )
        return (dk, dv), dq.astype(q.dtype)

    nq = q.shape[1] // st.block_q
    xs = (
        jnp.arange(nq),
        *(_blocks(x, st.block_q) for x in (q, d_out, lse, delta, q_pos, q_seg)),
    )
    zeros = jnp.zeros(kb.shape, _F32)
    (dk, dv), dq = lax.scan(q_block, (zeros, zeros), xs)
    dk, dv = _unblocks(dk).astype(k.dtype), _unblocks(dv).astype(v.dtype)
    return _unblocks(dq), dk, dv


_flash.defvjp(_flash_fwd, _flash_bwd)
