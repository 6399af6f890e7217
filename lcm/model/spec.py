"""``ModelSpec``: the frozen, hashable description of a model, built once from ``config.model``.

Every module gets the spec (flax lm1b's ``TransformerConfig`` pattern) instead of a dozen
threaded keyword arguments. Its ``layers`` hold one typed ``LayerPlan`` per layer (positional
scheme object, mask object, configured attention implementation), built here once, so nothing
downstream reads ``config.model.positional`` or the ``attention.impl`` string again.
``build_spec`` is where scheme x attention-implementation compatibility is checked, so a bad
pairing fails before anything is traced; ``lcm.config.validate`` reports its errors with the
rest (``lcm.model.checks``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from lcm import attention as attention_lib
from lcm import positional as positional_lib
from lcm.attention.core import Implementation
from lcm.positional.schedule import LayerSpec, layer_specs

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What one layer does, built once from the config: its positional scheme (a
    ``lcm.positional`` object; a learned one declares its ``params``), its mask, its attention
    implementation, and whether it attends over a KV cache (decoding, ``lcm.inference``)."""

    scheme: Any
    mask: attention_lib.Mask
    attention: Implementation
    cached: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    tie_embeddings: bool
    qk_norm: bool
    qkv_bias: bool
    norm: str  # residual-stream norm: a lcm.model.layers.NORMS name
    norm_eps: float
    parallel_block: bool  # x + attn(norm(x)) + mlp(norm(x)) (Cohere)
    scale_tied_logits: bool
    logit_scale: float  # multiplies the output logits
    scan_layers: bool
    remat_policy: str
    dtype: Any
    param_dtype: Any
    layers: tuple[LayerPlan, ...]  # one per layer
    dense_last: int = 0  # the last layers run the dense implementation (MoBA keeps 3 full)
    loss_chunk: int = 0  # positions per output-head chunk in the loss (lcm.model.head); 0 = all

    def stacks(self) -> tuple[tuple[str, tuple[LayerPlan, ...], int], ...]:
        """``(name, period, repeats)`` of each stack of layers the model scans: the layers,
        then the ``dense_last`` dense ones; a stack repeats its smallest period."""
        cut = self.num_layers - self.dense_last
        parts = (("layers", self.layers[:cut]), ("dense_layers", self.layers[cut:]))
        out = []
        for name, plans in parts:
            if plans:
                period = plans[: _period(plans)]
                out.append((name, period, len(plans) // len(period)))
        return tuple(out)

    @property
    def attention(self) -> Implementation:
        """The attention implementation of the (non-dense) layers."""
        return self.layers[0].attention

    @property
    def causal(self) -> bool:
        """Whether every layer is causal (used for FLOP counting)."""
        return all(plan.mask != attention_lib.Full() for plan in self.layers)

    def for_decoding(self, impl: Implementation) -> ModelSpec:
        """Every layer on ``impl`` over its KV cache, unscanned (each layer owns its cache
        entry) and without remat."""
        layers = tuple(
            dataclasses.replace(plan, attention=impl, cached=True) for plan in self.layers
        )
        return dataclasses.replace(self, layers=layers, scan_layers=False, remat_policy="none")


def mask_for(layer: LayerSpec) -> attention_lib.Mask:
    """The ``lcm.attention`` mask object for a layer's declarative mask description."""
    if layer.mask == "causal":
        mask = attention_lib.Causal()
    elif layer.mask == "full":
        mask = attention_lib.Full()
    elif layer.mask == "sliding_window":
        mask = attention_lib.SlidingWindow(layer.window)
    else:
        mask = attention_lib.ChunkedCausal(layer.window)
    if layer.sink:
        mask = mask | (attention_lib.Sink(layer.sink) & attention_lib.Causal())
    return mask


def _period(layers: tuple) -> int:
    """Smallest p dividing the layer count with layer i == layer i % p for every i."""
    n = len(layers)
    for p in range(1, n + 1):
        if n % p == 0 and all(layers[i] == layers[i % p] for i in range(n)):
            return p
    return n


def _plan(m, layer: LayerSpec, impl: Implementation) -> LayerPlan:
    scheme = positional_lib.build(
        m.positional, num_heads=m.num_heads, head_dim=m.head_dim, name=layer.positional
    )
    return LayerPlan(scheme, mask_for(layer), impl)


def build_spec(config, *, attention_impl: str | None = None) -> ModelSpec:
    """Builds the ``ModelSpec`` of ``config`` (optionally with another attention impl).

    Raises:
      ValueError: when a layer's positional scheme or mask needs something the attention
        implementation lacks (e.g. a logits hook on an implementation without custom logits),
        or the dense tail does not fit the layer schedule. A message that starts with
        ``config.`` names the key itself; the others are about the attention implementation.
    """
    m = config.model
    attention = m.attention
    impl = _build_attention(attention, attention_impl or attention.impl)
    specs = layer_specs(m)
    dense_last = attention.sparse_dense_last
    if dense_last:
        p = _period(specs)
        if dense_last % p or dense_last >= m.num_layers:
            raise ValueError(
                f"config.model.attention.sparse_dense_last = {dense_last}: must be a multiple "
                f"of the layer schedule's period {p} and below model.num_layers = {m.num_layers}"
            )
    dense = _build_attention(attention, attention.sparse_dense_impl) if dense_last else None
    plans = tuple(
        _plan(m, layer, dense if i >= m.num_layers - dense_last else impl)
        for i, layer in enumerate(specs)
    )
    for plan, layer in zip(plans, specs, strict=True):
        by = f"positional scheme {layer.positional!r} (layer mask {layer.mask!r})"
        _check_plan(plan, by=by, gqa=m.num_heads != m.num_kv_heads)
    return ModelSpec(
        vocab_size=m.vocab_size,
        d_model=m.d_model,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        mlp_dim=m.mlp_dim,
        tie_embeddings=m.tie_embeddings,
        qk_norm=m.qk_norm,
        qkv_bias=m.qkv_bias,
        norm=m.norm,
        norm_eps=m.norm_eps,
        parallel_block=m.parallel_block,
        scale_tied_logits=m.scale_tied_logits,
        logit_scale=float(m.logit_scale),
        scan_layers=m.scan_layers,
        remat_policy=m.remat_policy,
        dtype=DTYPES[m.dtype],
        param_dtype=DTYPES[m.param_dtype],
        layers=plans,
        dense_last=dense_last,
        loss_chunk=m.loss_chunk,
    )


def _build_attention(attention, name: str) -> Implementation:
    """``ATTENTION.build``, with a bad option named by its config key."""
    try:
        return attention_lib.ATTENTION.build(attention, name=name)
    except attention_lib.OptionError as err:
        kind = attention_lib.ATTENTION.get(name)
        key = dict(kind.config_keys).get(err.option, err.option)
        raise ValueError(
            f"config.model.attention.{key} = {attention.get(key)!r}: {err.message} "
            f"for model.attention.impl = {name!r}"
        ) from None


def _check_plan(plan: LayerPlan, *, by: str, gqa: bool) -> None:
    """Raises ``ValueError`` when the layer's implementation cannot serve its scheme or mask;
    when an option took the capability away (ring's ``pallas`` inner runs no logits hook), the
    message names that option's config key."""
    needs = ["segments"] + ["gqa"] * gqa
    if plan.scheme.logits_fn is not None:
        needs.append("custom_logits")
        if getattr(plan.scheme.logits_fn, "per_head", False):
            needs.append("per_head_logits")
    if plan.mask != attention_lib.Causal():
        needs.append("any_mask")
    impl = plan.attention
    try:
        attention_lib.check_capabilities(impl, needs, by=by)
    except ValueError:
        option = _option_taking(impl, needs)
        if option is None:
            raise
        key, value = impl.config_key(option), impl.option(option)
        missing = [n for n in needs if not getattr(impl.capabilities, n)]
        raise ValueError(
            f"config.model.attention.{key} = {value!r}: attention impl {impl.name!r} with "
            f"{option} = {value!r} lacks {', '.join(missing)}, which {by} needs; its default "
            f"{option} = {attention_lib.ATTENTION.get(impl.name).defaults()[option]!r} has it"
        ) from None


def _option_taking(impl: Implementation, needs: list[str]) -> str | None:
    """The configured option whose default value would give ``impl`` every capability in
    ``needs``, if there is one."""
    kind = attention_lib.ATTENTION.get(impl.name)
    defaults, options = kind.defaults(), dict(impl.options)
    for option, _ in impl.config_keys:
        if options[option] == defaults[option]:
            continue
        other = kind(**{**options, option: defaults[option]})
        if all(getattr(other.capabilities, n) for n in needs):
            return option
    return None
