"""Tile bookkeeping shared by tiled attention: block ranges, tile classes, visit lists.

Per-block position and segment-id summaries (``block_ranges``) and a mask give one ``EMPTY /
PARTIAL / FULL`` class per (query block, key block) tile (``classify_tiles``) in O(T/Cq * S/Ck)
work, never O(T * S). Plain ``jnp``, so it runs under ``jit`` on traced positions. See
docs/attention.md#tiles.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lcm.attention import masks as masks_lib

_BIG = jnp.iinfo(jnp.int32).max


class BlockRanges(NamedTuple):
    """Per-block summaries, each ``[B, num_blocks]``."""

    pos_lo: jax.Array  # smallest position of a real token (int32 max when none)
    pos_hi: jax.Array  # largest position of a real token (int32 min when none)
    seg_lo: jax.Array  # smallest non-zero segment id
    seg_hi: jax.Array  # largest non-zero segment id
    any_real: jax.Array  # the block holds at least one non-padding token
    all_real: jax.Array  # the block holds no padding


def block_ranges(pos: jax.Array, seg: jax.Array, block: int) -> BlockRanges:
    """Summarises ``pos, seg [B, L]`` (L a multiple of ``block``) per block of ``block`` tokens."""
    b, length = pos.shape
    pos = pos.reshape(b, length // block, block)
    seg = seg.reshape(b, length // block, block)
    real = seg != 0
    return BlockRanges(
        pos_lo=jnp.where(real, pos, _BIG).min(-1),
        pos_hi=jnp.where(real, pos, -_BIG).max(-1),
        seg_lo=jnp.where(real, seg, _BIG).min(-1),
        seg_hi=jnp.where(real, seg, -_BIG).max(-1),
        any_real=real.any(-1),
        all_real=real.all(-1),
    )


def classify_tiles(mask: masks_lib.Mask, q: BlockRanges, k: BlockRanges) -> jax.Array:
    """Tile classes ``[B, nq, nk] int32`` (``masks.EMPTY / PARTIAL / FULL``)."""

    def rows(x):
        return x[:, :, None]

    def cols(x):
        return x[:, None, :]

    cls = mask.classify(rows(q.pos_lo), rows(q.pos_hi), cols(k.pos_lo), cols(k.pos_hi))
    some_real = rows(q.any_real) & cols(k.any_real)
    seg_apart = (rows(q.seg_hi) < cols(k.seg_lo)) | (cols(k.seg_hi) < rows(q.seg_lo))
    one_segment = (
        (rows(q.seg_lo) == rows(q.seg_hi))
        & (cols(k.seg_lo) == cols(k.seg_hi))
        & (rows(q.seg_lo) == cols(k.seg_lo))
    )
    no_padding = rows(q.all_real) & cols(k.all_real)
    cls = jnp.where(some_real & ~seg_apart, cls, masks_lib.EMPTY)
    return jnp.where((cls == masks_lib.FULL) & ~(one_segment & no_padding), masks_lib.PARTIAL, cls)


class VisitLists(NamedTuple):
    """Which key blocks each query block visits, split by whether the mask must be applied.

    ``full_idx[i, :full_count[i]]`` are the key blocks that are full for every batch element
    (no mask needed); ``partial_idx[i, :partial_count[i]]`` the other non-empty ones. A tile
    that is empty for every batch element appears in neither list, so it costs nothing.
    """

    full_idx: jax.Array  # [nq, nk] int32
    full_count: jax.Array  # [nq] int32
    partial_idx: jax.Array  # [nq, nk] int32
    partial_count: jax.Array  # [nq] int32


def visit_lists(classes: jax.Array) -> VisitLists:
    """Builds the per-query-block visit lists from tile classes ``[B, nq, nk]``."""
    full = (classes == masks_lib.FULL).all(0)
    visited = (classes != masks_lib.EMPTY).any(0)
    partial = visited & ~full

    def front(selected):
        # Stable sort puts the selected key blocks first, in increasing order. The key is int32,
        # not bool: XLA:CPU (jax 0.10) fails to compile a fused bool `a & ~b` feeding the sort
        # for [8, 8] tiles inside ring attention's backward ("Cannot select ... and_not_fusion").
        key = jnp.where(selected, 0, 1).astype(jnp.int32)
        idx = jnp.argsort(key, axis=-1, stable=True).astype(jnp.int32)
        return idx, selected.sum(-1, dtype=jnp.int32)

    full_idx, full_count = front(full)
    partial_idx, partial_count = front(partial)
    return VisitLists(full_idx, full_count, partial_idx, partial_count)
