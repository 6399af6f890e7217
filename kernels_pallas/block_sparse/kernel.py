"""Block-sparse attention for TPU: every q block visits only the kv blocks in its list.

``block_sparse_attention`` -> ``custom_vjp`` -> ``kernels_pallas.engine``'s kernels driven by
list schedules (``BlockLists`` by scalar prefetch). ``PARTIAL`` entries evaluate the positional
mask inside the tile, ``FULL`` ones do not; segment ids always apply. See
docs/attention.md#block-sparse-kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels_pallas import common, engine
from kernels_pallas.block_sparse.block_lists import BlockLists
from kernels_pallas.common import (
    NUM_LANES,
    NUM_SUBLANES,
    check_block,
    check_qkv,
    resolve_interpret,
)
from kernels_pallas.mask import EMPTY, PositionalMask


def list_schedule(ids, kinds, counts) -> engine.Schedule:
    """Schedule walking ``ids [Bl, Kl, rows, W]`` (kinds alike, counts ``[Bl, Kl, rows]``)."""
    n_b, n_k, rows, width = ids.shape

    def row_base(b, kh, r):
        # Lists shared across batch / heads have a leading dim of 1.
        b = b if n_b > 1 else 0
        kh = kh if n_k > 1 else 0
        return (b * n_k + kh) * rows + r

    def block(b, kh, r, j, ids_ref, kinds_ref, counts_ref):
        row = row_base(b, kh, r)
        last = jnp.maximum(counts_ref[row] - 1, 0)
        return ids_ref[row * width + jnp.minimum(j, last)]

    def kind(b, kh, r, j, ids_ref, kinds_ref, counts_ref):
        row = row_base(b, kh, r)
        return jnp.where(j < counts_ref[row], kinds_ref[row * width + j], EMPTY)

    flat = tuple(x.reshape(-1).astype(jnp.int32) for x in (ids, kinds, counts))
    return engine.Schedule(prefetch=flat, width=width, block=block, kind=kind)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _block_sparse(q, k, v, tokens, lists, mask, scale, options):
    return _fwd(q, k, v, tokens, lists, mask, scale, options)[0]


def _static(mask, scale, lists, options):
    interpret, probe = options
    return engine.Static(mask, scale, lists.block_q, lists.block_kv, interpret, probe)


def _fwd(q, k, v, tokens, lists, mask, scale, options):
    rows = list_schedule(lists.kv_ids, lists.kv_kinds, lists.kv_counts)
    st = _static(mask, scale, lists, options)
    out, lse = common.name_residuals(*engine.forward(q, k, v, tokens, rows, st))
    return (out, lse), (q, k, v, tokens, lists, out, lse)


def _bwd(mask, scale, options, res, cotangents):
    q, k, v, tokens, lists, out, lse = res
    dq, dk, dv = _backward(q, k, v, tokens, lists, out, lse, *cotangents, mask, scale, options)
    return dq, dk, dv, None, None


def _backward(q, k, v, tokens, lists, out, lse, d_out, d_lse, mask, scale, options):
    di = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1) - d_lse
    d_out = d_out.astype(q.dtype)
    st = _static(mask, scale, lists, options)
    rows = list_schedule(lists.kv_ids, lists.kv_kinds, lists.kv_counts)
    dq = engine.backward_dq(q, k, v, d_out, lse, di, tokens, rows, st)
    cols = list_schedule(lists.q_ids, lists.q_kinds, lists.q_counts)
    dk, dv = engine.backward_dkv(q, k, v, d_out, lse, di, tokens, cols, st)
    return dq, dk, dv


_block_sparse.defvjp(_fwd, _bwd)


def _check_lists(lists: BlockLists, b, kh, t, s):
    if not isinstance(lists, BlockLists):
        raise ValueError(f"lists = {type(lists).__name__}: must be a block_sparse.BlockLists")
    check_block("lists.block_q", lists.block_q, "q length T", t, NUM_SUBLANES)
    check_block("lists.block_kv", lists.block_kv, "kv length S", s, NUM_LANES)
    nq, nk = t // lists.block_q, s // lists.block_kv
    for name, rows in (("kv", nq), ("q", nk)):
        ids, kinds, counts = (getattr(lists, f"{name}_{f}") for f in ("ids", "kinds", "counts"))
        if ids.ndim != 4 or kinds.shape != ids.shape or counts.shape != ids.shape[:3]:
            raise ValueError(
                f"lists.{name}_ids / _kinds / _counts: expected [Bl, Kl, rows, W] twice and "
                f"[Bl, Kl, rows]; got {ids.shape}, {kinds.shape}, {counts.shape}"
            )
        if ids.shape[0] not in (1, b) or ids.shape[1] not in (1, kh) or ids.shape[2] != rows:
            raise ValueError(
                f"lists.{name}_ids: shape {ids.shape} must be [1 or B={b}, 1 or K={kh}, {rows}, W]"
            )


def _check_mask(mask) -> None:
    if not (hasattr(mask, "allows") and hasattr(mask, "is_full")):
        raise ValueError(
            f"mask = {mask!r}: must be a PositionalMask (or a hashable object with its "
            "allows(q_pos, kv_pos) and is_full)"
        )


@functools.partial(
    jax.jit, static_argnames=("mask", "scale", "return_lse", "interpret", "tile_probe")
)
def block_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lists: BlockLists,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    *,
    mask: PositionalMask,
    scale: float | None = None,
    return_lse: bool = False,
    interpret=None,
    tile_probe=None,
):
    """Attention restricted to listed tiles.

    Key s is visible from query t when its tile is listed for t's q block (per batch entry and
    kv head) and, for ``PARTIAL`` entries, ``mask.allows(q_pos, kv_pos)``; and, if segment ids
    are given, both ids are equal and nonzero.

    Args:
      q: ``[B, N, T, H]``; k, v: ``[B, K, S, H]`` with ``N % K == 0`` (GQA: query head n uses
        kv head ``n // (N // K)`` and the lists of that kv head).
      lists: ``BlockLists`` (see ``block_lists.py``); its block sizes tile T and S.
      q_segment_ids, kv_segment_ids: optional ``[B, T]`` / ``[B, S]`` (both or neither).
      q_positions, kv_positions: optional ``[B, T]`` / ``[B, S]``, default ``arange``; the
        positions ``mask`` is evaluated on in partial tiles.
      mask: static ``PositionalMask`` for partial tiles (causal / window / chunk / sink), or any
        hashable object with the same ``allows(q_pos, kv_pos)`` (elementwise, operators only, so
        it runs inside the kernel) and ``is_full``; adapters pass their own mask types this way.
      scale: softmax scale (default ``H ** -0.5``).
      return_lse: also return ``lse [B, N, T]`` f32 (``-inf`` for rows that see nothing).
      interpret: as in ``flash_attention``: None (default) compiles Mosaic when lowered for TPU
        and runs jax's generic Pallas interpreter elsewhere; False, True or
        ``pltpu.InterpretParams`` force Mosaic, the generic or the TPU interpreter.
      tile_probe: test hook as in ``flash_attention`` (needs an explicit interpret mode).

    Returns:
      ``out [B, N, T, H]`` (zero for rows that see nothing), and ``lse`` if requested.

    The kernels' cost estimates count every scheduled step (the grid: ``T // block_q`` rows of
    list width W per batch entry and query head), padding steps included.
    """
    b, _, kh, t, s, h = check_qkv(q, k, v)
    _check_lists(lists, b, kh, t, s)
    tokens = engine.make_tokens(b, t, s, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
    _check_mask(mask)
    resolve_interpret(interpret, tile_probe)
    scale = float(h**-0.5 if scale is None else scale)
    out, lse = _block_sparse(q, k, v, tokens, lists, mask, scale, (interpret, tile_probe))
    return (out, lse) if return_lse else out


@functools.partial(jax.jit, static_argnames=("mask", "scale", "interpret"))
def block_sparse_attention_bwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    d_out: jax.Array,
    lists: BlockLists,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    *,
    d_lse: jax.Array | None = None,
    mask: PositionalMask,
    scale: float | None = None,
    interpret=None,
):
    """The backward kernels alone (as ``flash.flash_attention_bwd``): with the *combined* ``out``
    and ``lse`` of several attention calls (e.g. ring steps) and one shard's k, v and lists, the
    shard's exact share of the gradients; with this call's own, the VJP of
    ``block_sparse_attention``. Returns ``(dq, dk, dv)``."""
    b, _, kh, t, s, h = check_qkv(q, k, v)
    _check_lists(lists, b, kh, t, s)
    tokens = engine.make_tokens(b, t, s, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
    _check_mask(mask)
    if out.shape != q.shape or d_out.shape != q.shape or lse.shape != q.shape[:3]:
        raise ValueError(
            f"out, d_out must be [B,N,T,H] = {q.shape} and lse [B,N,T]; got {out.shape}, "
            f"{d_out.shape}, {lse.shape}"
        )
    d_lse = jnp.zeros(lse.shape, jnp.float32) if d_lse is None else d_lse
    scale = float(h**-0.5 if scale is None else scale)
    return _backward(
        q, k, v, tokens, lists, out, lse, d_out.astype(q.dtype), d_lse, mask, scale,
        (resolve_interpret(interpret), None),
    )  # fmt: skip
