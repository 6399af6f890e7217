"""Tile-skipping flash attention kernels (fwd, dq, dkv) shared by ``flash`` and ``block_sparse``.

Online softmax (Milakov & Gimelshein 2018, arXiv 1805.02867; FlashAttention, Dao et al. 2022,
arXiv 2205.14135) with a backward split into dq and dkv kernels, as in FlashAttention-2 (Dao
2023, arXiv 2307.08691). Kernel layout ``q [B,N,T,H]``, ``k, v [B,K,S,H]``; a ``Schedule`` gives
each grid step's block and tile kind. See docs/attention.md#kernel-engine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.common import NUM_LANES, check_per_token
from kernels_pallas.mask import EMPTY, FULL, PARTIAL, PositionalMask, segment_tile_kind

# Contract the head dim of both operands: [bq, H] x [bk, H] -> [bq, bk].
_NT = (((1,), (1,)), ((), ()))
_SEG_FIELDS = 3  # per-block segment summary: lo, min nonzero, hi


class Schedule(NamedTuple):
    """Which blocks a kernel visits along its reduction axis.

    For the forward and dq kernels a row is a q block and steps visit kv blocks; for the dkv
    kernel a row is a kv block and steps visit q blocks. Both callables take
    ``(b, kv_head, row, step, *prefetch_refs)`` (int32 scalars and SMEM refs) and return int32
    scalars; they run in index maps and kernel bodies alike.

    Attributes:
      prefetch: int32 arrays passed by scalar prefetch (flattened to 1-D for SMEM).
      width: number of steps per row (the last grid dimension).
      block: the block index to load at a step. For empty steps it must name a block that is
        already resident (the previous or next visited block), so no DMA is issued.
      kind: EMPTY, PARTIAL or FULL for the tile at a step; EMPTY wherever ``block`` re-names a
        resident block instead of the step's own tile.
      tiles: for the cost estimate only, the number of tiles per (batch entry, query head) that
        the kernel is expected to compute; None counts every scheduled step (rows x width).
    """

    prefetch: tuple[jax.Array, ...]
    width: int
    block: Callable[..., Any]
    kind: Callable[..., Any]
    tiles: int | None = None


class Tokens(NamedTuple):
    """Per-token int32 arrays: positions ``[B,T]``, ``[B,S]``; segment ids or None."""

    q_pos: jax.Array
    kv_pos: jax.Array
    q_seg: jax.Array | None
    kv_seg: jax.Array | None


def make_tokens(batch, q_len, kv_len, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
    """Validates the optional per-token arrays; positions default to ``arange``."""
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids: pass both or neither")
    check_per_token("q_segment_ids", q_segment_ids, batch, q_len, "T")
    check_per_token("kv_segment_ids", kv_segment_ids, batch, kv_len, "S")
    check_per_token("q_positions", q_positions, batch, q_len, "T")
    check_per_token("kv_positions", kv_positions, batch, kv_len, "S")

    def pos(x, length):
        if x is None:
            return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        return x.astype(jnp.int32)

    def seg(x):
        return None if x is None else x.astype(jnp.int32)

    return Tokens(
        pos(q_positions, q_len), pos(kv_positions, kv_len), seg(q_segment_ids), seg(kv_segment_ids)
    )


class Static(NamedTuple):
    """Trace-time configuration shared by the three kernels (hashable)."""

    mask: PositionalMask
    scale: float
    block_q: int
    block_kv: int
    interpret: Any  # None (platform_dependent), False, True or pltpu.InterpretParams
    probe: Callable[..., Any] | None  # host callback per computed tile (interpret mode only)


def segment_summary(seg: jax.Array, block: int) -> jax.Array:
    """Per-block ``(lo, min nonzero, hi)`` of segment ids ``[B, L]``, flattened for SMEM."""
    b, length = seg.shape
    blocks = seg.reshape(b, length // block, block)
    big = jnp.iinfo(jnp.int32).max
    nz = jnp.min(jnp.where(blocks == 0, big, blocks), axis=-1)
    summary = jnp.stack([blocks.min(-1), nz, blocks.max(-1)], axis=-1)
    return summary.reshape(-1).astype(jnp.int32)


def _read_summary(ref, b, blk, num_blocks):
    base = (b * num_blocks + blk) * _SEG_FIELDS
    return ref[base], ref[base + 1], ref[base + 2]


def _tile_kinds(sched, refs, b, kh, row, step, q_blk, kv_blk, nq, nk):
    """(positional kind, segment kind) of the tile at a grid step, as int32 scalars."""
    n_sched = len(sched.prefetch)
    kind = jnp.asarray(sched.kind(b, kh, row, step, *refs[:n_sched]), jnp.int32)
    if len(refs) == n_sched:
        return kind, jnp.int32(FULL)
    q_sum = _read_summary(refs[n_sched], b, q_blk, nq)
    kv_sum = _read_summary(refs[n_sched + 1], b, kv_blk, nk)
    return kind, jnp.asarray(segment_tile_kind(*q_sum, *kv_sum), jnp.int32)


def _dispatch(kind, seg_kind, has_seg, body, probe_ids, probe):
    """Runs ``body(positional, segments)`` with the static flags the tile needs."""
    run = (kind != EMPTY) & (seg_kind != EMPTY)
    if probe is not None:
        pl.when(run)(lambda: jax.debug.callback(probe, *probe_ids))
    pl.when((kind == FULL) & (seg_kind == FULL))(lambda: body(False, False))
    if has_seg:
        pl.when((kind == FULL) & (seg_kind == PARTIAL))(lambda: body(False, True))
    pl.when((kind == PARTIAL) & (seg_kind != EMPTY))(lambda: body(True, has_seg))


def _logits(q, k, qp_ref, kp_ref, qs_ref, ks_ref, st: Static, positional, segments):
    """Scaled logits ``[bq, bk]`` (f32) and the visibility mask (None when all visible)."""
    s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * st.scale
    visible = None
    if positional and not st.mask.is_full:
        visible = st.mask.allows(qp_ref[...], kp_ref[...])  # [bq, 1] x [1, bk]
    if segments:
        q_seg = qs_ref[...]
        same = (q_seg == ks_ref[...]) & (q_seg != 0)
        visible = same if visible is None else visible & same
    return s, visible


def _specs_common(st: Static, head_dim, q_map, kv_map, has_seg):
    """BlockSpecs for q, k, v, positions and segment ids; maps return (b, head, q/kv block)."""
    bq, bk = st.block_q, st.block_kv

    def q4(*a):
        b, n, blk = q_map(*a)
        return b, n, blk, 0

    def kv4(*a):
        b, kh, blk = kv_map(*a)
        return b, kh, blk, 0

    specs = [
        pl.BlockSpec((None, None, bq, head_dim), q4),
        pl.BlockSpec((None, None, bk, head_dim), kv4),
        pl.BlockSpec((None, None, bk, head_dim), kv4),
        pl.BlockSpec((None, bq, 1), lambda *a: (q_map(*a)[0], q_map(*a)[2], 0)),
        pl.BlockSpec((None, 1, bk), lambda *a: (kv_map(*a)[0], 0, kv_map(*a)[2])),
    ]
    if has_seg:
        specs += specs[-2:]
    return specs, q4


def _token_operands(tokens: Tokens):
    """Positions / segment ids reshaped so q-side ids run along sublanes, kv-side along lanes."""
    ops = [tokens.q_pos[:, :, None], tokens.kv_pos[:, None, :]]
    if tokens.q_seg is not None:
        ops += [tokens.q_seg[:, :, None], tokens.kv_seg[:, None, :]]
    return [x.astype(jnp.int32) for x in ops]


def _prefetch(sched: Schedule, tokens: Tokens, st: Static):
    pre = list(sched.prefetch)
    if tokens.q_seg is not None:
        pre += [
            segment_summary(tokens.q_seg, st.block_q),
            segment_summary(tokens.kv_seg, st.block_kv),
        ]
    return pre


# Matmuls per computed tile, each 2 * bq * bk * H flops: fwd s = q k^T, o += p v; dq recomputes
# s, dp = do v^T, dq += ds k; dkv recomputes s, dp, dv += p^T do, dk += ds^T q.
MATMULS_PER_TILE = {"fwd": 2, "dq": 3, "dkv": 4}


def cost_estimate(
    kernel: str, tiles: int, block_q: int, block_kv: int, head_dim: int, nbytes: int
) -> pl.CostEstimate:
    """``pl.CostEstimate`` for ``tiles`` computed ``block_q x block_kv`` tiles of ``kernel``.

    Each tile costs ``MATMULS_PER_TILE[kernel] * 2 * block_q * block_kv * head_dim`` flops and
    ``block_q * block_kv`` exps (``p = exp(s - m)`` or ``exp(s - lse)``); per-row rescales, the
    final log and the masks are left out. ``nbytes``: bytes of all operands and outputs (each
    counted once, though a kernel may fetch a block more than once).
    """
    area = block_q * block_kv
    return pl.CostEstimate(
        flops=int(MATMULS_PER_TILE[kernel] * 2 * area * head_dim * tiles),
        transcendentals=int(area * tiles),
        bytes_accessed=int(nbytes),
    )


def _nbytes(tree) -> int:
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _pallas_call(kernel, operands, *, st: Static, kind, sched, rows, heads, head_dim, grid_spec,
                 out_shape, dimension_semantics):  # fmt: skip
    """``pallas_call(kernel, ...)(*operands)`` with a cost estimate, for the lowering platform.

    ``st.interpret`` None stages ``lax.platform_dependent(tpu=<compiled Mosaic call>,
    default=<jax's generic Pallas interpreter>)``: the branch is picked when the program is
    lowered, for the platform it is lowered for (a TPU program compiled on a CPU host gets the
    Mosaic call), never from the host's default backend. Any other value (False, True, a
    ``pltpu.InterpretParams``) is passed to ``pallas_call`` as it is.

    The estimate counts ``heads`` (batch x query heads) times ``sched.tiles`` tiles, or times
    every scheduled step (``rows x sched.width``) when the schedule gives no count.
    """
    per_head = sched.tiles if sched.tiles is not None else rows * sched.width
    cost = cost_estimate(
        kind, heads * per_head, st.block_q, st.block_kv, head_dim,
        _nbytes(operands) + _nbytes(out_shape),
    )  # fmt: skip

    def call(interpret):
        return pl.pallas_call(
            kernel,
            grid_spec=grid_spec,
            out_shape=out_shape,
            compiler_params=pltpu.CompilerParams(dimension_semantics=dimension_semantics),
            interpret=interpret,
            cost_estimate=cost,
            name=f"flash_{kind}",
        )

    if st.interpret is not None:
        return call(st.interpret)(*operands)
    return lax.platform_dependent(*operands, tpu=call(False), default=call(True))


def forward(q, k, v, tokens: Tokens, sched: Schedule, st: Static):
    """Flash forward: returns ``out [B,N,T,H]`` (q dtype) and ``lse [B,N,T]`` (f32)."""
    b, n, t, h = q.shape
    kh, s = k.shape[1], k.shape[2]
    g = n // kh
    nq, nk = t // st.block_q, s // st.block_kv
    has_seg = tokens.q_seg is not None
    prefetch = _prefetch(sched, tokens, st)
    n_sched = len(sched.prefetch)

    def q_map(bi, ni, i, j, *refs):
        return bi, ni, i

    def kv_map(bi, ni, i, j, *refs):
        kh = lax.div(ni, g)
        return bi, kh, sched.block(bi, kh, i, j, *refs[:n_sched])

    in_specs, q4 = _specs_common(st, h, q_map, kv_map, has_seg)
    out_specs = [
        pl.BlockSpec((None, None, st.block_q, h), q4),
        pl.BlockSpec((None, None, st.block_q, 1), q4),
    ]
    out_shape = [
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        jax.ShapeDtypeStruct((b, n, t, 1), jnp.float32),
    ]
    scratch = [
        pltpu.VMEM((st.block_q, NUM_LANES), jnp.float32),  # running max m (lane-replicated)
        pltpu.VMEM((st.block_q, NUM_LANES), jnp.float32),  # running sum l
        pltpu.VMEM((st.block_q, h), jnp.float32),  # unnormalized output
    ]
    kernel = functools.partial(
        _fwd_kernel, sched=sched, st=st, n_pre=len(prefetch), g=g, nq=nq, nk=nk, has_seg=has_seg
    )
    out, lse = _pallas_call(
        kernel,
        (*prefetch, q, k, v, *_token_operands(tokens)),
        st=st, kind="fwd", sched=sched, rows=nq, heads=b * n, head_dim=h,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(prefetch),
            grid=(b, n, nq, sched.width),
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=scratch,
        ),
        out_shape=out_shape,
        dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
    )  # fmt: skip
    return out, lse[..., 0]


def _fwd_kernel(*refs, sched, st, n_pre, g, nq, nk, has_seg):
    pre, refs = refs[:n_pre], refs[n_pre:]
    q_ref, k_ref, v_ref, qp_ref, kp_ref, *refs = refs
    qs_ref, ks_ref = (refs.pop(0), refs.pop(0)) if has_seg else (None, None)
    o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
    bi, ni, i, j = (pl.program_id(a) for a in range(4))
    kh = lax.div(ni, g)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    def body(positional, segments):
        s, visible = _logits(
            q_ref[...], k_ref[...], qp_ref, kp_ref, qs_ref, ks_ref, st, positional, segments
        )
        if visible is not None:
            s = jnp.where(visible, s, -jnp.inf)
        m_prev = m_sc[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [bq, 128]
        # A row with nothing visible yet keeps m = -inf; shift by 0 so exp gives 0, not NaN.
        m_shift = jnp.where(m_next == -jnp.inf, 0.0, m_next)
        p = jnp.exp(s - m_shift[:, :1])
        alpha = jnp.exp(m_prev - m_shift)
        l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
        m_sc[...] = m_next
        v = v_ref[...]
        pv = lax.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        acc_sc[...] = acc_sc[...] * alpha[:, :1] + pv

    kv_blk = sched.block(bi, kh, i, j, *pre[: len(sched.prefetch)])
    kind, seg_kind = _tile_kinds(sched, pre, bi, kh, i, j, i, kv_blk, nq, nk)
    probe = None if st.probe is None else functools.partial(st.probe, "fwd")
    _dispatch(kind, seg_kind, has_seg, body, (bi, ni, i, kv_blk), probe)

    @pl.when(j == sched.width - 1)
    def _store():
        l = l_sc[...][:, :1]
        empty = l == 0.0
        o_ref[...] = (acc_sc[...] / jnp.where(empty, 1.0, l)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(empty, -jnp.inf, m_sc[...][:, :1] + jnp.log(l))


def _bwd_tile(q, k, v, do, lse, di, qp_ref, kp_ref, qs_ref, ks_ref, st, positional, segments):
    """Recomputed probabilities ``p`` and ``ds = p * (dp - di)``, both ``[bq, bk]`` f32."""
    s, visible = _logits(q, k, qp_ref, kp_ref, qs_ref, ks_ref, st, positional, segments)
    p = jnp.exp(s - lse)
    if visible is not None:
        p = jnp.where(visible, p, 0.0)
    dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    return p, p * (dp - di)


def backward_dq(q, k, v, do, lse, di, tokens: Tokens, sched: Schedule, st: Static):
    """dq ``[B,N,T,H]`` given the forward ``lse`` and ``di = rowsum(o * do) - dlse`` ``[B,N,T]``."""
    b, n, t, h = q.shape
    kh, s = k.shape[1], k.shape[2]
    g = n // kh
    nq, nk = t // st.block_q, s // st.block_kv
    has_seg = tokens.q_seg is not None
    prefetch = _prefetch(sched, tokens, st)
    n_sched = len(sched.prefetch)

    def q_map(bi, ni, i, j, *refs):
        return bi, ni, i

    def kv_map(bi, ni, i, j, *refs):
        kh = lax.div(ni, g)
        return bi, kh, sched.block(bi, kh, i, j, *refs[:n_sched])

    in_specs, q4 = _specs_common(st, h, q_map, kv_map, has_seg)
    in_specs += [
        pl.BlockSpec((None, None, st.block_q, h), q4),  # do
        pl.BlockSpec((None, None, st.block_q, 1), q4),  # lse
        pl.BlockSpec((None, None, st.block_q, 1), q4),  # di
    ]
    kernel = functools.partial(
        _dq_kernel, sched=sched, st=st, n_pre=len(prefetch), g=g, nq=nq, nk=nk, has_seg=has_seg
    )
    return _pallas_call(
        kernel,
        (*prefetch, q, k, v, *_token_operands(tokens), do, lse[..., None], di[..., None]),
        st=st, kind="dq", sched=sched, rows=nq, heads=b * n, head_dim=h,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(prefetch),
            grid=(b, n, nq, sched.width),
            in_specs=in_specs,
            out_specs=pl.BlockSpec((None, None, st.block_q, h), q4),
            scratch_shapes=[pltpu.VMEM((st.block_q, h), jnp.float32)],
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
    )  # fmt: skip


def _dq_kernel(*refs, sched, st, n_pre, g, nq, nk, has_seg):
    pre, refs = refs[:n_pre], refs[n_pre:]
    q_ref, k_ref, v_ref, qp_ref, kp_ref, *refs = refs
    qs_ref, ks_ref = (refs.pop(0), refs.pop(0)) if has_seg else (None, None)
    do_ref, lse_ref, di_ref, dq_ref, dq_sc = refs
    bi, ni, i, j = (pl.program_id(a) for a in range(4))
    kh = lax.div(ni, g)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    def body(positional, segments):
        k = k_ref[...]
        _, ds = _bwd_tile(
            q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], di_ref[...],
            qp_ref, kp_ref, qs_ref, ks_ref, st, positional, segments,
        )  # fmt: skip
        dq_sc[...] += lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    kv_blk = sched.block(bi, kh, i, j, *pre[: len(sched.prefetch)])
    kind, seg_kind = _tile_kinds(sched, pre, bi, kh, i, j, i, kv_blk, nq, nk)
    probe = None if st.probe is None else functools.partial(st.probe, "dq")
    _dispatch(kind, seg_kind, has_seg, body, (bi, ni, i, kv_blk), probe)

    @pl.when(j == sched.width - 1)
    def _store():
        dq_ref[...] = (dq_sc[...] * st.scale).astype(dq_ref.dtype)


def backward_dkv(q, k, v, do, lse, di, tokens: Tokens, sched: Schedule, st: Static):
    """dk, dv ``[B,K,S,H]``; ``sched`` rows are kv blocks and its steps visit q blocks."""
    b, n, t, h = q.shape
    kh, s = k.shape[1], k.shape[2]
    g = n // kh
    nq, nk = t // st.block_q, s // st.block_kv
    has_seg = tokens.q_seg is not None
    prefetch = _prefetch(sched, tokens, st)
    n_sched = len(sched.prefetch)

    # Grid (b, kv head, kv block, query head within the group, step).
    def q_map(bi, ki, c, gi, j, *refs):
        return bi, ki * g + gi, sched.block(bi, ki, c, j, *refs[:n_sched])

    def kv_map(bi, ki, c, gi, j, *refs):
        return bi, ki, c

    in_specs, q4 = _specs_common(st, h, q_map, kv_map, has_seg)

    def kv4(bi, ki, c, gi, j, *refs):
        return bi, ki, c, 0

    in_specs += [
        pl.BlockSpec((None, None, st.block_q, h), q4),  # do
        pl.BlockSpec((None, None, st.block_q, 1), q4),  # lse
        pl.BlockSpec((None, None, st.block_q, 1), q4),  # di
    ]
    out_spec = pl.BlockSpec((None, None, st.block_kv, h), kv4)
    kernel = functools.partial(
        _dkv_kernel, sched=sched, st=st, n_pre=len(prefetch), g=g, nq=nq, nk=nk, has_seg=has_seg
    )
    return _pallas_call(
        kernel,
        (*prefetch, q, k, v, *_token_operands(tokens), do, lse[..., None], di[..., None]),
        st=st, kind="dkv", sched=sched, rows=nk, heads=b * n, head_dim=h,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(prefetch),
            grid=(b, kh, nk, g, sched.width),
            in_specs=in_specs,
            out_specs=[out_spec, out_spec],
            scratch_shapes=[pltpu.VMEM((st.block_kv, h), jnp.float32)] * 2,
        ),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
    )  # fmt: skip


def _dkv_kernel(*refs, sched, st, n_pre, g, nq, nk, has_seg):
    pre, refs = refs[:n_pre], refs[n_pre:]
    q_ref, k_ref, v_ref, qp_ref, kp_ref, *refs = refs
    qs_ref, ks_ref = (refs.pop(0), refs.pop(0)) if has_seg else (None, None)
    do_ref, lse_ref, di_ref, dk_ref, dv_ref, dk_sc, dv_sc = refs
    bi, ki, c, gi, j = (pl.program_id(a) for a in range(5))

    @pl.when((gi == 0) & (j == 0))
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    def body(positional, segments):
        q, do = q_ref[...], do_ref[...]
        p, ds = _bwd_tile(
            q, k_ref[...], v_ref[...], do, lse_ref[...], di_ref[...],
            qp_ref, kp_ref, qs_ref, ks_ref, st, positional, segments,
        )  # fmt: skip
        dv_sc[...] += lax.dot(p.T.astype(do.dtype), do, preferred_element_type=jnp.float32)
        dk_sc[...] += lax.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)

    q_blk = sched.block(bi, ki, c, j, *pre[: len(sched.prefetch)])
    kind, seg_kind = _tile_kinds(sched, pre, bi, ki, c, j, q_blk, c, nq, nk)
    probe = None if st.probe is None else functools.partial(st.probe, "dkv")
    _dispatch(kind, seg_kind, has_seg, body, (bi, ki * g + gi, q_blk, c), probe)

    @pl.when((gi == g - 1) & (j == sched.width - 1))
    def _store():
        dk_ref[...] = (dk_sc[...] * st.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)
