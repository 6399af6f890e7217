"""Positional masks and the tile-kind vocabulary, shared by the kernels, their host-side helpers
and ``lcm.attention.masks``.

Masks read token *positions*, never array indices (as splash attention's ``q_sequence``;
Brandon et al. 2023, arXiv 2311.09431, for striped layouts). Visible: ``causal_ok & ((window_ok &
chunk_ok) | kp < sink)`` (sinks: StreamingLLM, Xiao et al. 2023, arXiv 2309.17453). Tiles are
``EMPTY`` / ``PARTIAL`` / ``FULL`` from position bounds through the ``*_box`` primitives. Works on
numpy, jax arrays and scalars alike. See docs/attention.md#kernel-masks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

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


class BoxVisibility(NamedTuple):
    """Two facts about a box ``[q_lo, q_hi] x [k_lo, k_hi]`` of (query, key) positions.

    ``none``: no pair of the box is visible; ``every``: every pair is. Both are conservative
    (False when unsure) and, on a box holding at least one pair, never both True.
    """

    none: Any
    every: Any


def causal_box(q_lo, q_hi, k_lo, k_hi) -> BoxVisibility:
    """``k <= q``."""
    return BoxVisibility(k_lo > q_hi, k_hi <= q_lo)


def window_left_box(q_lo, q_hi, k_lo, k_hi, left: int) -> BoxVisibility:
    """``q - k <= left`` (keys at most ``left`` positions before the query)."""
    # The keys some query of [q_lo, q_hi] sees start at q_lo - left.
    return BoxVisibility(k_hi < q_lo - left, k_lo >= q_hi - left)


def window_right_box(q_lo, q_hi, k_lo, k_hi, right: int) -> BoxVisibility:
    """``k - q <= right`` (keys at most ``right`` positions after the query)."""
    return BoxVisibility(k_lo > q_hi + right, k_hi <= q_lo + right)


def chunk_box(q_lo, q_hi, k_lo, k_hi, size: int) -> BoxVisibility:
    """``q // size == k // size`` (same chunk)."""
    qc_lo, qc_hi, kc_lo, kc_hi = (floor_div(x, size) for x in (q_lo, q_hi, k_lo, k_hi))
    # The box's chunk ids are ranges: disjoint ranges share no chunk.
    none = (qc_hi < kc_lo) | (kc_hi < qc_lo)
    every = (qc_lo == qc_hi) & (kc_lo == kc_hi) & (qc_lo == kc_lo)
    return BoxVisibility(none, every)


def sink_box(k_lo, k_hi, n: int) -> BoxVisibility:
    """``k < n`` (attention sinks); independent of the query."""
    return BoxVisibility(k_lo >= n, k_hi < n)


def box_and(a: BoxVisibility, b: BoxVisibility) -> BoxVisibility:
    """Visible where both conditions hold."""
    return BoxVisibility(a.none | b.none, a.every & b.every)


def box_or(a: BoxVisibility, b: BoxVisibility) -> BoxVisibility:
    """Visible where either condition holds."""
    return BoxVisibility(a.none & b.none, a.every | b.every)


def box_kind(seen: BoxVisibility):
    """``EMPTY`` / ``PARTIAL`` / ``FULL`` (elementwise int) from a box's two facts."""
    return (1 - seen.none) * (1 + seen.every)


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
        box = (q_min, q_max, k_min, k_max)
        seen = BoxVisibility(False, True)  # no condition yet: every pair visible
        if self.window_left is not None:
            seen = box_and(seen, window_left_box(*box, self.window_left))
        if self.window_right is not None:
            seen = box_and(seen, window_right_box(*box, self.window_right))
        if self.chunk:
            seen = box_and(seen, chunk_box(*box, self.chunk))
        if self.sink and self._restricts:
            seen = box_or(seen, sink_box(k_min, k_max, self.sink))
        if self.causal:
            seen = box_and(seen, causal_box(*box))
        return box_kind(seen)


def segment_tile_kind(q_lo, q_nz, q_hi, k_lo, k_nz, k_hi):
    """Classifies tiles by segment ids, from per-block summaries (elementwise, int).

    Each side gives ``lo`` (min id, 0 when the block holds padding), ``nz`` (min nonzero id) and
    ``hi`` (max id). Id 0 is padding and matches nothing. Conservative like ``tile_kind``.
    """
    none = (q_hi == 0) | (k_hi == 0) | (q_hi < k_nz) | (k_hi < q_nz)
    every = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo) & (q_lo != 0)
    return box_kind(BoxVisibility(none, every))
