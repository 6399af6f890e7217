"""The attention front door: ``attend``, the ``ATTENTION`` registry and capability checks.

Every implementation takes the same arguments (a declarative ``masks.Mask``, explicit positions,
optional segment ids and an optional positional ``logits_fn`` hook) and declares what it can do
in ``Capabilities``. ``ATTENTION.build(config.model.attention)`` returns the configured,
frozen ``Implementation`` the model, train loop, eval and inference ask what they need to know
(capabilities, tiles, mesh axis, token layout). ``attend`` validates its inputs before any work
and refuses an implementation that lacks a capability the call needs; ``check_capabilities``
runs the same check once at model build time, naming both the implementation and whoever needs
the capability. See docs/attention.md#implementations.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lcm.attention import masks as masks_lib
from lcm.registry import Registry

ATTENTION = Registry("attention", key="impl")

# attend()'s own keyword arguments: an implementation's other keyword parameters are its options.
ATTEND_ARGS = ("mask", "q_pos", "k_pos", "q_segment_ids", "kv_segment_ids", "logits_fn",
               "scale", "return_lse")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an attention implementation supports; field names are the capability names."""

    custom_logits: bool  # runs a positional ``logits_fn`` hook (ALiBi, TAPA, SelfExtend, ...)
    segments: bool  # document masking from q/kv segment ids
    gqa: bool  # N a multiple of K without repeating K/V
    needs_mesh: bool  # must be given a device mesh (ring)
    differentiable: bool  # reverse-mode gradients w.r.t. q, k, v
    returns_lse: bool  # can also return the log-sum-exp (for merging partial results)
    any_mask: bool = True  # any ``masks.Mask``; False: causal only (MoBA, HSA, NSA select blocks)
    decode: bool = False  # T new queries over a KV cache of S slots (lcm.inference decodes with it)
    has_params: bool = False  # learned parts of its own: the model calls it, ``attend`` cannot
    # a logits hook whose logits differ per head (``per_head = True``: ALiBi's slopes); False
    # where heads are split over devices (Ulysses), so the hook would see local head indices
    per_head_logits: bool = True


CAPABILITY_NAMES = tuple(f.name for f in dataclasses.fields(Capabilities))


class OptionError(ValueError):
    """An implementation option with a bad value; ``option`` names it (its config key is
    ``Kind.config_keys``' entry for it)."""

    def __init__(self, option: str, value: Any, message: str):
        super().__init__(f"attention option {option} = {value!r}: {message}")
        self.option, self.message = option, message


@dataclasses.dataclass(frozen=True)
class Implementation:
    """A configured attention implementation: what ``ATTENTION.build`` returns, ``attend`` runs.

    Frozen and hashable, so a ``ModelSpec`` holds it. Everything the model, train loop, eval and
    inference need to know about an implementation is asked here, never of its name:

    - ``capabilities``: may depend on the options (ring with the ``pallas`` inner runs no hook);
    - ``tiles``: ``(option, block)`` pairs; every length it sees must be a multiple of each;
    - ``block_multiples``: ``(option, m)``: that option must be a multiple of ``m`` (or cover
      the whole sequence) for its kernel's TPU tiling;
    - ``mesh_axis``: the mesh axis it shards the sequence over (``needs_mesh``);
    - ``layout``: the token order it wants along that axis (``layouts.lay_out_batch``);
    - ``heads_split``: devices along that axis that split the heads by all-to-all (the Ulysses
      degree; 0: all of them, 1: none); the layout is over ``layout_shards`` shards.

    ``fn(q, k, v, *, <ATTEND_ARGS>, **options)`` returns ``(out [B,T,N,H], lse [B,T,N] f32 or
    None)``; with ``has_params`` it is instead a layer function the model calls inside its linen
    module (``fn(x, q, k, v, q_pos, k_pos, q_seg, kv_seg, *, num_heads, param_dtype, **options)``).
    """

    name: str
    fn: Callable[..., Any]
    options: tuple[tuple[str, Any], ...]
    capabilities: Capabilities
    config_keys: tuple[tuple[str, str], ...] = ()  # option -> config.model.attention key
    tiles: tuple[tuple[str, int], ...] = ()
    block_multiples: tuple[tuple[str, int], ...] = ()
    mesh_axis: str | None = None
    layout: str = "contiguous"
    heads_split: int = 1

    def layout_shards(self, axis_size: int) -> int:
        """How many shards ``layout`` cuts the sequence into over ``axis_size`` devices."""
        return axis_size // (self.heads_split or axis_size)

    def __call__(self, q, k, v, **kwargs):
        if self.capabilities.has_params:
            raise ValueError(
                f"attention impl {self.name!r} has parameters of its own: it runs inside "
                "lcm.model (select it with config.model.attention.impl), not through attend()"
            )
        return self.fn(q, k, v, **kwargs, **dict(self.options))

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    def config_key(self, option: str) -> str:
        """The ``config.model.attention`` key an option is read from (the option name itself
        when it has no config key)."""
        return dict(self.config_keys).get(option, option)


Describe = Callable[..., dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Kind:
    """A registered implementation before configuration: ``ATTENTION.get(name)``.

    Calling it with options returns the configured ``Implementation``; ``from_config`` reads
    the options from ``config.model.attention`` through ``config_keys``. ``capabilities`` are
    those of the default options. ``describe(**options)`` (all options, defaults filled in)
    returns the ``Implementation`` fields that depend on them (``capabilities`` as a dict of
    the changed ones) and raises ``OptionError`` for a bad value.
    """

    name: str
    fn: Callable[..., Any]
    capabilities: Capabilities
    config_keys: tuple[tuple[str, str], ...] = ()
    describe: Describe | None = None

    def defaults(self) -> dict[str, Any]:
        """The options and their defaults (``inspect.Parameter.empty`` for a required one):
        ``fn``'s keyword-only parameters other than ``attend``'s own arguments."""
        return {
            p.name: p.default
            for p in inspect.signature(self.fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in ATTEND_ARGS
        }

    def __call__(self, **options: Any) -> Implementation:
        defaults = self.defaults()
        unknown = sorted(set(options) - set(defaults))
        missing = sorted(k for k, v in defaults.items() if v is inspect.Parameter.empty
                         and k not in options)  # fmt: skip
        if unknown or missing:
            problem = f"unknown option(s) {', '.join(unknown)}" if unknown else (
                f"missing option(s) {', '.join(missing)}")  # fmt: skip
            raise ValueError(
                f"attention impl {self.name!r}: {problem}; "
                f"options: {', '.join(sorted(defaults)) or 'none'}"
            )
        options = {**defaults, **options}
        fields = dict(self.describe(**options)) if self.describe is not None else {}
        capabilities = dataclasses.replace(self.capabilities, **fields.pop("capabilities", {}))
        return Implementation(
            self.name,
            self.fn,
            tuple(options.items()),
            capabilities,
            config_keys=self.config_keys,
            **fields,
        )

    def from_config(self, attention: Mapping[str, Any]) -> Implementation:
        """Configured from ``config.model.attention``: each option from its config key."""
        return self(**{option: attention[key] for option, key in self.config_keys})


def register(
    name: str,
    capabilities: Capabilities,
    *,
    config_keys: dict[str, str] | None = None,
    describe: Describe | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator registering an implementation function under ``name`` in ``ATTENTION``.

    Args:
      name: the ``config.model.attention.impl`` value.
      capabilities: what it supports with its default options.
      config_keys: option -> ``config.model.attention`` key, for the options a config sets
        (the others keep their defaults, e.g. ``interpret``).
      describe: see ``Kind``.
    """

    def decorator(fn: Callable) -> Callable:
        kind = Kind(name, fn, capabilities, tuple((config_keys or {}).items()), describe)
        ATTENTION.register(name)(kind)
        return fn

    return decorator


def tiled(*, block_q: int, block_kv: int, **_) -> dict[str, Any]:
    """``describe`` of an implementation cutting the sequence into block_q x block_kv tiles."""
    return dict(tiles=(("block_q", block_q), ("block_kv", block_kv)))


def tiles_on(kernel: str, *, option: str, allowed: Iterable[str], block_q: int, block_kv: int):
    """``describe`` fields of an implementation whose tiles run on implementation ``kernel``
    (ring's ``inner``, a sparse method's ``kernel``): its tiles, block multiples and hook."""
    allowed = tuple(allowed)
    if kernel not in allowed:
        raise OptionError(option, kernel, f"allowed: {', '.join(allowed)}")
    inner = ATTENTION.get(kernel)(block_q=block_q, block_kv=block_kv)
    return dict(
        tiles=inner.tiles,
        block_multiples=inner.block_multiples,
        capabilities=dict(custom_logits=inner.capabilities.custom_logits),
    )


def resolve(impl: str | Implementation, **options: Any) -> Implementation:
    """An ``Implementation`` from a registered name and options (or one already configured)."""
    if isinstance(impl, Implementation):
        if options:
            raise ValueError(f"options {sorted(options)} given with a configured implementation")
        return impl
    return ATTENTION.get(impl)(**options)


def check_capabilities(impl: str | Implementation, needs: Iterable[str], *, by: str) -> None:
    """Raises ``ValueError`` unless implementation ``impl`` has every capability in ``needs``.

    Args:
      impl: a configured implementation, or a registered name (its default options).
      needs: capability names (fields of ``Capabilities``), e.g. ``("custom_logits",)``.
      by: who needs them, for the message, e.g. ``"positional scheme 'alibi'"``.
    """
    needs = tuple(needs)
    unknown = [n for n in needs if n not in CAPABILITY_NAMES]
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}; allowed: {', '.join(CAPABILITY_NAMES)}")
    impl = resolve(impl)
    caps, name = impl.capabilities, repr(impl.name)
    defaults = ATTENTION.get(impl.name).defaults()
    changed = [f"{k}={v!r}" for k, v in impl.options if k in defaults and v != defaults[k]]
    if changed and caps != ATTENTION.get(impl.name).capabilities:
        name += f" with {', '.join(changed)}"
    missing = [n for n in needs if not getattr(caps, n)]
    if missing:
        able = [
            other
            for other in ATTENTION.names()
            if all(getattr(ATTENTION.get(other).capabilities, n) for n in needs)
        ]
        raise ValueError(
            f"attention impl {name} cannot serve {by}: it lacks {', '.join(missing)}; "
            f"implementations that can: {', '.join(able) or 'none'}"
        )


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def segments_or_ones(segment_ids: jax.Array | None, like: jax.Array) -> jax.Array:
    """Segment ids ``[B, L]``; all ones (one document, no padding) when not given."""
    if segment_ids is None:
        return jnp.ones(like.shape[:2], jnp.int32)
    return segment_ids


def pad_to_multiple(x: jax.Array, block: int) -> jax.Array:
    """Pads axis 1 (the sequence) with zeros to a multiple of ``block``.

    For segment ids the zeros mean padding, which no mask or tile ever attends, so padded
    attention equals unpadded attention on the real rows.
    """
    extra = -x.shape[1] % block
    if not extra:
        return x
    return jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: masks_lib.Mask,
    impl: str | Implementation,
    q_pos: jax.Array,
    k_pos: jax.Array,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    logits_fn: Callable[..., jax.Array] | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    **impl_options: Any,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Attention of ``q`` over ``k, v`` with implementation ``impl``.

    Args:
      q: queries ``[B, T, N, H]``.
      k, v: keys and values ``[B, S, K, H]``; N must be a multiple of K (query head n reads kv
        head ``n // (N // K)``).
      mask: a ``masks.Mask`` evaluated on positions.
      impl: a configured ``Implementation`` (``ATTENTION.build``), or a registered name
        (``ATTENTION.names()``) configured here with ``impl_options``.
      q_pos, k_pos: integer positions ``[B, T]`` and ``[B, S]``.
      q_segment_ids, kv_segment_ids: optional int ``[B, T]`` / ``[B, S]`` document ids, both or
        neither; queries see only keys of their own segment and id 0 is padding.
      logits_fn: optional hashable positional hook ``(q, k, q_pos, k_pos, *, scale) -> float32
        [B, N, T, S]`` returning unmasked logits (scale included); default ``scale * q.k``.
      scale: softmax scale; default ``1 / sqrt(H)``.
      return_lse: also return the log-sum-exp ``[B, T, N] float32`` of the visible logits
        (``-inf`` for rows that see no key).
      **impl_options: options of a named ``impl`` (e.g. ``block_q``, ``block_kv`` for blockwise).

    Returns:
      ``[B, T, N, H]`` in ``q.dtype`` (rows that see no key are zeros), or ``(out, lse)``.
    """
    entry = resolve(impl, **impl_options)
    _validate(q, k, v, mask, q_pos, k_pos, q_segment_ids, kv_segment_ids, logits_fn)
    needs = [
        name
        for name, wanted in (
            ("custom_logits", logits_fn is not None),
            ("per_head_logits", getattr(logits_fn, "per_head", False)),
            ("segments", q_segment_ids is not None),
            ("gqa", q.shape[2] != k.shape[2]),
            ("returns_lse", return_lse),
            ("any_mask", mask != masks_lib.Causal()),
        )
        if wanted
    ]
    check_capabilities(entry, needs, by="this attend() call")
    # Index arrays as jax arrays: a numpy array indexed by a traced index fails under jit.
    q_pos, k_pos = jnp.asarray(q_pos), jnp.asarray(k_pos)
    if q_segment_ids is not None:
        q_segment_ids, kv_segment_ids = jnp.asarray(q_segment_ids), jnp.asarray(kv_segment_ids)
    out, lse = entry(
        q,
        k,
        v,
        mask=mask,
        q_pos=q_pos,
        k_pos=k_pos,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        logits_fn=logits_fn,
        scale=default_scale(q.shape[-1]) if scale is None else float(scale),
        return_lse=return_lse,
    )
    return (out, lse) if return_lse else out


def _validate(q, k, v, mask, q_pos, k_pos, q_seg, kv_seg, logits_fn) -> None:
    if not isinstance(mask, masks_lib.Mask):
        raise ValueError(f"mask must be a lcm.attention.masks.Mask, got {type(mask).__name__}")
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q must be [B,T,N,H] and k [B,S,K,H]; got q {q.shape}, k {k.shape}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {k.shape}; got {v.shape}")
    if not (q.dtype == k.dtype == v.dtype and jnp.issubdtype(q.dtype, jnp.floating)):
        raise ValueError(f"q, k, v must share one float dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    b, t, n, h = q.shape
    _, s, kh, _ = k.shape
    if k.shape[0] != b or k.shape[3] != h:
        raise ValueError(f"k {k.shape} must match q {q.shape} in batch and head_dim")
    if n % kh:
        raise ValueError(f"q heads N = {n} must be a multiple of kv heads K = {kh}")
    for name, x, shape in (("q_pos", q_pos, (b, t)), ("k_pos", k_pos, (b, s))):
        if x.shape != shape or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be integer {shape}; got {x.dtype} {x.shape}")
    if (q_seg is None) != (kv_seg is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    if q_seg is not None:
        for name, x, shape in (
            ("q_segment_ids", q_seg, (b, t)),
            ("kv_segment_ids", kv_seg, (b, s)),
        ):
            if x.shape != shape or not jnp.issubdtype(x.dtype, jnp.integer):
                raise ValueError(f"{name} must be integer {shape}; got {x.dtype} {x.shape}")
    if logits_fn is not None:
        try:
            hash(logits_fn)
        except TypeError:
            raise ValueError(
                "logits_fn must be hashable (a frozen dataclass with __call__)"
            ) from None
