"""Block lists: which kv blocks each q block visits (and the transpose, for the dkv kernel).

Per (batch, kv head, q block): kv block ids, a ``PARTIAL`` / ``FULL`` kind per entry and a count.
Splash attention's ``MaskInfo`` reduced to explicit id lists, so data-dependent selections (MoBA,
Lu et al. 2025, arXiv 2502.13189; NSA, Yuan et al. 2025, arXiv 2502.11089) lower to the same
kernel as static masks. See docs/attention.md#block-lists.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.mask import EMPTY, PositionalMask


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockLists:
    """Per-q-block kv lists and per-kv-block q lists (int32), plus the block sizes they assume.

    Attributes:
      kv_ids, kv_kinds: ``[Bl, Kl, T // block_q, W]`` kv block ids and kinds per q block.
      kv_counts: ``[Bl, Kl, T // block_q]`` number of valid entries.
      q_ids, q_kinds: ``[Bl, Kl, S // block_kv, Wt]`` the transpose, for the dkv kernel.
      q_counts: ``[Bl, Kl, S // block_kv]``.
      block_q, block_kv: tile sizes (static).
    """

    kv_ids: jax.Array
    kv_kinds: jax.Array
    kv_counts: jax.Array
    q_ids: jax.Array
    q_kinds: jax.Array
    q_counts: jax.Array
    block_q: int = dataclasses.field(metadata=dict(static=True))
    block_kv: int = dataclasses.field(metadata=dict(static=True))


def _compact(kinds, width, xp):
    """Rows of ``kinds [..., R, C]`` -> (ids, kinds, counts): non-empty columns first, ascending."""
    order = xp.argsort(kinds == EMPTY, axis=-1, stable=True)[..., :width]
    listed = xp.take_along_axis(kinds, order, axis=-1)
    counts = (kinds != EMPTY).sum(-1)
    return order.astype(xp.int32), listed.astype(xp.int32), counts.astype(xp.int32)


def _from_kinds(kinds, block_q, block_kv, xp, width=None, width_t=None):
    kinds_t = xp.swapaxes(kinds, -1, -2)
    if xp is np:  # exact widths (at least 1 so the grid is never empty)
        width = max(int((kinds != EMPTY).sum(-1).max(initial=0)), 1)
        width_t = max(int((kinds_t != EMPTY).sum(-1).max(initial=0)), 1)
    return BlockLists(
        *_compact(kinds, width, xp), *_compact(kinds_t, width_t, xp), block_q, block_kv
    )


def mask_tile_kinds(
    mask: PositionalMask, q_len, kv_len, block_q, block_kv, *, q_offset=0, kv_offset=0
) -> np.ndarray:
    """``[T // block_q, S // block_kv]`` tile kinds of ``mask`` on positions ``offset + arange``."""
    q_start = q_offset + block_q * np.arange(q_len // block_q)
    k_start = kv_offset + block_kv * np.arange(kv_len // block_kv)
    kinds = mask.tile_kind(
        q_start[:, None],
        q_start[:, None] + block_q - 1,
        k_start[None],
        k_start[None] + block_kv - 1,
    )
    return np.broadcast_to(np.asarray(kinds, np.int32), (q_start.size, k_start.size))


def block_lists_from_mask(
    mask: PositionalMask, q_len, kv_len, block_q, block_kv, *, q_offset=0, kv_offset=0
) -> BlockLists:
    """Host-side (numpy) lists for a static mask, shared by every batch entry and head.

    Positions are ``q_offset + arange(q_len)`` and ``kv_offset + arange(kv_len)`` (e.g. a ring
    shard). Widths are the exact maximum number of visited blocks.
    """
    for name, block, dim in (("block_q", block_q, q_len), ("block_kv", block_kv, kv_len)):
        if block < 1 or dim % block:
            raise ValueError(f"{name} = {block} must divide the length {dim}")
    kinds = mask_tile_kinds(
        mask, q_len, kv_len, block_q, block_kv, q_offset=q_offset, kv_offset=kv_offset
    )
    return _from_kinds(kinds[None, None], block_q, block_kv, np)


def block_lists_from_ids(kv_ids, kv_kinds, kv_counts, num_kv_blocks, block_q, block_kv):
    """Lists from a device-side selection (e.g. a top-k over kv blocks); traceable.

    Args:
      kv_ids: ``[Bl, Kl, nq, W]`` int kv block ids per q block (duplicates allowed: the
        strongest kind wins).
      kv_kinds: same shape, ``PARTIAL`` or ``FULL`` per entry.
      kv_counts: ``[Bl, Kl, nq]`` valid entries per row.
      num_kv_blocks: ``S // block_kv`` (static).
      block_q, block_kv: tile sizes (static).

    Returns:
      ``BlockLists`` with list width W (ids sorted ascending) and transposed width ``nq``.
    """
    width = kv_ids.shape[-1]
    valid = jnp.arange(width) < kv_counts[..., None]
    kinds = jnp.where(valid, kv_kinds, EMPTY).astype(jnp.int32)
    one_hot = kv_ids[..., None] == jnp.arange(num_kv_blocks)  # [Bl, Kl, nq, W, nk]
    dense = jnp.max(jnp.where(one_hot, kinds[..., None], EMPTY), axis=-2)
    return _from_kinds(dense, block_q, block_kv, jnp, width, dense.shape[-2])


def block_lists_from_kinds(kinds, block_q, block_kv, width, width_t) -> BlockLists:
    """Lists from device-side tile kinds ``[Bl, Kl, nq, nk]`` (e.g. a mask classified on traced
    positions); traceable. ``width`` / ``width_t`` are static list widths: rows with more
    non-empty tiles than that are TRUNCATED, so callers must know a bound (or check the counts
    and fall back to ``nk`` / ``nq``)."""
    return _from_kinds(jnp.asarray(kinds, jnp.int32), block_q, block_kv, jnp, width, width_t)


def dense_tile_kinds(lists: BlockLists) -> jax.Array:
    """``[Bl, Kl, nq, nk]`` tile kinds encoded by ``lists`` (forward lists); for references."""
    nk = lists.q_ids.shape[-2]
    width = lists.kv_ids.shape[-1]
    valid = jnp.arange(width) < lists.kv_counts[..., None]
    kinds = jnp.where(valid, lists.kv_kinds, EMPTY)
    one_hot = lists.kv_ids[..., None] == jnp.arange(nk)
    return jnp.max(jnp.where(one_hot, kinds[..., None], EMPTY), axis=-2)
