"""Flash attention (causal or bidirectional) for TPU, on explicit positions.

``flash_attention`` -> ``custom_vjp`` ``_flash_attention`` -> the forward / dq / dkv kernels of
``kernels_pallas.engine``; layout ``[B,N,T,H]`` / ``[B,K,S,H]``. Causality reads positions, so
ring shards pass global positions; tiles classified on device are skipped in compute and DMA
when empty. See docs/attention.md#flash-kernel.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels_pallas import common, engine
from kernels_pallas.common import (
    NUM_LANES,
    NUM_SUBLANES,
    check_block,
    check_qkv,
    resolve_interpret,
)
from kernels_pallas.mask import EMPTY, PositionalMask, segment_tile_kind

_DEFAULT_BLOCK = 512


def _default_block(dim: int) -> int:
    for block in (_DEFAULT_BLOCK, 256, 128):
        if dim % block == 0:
            return block
    return dim  # short or odd lengths: one block spanning the dimension (validated later)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes. Backward blocks default to the forward ones.

    ``block_q*`` tile the query length T (multiples of 8), ``block_kv*`` the kv length S
    (multiples of 128); either may instead equal the whole dimension.
    """

    block_q: int = _DEFAULT_BLOCK
    block_kv: int = _DEFAULT_BLOCK
    block_q_dq: int | None = None
    block_kv_dq: int | None = None
    block_q_dkv: int | None = None
    block_kv_dkv: int | None = None

    @classmethod
    def for_shape(cls, q_len: int, kv_len: int) -> BlockSizes:
        """512 where the lengths allow, else the largest of 256, 128 dividing them."""
        return cls(block_q=_default_block(q_len), block_kv=_default_block(kv_len))

    def pairs(self) -> dict[str, tuple[int, int]]:
        """(block_q, block_kv) per kernel: fwd, dq, dkv."""
        return {
            "fwd": (self.block_q, self.block_kv),
            "dq": (self.block_q_dq or self.block_q, self.block_kv_dq or self.block_kv),
            "dkv": (self.block_q_dkv or self.block_q, self.block_kv_dkv or self.block_kv),
        }

    def validate(self, q_len: int, kv_len: int) -> None:
        for kernel, (bq, bk) in self.pairs().items():
            suffix = "" if kernel == "fwd" else f"_{kernel}"
            check_block(f"block_q{suffix}", bq, "q length T", q_len, NUM_SUBLANES)
            check_block(f"block_kv{suffix}", bk, "kv length S", kv_len, NUM_LANES)


def _position_bounds(pos, block):
    blocks = pos.reshape(pos.shape[0], -1, block)
    return blocks.min(-1), blocks.max(-1)  # [B, nb] each


def _tile_kinds(mask, tokens, block_q, block_kv):
    """Dense ``[B, nq, nk]`` tile kinds from per-block bounds (small: one int per tile)."""
    q_min, q_max = _position_bounds(tokens.q_pos, block_q)
    k_min, k_max = _position_bounds(tokens.kv_pos, block_kv)
    kinds = mask.tile_kind(q_min[:, :, None], q_max[:, :, None], k_min[:, None], k_max[:, None])
    kinds = jnp.broadcast_to(jnp.asarray(kinds, jnp.int32), (*q_min.shape, k_min.shape[1]))
    if tokens.q_seg is not None:
        q_sum = engine.segment_summary(tokens.q_seg, block_q).reshape(*q_min.shape, 3)
        k_sum = engine.segment_summary(tokens.kv_seg, block_kv).reshape(*k_min.shape, 3)
        seg = segment_tile_kind(
            *(q_sum[:, :, None, f] for f in range(3)), *(k_sum[:, None, :, f] for f in range(3))
        )
        kinds = jnp.where(seg == EMPTY, EMPTY, kinds)
    bounds_q = jnp.stack([q_min, q_max], -1).reshape(-1).astype(jnp.int32)
    bounds_k = jnp.stack([k_min, k_max], -1).reshape(-1).astype(jnp.int32)
    return kinds, bounds_q, bounds_k


def _visit_range(kinds):
    """First and last non-empty step per row of ``kinds [B, rows, steps]``, flattened [B*rows*2].

    A row with nothing to compute gets the first block of the next row that has work (a useful
    prefetch) or, after the last such row, the last block of the previous one (still resident).
    """
    nonempty = kinds != EMPTY
    steps, rows = kinds.shape[-1], kinds.shape[-2]
    first = jnp.argmax(nonempty, axis=-1)
    last = steps - 1 - jnp.argmax(nonempty[..., ::-1], axis=-1)
    busy = nonempty.any(-1)  # [B, rows]
    idx = jnp.arange(rows)
    next_busy = lax.cummin(jnp.where(busy, idx, rows), axis=1, reverse=True)
    prev_busy = lax.cummax(jnp.where(busy, idx, -1), axis=1)
    take = lambda x, r: jnp.take_along_axis(x, jnp.clip(r, 0, rows - 1), axis=1)  # noqa: E731
    fill = jnp.where(
        next_busy < rows,
        take(first, next_busy),
        jnp.where(prev_busy >= 0, take(last, prev_busy), 0),
    )
    lo, hi = jnp.where(busy, first, fill), jnp.where(busy, last, fill)
    return jnp.stack([lo, hi], -1).reshape(-1).astype(jnp.int32)


def estimated_tiles(
    mask: PositionalMask, q_len: int, kv_len: int, block_q: int, block_kv: int, q_offset: int = 0
) -> int:
    """Tiles per (batch entry, query head) that the kernels' cost estimate counts: those ``mask``
    does not rule out for contiguous positions ``q_offset + arange(T)`` and ``arange(S)`` (all
    ``nq * nk`` tiles without causal masking; about half of them when causal and ``T == S``).
    Segment ids are not counted (positions and ids are traced; the estimate must be static)."""
    q0 = q_offset + block_q * np.arange(q_len // block_q)
    k0 = block_kv * np.arange(kv_len // block_kv)
    kinds = mask.tile_kind(
        q0[:, None], q0[:, None] + block_q - 1, k0[None], k0[None] + block_kv - 1
    )
    return int(np.count_nonzero(np.broadcast_to(np.asarray(kinds), (q0.size, k0.size)) != EMPTY))


def flash_schedules(
    mask: PositionalMask,
    tokens: engine.Tokens,
    block_q: int,
    block_kv: int,
    estimate_q_offset: int = 0,
):
    """(row schedule for fwd/dq, column schedule for dkv) over a dense tile grid; their cost
    estimate counts ``estimated_tiles(..., q_offset=estimate_q_offset)`` tiles."""
    kinds, bounds_q, bounds_k = _tile_kinds(mask, tokens, block_q, block_kv)
    _, nq, nk = kinds.shape
    tiles = estimated_tiles(mask, nq * block_q, nk * block_kv, block_q, block_kv, estimate_q_offset)

    def kind_at(b, q_blk, kv_blk, bq_ref, bk_ref):
        q_base, k_base = (b * nq + q_blk) * 2, (b * nk + kv_blk) * 2
        return mask.tile_kind(
            bq_ref[q_base], bq_ref[q_base + 1], bk_ref[k_base], bk_ref[k_base + 1]
        )

    def clamp(step, rng_ref, base):
        return jnp.clip(step, rng_ref[base], rng_ref[base + 1])

    def visited(step, rng_ref, base, kind):
        # Steps outside the visited range re-load a neighbouring block: never compute them.
        return jnp.where(clamp(step, rng_ref, base) == step, kind, EMPTY)

    rows = engine.Schedule(
        prefetch=(bounds_q, bounds_k, _visit_range(kinds)),
        width=nk,
        block=lambda b, kh, i, j, bq_ref, bk_ref, rng: clamp(j, rng, (b * nq + i) * 2),
        kind=lambda b, kh, i, j, bq_ref, bk_ref, rng: visited(
            j, rng, (b * nq + i) * 2, kind_at(b, i, j, bq_ref, bk_ref)
        ),
        tiles=tiles,
    )
    cols = engine.Schedule(
        prefetch=(bounds_q, bounds_k, _visit_range(jnp.swapaxes(kinds, 1, 2))),
        width=nq,
        block=lambda b, kh, c, j, bq_ref, bk_ref, rng: clamp(j, rng, (b * nk + c) * 2),
        kind=lambda b, kh, c, j, bq_ref, bk_ref, rng: visited(
            j, rng, (b * nk + c) * 2, kind_at(b, j, c, bq_ref, bk_ref)
        ),
        tiles=tiles,
    )
    return rows, cols


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash_attention(q, k, v, tokens, mask, scale, block_sizes, options):
    return _fwd(q, k, v, tokens, mask, scale, block_sizes, options)[0]


class _Options(NamedTuple):
    """Static options threaded through the custom_vjp (hashable)."""

    interpret: Any
    probe: Any
    estimate_q_offset: int  # q_offset of ``estimated_tiles``


def _static(mask, scale, blocks, options):
    return engine.Static(mask, scale, *blocks, options.interpret, options.probe)


def _schedules(mask, tokens, blocks, options):
    return flash_schedules(mask, tokens, *blocks, options.estimate_q_offset)


def _estimate_q_offset(q_len, kv_len, q_positions, kv_positions) -> int:
    # Omitted positions are arange; given ones are assumed to put the queries last (decoding,
    # chunked prefill; the same as arange when T == S).
    return 0 if q_positions is None and kv_positions is None else kv_len - q_len


def _fwd(q, k, v, tokens, mask, scale, block_sizes, options):
    blocks = block_sizes.pairs()["fwd"]
    rows, _ = _schedules(mask, tokens, blocks, options)
    out, lse = engine.forward(q, k, v, tokens, rows, _static(mask, scale, blocks, options))
    out, lse = common.name_residuals(out, lse)
    return (out, lse), (q, k, v, tokens, out, lse)


def _backward(q, k, v, tokens, out, lse, d_out, d_lse, mask, scale, block_sizes, options):
    # d lse_i / d s_ij = p_ij, so an lse cotangent enters ds = p * (dp - di) through di.
    di = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1) - d_lse
    d_out = d_out.astype(q.dtype)
    pairs = block_sizes.pairs()
    rows, _ = _schedules(mask, tokens, pairs["dq"], options)
    dq = engine.backward_dq(
        q, k, v, d_out, lse, di, tokens, rows, _static(mask, scale, pairs["dq"], options)
    )
    _, cols = _schedules(mask, tokens, pairs["dkv"], options)
    dk, dv = engine.backward_dkv(
        q, k, v, d_out, lse, di, tokens, cols, _static(mask, scale, pairs["dkv"], options)
    )
    return dq, dk, dv


def _bwd(mask, scale, block_sizes, options, res, cotangents):
    q, k, v, tokens, out, lse = res
    d_out, d_lse = cotangents
    dq, dk, dv = _backward(
        q, k, v, tokens, out, lse, d_out, d_lse, mask, scale, block_sizes, options
    )
    return dq, dk, dv, None


_flash_attention.defvjp(_fwd, _bwd)


def _prepare(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, blocks):
    """Validates the public arguments; returns (tokens, block sizes, scale)."""
    b, _, _, t, s, h = check_qkv(q, k, v)
    tokens = engine.make_tokens(b, t, s, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
    blocks = BlockSizes.for_shape(t, s) if blocks is None else blocks
    if not isinstance(blocks, BlockSizes):
        raise ValueError(f"block_sizes = {blocks!r}: must be a flash.BlockSizes")
    blocks.validate(t, s)
    return tokens, blocks, float(h**-0.5 if scale is None else scale)


@functools.partial(
    jax.jit,
    static_argnames=("causal", "scale", "block_sizes", "return_lse", "interpret", "tile_probe"),
)
def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    return_lse: bool = False,
    interpret=None,
    tile_probe=None,
):
    """Flash attention with GQA, segment ids and position-based causal masking.

    Args:
      q: ``[B, N, T, H]`` queries.
      k, v: ``[B, K, S, H]`` keys and values; ``N % K == 0`` and query head ``n`` reads kv head
        ``n // (N // K)``. q, k, v share a dtype; the output has it too.
      q_segment_ids, kv_segment_ids: optional ``[B, T]`` / ``[B, S]`` ints (both or neither);
        tokens attend only within equal ids, and id 0 is padding (never attends or is attended).
      q_positions, kv_positions: optional ``[B, T]`` / ``[B, S]`` ints used by ``causal``
        (``k_pos <= q_pos``); default ``arange``. Need not be sorted (ring / zigzag shards).
      causal: mask keys at later positions.
      scale: softmax scale applied to ``q.k`` (default ``H ** -0.5``).
      block_sizes: ``BlockSizes`` (default ``BlockSizes.for_shape(T, S)``).
      return_lse: also return the log-sum-exp of the scaled, masked logits.
      interpret: None (default): compiled Mosaic when the program is lowered for TPU (from any
        host), jax's generic Pallas interpreter when lowered for another platform; chosen per
        lowering by ``lax.platform_dependent``, not from the host's default backend. False:
        always Mosaic; True: always the generic interpreter; ``pltpu.InterpretParams``: Pallas
        TPU interpret mode (simulated DMAs / semaphores, race detection; slow). See
        ``common.resolve_interpret``.
      tile_probe: test hook, needs ``interpret=True`` or ``pltpu.InterpretParams`` (ValueError
        otherwise): called on the host as ``tile_probe(kernel, b, n, q_block, kv_block)`` for
        every tile that is computed.

    Returns:
      ``out [B, N, T, H]``, and with ``return_lse`` also ``lse [B, N, T]`` float32: natural-log
      ``logsumexp_s(scale * q.k_s)`` over visible keys, ``-inf`` for rows with none (their output
      is 0). Differentiable w.r.t. q, k, v through both outputs.

    Each kernel reports a cost estimate to XLA (``engine.cost_estimate``) for the tiles of
    ``estimated_tiles``: those the mask can visit on contiguous positions (``arange`` when the
    positions are omitted; otherwise the queries taken as the last T of S positions), so about
    half of them when causal with T == S.
    """
    tokens, block_sizes, scale = _prepare(
        q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, block_sizes
    )
    options = _Options(
        resolve_interpret(interpret, tile_probe),
        tile_probe,
        _estimate_q_offset(q.shape[2], k.shape[2], q_positions, kv_positions),
    )
    out, lse = _flash_attention(
        q, k, v, tokens, PositionalMask(causal=causal), scale, block_sizes, options
    )
    return (out, lse) if return_lse else out


@functools.partial(jax.jit, static_argnames=("causal", "scale", "block_sizes", "interpret"))
def flash_attention_bwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    d_out: jax.Array,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    *,
    d_lse: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret=None,
):
    """The backward kernels alone, for callers that combine several attention calls.

    With ``out`` and ``lse`` of the *combined* attention (e.g. merged over ring steps) and k, v
    one shard of the keys, this returns that shard's exact contribution: dq summed over shards
    and dk, dv per shard give the full gradients (the ring-attention backward). With this call's
    own ``out`` and ``lse`` it equals the VJP of ``flash_attention``.

    Args:
      q, k, v, segment ids, positions, causal, scale, block_sizes, interpret: as in
        ``flash_attention``.
      out: ``[B, N, T, H]`` attention output; lse: ``[B, N, T]`` its log-sum-exp.
      d_out: ``[B, N, T, H]`` output cotangent; d_lse: optional ``[B, N, T]`` lse cotangent.

    Returns:
      ``(dq [B,N,T,H], dk [B,K,S,H], dv [B,K,S,H])`` in the input dtypes.
    """
    tokens, block_sizes, scale = _prepare(
        q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, block_sizes
    )
    if out.shape != q.shape or d_out.shape != q.shape or lse.shape != q.shape[:3]:
        raise ValueError(
            f"out, d_out must be [B,N,T,H] = {q.shape} and lse [B,N,T]; got {out.shape}, "
            f"{d_out.shape}, {lse.shape}"
        )
    d_lse = jnp.zeros(lse.shape, jnp.float32) if d_lse is None else d_lse
    mask = PositionalMask(causal=causal)
    options = _Options(
        resolve_interpret(interpret),
        None,
        _estimate_q_offset(q.shape[2], k.shape[2], q_positions, kv_positions),
    )
    return _backward(q, k, v, tokens, out, lse, d_out, d_lse, mask, scale, block_sizes, options)
