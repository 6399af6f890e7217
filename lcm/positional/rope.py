"""Rotary position embedding (RoPE) with both pairings, partial rotary and every scaling variant.

RoFormer (Su et al. 2021, arXiv:2104.09864) rotates each 2-D channel pair of q and k by
``m · θ_i`` at position m, so the score ``q_m · k_n`` depends only on ``m − n``. Two pairings
are in use and are silently incompatible with each other's weights, so the layout is explicit:

- ``"half"`` (Llama/NeoX, Hugging Face ``rotate_half``): pair ``(x_i, x_{i+d/2})``.
- ``"interleaved"`` (GPT-J, Meta's complex form, Cohere2): pair ``(x_{2i}, x_{2i+1})``.

They are the same operator up to the channel permutation ``P = [0, 2, 4, …, 1, 3, 5, …]``:
``half(x[P]) == interleaved(x)[P]``. Only the first ``rotary_dim = int(H · partial_rotary_factor)``
channels rotate. Angles are built in float32 by a broadcasting multiply (a default-precision
matmul would run in bf16/TF32 on TPU/GPU, and bf16 cannot even represent position 257), and the
result is cast back to the input dtype only at the end. Scaling variants only change the
inverse frequencies and the attention factor: see ``lcm.positional.rope_scaling``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lcm.positional.base_bound import min_base as min_base
from lcm.positional.rope_scaling import LENGTH_DEPENDENT, SCALING_KEYS, RopeFrequencies
from lcm.positional.rope_scaling import rope_frequencies as rope_frequencies
from lcm.positional.scheme import POSITIONAL

LAYOUTS = ("half", "interleaved")


def rope_angles(positions: jax.Array, freqs: RopeFrequencies) -> jax.Array:
    """Float32 angles ``[..., rotary_dim/2]`` for integer ``positions [...]``.

    With integer wavelengths (Resonance RoPE) the position is reduced modulo each wavelength in
    int32 first, so the angle table is exactly periodic at any position.
    """
    inv_freq = jnp.asarray(freqs.inv_freq, jnp.float32)
    if freqs.wavelengths is not None:
        reduced = jnp.mod(positions.astype(jnp.int32)[..., None], jnp.asarray(freqs.wavelengths))
        return reduced.astype(jnp.float32) * inv_freq
    return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(
    x: jax.Array, positions: jax.Array, freqs: RopeFrequencies, *, layout: str = "half"
) -> jax.Array:
    """Rotates the first ``rotary_dim`` channels of ``x`` by its positions.

    Args:
      x: ``[B, T, N, H]`` queries or keys (any float dtype).
      positions: ``[B, T]`` integer positions.
      freqs: from ``rope_frequencies``; ``2 * len(inv_freq)`` channels rotate, and cos/sin are
        multiplied by ``freqs.attention_factor``.
      layout: ``"half"`` or ``"interleaved"`` pairing.

    Returns:
      ``x`` rotated, same shape and dtype.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout = {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if x.ndim != 4 or positions.shape != x.shape[:2]:
        raise ValueError(f"need x [B,T,N,H] and positions [B,T]; got {x.shape}, {positions.shape}")
    half = len(freqs.inv_freq)
    dim = 2 * half
    if dim > x.shape[-1]:
        raise ValueError(f"rotary dim {dim} exceeds head dim {x.shape[-1]}")
    angles = rope_angles(positions, freqs)[:, :, None, :]  # [B,T,1,d/2]
    cos = jnp.cos(angles) * freqs.attention_factor
    sin = jnp.sin(angles) * freqs.attention_factor
    xr = x[..., :dim].astype(jnp.float32)
    if layout == "half":
        x0, x1 = xr[..., :half], xr[..., half:]
        rotated = jnp.concatenate([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1)
    else:
        pairs = xr.reshape(*xr.shape[:-1], half, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        rotated = jnp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1)
        rotated = rotated.reshape(xr.shape)
    return jnp.concatenate([rotated.astype(x.dtype), x[..., dim:]], axis=-1)


def _freeze(rope_scaling: Mapping[str, Any] | tuple) -> tuple[tuple[str, Any], ...]:
    """A hashable copy: sorted ``(key, value)`` pairs, None dropped, lists as tuples."""
    items = rope_scaling.items() if isinstance(rope_scaling, Mapping) else rope_scaling
    return tuple(
        sorted(
            (key, tuple(value) if isinstance(value, list | tuple) else value)
            for key, value in items
            if value is not None
        )
    )


@POSITIONAL.register("rope")
@dataclasses.dataclass(frozen=True)
class RoPE:
    """RoPE as a scheme: rotates q and k once before attention; hashable.

    ``rope_scaling`` is a Hugging Face style mapping (stored as sorted pairs). For ``dynamic`` and
    ``longrope`` the current length is ``max(k_pos) + 1``, computed inside the traced function
    (as Hugging Face's ``dynamic_rope_update`` does with ``max(position_ids) + 1``).
    """

    head_dim: int
    base: float = 10_000.0
    layout: str = "half"
    partial_rotary_factor: float = 1.0
    rope_scaling: tuple = ()
    max_position_embeddings: int | None = None

    logits_fn = None  # plain scaled dot product after rotation

    def __post_init__(self):
        object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout = {self.layout!r}; allowed: {', '.join(LAYOUTS)}")
        self.frequencies()  # validates the scaling keys now, not at trace time

    @property
    def rope_type(self) -> str:
        scaling = dict(self.rope_scaling)
        return scaling.get("rope_type", scaling.get("type", "default"))

    def frequencies(self, seq_len: int | jax.Array | None = None) -> RopeFrequencies:
        """``rope_frequencies`` for this scheme's fields."""
        return rope_frequencies(
            self.head_dim,
            self.base,
            dict(self.rope_scaling),
            seq_len=seq_len,
            partial_rotary_factor=self.partial_rotary_factor,
            max_position_embeddings=self.max_position_embeddings,
        )

    def apply(self, x: jax.Array, positions: jax.Array, freqs: RopeFrequencies) -> jax.Array:
        """``apply_rope`` with this scheme's layout."""
        return apply_rope(x, positions, freqs, layout=self.layout)

    def rotate(self, q, k, q_pos, k_pos):
        """Rotates ``q [B,T,N,H]`` and ``k [B,S,K,H]`` by their positions."""
        seq_len = jnp.max(k_pos) + 1 if self.rope_type in LENGTH_DEPENDENT else None
        freqs = self.frequencies(seq_len)
        return self.apply(q, q_pos, freqs), self.apply(k, k_pos, freqs)

    @classmethod
    def from_config(cls, config, *, num_heads: int, head_dim: int) -> RoPE:
        del num_heads
        rope_type = config.rope_scaling.rope_type
        # Only the keys this rope_type reads (lcm.positional.checks rejects the others).
        used = {key: config.rope_scaling[key] for key in SCALING_KEYS.get(rope_type, ())}
        return cls(
            head_dim=head_dim,
            base=config.base,
            layout=config.layout,
            partial_rotary_factor=config.partial_rotary_factor,
            rope_scaling={"rope_type": rope_type, **used},
        )
