"""Token layouts for a sequence sharded over a mesh axis (context parallelism).

Causal attention does less work for early queries, so cutting the sequence into contiguous
shards leaves the last device the most work. ``striped`` (Brandon et al. 2023, arXiv
2311.09431) puts token t on shard ``t % n``; ``zigzag`` gives shard r the chunks r and 2n-1-r.
Apply ``permute`` once at data-loading time; masks and positional schemes read the true
positions, so every attention implementation computes the same result on any layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import jax

    from lcm.attention.core import Implementation

LAYOUTS = ("contiguous", "striped", "zigzag")


def layout_chunks(layout: str | None, num_shards: int) -> int:
    """How many equal chunks ``layout`` cuts the sequence into (zigzag: 2 per shard)."""
    return num_shards * (2 if layout == "zigzag" else 1)


def layout_permutation(length: int, num_shards: int, layout: str) -> np.ndarray:
    """``perm[p]`` = original token index stored at physical slot ``p``.

    Shard r owns slots ``[r*length/n, (r+1)*length/n)``. ``contiguous`` is the identity,
    ``striped`` puts token t on shard ``t % n``, ``zigzag`` gives shard r the chunks r and
    2n-1-r of size ``length/(2n)``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"token layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
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


def lay_out_batch(batch: dict, impl: Implementation, mesh: jax.sharding.Mesh) -> dict:
    """A host batch in the token order ``impl`` wants along its mesh axis (``impl.layout`` over
    ``impl.layout_shards``): the batch itself for implementations without a mesh axis."""
    if impl.mesh_axis is None:
        return batch
    shards = impl.layout_shards(mesh.shape[impl.mesh_axis])
    return permute_batch(batch, layout=impl.layout, num_shards=shards)


def permute_batch(batch: dict, *, layout: str, num_shards: int) -> dict:
    """``permute`` applied to every ``[B, T, ...]`` array of a host batch.

    The model reads only explicit positions and segment ids and the loss sums over tokens, so
    training on the permuted batch is exactly training on the original one; only the causal
    work per shard changes.
    """
    if layout == "contiguous" or num_shards == 1:
        return batch
    return {key: permute(np.asarray(x), layout, num_shards) for key, x in batch.items()}
