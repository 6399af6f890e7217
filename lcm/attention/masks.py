"""Declarative attention masks: functions of token positions, never dense arrays.

A mask answers "may the query at position ``q`` see the key at position ``k``?". Because it reads
positions rather than array indices, the same mask object stays correct for packed documents,
load-balanced (permuted) token orders, ring shards and decoding against a cache: the caller passes
the true positions and nothing else changes.

Every mask offers two views:

1. ``mask.dense(q_pos, k_pos)``: the boolean matrix ``[..., T, S]`` (reference path, tests).
2. ``mask.classify(q_lo, q_hi, k_lo, k_hi)``: for a (query block, key block) tile summarised
   only by the smallest and largest position in each block, one of ``EMPTY`` (no pair
   visible), ``PARTIAL`` or ``FULL`` (every pair visible). It never builds the dense matrix, so
   it works at T = 1M; splash attention's block classification (``splash_attention_mask_info``
   in jax) is the model for this.

Classification is about the whole box ``[q_lo, q_hi] x [k_lo, k_hi]``, which contains every pair
of the tile. ``FULL`` on the box implies every real pair is visible and ``EMPTY`` on the box
implies no real pair is, so the answer is always safe to act on (skip an empty tile, drop the
mask of a full one). When the positions inside a block are contiguous the box is exactly the set
of pairs and atomic masks classify exactly. When they are not (permuted or striped layouts,
packed documents with gaps) the box is a superset: a tile may be reported ``PARTIAL`` although
it is really empty or full. That costs work (the tile is computed with the mask applied), never
correctness. ``&`` and ``|`` combine the two conservative facts ("all visible", "none visible"),
so combinations are conservative as well, though not always exact (an ``&`` of two partial
masks can be empty).

Document masking comes from segment ids and is applied by the attention implementations on top
of the mask: a query sees a key only when both carry the same segment id, and id 0 marks padding,
which never attends and is never attended (its output rows are zeros). Write
``Causal()`` for packed causal training; segment ids keep the documents apart.

Conventions: ``SlidingWindow(left, right)`` sees ``q - left <= k <= q + right`` (``left + right
+ 1`` keys), as splash's ``LocalMask`` and ``jax.nn.dot_product_attention(local_window_size=)``
do. ``Sink(n)`` sees keys at positions ``< n`` from every query; combine it as
``(SlidingWindow(w) | Sink(4)) & Causal()`` for StreamingLLM-style attention (Xiao et al. 2023,
arXiv 2309.17453).
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Causal(Mask):
    """Keys at positions ``k <= q``."""

    def visible(self, q, k):
        return k <= q

    def box(self, q_lo, q_hi, k_lo, k_hi):
        return kernel_mask.causal_box(q_lo, q_hi, k_lo, k_hi)


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


@dataclasses.dataclass(frozen=True)
class And(Mask):
    """Visible where both masks are (``a & b``)."""

    a: Mask
    b: Mask

    def visible(self, q, k):
        return self.a.visible(q, k) & self.b.visible(q, k)

    def box(self, *box):
        return kernel_mask.box_and(self.a.box(*box), self.b.box(*box))


@dataclasses.dataclass(frozen=True)
class Or(Mask):
    """Visible where either mask is (``a | b``)."""

    a: Mask
    b: Mask

    def visible(self, q, k):
        return self.a.visible(q, k) | self.b.visible(q, k)

    def box(self, *box):
        return kernel_mask.box_or(self.a.box(*box), self.b.box(*box))


def visibility(
    mask: Mask, q_pos: Array, k_pos: Array, q_segment_ids: Array, kv_segment_ids: Array
) -> Array:
    """Dense ``[B, T, S]`` visibility: ``mask`` on positions, same non-padding segment."""
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    return mask.dense(q_pos, k_pos) & same_segment & (q_segment_ids[:, :, None] != 0)
