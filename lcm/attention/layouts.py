"""Token layouts for a sequence sharded over a mesh axis (context parallelism).

Causal attention does less work for early queries, so cutting the sequence into contiguous
shards leaves the last device the most work. ``striped`` (Brandon et al. 2023, arXiv
2311.09431) puts token t on shard ``t % n``; ``zigzag`` gives shard r the chunks r and 2n-1-r.
Zigzag balances one causal document per row; ``balanced`` balances packed rows (document
masks) by cutting every document zigzag-wise (``balanced_permutation``: a per-row order, from
the row's segment ids). Apply
``permute_batch`` once at data-loading time; masks and positional schemes read the true
positions, so every attention implementation computes the same result on any layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import jax

    from lcm.attention.core import Implementation

FIXED = ("contiguous", "striped", "zigzag")  # one order for every row (layout_permutation)
PER_ROW = ("balanced",)  # an order per row, from its documents (balanced_permutation)
LAYOUTS = FIXED + PER_ROW


def layout_chunks(layout: str | None, num_shards: int) -> int:
    """How many equal chunks ``layout`` cuts the sequence into (zigzag, balanced: 2 per
    shard; the length must be a multiple)."""
    return num_shards * (2 if layout in ("zigzag", "balanced") else 1)


def layout_permutation(length: int, num_shards: int, layout: str) -> np.ndarray:
    """``perm[p]`` = original token index stored at physical slot ``p``.

    Shard r owns slots ``[r*length/n, (r+1)*length/n)``. ``contiguous`` is the identity,
    ``striped`` puts token t on shard ``t % n``, ``zigzag`` gives shard r the chunks r and
    2n-1-r of size ``length/(2n)``.
    """
    if layout not in FIXED:
        raise ValueError(
            f"token layout {layout!r}; allowed: {', '.join(FIXED)} (the order of "
            f"{', '.join(PER_ROW)} depends on each row's documents: balanced_permutation)"
        )
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


def ring_hops(reach: tuple[float, float], layout: str, num_shards: int, length: int) -> int:
    """How many hops of a ring over ``num_shards`` devices can bring a query visible keys.

    ``reach`` is the mask's ``(back, ahead)`` bound on position distances
    (``masks.Mask.reach``). The bound holds for index distances too when positions grow by at
    least one per token within each document (what ``lcm.data`` produces; documents cannot see
    each other), so with the sequence in ``layout`` order the hops beyond the last one that can
    pair a query with a key at index distance <= back carry only invisible keys. Keys ahead of
    the query (``ahead > 0``) arrive on the last hops, so those masks run the whole ring.
    """
    back, ahead = reach
    if ahead > 0 or back >= length or layout in PER_ROW:
        return num_shards
    if layout == "striped":  # token t on shard t % n: distance d is hop d % n
        return int(min(back + 1, num_shards))
    chunks = layout_chunks(layout, num_shards)
    size = length // chunks
    owner = np.argsort(layout_permutation(chunks, num_shards, layout)) // (chunks // num_shards)
    span = -(-int(back) // size)  # chunks back that a query can reach into
    hops = {
        (owner[j] - owner[j - m]) % num_shards
        for m in range(min(span, chunks - 1) + 1)
        for j in range(m, chunks)
    }
    return int(max(hops)) + 1


def balanced_permutation(segment_ids: np.ndarray, num_shards: int) -> np.ndarray:
    """``perm[p]`` (original index at slot ``p``) of one packed row for the ``balanced`` layout.

    Every run of equal segment ids (a document; padding runs too) is cut into 2n equal pieces,
    shard r taking pieces r and 2n-1-r (zigzag per document, so each document's causal work is
    the same on every shard and at every ring step); the tokens left over where a run's length
    is not a multiple of 2n go, heaviest first, to the shard with the least causal work that
    still has room (longest-processing-time), so every shard holds ``length / n`` tokens. Each
    shard keeps its tokens in their original order. A row of one document gets the zigzag
    order.
    """
    seg = np.asarray(segment_ids)
    length, n = seg.shape[0], num_shards
    if length % (2 * n):
        raise ValueError(
            f"sequence length {length} must be a multiple of {2 * n} for the 'balanced' "
            f"layout over {n} shards"
        )
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    ends = np.r_[starts[1:], length]
    # causal work of each token: the keys it sees (its index in the document, plus one)
    work = np.where(seg != 0, np.arange(length) - np.repeat(starts, ends - starts) + 1, 0)
    shards = [[] for _ in range(n)]
    for start, end in zip(starts, ends, strict=True):
        piece = (end - start) // (2 * n)
        if piece:
            pieces = np.arange(start, start + 2 * n * piece).reshape(2 * n, piece)
            for r in range(n):
                shards[r] += [pieces[r], pieces[2 * n - 1 - r]]
    loads = np.array([sum(work[p].sum() for p in parts) for parts in shards], np.int64)
    room = length // n - np.array([sum(p.size for p in parts) for parts in shards])
    rest = np.concatenate([np.arange(s + (e - s) // (2 * n) * 2 * n, e)
                           for s, e in zip(starts, ends, strict=True)])  # fmt: skip
    for t in rest[np.argsort(-work[rest], kind="stable")]:
        r = int(np.argmin(np.where(room > 0, loads, np.iinfo(np.int64).max)))
        shards[r].append(np.array([t]))
        loads[r] += work[t]
        room[r] -= 1
    return np.concatenate([np.sort(np.concatenate(parts)) for parts in shards])


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
    if layout in PER_ROW:
        perm = np.stack([balanced_permutation(row, num_shards) for row in batch["segment_ids"]])
        return {key: np.take_along_axis(np.asarray(x), perm, 1) for key, x in batch.items()}
    return {key: permute(np.asarray(x), layout, num_shards) for key, x in batch.items()}
