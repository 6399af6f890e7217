"""A tiny positional mask description shared by the kernels and their host-side helpers.

A mask is evaluated on token *positions*, never on array indices, so ring shards, packed
documents and load-balanced token orders need no special cases (the same idea as splash
attention's ``q_sequence``; Brandon et al. 2023, arXiv 2311.09431, for striped layouts).

Key ``k`` is visible from query ``q`` (positions ``qp``, ``kp``) when::

    causal_ok & ((window_ok & chunk_ok) | kp < sink)

with ``causal_ok = kp <= qp`` (if ``causal``), ``window_ok = -window_right <= qp - kp <=
window_left`` (each side only if set), ``chunk_ok = qp // chunk == kp // chunk`` (if ``chunk``).
Sink keys (StreamingLLM, Xiao et al. 2023, arXiv 2309.17453) stay visible outside the window but
still obey causality. Segment ids are separate: kernels AND them in.

Every method works on numpy arrays, jax arrays and scalars alike (only operators are used), so
one definition serves the host-side block-list builders, the kernels' in-tile masks and the
in-kernel tile classification.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jax import lax

# Tile kinds, as stored in block lists and computed from position bounds.
EMPTY = 0  # no visible (q, k) pair: skipped in compute and DMA
PARTIAL = 1  # some pairs visible: the kernel evaluates the mask inside the tile
FULL = 2  # every pair visible: no mask is evaluated


def floor_div(x, d: int):
    """``x // d`` for a positive int ``d``, on numpy or jax integers.

    jax's ``//`` on integers lowers through ``lax.sign``, whose Mosaic lowering asks the *default*
    device for its TPU generation, so a kernel using it fails to compile for TPU from a CPU host
    outside a TPU mesh context ("Unsupported TPU device kind: cpu"). Truncating ``lax.div``
    corrected for negative remainders lowers everywhere.
    """
    if isinstance(x, int | np.integer | np.ndarray):
        return x // d
    quot = lax.div(x, lax.convert_element_type(d, x.dtype))
    return quot - ((quot * d != x) & (x < 0)).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class PositionalMask:
    """Declarative positional mask; hashable so kernels can take it as a static argument.

    Attributes:
      causal: keys at later positions are invisible.
      window_left: if set, keys more than this many positions before the query are invisible
        (``window_left=w-1`` keeps a window of ``w`` tokens including the query itself).
      window_right: if set, keys more than this many positions after the query are invisible.
      chunk: if set, queries only see keys in the same chunk ``pos // chunk`` (chunked attention).
      sink: keys at positions ``< sink`` stay visible regardless of window and chunk.
    """

    causal: bool = False
    window_left: int | None = None
    window_right: int | None = None
    chunk: int | None = None
    sink: int = 0

    def __post_init__(self):
        for name in ("window_left", "window_right"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"PositionalMask.{name} = {value!r}: must be None or an int >= 0")
        if self.chunk is not None and (not isinstance(self.chunk, int) or self.chunk < 1):
            raise ValueError(f"PositionalMask.chunk = {self.chunk!r}: must be None or an int >= 1")
        if not isinstance(self.sink, int) or self.sink < 0:
            raise ValueError(f"PositionalMask.sink = {self.sink!r}: must be an int >= 0")

    @property
    def is_full(self) -> bool:
        """True when the mask hides nothing (plain bidirectional attention)."""
        return not self.causal and not self._restricts

    @property
    def _restricts(self) -> bool:
        return self.window_left is not None or self.window_right is not None or bool(self.chunk)

    def allows(self, q_pos, k_pos):
        """Elementwise visibility of ``k_pos`` from ``q_pos`` (broadcasting); bool array."""
        d = q_pos - k_pos  # broadcasts [bq, 1] x [1, bk] -> [bq, bk]
        visible = d == d  # all True, in the broadcast shape
        if self.window_left is not None:
            visible = visible & (d <= self.window_left)
        if self.window_right is not None:
            visible = visible & (-d <= self.window_right)
        if self.chunk:
            visible = visible & (floor_div(q_pos, self.chunk) == floor_div(k_pos, self.chunk))
        if self.sink and self._restricts:
            visible = visible | (k_pos < self.sink)
        if self.causal:
            visible = visible & (d >= 0)
        return visible

    def tile_kind(self, q_min, q_max, k_min, k_max):
        """Classifies tiles whose positions lie in ``[q_min, q_max] x [k_min, k_max]``.

        Returns ``EMPTY``, ``PARTIAL`` or ``FULL`` (elementwise, int). Conservative: a tile is
        called empty or full only when that holds for every pair in the rectangle, so a kernel
        that evaluates the exact mask in partial tiles is always correct. It is exact for
        contiguous positions and causal / window / sink masks.
        """
        # Each term is (empty, full) for one elementary condition; d = q - k spans
        # [q_min - k_max, q_max - k_min].
        d_lo, d_hi = q_min - k_max, q_max - k_min
        empty, full = False, True
        if self._restricts:
            l_empty, l_full = False, True
            if self.window_left is not None:
                l_empty = l_empty | (d_lo > self.window_left)
                l_full = l_full & (d_hi <= self.window_left)
            if self.window_right is not None:
                l_empty = l_empty | (-d_hi > self.window_right)
                l_full = l_full & (-d_lo <= self.window_right)
            if self.chunk:
                c = self.chunk
                q_lo, q_hi = floor_div(q_min, c), floor_div(q_max, c)
                k_lo, k_hi = floor_div(k_min, c), floor_div(k_max, c)
                l_empty = l_empty | (q_hi < k_lo) | (k_hi < q_lo)
                l_full = l_full & (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo)
            if self.sink:
                # OR with the sink columns: empty only if both are, full if either is.
                l_empty = l_empty & (k_min >= self.sink)
                l_full = l_full | (k_max < self.sink)
            empty, full = l_empty, l_full
        if self.causal:
            empty = empty | (d_hi < 0)
            full = full & (d_lo >= 0)
        return (1 - empty) * (1 + full)


def segment_tile_kind(q_lo, q_nz, q_hi, k_lo, k_nz, k_hi):
    """Classifies tiles by segment ids, from per-block summaries (elementwise, int).

    Each side gives ``lo`` (min id, 0 when the block holds padding), ``nz`` (min nonzero id) and
    ``hi`` (max id). Id 0 is padding and matches nothing. Conservative like ``tile_kind``.
    """
    empty = (q_hi == 0) | (k_hi == 0) | (q_hi < k_nz) | (k_hi < q_nz)
    full = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo) & (q_lo != 0)
    return (1 - empty) * (1 + full)
