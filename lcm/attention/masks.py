"""Declarative attention masks: functions of token positions, never dense arrays.

A mask answers "may the query at position ``q`` see the key at position ``k``?" in two views:
``dense(q_pos, k_pos)``, a boolean ``[..., T, S]`` (reference path, tests), and ``classify(q_lo,
q_hi, k_lo, k_hi)``, a conservative ``EMPTY`` / ``PARTIAL`` / ``FULL`` per tile from block position
bounds, built on the tile kinds and box primitives of ``kernels_pallas.mask``. Segment ids
(0 = padding) are applied on top by the implementations. ``Sink`` is StreamingLLM's (Xiao et al.
2023, arXiv 2309.17453). See docs/attention.md#masks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from kernels_pallas import mask as kernel_mask
from kernels_pallas.mask import EMPTY as EMPTY  # tile kinds, defined once in kernels_pallas
from kernels_pallas.mask import FULL as FULL
from kernels_pallas.mask import PARTIAL as PARTIAL
from kernels_pallas.mask import BoxVisibility

Array = Any  # numpy or jax integer array; masks only use operators, so both work


class Mask:
    """Base class: subclasses define ``visible`` and ``box``."""

    def visible(self, q: Array, k: Array) -> Array:
        """Elementwise visibility of broadcast-compatible position arrays ``q`` and ``k``."""
        raise NotImplementedError

    def box(self, q_lo: Array, q_hi: Array, k_lo: Array, k_hi: Array) -> BoxVisibility:
        """``(none, every)``: whether no / every pair of the box ``[q_lo, q_hi] x [k_lo, k_hi]``
        is visible (conservative; built from ``kernels_pallas.mask``'s box primitives)."""
        raise NotImplementedError

    def none_visible(self, q_lo: Array, q_hi: Array, k_lo: Array, k_hi: Array) -> Array:
        """True where no pair of the box ``[q_lo, q_hi] x [k_lo, k_hi]`` is visible."""
        return self.box(q_lo, q_hi, k_lo, k_hi).none

    def all_visible(self, q_lo: Array, q_hi: Array, k_lo: Array, k_hi: Array) -> Array:
        """True where every pair of the box ``[q_lo, q_hi] x [k_lo, k_hi]`` is visible."""
        return self.box(q_lo, q_hi, k_lo, k_hi).every

    def reach(self) -> tuple[float, float]:
        """``(back, ahead)``: bounds on ``q - k`` and ``k - q`` over visible pairs (``inf``:
        unbounded, the default). A context-parallel ring skips the hops beyond them
        (``layouts.ring_hops``)."""
        return math.inf, math.inf

    def dense(self, q_pos: Array, k_pos: Array) -> Array:
        """Boolean ``[..., T, S]`` for positions ``q_pos [..., T]`` and ``k_pos [..., S]``."""
        return self.visible(q_pos[..., :, None], k_pos[..., None, :])

    def classify(self, q_lo: Array, q_hi: Array, k_lo: Array, k_hi: Array) -> Array:
        """``EMPTY`` / ``PARTIAL`` / ``FULL`` per tile, from block position ranges (broadcast).

        Requires ``q_lo <= q_hi`` and ``k_lo <= k_hi`` (blocks holding at least one token).
        """
        return kernel_mask.box_kind(self.box(q_lo, q_hi, k_lo, k_hi)).astype("int32")

    def __and__(self, other: Mask) -> Mask:
        _check_mask(other, "&")
        return And(self, other)

    def __or__(self, other: Mask) -> Mask:
        _check_mask(other, "|")
        return Or(self, other)


def _check_mask(other: Any, op: str) -> None:
    if not isinstance(other, Mask):
        raise TypeError(f"mask {op} needs another Mask, got {type(other).__name__}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} = {value!r}: must be an integer >= {minimum}")


@dataclasses.dataclass(frozen=True)
class Full(Mask):
    """Every key is visible (bidirectional attention)."""

    def visible(self, q, k):
        return (q == q) & (k == k)  # all True, broadcast to the pair shape

    def box(self, q_lo, q_hi, k_lo, k_hi):
        return BoxVisibility(q_lo != q_lo, (q_lo == q_lo) & (k_lo == k_lo))

    def reach(self):
        return math.inf, math.inf


@dataclasses.dataclass(frozen=True)
class Causal(Mask):
    """Keys at positions ``k <= q``."""

    def visible(self, q, k):
        return k <= q

    def box(self, q_lo, q_hi, k_lo, k_hi):
        return kernel_mask.causal_box(q_lo, q_hi, k_lo, k_hi)

    def reach(self):
        return math.inf, 0


@dataclasses.dataclass(frozen=True)
class SlidingWindow(Mask):
    """Keys at positions ``q - left <= k <= q + right``; ``right = 0`` makes it causal."""

    left: int
    right: int = 0

    def __post_init__(self):
        _check_int("SlidingWindow.left", self.left, 0)
        _check_int("SlidingWindow.right", self.right, 0)

    def visible(self, q, k):
        return (k >= q - self.left) & (k <= q + self.right)

    def box(self, q_lo, q_hi, k_lo, k_hi):
        box = (q_lo, q_hi, k_lo, k_hi)
        return kernel_mask.box_and(
            kernel_mask.window_left_box(*box, self.left),
            kernel_mask.window_right_box(*box, self.right),
        )

    def reach(self):
        return self.left, self.right


@dataclasses.dataclass(frozen=True)
class ChunkedCausal(Mask):
    """Causal within fixed chunks of ``size`` positions (``k // size == q // size``, ``k <= q``).

    Llama 4 style chunked attention; positions, not indices, define the chunks.
    """

    size: int

    def __post_init__(self):
        _check_int("ChunkedCausal.size", self.size, 1)

    def visible(self, q, k):
        return (q // self.size == k // self.size) & (k <= q)

    def box(self, q_lo, q_hi, k_lo, k_hi):
        box = (q_lo, q_hi, k_lo, k_hi)
        return kernel_mask.box_and(
            kernel_mask.chunk_box(*box, self.size), kernel_mask.causal_box(*box)
        )

    def reach(self):
        return self.size - 1, 0


@dataclasses.dataclass(frozen=True)
class Sink(Mask):
    """Keys at positions ``k < n`` (attention sinks), seen from every query."""

    n: int

    def __post_init__(self):
        _check_int("Sink.n", self.n, 0)

    def visible(self, q, k):
        return (k < self.n) & (q == q)

    def box(self, q_lo, q_hi, k_lo, k_hi):
        none, every = kernel_mask.sink_box(k_lo, k_hi, self.n)
        # Broadcast with the query bounds, as the other masks' facts are.
        return BoxVisibility(none | (q_lo != q_lo), every & (q_lo == q_lo))

    def reach(self):
        return math.inf, math.inf


@dataclasses.dataclass(frozen=True)
class And(Mask):
    """Visible where both masks are (``a & b``)."""

    a: Mask
    b: Mask

    def visible(self, q, k):
        return self.a.visible(q, k) & self.b.visible(q, k)

    def box(self, *box):
        return kernel_mask.box_and(self.a.box(*box), self.b.box(*box))

    def reach(self):
        return tuple(map(min, self.a.reach(), self.b.reach()))


@dataclasses.dataclass(frozen=True)
class Or(Mask):
    """Visible where either mask is (``a | b``)."""

    a: Mask
    b: Mask

    def visible(self, q, k):
        return self.a.visible(q, k) | self.b.visible(q, k)

    def box(self, *box):
        return kernel_mask.box_or(self.a.box(*box), self.b.box(*box))

    def reach(self):
        return tuple(map(max, self.a.reach(), self.b.reach()))


def visibility(
    mask: Mask, q_pos: Array, k_pos: Array, q_segment_ids: Array, kv_segment_ids: Array
) -> Array:
    """Dense ``[B, T, S]`` visibility: ``mask`` on positions, same non-padding segment."""
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    return mask.dense(q_pos, k_pos) & same_segment & (q_segment_ids[:, :, None] != 0)
