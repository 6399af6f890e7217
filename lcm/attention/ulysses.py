"""Ulysses and USP context parallelism: all-to-all from sequence shards to head shards.

DeepSpeed-Ulysses (Jacobs et al. 2023, arXiv 2309.14509): an all-to-all turns each device's
``[T/u, N]`` slice of q, k, v into ``[T, N/u]``, every device attends its heads over the full
sequence with the inner tiles, and a second all-to-all turns the output back; autodiff
transposes the all-to-alls for the backward. The degree u is capped by the heads: N (per
device, after tensor parallelism) must be a multiple of u; with fewer KV heads than u each KV
head is repeated ``lcm(K, u) / K`` times before the all-to-all (more bytes moved, same result).

USP (Fang & Zhao 2024, "USP: A Unified Sequence Parallelism Approach for Long Context
Generative AI", arXiv 2405.07719): the context axis of n devices is cut into n/u groups of u
consecutive devices; Ulysses runs inside each group and ring attention across the groups (a
ring whose hops move u devices), so the degree is no longer capped by the heads. Tokens are
laid out over the n/u groups (``Implementation.layout_shards``). See
docs/attention.md#ulysses-and-usp.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from lcm.attention import context, core, ring


def _groups(n: int, degree: int) -> list[list[int]] | None:
    """The Ulysses groups: ``degree`` consecutive devices each (None: the whole axis)."""
    if degree == n:
        return None
    return [list(range(g * degree, (g + 1) * degree)) for g in range(n // degree)]


def ulysses_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, *, axis_name, fwd_tile, bwd_tile,
                      hops: int, degree: int | None):  # fmt: skip
    """Attention of the local shards (``ring.ring_attention``'s contract) with heads split
    over groups of ``degree`` devices (None: the whole axis) and a ring of ``hops`` across the
    groups.
    Returns ``(out [B,T,N,H], lse [B,T,N])`` for the local queries."""
    n = jax.lax.axis_size(axis_name)
    degree = n if degree is None else degree
    heads, kv_heads = q.shape[2], k.shape[2]
    if heads % degree:
        raise ValueError(
            f"ulysses: {heads} query heads per device (num_heads over the tensor-parallel "
            f"axes) must be a multiple of the Ulysses degree {degree}; use a degree that "
            "divides them, or usp with a smaller one"
        )
    repeat = math.lcm(kv_heads, degree) // kv_heads
    if repeat > 1:  # GQA with fewer KV heads than devices: each KV head serves several
        k, v = jnp.repeat(k, repeat, axis=2), jnp.repeat(v, repeat, axis=2)
    groups = _groups(n, degree)
    all_to_all = functools.partial(
        jax.lax.all_to_all, axis_name=axis_name, axis_index_groups=groups, tiled=True
    )
    to_heads = functools.partial(all_to_all, split_axis=2, concat_axis=1)
    q, k, v = (to_heads(x) for x in (q, k, v))
    q_pos, k_pos, q_seg, k_seg = (
        jax.lax.all_gather(x, axis_name, axis=1, tiled=True, axis_index_groups=groups)
        for x in (q_pos, k_pos, q_seg, k_seg)
    )
    out, lse = ring.ring_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile,
                                   bwd_tile, degree, hops)  # fmt: skip
    to_sequence = functools.partial(all_to_all, split_axis=1, concat_axis=2)
    return to_sequence(out), to_sequence(lse)


ulysses_impl = context.strategy(
    "ulysses",
    functools.partial(ulysses_attention, degree=None),
    capabilities=context.HEAD_SPLIT_CAPABILITIES,
    heads_split=0,
    doc="""``attend(..., impl="ulysses")``: ``ring``'s arguments and options, heads split over
    every device of ``axis_name``. Every device sees the whole sequence, so the token layout
    changes nothing but the order (and needs no balance).""",
)


def _describe_usp(*, degree, **options) -> dict:
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise core.OptionError("degree", degree, "must be a positive integer")
    return dict(context.describe(**options), heads_split=degree)


@core.register("usp", context.HEAD_SPLIT_CAPABILITIES,
               config_keys={**context.CONFIG_KEYS, "degree": "ulysses_degree"},
               describe=_describe_usp)  # fmt: skip
def usp_impl(
    q,
    k,
    v,
    *,
    mask,
    q_pos,
    k_pos,
    q_segment_ids,
    kv_segment_ids,
    logits_fn,
    scale,
    return_lse,
    axis_name: str = "context",
    mesh: jax.sharding.Mesh | None = None,
    layout: str | None = None,
    inner: str = "blockwise",
    block_q: int = 128,
    block_kv: int = 128,
    degree: int = 2,
):
    """``attend(..., impl="usp")``: ``ring``'s arguments and options plus ``degree``, the
    Ulysses degree (config ``ulysses_degree``; it must divide the axis size). Tokens are in
    ``layout`` order over the ``axis_size / degree`` ring shards."""
    return context.sharded_call(
        "usp", functools.partial(ulysses_attention, degree=degree), q, k, v, heads_split=degree,
        mask=mask, q_pos=q_pos, k_pos=k_pos,
        q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, logits_fn=logits_fn,
        scale=scale, return_lse=return_lse, axis_name=axis_name, mesh=mesh, layout=layout,
        inner=inner, block_q=block_q, block_kv=block_kv,
    )  # fmt: skip
