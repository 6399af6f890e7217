"""ALiBi: attention with linear biases (Press et al. 2022, arXiv:2108.12409).

No rotation; each query head h adds ``−m_h · (i − j)`` to its logits. For N a power of two the
slopes are geometric, ``m_h = 2^(−8h/N)``, h = 1..N; otherwise the 2^⌊log2 N⌋ slopes are followed
by every other slope of the 2·2^⌊log2 N⌋ sequence (the authors' code, Hugging Face BLOOM's
``build_alibi_tensor``). The paper is causal-only; for keys after the query (bidirectional masks)
this uses ``|i − j|``, which equals ``i − j`` on every causal pair.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from lcm.positional.scheme import POSITIONAL, gqa_scores


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Float64 slopes ``[N]`` of Press et al."""
    if num_heads < 1:
        raise ValueError(f"num_heads = {num_heads}: must be >= 1")
    power = 2 ** math.floor(math.log2(num_heads))
    slopes = [2.0 ** (-8.0 * h / power) for h in range(1, power + 1)]
    extra = [2.0 ** (-8.0 * h / (2 * power)) for h in range(1, 2 * power, 2)]
    return np.asarray(slopes + extra[: num_heads - power])


@POSITIONAL.register("alibi")
@dataclasses.dataclass(frozen=True)
class ALiBi:
    """ALiBi as a hashable ``logits`` hook: ``scale · q·k − m_h · |i − j|``."""

    num_heads: int
    per_head = True  # slopes differ per head: needs an implementation with per_head_logits

    def __post_init__(self):
        alibi_slopes(self.num_heads)

    @property
    def logits_fn(self) -> ALiBi:
        return self

    def rotate(self, q, k, q_pos, k_pos):
        del q_pos, k_pos
        return q, k

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        """Float32 logits ``[B,N,Tq,Sk]`` for ``q [B,Tq,N,H]``, ``k [B,Sk,K,H]``."""
        if q.shape[2] != self.num_heads:
            raise ValueError(f"q has {q.shape[2]} heads; ALiBi was built for {self.num_heads}")
        distance = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)
        slopes = jnp.asarray(alibi_slopes(self.num_heads), jnp.float32)
        return scale * gqa_scores(q, k) - slopes[:, None, None] * distance[:, None]

    @classmethod
    def from_config(cls, config, *, num_heads: int, head_dim: int) -> ALiBi:
        del config, head_dim
        return cls(num_heads=num_heads)
