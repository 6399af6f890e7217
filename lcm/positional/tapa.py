"""TAPA: "Token-Aware Phase Attention" (Wang et al., Meta 2025; no public code).

Each head splits into an amplitude part (the first ``θ·H`` channels) and a phase part (the rest);
the score is the amplitude dot product modulated by a cosine whose phase grows as a power of the
distance and is set by the phase dot product (the paper's eq. 12, instantiated with θ = 0.5 and
α = 0.1)::

    logit = (q_A·k_A / √(θH)) · cos(2π · |m − n|^α · (q_P·k_P) / √((1 − θ)H))

It replaces RoPE and the usual ``1/√H``. Here the amplitude scale is ``scale · √(H / (θH))``,
which is the paper's ``1/√(θH)`` for the default ``scale = 1/√H`` and follows a custom softmax
scale otherwise. At distance 0 the score is unmodulated; its sign can flip, so masks must use
−inf (attention does). No learned parameters beyond W_q, W_k.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from lcm.positional.scheme import POSITIONAL, gqa_scores


@POSITIONAL.register("tapa")
@dataclasses.dataclass(frozen=True)
class TAPA:
    """TAPA as a hashable ``logits`` hook."""

    head_dim: int
    theta: float = 0.5  # fraction of the head used for the amplitude
    alpha: float = 0.1  # phase grows as |m - n|^alpha

    def __post_init__(self):
        amplitude = self.theta * self.head_dim
        if not (0 < self.theta < 1 and amplitude == int(amplitude)):
            raise ValueError(
                f"tapa theta = {self.theta}: must be in (0, 1) with theta * head_dim "
                f"({self.head_dim}) an integer"
            )
        if not self.alpha > 0:
            raise ValueError(f"tapa alpha = {self.alpha}: must be > 0")

    @property
    def amplitude_dim(self) -> int:
        return int(self.theta * self.head_dim)

    @property
    def logits_fn(self) -> TAPA:
        return self

    def rotate(self, q, k, q_pos, k_pos):
        del q_pos, k_pos
        return q, k

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        """Float32 logits ``[B,N,Tq,Sk]`` for ``q [B,Tq,N,H]``, ``k [B,Sk,K,H]``."""
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"q head dim {q.shape[-1]}; TAPA was built for {self.head_dim}")
        a = self.amplitude_dim
        amplitude = gqa_scores(q[..., :a], k[..., :a]) * (scale * math.sqrt(self.head_dim / a))
        phase = gqa_scores(q[..., a:], k[..., a:]) / math.sqrt(self.head_dim - a)
        distance = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)
        growth = jnp.power(distance, self.alpha)[:, None]  # [B,1,T,S]
        return amplitude * jnp.cos(2 * math.pi * growth * phase)

    @classmethod
    def from_config(cls, config, *, num_heads: int, head_dim: int) -> TAPA:
        del num_heads
        return cls(head_dim=head_dim, theta=config.tapa_theta, alpha=config.tapa_alpha)
