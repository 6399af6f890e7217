"""Ring attention: sequence (context) parallel attention over one mesh axis.

Liu, Zaharia & Abbeel, "Ring Attention with Blockwise Transformers for Near-Infinite Context"
(2023). K/V shards travel the ring by ``lax.ppermute`` and partial results merge by log-sum-exp;
the custom-VJP backward is its own ring. Load-balanced layouts (``layout_permutation``:
``striped``, Brandon et al. 2023, arXiv 2311.09431; ``zigzag``) need no special cases, since
masks read positions. See docs/attention.md#ring.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from kernels_pallas.common import name_residuals
from lcm.attention import blockwise, core, pallas
from lcm.attention.merge import merge_attention
from lcm.parallel import sharding

# fwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg) -> (out [B,T,N,H], lse [B,T,N] f32)
# bwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, dout, dlse) -> (dq, dk, dv), given
#   the GLOBAL (merged) out and lse and their cotangents: the shard's exact gradient share
TileFwd = Callable[..., tuple[jax.Array, jax.Array]]
TileBwd = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]

LAYOUTS = ("contiguous", "striped", "zigzag")
INNER = {"blockwise": blockwise.ring_tiles, "pallas": pallas.ring_tiles}


def layout_chunks(layout: str | None, num_shards: int) -> int:
    """How many equal chunks a ring ``layout`` cuts the sequence into (zigzag: 2 per shard)."""
    return num_shards * (2 if layout == "zigzag" else 1)


def _rotate(axis_name: str, n: int, *xs):
    perm = [(i, (i + 1) % n) for i in range(n)]
    return tuple(jax.lax.ppermute(x, axis_name, perm) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def ring_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile):
    """Attention of local queries over the keys of every device on ``axis_name``.

    Call inside ``shard_map``; all arrays are the local shards: q ``[B,T,N,H]``, k/v
    ``[B,S,K,H]``, positions and segment ids ``[B,T]``/``[B,S]`` int32.

    Returns:
      ``(out [B,T,N,H] float32, lse [B,T,N] float32)`` over the global key set.
    """
    return _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile)[0]


def _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile):
    n = jax.lax.axis_size(axis_name)

    def step(carry, _):
        out, lse, kv = carry
        out_t, lse_t = fwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3])
        out, lse = merge_attention([out, out_t], [lse, lse_t])
        # The permute reads the same operands as the tile, so XLA can overlap the two.
        return (out, lse, _rotate(axis_name, n, *kv)), None

    # Carries built with *_like keep the inputs' varying-over-mesh-axes type inside shard_map.
    init = (
        jnp.zeros_like(q, jnp.float32),
        jnp.full_like(q[..., 0], -jnp.inf, jnp.float32),
        (k, v, k_pos, k_seg),
    )
    (out, lse, kv), _ = jax.lax.scan(step, init, None, length=n - 1)
    out_t, lse_t = fwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3])
    out, lse = name_residuals(*merge_attention([out, out_t], [lse, lse_t]))
    return (out, lse), (q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)


def _ring_fwd_rule(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile, bwd_tile):
    del bwd_tile
    return _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, axis_name, fwd_tile)


def _ring_bwd_rule(axis_name, fwd_tile, bwd_tile, residuals, cotangents):
    del fwd_tile
    q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = residuals
    dout, dlse = cotangents
    n = jax.lax.axis_size(axis_name)

    def step(carry, _):
        dq, kv, dk, dv = carry
        dq_t, dk_t, dv_t = bwd_tile(q, *kv[:2], q_pos, kv[2], q_seg, kv[3], out, lse, dout, dlse)
        dk, dv = dk + dk_t.astype(jnp.float32), dv + dv_t.astype(jnp.float32)
        rotated = _rotate(axis_name, n, *kv, dk, dv)
        return (dq + dq_t.astype(jnp.float32), rotated[:4], *rotated[4:]), None

    init = (
        jnp.zeros_like(q, jnp.float32),
        (k, v, k_pos, k_seg),
        jnp.zeros_like(k, jnp.float32),
        jnp.zeros_like(v, jnp.float32),
    )
    # n hops bring every dK/dV accumulator back to the device owning those keys.
    (dq, _, dk, dv), _ = jax.lax.scan(step, init, None, length=n)
    zeros = [np.zeros(x.shape, jax.dtypes.float0) for x in (q_pos, k_pos, q_seg, k_seg)]
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), *zeros)


ring_attention.defvjp(_ring_fwd_rule, _ring_bwd_rule)


def layout_permutation(length: int, num_shards: int, layout: str) -> np.ndarray:
    """``perm[p]`` = original token index stored at physical slot ``p``.

    Shard r owns slots ``[r*length/n, (r+1)*length/n)``. ``contiguous`` is the identity,
    ``striped`` puts token t on shard ``t % n``, ``zigzag`` gives shard r the chunks r and
    2n-1-r of size ``length/(2n)``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"ring layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    chunks = layout_chunks(layout, num_shards)
    if length % chunks:
        raise ValueError(
            f"sequence length {length} must be a multiple of {chunks} for the {layout!r} "
            f"layout over {num_shards} shards"
        )
    idx = np.arange(length)
    if layout == "contiguous":
        return idx
    if layout == "striped":
        return idx.reshape(length // num_shards, num_shards).T.reshape(-1)
    c = length // chunks
    parts = idx.reshape(chunks, c)
    return np.concatenate(
        [np.concatenate([parts[r], parts[chunks - 1 - r]]) for r in range(num_shards)]
    )


def _describe(*, axis_name, layout, inner, block_q, block_kv, **_) -> dict:
    """Ring's tiles, block multiples and logits hook are its inner's; it shards the sequence
    over ``axis_name`` with tokens in ``layout`` order."""
    if layout is not None and layout not in LAYOUTS:
        raise core.OptionError("layout", layout, f"allowed: {', '.join(LAYOUTS)}")
    fields = core.tiles_on(inner, option="inner", allowed=INNER, block_q=block_q,
                           block_kv=block_kv)  # fmt: skip
    return dict(fields, mesh_axis=axis_name, layout=layout or "contiguous")


@core.register(
    "ring",
    core.Capabilities(
        custom_logits=True,
        segments=True,
        gqa=True,
        needs_mesh=True,
        differentiable=True,
        returns_lse=True,
    ),
    config_keys={
        "block_q": "block_q",
        "block_kv": "block_kv",
        "axis_name": "ring_axis",
        "inner": "ring_inner",
        "layout": "ring_layout",
    },
    describe=_describe,
)
def ring_impl(
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
    """``attend(..., impl="ring")``: queries and keys sharded along the sequence on ``axis_name``.

    Needs a mesh in context with that axis; batch and heads are sharded as the logical rules in
    context say (``batch``, ``heads``, ``kv_heads``). ``mesh`` overrides the mesh in context.
    Arrays are global and already in the token order of ``layout`` (``permute``); masks read
    true positions, so ``layout`` only sets the divisibility the layout needs (zigzag: 2n
    chunks). Sequence lengths must divide evenly over the ring; per-device lengths need not be
    multiples of the blocks (tiles pad). ``inner`` computes each step's tile: ``blockwise``
    (plain JAX, any mask and logits hook) or ``pallas`` (flash / block-sparse kernels, no hook).
    Returns ``(out, lse or None)``.
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty or axis_name not in mesh.axis_names:
        raise ValueError(
            f"attention impl 'ring' needs a mesh with axis {axis_name!r} in context "
            f"(lcm.parallel.sharding.use_mesh); got axes {tuple(mesh.axis_names)}"
        )
    n = mesh.shape[axis_name]
    chunks = layout_chunks(layout, n)
    for name, x in (("query length T", q), ("key length S", k)):
        if x.shape[1] % chunks:
            raise ValueError(
                f"ring: {name} = {x.shape[1]} must be a multiple of {chunks} "
                f"({axis_name}={n}, layout={layout or 'as given'})"
            )
    batch, heads, kv_heads = (sharding.mesh_axes(x) or None for x in ("batch", "heads", "kv_heads"))
    q_spec, kv_spec = P(batch, axis_name, heads, None), P(batch, axis_name, kv_heads, None)
    row_spec = P(batch, axis_name)
    fwd_tile, bwd_tile = INNER[inner](
        mask=mask, logits_fn=logits_fn, scale=scale, block_q=block_q, block_kv=block_kv
    )
    sharded = jax.shard_map(
        functools.partial(
            ring_attention, axis_name=axis_name, fwd_tile=fwd_tile, bwd_tile=bwd_tile
        ),
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, row_spec, row_spec, row_spec, row_spec),
        out_specs=(q_spec, P(batch, axis_name, heads)),
        # The blockwise tiles start their loop carries from fresh constants, which the
        # varying-manual-axes checker would ask to pcast one by one; the ring body has no
        # collectives whose meaning depends on that typing (only ppermute), so it is off.
        check_vma=False,
    )
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    args = zip(
        (q, k, v, q_pos, k_pos, q_seg, kv_seg),
        (q_spec, kv_spec, kv_spec, row_spec, row_spec, row_spec, row_spec),
        strict=True,
    )
    out, lse = sharded(*(sharding.constrain_spec(x, spec, mesh) for x, spec in args))
    return out.astype(q.dtype), (lse if return_lse else None)


def permute(x, layout: str, num_shards: int, axis: int = 1):
    """Reorders ``x`` along ``axis`` (the sequence) into ``layout`` for ``num_shards`` devices.

    Apply it once, at data-loading time, to tokens, targets, positions and segment ids alike;
    positions keep the TRUE token positions, which is all masks and positional schemes read.
    """
    perm = layout_permutation(np.shape(x)[axis], num_shards, layout)
    return np.take(x, perm, axis=axis) if isinstance(x, np.ndarray) else jnp.take(x, perm, axis)


def unpermute(x, layout: str, num_shards: int, axis: int = 1):
    """Inverse of ``permute``: back to the original token order."""
    inverse = np.argsort(layout_permutation(np.shape(x)[axis], num_shards, layout))
    return (
        np.take(x, inverse, axis=axis) if isinstance(x, np.ndarray) else jnp.take(x, inverse, axis)
    )


def lay_out_batch(batch: dict, impl: core.Implementation, mesh: jax.sharding.Mesh) -> dict:
    """A host batch in the token order ``impl`` wants along its mesh axis (``impl.layout``):
    ``permute_batch`` for ring, the batch itself for implementations without a mesh axis."""
    if impl.mesh_axis is None:
        return batch
    return permute_batch(batch, layout=impl.layout, num_shards=mesh.shape[impl.mesh_axis])


def permute_batch(batch: dict, *, layout: str, num_shards: int) -> dict:
    """``permute`` applied to every ``[B, T, ...]`` array of a host batch.

    The model reads only explicit positions and segment ids and the loss sums over tokens, so
    training on the permuted batch is exactly training on the original one; only the causal
    work per ring shard changes.
    """
    if layout == "contiguous" or num_shards == 1:
        return batch
    return {key: permute(np.asarray(x), layout, num_shards) for key, x in batch.items()}
