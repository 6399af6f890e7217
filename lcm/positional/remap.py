"""Training-free position remapping for RoPE models: SelfExtend and LM-Infinite.

Both keep the pretrained RoPE (``base``, ``layout``, ``rope_scaling``) and change which relative
distance a (query, key) pair sees, so no distance exceeds what the model was trained on. They are
``logits`` hooks: each computes two RoPE dot products and picks one per pair, which runs block by
block at any length. ``rotate`` is the identity (the hook rotates), and length-dependent rope
types (``dynamic``, ``longrope``) are refused because a block does not know the sequence length.

- SelfExtend ("LLM Maybe LongLM", Jin et al. 2024, arXiv:2401.01325; datamllab/LongLM): pairs
  closer than the neighbour window W use true positions; farther pairs use grouped positions,
  query ``i // G + W − W // G`` and key ``j // G``. Usable length ``(L − W)·G + W``.
- LM-Infinite (Han et al. 2023, arXiv:2308.16137): a distance ceiling, ``min(i − j, d_max)``
  (d_max defaults to n_local = the pretraining length), plus a Λ-shaped visibility: a query sees
  the first ``n_global`` positions and the last ``n_local`` ones. A hook only produces logits,
  so the Λ part is a mask: ``lcm.positional.schedule`` gives every ``lm_infinite`` layer a
  ``sliding_window`` of ``n_local − 1`` plus ``sink = n_global`` (both causal), and
  ``LMInfinite.visible`` is its dense reference.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lcm.positional.rope import RoPE
from lcm.positional.rope_scaling import LENGTH_DEPENDENT
from lcm.positional.scheme import POSITIONAL, gqa_scores


def _difference(q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
    return q_pos[:, :, None] - k_pos[:, None, :]  # [B,T,S]


def _check_rope(rope: RoPE, scheme: str) -> None:
    if rope.rope_type in LENGTH_DEPENDENT:
        raise ValueError(
            f"{scheme} needs length-independent RoPE frequencies; rope_type="
            f"{rope.rope_type!r} is not supported (allowed: any except "
            f"{', '.join(LENGTH_DEPENDENT)})"
        )


def _rope_scores(rope: RoPE, q, k, q_pos, k_pos) -> jax.Array:
    freqs = rope.frequencies()
    return gqa_scores(rope.apply(q, q_pos, freqs), rope.apply(k, k_pos, freqs))


@POSITIONAL.register("self_extend")
@dataclasses.dataclass(frozen=True)
class SelfExtend:
    """SelfExtend as a hashable ``logits`` hook."""

    rope: RoPE
    group: int = 8  # G: positions beyond the window are floor-divided by G
    window: int = 1024  # W: pairs with i - j < W keep their true distance

    def __post_init__(self):
        _check_rope(self.rope, "self_extend")
        if self.group < 1 or self.window < 1:
            raise ValueError(
                f"self_extend group = {self.group}, window = {self.window}: both must be >= 1"
            )

    @property
    def logits_fn(self) -> SelfExtend:
        return self

    def rotate(self, q, k, q_pos, k_pos):
        del q_pos, k_pos
        return q, k

    def grouped_positions(self, q_pos, k_pos) -> tuple[jax.Array, jax.Array]:
        """Positions of the far (grouped) attention for queries and keys."""
        shift = self.window - self.window // self.group
        return q_pos // self.group + shift, k_pos // self.group

    def distance(self, q_pos, k_pos) -> jax.Array:
        """Effective relative distance ``[B,T,S]`` each pair sees."""
        gq, gk = self.grouped_positions(q_pos, k_pos)
        near = _difference(q_pos, k_pos)
        return jnp.where(near < self.window, near, _difference(gq, gk))

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        """Float32 logits ``[B,N,Tq,Sk]`` for ``q [B,Tq,N,H]``, ``k [B,Sk,K,H]``."""
        near = _rope_scores(self.rope, q, k, q_pos, k_pos)
        far = _rope_scores(self.rope, q, k, *self.grouped_positions(q_pos, k_pos))
        use_near = (_difference(q_pos, k_pos) < self.window)[:, None]
        return scale * jnp.where(use_near, near, far)

    @classmethod
    def from_config(cls, config, *, num_heads: int, head_dim: int) -> SelfExtend:
        rope = RoPE.from_config(config, num_heads=num_heads, head_dim=head_dim)
        return cls(rope, group=config.self_extend_group, window=config.self_extend_window)


@POSITIONAL.register("lm_infinite")
@dataclasses.dataclass(frozen=True)
class LMInfinite:
    """LM-Infinite's distance ceiling as a hashable ``logits`` hook (the Λ mask is separate)."""

    rope: RoPE
    n_global: int = 10  # starting positions every query sees
    n_local: int = 4096  # most recent positions every query sees (the pretraining length)
    max_distance: int | None = None  # distance ceiling d_max; None = n_local

    def __post_init__(self):
        _check_rope(self.rope, "lm_infinite")
        if self.n_global < 0 or self.n_local < 1 or (self.max_distance or 1) < 1:
            raise ValueError(
                f"lm_infinite n_global = {self.n_global}, n_local = {self.n_local}, max_distance"
                f" = {self.max_distance}: need n_global >= 0, n_local >= 1, max_distance >= 1"
            )

    @property
    def ceiling(self) -> int:
        return self.n_local if self.max_distance is None else self.max_distance

    @property
    def logits_fn(self) -> LMInfinite:
        return self

    def rotate(self, q, k, q_pos, k_pos):
        del q_pos, k_pos
        return q, k

    def distance(self, q_pos, k_pos) -> jax.Array:
        """Effective relative distance ``[B,T,S]`` each pair sees (before masking)."""
        return jnp.minimum(_difference(q_pos, k_pos), self.ceiling)

    def visible(self, q_pos, k_pos) -> jax.Array:
        """Dense reference of the Λ mask ``[B,T,S]``: causal, and local or global."""
        diff = _difference(q_pos, k_pos)
        return (diff >= 0) & ((diff < self.n_local) | (k_pos[:, None, :] < self.n_global))

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        """Float32 logits ``[B,N,Tq,Sk]`` for ``q [B,Tq,N,H]``, ``k [B,Sk,K,H]``."""
        near = _rope_scores(self.rope, q, k, q_pos, k_pos)
        # Pairs beyond the ceiling: query at distance d_max from a key at 0 (any common shift
        # gives the same score).
        far = _rope_scores(
            self.rope, q, k, jnp.full_like(q_pos, self.ceiling), jnp.zeros_like(k_pos)
        )
        use_far = (_difference(q_pos, k_pos) > self.ceiling)[:, None]
        return scale * jnp.where(use_far, far, near)

    @classmethod
    def from_config(cls, config, *, num_heads: int, head_dim: int) -> LMInfinite:
        rope = RoPE.from_config(config, num_heads=num_heads, head_dim=head_dim)
        return cls(
            rope,
            n_global=config.lm_infinite_global,
            n_local=config.lm_infinite_local,
            max_distance=config.lm_infinite_max_distance,
        )
