"""``ModelSpec``: the frozen, hashable description of a model, built once from ``config.model``.

Every module gets the spec (flax lm1b's ``TransformerConfig`` pattern) instead of a dozen
threaded keyword arguments. ``build_spec`` is where scheme x attention-implementation
compatibility is checked, so a bad pairing fails before anything is traced; ``lcm.config.validate``
reports its errors with the rest (``lcm.model.checks``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from ml_collections import FrozenConfigDict

from lcm import attention as attention_lib
from lcm import positional as positional_lib
from lcm.attention import sparse as sparse_lib
from lcm.attention.core import TILED_IMPLS
from lcm.positional.schedule import LayerSpec, layer_specs

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
    positional: FrozenConfigDict  # config.model.positional, read by lcm.positional.build
    attention_impl: str
    attention_options: tuple[tuple[str, Any], ...]  # e.g. (("block_q", 128), ...)
    period_layers: tuple[LayerSpec, ...]  # one period of the per-layer schedule
    dense_last: int = 0  # the last layers run dense_impl instead (MoBA keeps its last 3 full)
    dense_impl: str = "blockwise"
    dense_options: tuple[tuple[str, Any], ...] = ()
    loss_chunk: int = 0  # positions per output-head chunk in the loss (lcm.model.head); 0 = all

    def dense_tail(self) -> ModelSpec:
        """The spec of the last ``dense_last`` layers."""
        return dataclasses.replace(
            self,
            attention_impl=self.dense_impl,
            attention_options=self.dense_options,
            dense_last=0,
        )

    @property
    def causal(self) -> bool:
        """Whether every layer is causal (used for FLOP counting)."""
        return all(layer.mask != "full" for layer in self.period_layers)

    def build_positional(self, layer: LayerSpec):
        return positional_lib.build(
            self.positional,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            name=layer.positional,
        )


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


def _period(layers: tuple[LayerSpec, ...]) -> int:
    """Smallest p dividing the layer count with layer i == layer i % p for every i."""
    n = len(layers)
    for p in range(1, n + 1):
        if n % p == 0 and all(layers[i] == layers[i % p] for i in range(n)):
            return p
    return n


def _attention_options(attention, impl: str) -> tuple[tuple[str, Any], ...]:
    """The ``attend`` keyword options of ``impl`` taken from ``config.model.attention``."""
    options = {}
    if impl in TILED_IMPLS:
        options.update(block_q=attention.block_q, block_kv=attention.block_kv)
    if impl == "ring":
        options.update(axis_name=attention.ring_axis, inner=attention.ring_inner)
    options.update(sparse_lib.config_options(attention, impl))
    return tuple(options.items())


def build_spec(config, *, attention_impl: str | None = None) -> ModelSpec:
    """Builds the ``ModelSpec`` of ``config`` (optionally with another attention impl).

    Raises:
      ValueError: when a layer's positional scheme needs something the attention
        implementation lacks (e.g. a logits hook on an implementation without custom logits),
        or the dense tail does not fit the layer schedule. A message that starts with
        ``config.`` names the key itself; the others are about the attention implementation.
    """
    m = config.model
    impl = attention_impl or m.attention.impl
    layers = layer_specs(m)
    period = layers[: _period(layers)]
    spec = ModelSpec(
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
        positional=FrozenConfigDict(m.positional),
        attention_impl=impl,
        attention_options=_attention_options(m.attention, impl),
        period_layers=period,
        loss_chunk=m.loss_chunk,
    )
    dense_last = m.attention.sparse_dense_last
    if dense_last:
        p = len(period)
        if dense_last % p or dense_last >= m.num_layers:
            raise ValueError(
                f"config.model.attention.sparse_dense_last = {dense_last}: must be a multiple "
                f"of the layer schedule's period {p} and below model.num_layers = {m.num_layers}"
            )
        dense_impl = m.attention.sparse_dense_impl
        spec = dataclasses.replace(
            spec,
            dense_last=dense_last,
            dense_impl=dense_impl,
            dense_options=_attention_options(m.attention, dense_impl),
        )
    _check_impl(spec, m, impl)
    if dense_last:
        _check_impl(spec.dense_tail(), m, spec.dense_impl)
    return spec


# Attention options that pick the kernel computing an implementation's tiles: their config keys
# and allowed values.
_TILE_KERNEL_OPTIONS = {
    "inner": ("ring_inner", tuple(attention_lib.ring.INNER)),
    "kernel": ("sparse_kernel", sparse_lib.kernel_slots.KERNELS),
}


def _check_impl(spec: ModelSpec, m, impl: str) -> None:
    """Raises ``ValueError`` when ``impl`` cannot serve some layer of ``spec``."""
    hooked = set()
    for layer in spec.period_layers:
        scheme = spec.build_positional(layer)
        needs = ["segments"]
        if scheme.logits_fn is not None:
            needs.append("custom_logits")
            hooked.add(layer.positional)
        if m.num_heads != m.num_kv_heads:
            needs.append("gqa")
        by = f"positional scheme {layer.positional!r} (layer mask {layer.mask!r})"
        if impl in sparse_lib.MODULE_IMPLS:
            if scheme.logits_fn is not None or layer.mask != "causal":
                raise ValueError(f"attention impl {impl!r} cannot serve {by}: it is causal only "
                                 "and has no logits hook")  # fmt: skip
            continue
        attention_lib.check_capabilities(impl, needs, by=by)
    # A tiled implementation running its tiles on another one (ring's inner, a sparse method's
    # kernel) runs a logits hook only where that one can (the Pallas kernels cannot).
    options = dict(spec.attention_options)
    for option, (key, kernels) in _TILE_KERNEL_OPTIONS.items():
        kernel = options.get(option)
        if not hooked or kernel not in attention_lib.ATTENTION:
            continue
        able = [k for k in kernels if _runs_hooks(k)]
        if not _runs_hooks(kernel):
            raise ValueError(
                f"config.model.attention.{key} = {kernel!r}: {kernel!r} cannot run the logits "
                f"hook of positional scheme(s) {', '.join(sorted(hooked))}; allowed here: "
                f"{', '.join(repr(k) for k in able)}"
            )


def _runs_hooks(impl: str) -> bool:
    return attention_lib.ATTENTION.get(impl).capabilities.custom_logits
