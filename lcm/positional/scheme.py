"""The positional-scheme registry, the scheme protocol, and GQA scores shared by logits hooks.

A scheme acts at up to two points (DESIGN.md, "Positional schemes"):

- ``rotate(q, k, q_pos, k_pos) -> (q, k)``: a transform applied once before attention (the RoPE
  family, NoPE head temperatures); identity for schemes that only change logits.
- ``logits_fn``: None for plain scaled dot-product logits, else a hashable callable (a frozen
  dataclass of Python scalars) called per block by attention as
  ``logits_fn(q, k, q_pos, k_pos, *, scale) -> float32 [B, N, Tq, Sk]`` with ``q [B,Tq,N,H]``,
  ``k [B,Sk,K,H]``, ``q_pos [B,Tq]``, ``k_pos [B,Sk]``. It returns unmasked logits including the
  softmax scale; attention applies masks and segments afterwards.

Every scheme also has ``from_config(positional_config, *, num_heads, head_dim)``, which reads the
fields of ``config.model.positional`` it needs; ``build`` looks the name up in ``POSITIONAL``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from lcm.registry import Registry

POSITIONAL = Registry("positional")


class Scheme(Protocol):
    """What the model uses of a positional scheme (and, for a learned one, ``params``: a tuple
    of ``Param`` the model creates and fills into the scheme's fields of the same names)."""

    logits_fn: Any

    def rotate(self, q: jax.Array, k: jax.Array, q_pos: jax.Array, k_pos: jax.Array): ...


@dataclasses.dataclass(frozen=True)
class Param:
    """A parameter a learned scheme declares: name, shape, initializer, logical axis names."""

    name: str
    shape: tuple[int, ...]
    init: Any  # a flax initializer
    axes: tuple[str, ...]
    dtype: Any = jnp.float32


def build(config: Any, *, num_heads: int, head_dim: int, name: str | None = None) -> Scheme:
    """Builds scheme ``name`` (default ``config.name``) from ``config.model.positional``."""
    return POSITIONAL.build(config, name=name, num_heads=num_heads, head_dim=head_dim)


def gqa_scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """Float32 dot products ``q·k`` per query head: ``[B,T,N,H] x [B,S,K,H] -> [B,N,T,S]``.

    Query head n reads kv head ``n // (N // K)``. Precision is HIGHEST so float32 inputs keep
    float32 products on TPU/GPU too (these hooks feed cosines and distance selections).
    """
    if q.ndim != 4 or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"need q [B,T,N,H] and k [B,S,K,H]; got {q.shape} and {k.shape}")
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    if n % kv_heads:
        raise ValueError(f"query heads N={n} must be a multiple of kv heads K={kv_heads}")
    qg = q.reshape(b, t, kv_heads, n // kv_heads, h)
    s = jnp.einsum(
        "BTKGH,BSKH->BKGTS",
        qg,
        k,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return s.reshape(b, n, t, k.shape[1])
