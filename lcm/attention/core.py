"""The attention front door: ``attend``, the ``ATTENTION`` registry and capability checks.

Every implementation takes the same arguments (a declarative ``masks.Mask``, explicit positions,
optional segment ids and an optional positional ``logits_fn`` hook) and declares what it can do
in ``Capabilities``. ``attend`` validates its inputs before any work and refuses an
implementation that lacks a capability the call needs; ``check_capabilities`` runs the same check
once at model build time, naming both the implementation and whoever needs the capability.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

from lcm.attention import masks as masks_lib
from lcm.registry import Registry

ATTENTION = Registry("attention")
# Implementations that cut the sequence into block_q x block_kv tiles (their ``attend`` options
# ``block_q`` / ``block_kv``): the sequence lengths they see must be multiples of both.
TILED_IMPLS = ("blockwise", "pallas", "ring")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an attention implementation supports; field names are the capability names."""

    custom_logits: bool  # runs a positional ``logits_fn`` hook (ALiBi, TAPA, SelfExtend, ...)
    segments: bool  # document masking from q/kv segment ids
    gqa: bool  # N a multiple of K without repeating K/V
    needs_mesh: bool  # must be given a device mesh (ring)
    differentiable: bool  # reverse-mode gradients w.r.t. q, k, v
    returns_lse: bool  # can also return the log-sum-exp (for merging partial results)


CAPABILITY_NAMES = tuple(f.name for f in dataclasses.fields(Capabilities))


@dataclasses.dataclass(frozen=True)
class Implementation:
    """A registered implementation.

    ``fn(q, k, v, *, mask, q_pos, k_pos, q_segment_ids, kv_segment_ids, logits_fn, scale,
    return_lse, **options)`` gets validated inputs (``scale`` resolved, segment ids possibly
    None) and returns ``(out [B,T,N,H], lse [B,T,N] float32 or None)``.
    """

    name: str
    fn: Callable[..., Any]
    capabilities: Capabilities

    def __call__(self, q, k, v, **kwargs):
        return self.fn(q, k, v, **kwargs)


def register(name: str, capabilities: Capabilities) -> Callable[[Callable], Callable]:
    """Decorator registering an implementation function under ``name`` in ``ATTENTION``."""

    def decorator(fn: Callable) -> Callable:
        ATTENTION.register(name)(Implementation(name, fn, capabilities))
        return fn

    return decorator


def check_capabilities(impl: str, needs: Iterable[str], *, by: str) -> None:
    """Raises ``ValueError`` unless implementation ``impl`` has every capability in ``needs``.

    Args:
      impl: a registered attention implementation name.
      needs: capability names (fields of ``Capabilities``), e.g. ``("custom_logits",)``.
      by: who needs them, for the message, e.g. ``"positional scheme 'alibi'"``.
    """
    needs = tuple(needs)
    unknown = [n for n in needs if n not in CAPABILITY_NAMES]
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}; allowed: {', '.join(CAPABILITY_NAMES)}")
    caps = ATTENTION.get(impl).capabilities
    missing = [n for n in needs if not getattr(caps, n)]
    if missing:
        able = [
            name
            for name in ATTENTION.names()
            if all(getattr(ATTENTION.get(name).capabilities, n) for n in needs)
        ]
        raise ValueError(
            f"attention impl {impl!r} cannot serve {by}: it lacks {', '.join(missing)}; "
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
    impl: str,
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
      impl: a registered implementation name (``ATTENTION.names()``).
      q_pos, k_pos: integer positions ``[B, T]`` and ``[B, S]``.
      q_segment_ids, kv_segment_ids: optional int ``[B, T]`` / ``[B, S]`` document ids, both or
        neither; queries see only keys of their own segment and id 0 is padding.
      logits_fn: optional hashable positional hook ``(q, k, q_pos, k_pos, *, scale) -> float32
        [B, N, T, S]`` returning unmasked logits (scale included); default ``scale * q.k``.
      scale: softmax scale; default ``1 / sqrt(H)``.
      return_lse: also return the log-sum-exp ``[B, T, N] float32`` of the visible logits
        (``-inf`` for rows that see no key).
      **impl_options: implementation options (e.g. ``block_q``, ``block_kv`` for blockwise).

    Returns:
      ``[B, T, N, H]`` in ``q.dtype`` (rows that see no key are zeros), or ``(out, lse)``.
    """
    entry = ATTENTION.get(impl)
    _validate(q, k, v, mask, q_pos, k_pos, q_segment_ids, kv_segment_ids, logits_fn)
    needs = [
        name
        for name, wanted in (
            ("custom_logits", logits_fn is not None),
            ("segments", q_segment_ids is not None),
            ("gqa", q.shape[2] != k.shape[2]),
            ("returns_lse", return_lse),
        )
        if wanted
    ]
    check_capabilities(impl, needs, by="this attend() call")
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
        **impl_options,
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
