"""What the context-parallel implementations share: their options and the sharded call.

``ring``, ``all_gather``, ``ulysses`` and ``usp`` shard the sequence over one mesh axis
(option ``axis_name``, config ``context_axis``), take tokens in a ``layouts`` order (``layout``,
config ``context_layout``) and compute each device's attention on an inner tile implementation
(``inner``, config ``context_inner``: ``blockwise`` or ``pallas``). ``sharded_call`` checks the
mesh and the lengths, then runs a strategy's body on the local shards under ``shard_map``.
See docs/attention.md#context-parallelism.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from lcm.attention import blockwise, core, layouts, pallas
from lcm.parallel import sharding

# fwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg) -> (out [B,T,N,H], lse [B,T,N] f32)
# bwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, dout, dlse) -> (dq, dk, dv), given
#   the GLOBAL (merged) out and lse and their cotangents: the shard's exact gradient share
INNER = {"blockwise": blockwise.ring_tiles, "pallas": pallas.ring_tiles}

CAPABILITIES = core.Capabilities(
    custom_logits=True,
    segments=True,
    gqa=True,
    needs_mesh=True,
    differentiable=True,
    returns_lse=True,
)
# Heads split over devices: a hook whose logits differ per head (ALiBi's slopes) would see
# local head indices.
HEAD_SPLIT_CAPABILITIES = dataclasses.replace(CAPABILITIES, per_head_logits=False)
CONFIG_KEYS = {
    "block_q": "block_q",
    "block_kv": "block_kv",
    "axis_name": "context_axis",
    "inner": "context_inner",
    "layout": "context_layout",
}


def describe(*, axis_name, layout, inner, block_q, block_kv, **_) -> dict:
    """Tiles, block multiples and logits hook are the inner's; the sequence is sharded over
    ``axis_name`` with tokens in ``layout`` order."""
    if layout is not None and layout not in layouts.LAYOUTS:
        raise core.OptionError("layout", layout, f"allowed: {', '.join(layouts.LAYOUTS)}")
    fields = core.tiles_on(inner, option="inner", allowed=INNER, block_q=block_q,
                           block_kv=block_kv)  # fmt: skip
    return dict(fields, mesh_axis=axis_name, layout=layout or "contiguous")


def float0_like(*xs) -> list[np.ndarray]:
    """Cotangents of integer inputs (positions, segment ids) in a custom VJP."""
    return [np.zeros(x.shape, jax.dtypes.float0) for x in xs]


def sharded_call(
    name: str,
    body: Callable[..., tuple[jax.Array, jax.Array]],
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
    axis_name: str,
    mesh: jax.sharding.Mesh | None,
    layout: str | None,
    inner: str,
    block_q: int,
    block_kv: int,
    heads_split: int = 1,
):
    """Runs ``body(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name=, fwd_tile=, bwd_tile=,
    hops=)`` on the local sequence shards of every device on ``axis_name``; returns ``(out, lse
    or None)``. ``hops``: how many of the ``axis_size / heads_split`` layout shards a ring must
    visit (``layouts.ring_hops``: fewer with a window or chunks when the layout is given; all
    for ``layout=None``, whose positions may be in any order).

    Arrays are global and already in ``layout`` order over ``axis_size / heads_split`` shards
    (``heads_split``: devices that split the heads, ``Implementation.heads_split``); batch and
    heads are sharded as the logical rules in context say. ``mesh`` overrides the mesh in
    context.
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty or axis_name not in mesh.axis_names:
        raise ValueError(
            f"attention impl {name!r} needs a mesh with axis {axis_name!r} in context "
            f"(lcm.parallel.sharding.use_mesh); got axes {tuple(mesh.axis_names)}"
        )
    n = mesh.shape[axis_name]
    if heads_split and n % heads_split:
        raise ValueError(
            f"{name}: Ulysses degree {heads_split} (config.model.attention.ulysses_degree) "
            f"must divide the {axis_name!r} axis size {n}"
        )
    shards = n // (heads_split or n)
    chunks = int(np.lcm(n, layouts.layout_chunks(layout, shards)))
    for what, x in (("query length T", q), ("key length S", k)):
        if x.shape[1] % chunks:
            raise ValueError(
                f"{name}: {what} = {x.shape[1]} must be a multiple of {chunks} "
                f"({axis_name}={n}, layout={layout or 'as given'} over {shards} shards)"
            )
    batch, heads, kv_heads = (sharding.mesh_axes(x) or None for x in ("batch", "heads", "kv_heads"))
    q_spec, kv_spec = P(batch, axis_name, heads, None), P(batch, axis_name, kv_heads, None)
    row_spec = P(batch, axis_name)
    hops = shards
    if layout is not None and q.shape[1] == k.shape[1]:
        hops = layouts.ring_hops(mask.reach(), layout, shards, q.shape[1])
    fwd_tile, bwd_tile = INNER[inner](
        mask=mask, logits_fn=logits_fn, scale=scale, block_q=block_q, block_kv=block_kv
    )
    specs = (q_spec, kv_spec, kv_spec, row_spec, row_spec, row_spec, row_spec)
    sharded = jax.shard_map(
        functools.partial(
            body, axis_name=axis_name, fwd_tile=fwd_tile, bwd_tile=bwd_tile, hops=hops
        ),
        mesh=mesh,
        in_specs=specs,
        out_specs=(q_spec, P(batch, axis_name, heads)),
        # The blockwise tiles start their loop carries from fresh constants, which the
        # varying-manual-axes checker would ask to pcast one by one; the bodies' collectives
        # (ppermute, all_gather, psum_scatter, all_to_all) do not depend on that typing.
        check_vma=False,
    )
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    args = zip((q, k, v, q_pos, k_pos, q_seg, kv_seg), specs, strict=True)
    out, lse = sharded(*(sharding.constrain_spec(x, spec, mesh) for x, spec in args))
    return out.astype(q.dtype), (lse if return_lse else None)


def strategy(name: str, body: Callable[..., tuple[jax.Array, jax.Array]], *, doc: str,
             capabilities: core.Capabilities = CAPABILITIES, heads_split: int = 1):  # fmt: skip
    """Registers context-parallel implementation ``name``: ``sharded_call`` of ``body`` with the
    shared options (``usp``, which has one more, is written out in ulysses.py)."""

    def impl(
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
    ):
        return sharded_call(
            name, body, q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos,
            q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, logits_fn=logits_fn,
            scale=scale, return_lse=return_lse, axis_name=axis_name, mesh=mesh, layout=layout,
            inner=inner, block_q=block_q, block_kv=block_kv, heads_split=heads_split,
        )  # fmt: skip

    def describe_strategy(**options) -> dict:
        return dict(describe(**options), heads_split=heads_split)

    impl.__name__ = impl.__qualname__ = f"{name}_impl"
    impl.__doc__ = doc
    core.register(name, capabilities, config_keys=CONFIG_KEYS, describe=describe_strategy)(impl)
    return impl
