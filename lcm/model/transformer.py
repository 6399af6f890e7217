"""Decoder-only transformer (flax.linen) built from ``config.model``.

Axis vocabulary (DESIGN.md): B batch, T query length, S key/value length, D model width,
N query heads, K key/value heads, G = N/K, H head dim, F MLP width, V vocab, L layers.
Activations are ``x [B,T,D]``, ``q [B,T,N,H]``, ``k, v [B,S,K,H]``; positions and segment ids
``[B,T] int32`` always travel explicitly (packing, ring shards and decoding need real positions).

A block is pre-norm: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, or with
``parallel_block`` (GPT-J, Cohere) ``x + attn(norm(x)) + mlp(norm(x))`` from one norm; the norm
is RMSNorm or bias-free LayerNorm (``config.model.norm``). Each layer does what its
``LayerPlan`` in the spec says (positional scheme, mask, attention implementation); layers are
grouped by the plans' period (1 for a uniform model, 4 for RNoPE-SWA's 3 RoPE-window + 1
NoPE-full) and ``nn.scan`` runs over the groups, so hybrid schedules still compile one group
once. The model never calls a kernel or ``shard_map``: attention goes through
``lcm.attention.attend`` with the layer's configured implementation.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels_pallas import common as kernels_common
from lcm import attention as attention_lib
from lcm.model import head as head_lib
from lcm.model import kv_cache, layers
from lcm.model.spec import LayerPlan, ModelSpec
from lcm.parallel import sharding

_DENSE_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")

_ATTENTION_RESIDUALS = (kernels_common.OUT_NAME, kernels_common.LSE_NAME)
# What the backward pass of a layer group may keep from its forward (``jax.checkpoint``
# policies); the rest is recomputed. ``full`` keeps only each group's input (the residual stream
# the layer scan carries) and so reruns every attention forward in the backward pass;
# ``save_attention`` also keeps the flash residuals (``out``, ``lse``) of every layer, so the
# backward recomputes only projections, norms and MLPs (with impl blockwise, pallas, ring or a
# block-sparse kernel: the others have no named residuals and behave like ``full``);
# ``offload_attention`` keeps the same residuals in pinned host memory instead of HBM.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention": jax.checkpoint_policies.save_only_these_names(*_ATTENTION_RESIDUALS),
    "offload_attention": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(),
        names_which_can_be_offloaded=_ATTENTION_RESIDUALS,
        offload_src="device",
        offload_dst="pinned_host",
    ),
}


class Attention(nn.Module):
    """GQA self-attention: projections, optional QK-norm, positional scheme, ``attend``.

    With ``plan.cached`` (decoding, ``lcm.inference``) it attends over its ``cache``
    collection instead.
    """

    spec: ModelSpec
    plan: LayerPlan

    @nn.compact
    def __call__(self, x, positions, segment_ids):  # x [B,T,D]
        s = self.spec

        def weight(name, shape, names):
            w = self.param(name, sharding.param(_DENSE_INIT, names), shape, s.param_dtype)
            return w.astype(s.dtype)

        def bias(name, shape, names):  # Qwen2-style q/k/v projection bias
            b = self.param(name, sharding.param(nn.initializers.zeros, names), shape, s.param_dtype)
            return b.astype(s.dtype)

        d, n, k, h = s.d_model, s.num_heads, s.num_kv_heads, s.head_dim
        q = jnp.einsum("BTD,DNH->BTNH", x, weight("wq", (d, n, h), ("embed", "heads", "head_dim")))
        kk = jnp.einsum(
            "BTD,DKH->BTKH", x, weight("wk", (d, k, h), ("embed", "kv_heads", "head_dim"))
        )
        v = jnp.einsum(
            "BTD,DKH->BTKH", x, weight("wv", (d, k, h), ("embed", "kv_heads", "head_dim"))
        )
        if s.qkv_bias:
            q = q + bias("bq", (n, h), ("heads", "head_dim"))
            kk = kk + bias("bk", (k, h), ("kv_heads", "head_dim"))
            v = v + bias("bv", (k, h), ("kv_heads", "head_dim"))
        if s.qk_norm:
            norm = dict(
                axis_name="head_dim", eps=s.norm_eps, dtype=s.dtype, param_dtype=s.param_dtype
            )
            q = layers.RMSNorm(name="q_norm", **norm)(q)
            kk = layers.RMSNorm(name="k_norm", **norm)(kk)
        scheme = self.plan.scheme
        if getattr(scheme, "params", ()):  # a learned scheme: its parameters live here
            values = {
                p.name: self.param(p.name, sharding.param(p.init, p.axes), p.shape, p.dtype)
                for p in scheme.params
            }
            scheme = dataclasses.replace(scheme, **values)
        if self.plan.cached:  # decoding (lcm.inference): attend over the KV cache
            out = self.attend_cached(q, kk, v, positions, segment_ids, scheme)
        else:
            q, kk = scheme.rotate(q, kk, positions, positions)
            q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
            out = self.mix(x, q, kk, v, positions, segment_ids, scheme)
        out = sharding.constrain(out.astype(s.dtype), ("batch", "length", "heads", "head_dim"))
        return jnp.einsum(
            "BTNH,NHD->BTD", out, weight("wo", (n, h, d), ("heads", "head_dim", "embed"))
        )

    def attend_cached(self, q, k, v, positions, segment_ids, scheme):
        """Attention over this layer's ``cache`` collection (``lcm.model.kv_cache``), updated.

        With a ``score`` entry (an eviction policy) the step's attention weights and output are
        sown into ``intermediates``.
        """
        names = kv_cache.LAYER_KEYS + (("score",) if self.has_variable("cache", "score") else ())
        cache = {name: self.get_variable("cache", name) for name in names}
        plan = dataclasses.replace(self.plan, scheme=scheme)
        out, updated, weights = kv_cache.attend_cached(plan, cache, q, k, v, positions, segment_ids)
        for name, value in updated.items():
            self.put_variable("cache", name, value)
        if weights is not None:
            self.sow("intermediates", "weights", weights)
            self.sow("intermediates", "out", out.astype(jnp.float32))
        return out

    def mix(self, x, q, k, v, positions, segment_ids, scheme):
        """Attention proper: the layer's implementation, through ``lcm.attention.attend`` (or,
        for one with parameters of its own, called here so they become this module's)."""
        impl = self.plan.attention
        if impl.capabilities.has_params:  # build_spec admitted only causal, hook-free layers
            s = self.spec
            return impl.fn(x, q, k, v, positions, positions, segment_ids, segment_ids,
                           s.num_heads, s.param_dtype, **dict(impl.options))  # fmt: skip
        return attention_lib.attend(
            q,
            k,
            v,
            mask=self.plan.mask,
            impl=impl,
            q_pos=positions,
            k_pos=positions,
            q_segment_ids=segment_ids,
            kv_segment_ids=segment_ids,
            logits_fn=scheme.logits_fn,
        )


class Block(nn.Module):
    """Pre-norm transformer block (sequential, or parallel with one shared norm)."""

    spec: ModelSpec
    plan: LayerPlan

    @nn.compact
    def __call__(self, x, positions, segment_ids):
        s = self.spec
        norm = dict(dtype=s.dtype, param_dtype=s.param_dtype)
        make_norm = layers.NORMS[s.norm]
        h = make_norm(name="attn_norm", eps=s.norm_eps, **norm)(x)
        attn_out = Attention(s, self.plan, name="attn")(h, positions, segment_ids)
        if s.parallel_block:  # attention and MLP both read the one normed input
            x = x + attn_out + layers.MLP(s.mlp_dim, name="mlp", **norm)(h)
        else:
            x = x + attn_out
            h = make_norm(name="mlp_norm", eps=s.norm_eps, **norm)(x)
            x = x + layers.MLP(s.mlp_dim, name="mlp", **norm)(h)
        return sharding.constrain(x, ("batch", "length", "embed"))


class Group(nn.Module):
    """One period of the layer plans (the unit ``nn.scan`` repeats)."""

    spec: ModelSpec
    period: tuple[LayerPlan, ...]

    @nn.compact
    def __call__(self, x, positions, segment_ids):
        for i, plan in enumerate(self.period):
            x = Block(self.spec, plan, name=f"block{i}")(x, positions, segment_ids)
        return x, None


class Transformer(nn.Module):
    """Decoder-only LM: ``(tokens, positions, segment_ids) [B,T] -> float32 logits [B,T,V]``.

    ``hidden`` stops before the output head (the final-norm states ``[B,T,D]``); the head is
    ``lcm.model.head.logits``, so the loss can apply it a chunk at a time
    (``head.chunked_cross_entropy``) and never hold the full logits.
    """

    spec: ModelSpec

    def __call__(self, tokens, positions, segment_ids=None):
        x = self.hidden(tokens, positions, segment_ids)
        params = self.variables["params"]
        names = ("embed",) if self.spec.tie_embeddings else ("unembed",)
        # Unboxed: during init the variables still carry their sharding metadata.
        return head_lib.logits(self.spec, nn.unbox({k: params[k] for k in names}), x)

    @nn.compact
    def hidden(self, tokens, positions, segment_ids=None):
        """Final hidden states ``[B,T,D]`` (after the final norm, in the compute dtype)."""
        s = self.spec
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        embed = layers.Embed(
            s.vocab_size, s.d_model, dtype=s.dtype, param_dtype=s.param_dtype, name="embed"
        )
        x = sharding.constrain(embed(tokens), ("batch", "length", "embed"))

        group = Group
        policy = REMAT_POLICIES[s.remat_policy]
        if s.remat_policy != "none":
            group = nn.remat(Group, policy=policy, prevent_cse=not s.scan_layers)
        # The last ``dense_last`` layers (MoBA keeps its last 3 full) are a stack of their own.
        for name, period, repeats in s.stacks():
            if s.scan_layers:
                scanned = nn.scan(
                    group,
                    variable_axes={"params": 0},
                    split_rngs={"params": True},
                    in_axes=(nn.broadcast, nn.broadcast),
                    length=repeats,
                    metadata_params={nn.PARTITION_NAME: "layers"},
                )
                x, _ = scanned(s, period, name=name)(x, positions, segment_ids)
            else:
                for r in range(repeats):
                    x, _ = group(s, period, name=f"{name}_{r}")(x, positions, segment_ids)

        x = layers.NORMS[s.norm](
            name="final_norm", eps=s.norm_eps, dtype=s.dtype, param_dtype=s.param_dtype
        )(x)
        if not s.tie_embeddings:  # declared here, the one compact method; read by head.logits
            self.param(
                "unembed",
                sharding.param(_DENSE_INIT, ("embed", "vocab")),
                (s.d_model, s.vocab_size),
                s.param_dtype,
            )
        return x
