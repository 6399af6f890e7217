"""Leaf layers of the transformer: RMSNorm, LayerNorm, SwiGLU MLP and the token embedding.

Parameters carry logical axis names (``lcm.parallel.sharding``); reductions that decide numerics
(the mean and RMS/variance statistics) run in float32 whatever the compute dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcm.parallel import sharding

_DENSE_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019) with a learned scale.

    ``axis_name`` is the logical name of the normalized (last) dimension: ``embed`` for the
    residual stream, ``head_dim`` for QK-norm.
    """

    axis_name: str = "embed"
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def normalize(self, x32: jax.Array) -> jax.Array:
        return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            sharding.param(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        y = self.normalize(x.astype(jnp.float32))
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(RMSNorm):
    """Layer normalization (Ba et al. 2016, arXiv:1607.06450) with a learned scale and no bias,
    as in Cohere's models: ``(x - mean) / sqrt(var + eps) * scale``.
    """

    eps: float = 1e-5

    def normalize(self, x32: jax.Array) -> jax.Array:
        centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        variance = jnp.mean(centered * centered, axis=-1, keepdims=True)
        return centered * jax.lax.rsqrt(variance + self.eps)


# config.model.norm -> the residual-stream norm (the names lcm.model.checks allows).
NORMS = {"rms": RMSNorm, "layernorm": LayerNorm}


class MLP(nn.Module):
    """SwiGLU feed-forward block (Shazeer 2020): ``wo(silu(x wg) * (x wu))``."""

    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # x [B,T,D]
        d_model = x.shape[-1]

        def weight(name, shape, names):
            w = self.param(name, sharding.param(_DENSE_INIT, names), shape, self.param_dtype)
            return w.astype(self.dtype)

        w_gate = weight("wi_gate", (d_model, self.mlp_dim), ("embed", "mlp"))
        w_up = weight("wi_up", (d_model, self.mlp_dim), ("embed", "mlp"))
        w_out = weight("wo", (self.mlp_dim, d_model), ("mlp", "embed"))
        x = x.astype(self.dtype)
        hidden = nn.silu(jnp.einsum("BTD,DF->BTF", x, w_gate)) * jnp.einsum("BTD,DF->BTF", x, w_up)
        hidden = sharding.constrain(hidden, ("batch", "length", "mlp"))
        return jnp.einsum("BTF,FD->BTD", hidden, w_out)


class Embed(nn.Module):
    """Token embedding ``[V,D]`` (the tied output projection reads it: ``lcm.model.head``)."""

    vocab_size: int
    d_model: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            sharding.param(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.vocab_size, self.d_model),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:  # tokens [B,T] -> [B,T,D]
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
