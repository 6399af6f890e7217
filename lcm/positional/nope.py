"""NoPE, and NoPE with a learned per-head temperature.

- NoPE (Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization in
  Transformers", arXiv:2305.19466): no positional signal; the causal mask alone lets a decoder
  recover order.
- Head scale (Wang et al. 2024, "Length Generalization of Causal Transformers without Position
  Encoding", arXiv:2404.12224): beyond the training length NoPE attention gets distracted, so
  each head gets a learned temperature, ``logits = λ_h · q·k / √H``, folded into q before
  attention. The official code initialises λ to 1.6 (for an 8k target) and clamps λ ≥ 1 after
  each optimizer step (an optimizer-side rule, not part of this module).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from lcm.positional.scheme import POSITIONAL, Param


@POSITIONAL.register("nope")
@dataclasses.dataclass(frozen=True)
class NoPE:
    """No positional information: q and k pass through unchanged."""

    logits_fn = None

    def rotate(self, q, k, q_pos, k_pos):
        del q_pos, k_pos
        return q, k

    @classmethod
    def from_config(cls, config, *, num_heads: int, head_dim: int) -> NoPE:
        del config, num_heads, head_dim
        return cls()


@POSITIONAL.register("nope_head_scale")
@dataclasses.dataclass(frozen=True)
class NoPEHeadScale:
    """NoPE with a learned temperature per query head (parameter ``head_scale [N]``).

    A learned scheme: it declares ``params`` and the model's attention module creates them and
    fills the field of the same name (``dataclasses.replace``) before calling ``rotate``.
    """

    num_heads: int
    init_scale: float = 1.6
    head_scale: jax.Array | None = None  # [N], filled by the model

    logits_fn = None

    @property
    def params(self) -> tuple[Param, ...]:
        init = nn.initializers.constant(self.init_scale)
        return (Param("head_scale", (self.num_heads,), init, ("heads",)),)

    def rotate(self, q: jax.Array, k: jax.Array, q_pos: jax.Array, k_pos: jax.Array):
        """Returns ``(λ_h · q, k)`` for ``q [B,T,N,H]``; positions are unused."""
        del q_pos, k_pos
        if self.head_scale is None:
            raise ValueError("nope_head_scale: head_scale is unset (the model fills its params)")
        if q.shape[2] != self.num_heads:
            raise ValueError(f"q has {q.shape[2]} heads; this scheme has {self.num_heads}")
        return q * self.head_scale.astype(q.dtype)[:, None], k

    @classmethod
    def from_config(cls, config, *, num_heads: int, head_dim: int) -> NoPEHeadScale:
        del head_dim
        return cls(num_heads=num_heads, init_scale=config.head_scale_init)
