"""Next-token choice from logits: greedy, or temperature with nucleus (top-p) truncation.

Nucleus sampling (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration",
arXiv:1904.09751): keep the smallest set of most probable tokens whose probability reaches
``top_p`` (the token that crosses ``top_p`` included), renormalise, sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def nucleus_mask(probs: jax.Array, top_p: float) -> jax.Array:
    """``[..., V]`` True for the tokens of the top-p nucleus of ``probs``."""
    order = jnp.argsort(-probs, axis=-1)
    sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
    before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of strictly better tokens
    keep_sorted = before < top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(keep_sorted, inverse, axis=-1)


def sample(logits: jax.Array, key: jax.Array, *, temperature: float, top_p: float) -> jax.Array:
    """Token ids ``[B]`` from float logits ``[B, V]``; ``temperature == 0`` is greedy."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / temperature
    if top_p < 1:
        keep = nucleus_mask(jax.nn.softmax(scaled, axis=-1), top_p)
        scaled = jnp.where(keep, scaled, -jnp.inf)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


def check(temperature: float, top_p: float) -> None:
    """Raises ``ValueError`` for a negative temperature or ``top_p`` outside (0, 1]."""
    if not temperature >= 0:
        raise ValueError(f"temperature = {temperature}: must be >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p = {top_p}: must be in (0, 1]")
