"""``gathered.slot_attention`` on the Pallas block-sparse kernel (``kernels_pallas``).

As MoBA's efficient implementation (Lu et al. 2025, arXiv 2502.13189, section 2.3): the queries
routed to each key block are gathered into chunks of ``chunk`` rows, each chunk's kv list holds
its one block, and results are scattered back. See docs/attention.md#kernel-slots.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels_pallas.block_sparse import BlockLists, block_sparse_attention
from kernels_pallas.common import NUM_LANES
from kernels_pallas.mask import PARTIAL, PositionalMask
from lcm.attention import core, pallas
from lcm.attention.sparse import gathered

_F32 = jnp.float32
KERNELS = ("blockwise", "pallas")  # how sparse methods compute their selected blocks


def check_kernel(kernel: str, method: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"{method} kernel = {kernel!r}; allowed: {', '.join(KERNELS)}")


def describe_blocks(*, kernel: str, block_option: str, **_) -> dict:
    """``Implementation`` fields of a method gathering key blocks of option ``block_option``:
    on the Pallas kernel a block spans whole 128-lane vregs (or all keys)."""
    if kernel not in KERNELS:
        raise core.OptionError("kernel", kernel, f"allowed: {', '.join(KERNELS)}")
    return dict(block_multiples=((block_option, NUM_LANES),) if kernel == "pallas" else ())


def describe_tiles(*, kernel: str, block_q: int, block_kv: int, **_) -> dict:
    """``Implementation`` fields of a method running tiled attention on ``kernel``."""
    return core.tiles_on(kernel, option="kernel", allowed=KERNELS, block_q=block_q,
                         block_kv=block_kv)  # fmt: skip


def pick(kernel: str, interpret=None):
    """The ``slot_attention`` of ``kernel``: ``gathered``'s (plain JAX) or this module's."""
    if kernel == "blockwise":
        return gathered.slot_attention
    return functools.partial(slot_attention, interpret=interpret)


def _per_kv_head(x, b, t, kh, g, m):
    """``[B,T,N,M,...] -> [B*K, T*G*M, ...]``: pair ``((t * G) + head in group) * M + slot``."""
    x = x.reshape(b, t, kh, g, m, *x.shape[4:])
    return jnp.moveaxis(x, 2, 1).reshape(b * kh, t * g * m, *x.shape[5:])


def slot_attention(q, k, v, ids, valid, *, block, q_pos, k_pos, q_seg, kv_seg, scale,
                   chunk=128, interpret=None):  # fmt: skip
    """As ``gathered.slot_attention``: ``(out [B,T,N,M,H] f32, lse [B,T,N,M] f32)``.

    ``interpret`` is passed to the kernel (None: chosen by the platform lowered for). Under a
    mesh, the sort and the kernel run per chip over the batch and head axes (``pallas.per_chip``).
    """
    local = functools.partial(
        _slot_attention, block=block, scale=scale, chunk=chunk, interpret=interpret
    )
    slots, rows = ("batch", None, "heads", None), pallas.ROW_NAMES
    names = (pallas.Q_NAMES, pallas.KV_NAMES, pallas.KV_NAMES, slots, slots, rows, rows, rows, rows)
    return pallas.per_chip(
        local, (q, k, v, ids, valid, q_pos, k_pos, q_seg, kv_seg), names, ((*slots, None), slots)
    )


def _slot_attention(q, k, v, ids, valid, q_pos, k_pos, q_seg, kv_seg, *, block, scale, chunk,
                    interpret):  # fmt: skip
    b, t, n, h = q.shape
    kh, m = k.shape[2], ids.shape[-1]
    g = n // kh
    k, v, k_pos, kv_seg = (core.pad_to_multiple(x, block) for x in (k, v, k_pos, kv_seg))
    s = k.shape[1]
    nb, rows, pairs = s // block, b * kh, t * g * m
    capacity = -(-(pairs + nb * (chunk - 1)) // chunk) * chunk
    num_chunks = capacity // chunk

    # Sort pairs by block (invalid ones, keyed nb, last) and give each block's run whole chunks.
    key = _per_kv_head(jnp.where(valid, ids, nb).astype(jnp.int32), b, t, kh, g, m)
    order = jnp.argsort(key, axis=-1, stable=True)
    sorted_key = jnp.take_along_axis(key, order, -1)
    counts = jax.vmap(lambda x: jnp.bincount(x, length=nb + 1)[:nb])(key)  # [R, nb]
    padded = -(-counts // chunk) * chunk
    start, padded_start = jnp.cumsum(counts, -1) - counts, jnp.cumsum(padded, -1) - padded
    own = jnp.minimum(sorted_key, nb - 1)
    row = (
        jnp.take_along_axis(padded_start, own, -1)
        + jnp.arange(pairs)
        - jnp.take_along_axis(start, own, -1)
    )
    row = jnp.where(sorted_key < nb, row, capacity)  # invalid pairs: no row
    r_idx = jnp.arange(rows)[:, None]
    row_of_pair = jnp.zeros((rows, pairs), jnp.int32).at[r_idx, order].set(row)
    pair_at = jnp.full((rows, capacity), pairs, jnp.int32).at[r_idx, row].set(order, mode="drop")

    # Gathered query rows [R, capacity] with their positions and segment ids (0 = padding).
    src = jnp.minimum(pair_at, pairs - 1) // m  # token * G + head in group
    bi, ki = r_idx // kh, r_idx % kh
    q_rows = q[bi, src // g, ki * g + src % g]  # [R, capacity, H]
    q_pos_rows = q_pos[bi, src // g]
    q_seg_rows = jnp.where(pair_at < pairs, q_seg[bi, src // g], 0)

    # Lists: chunk c reads the block of its first pair; block j is read by its run of chunks.
    first = pair_at[:, ::chunk]  # [R, num_chunks]
    chunk_real = first < pairs
    chunk_block = jnp.take_along_axis(key, jnp.minimum(first, pairs - 1), -1)
    width_t = min(num_chunks, -(-(t * g) // chunk))
    q_ids = padded_start[..., None] // chunk + jnp.arange(width_t)
    lists = BlockLists(
        kv_ids=jnp.where(chunk_real, chunk_block, 0)[:, None, :, None],
        kv_kinds=jnp.full((rows, 1, num_chunks, 1), PARTIAL, jnp.int32),
        kv_counts=chunk_real.astype(jnp.int32)[:, None],
        q_ids=jnp.minimum(q_ids, num_chunks - 1).astype(jnp.int32)[:, None],
        q_kinds=jnp.full((rows, 1, nb, width_t), PARTIAL, jnp.int32),
        q_counts=(padded // chunk).astype(jnp.int32)[:, None],
        block_q=chunk,
        block_kv=block,
    )

    def fold(x):  # [B, S, K, H] -> [B*K, 1, S, H]
        return jnp.moveaxis(x, 2, 1).reshape(rows, 1, s, h)

    out, lse = block_sparse_attention(
        q_rows[:, None], fold(k), fold(v), lists, q_seg_rows, jnp.repeat(kv_seg, kh, 0),
        q_pos_rows, jnp.repeat(k_pos, kh, 0), mask=PositionalMask(causal=True), scale=scale,
        return_lse=True, interpret=interpret,
    )  # fmt: skip

    # Back to pairs, then to [B, T, N, M].
    has_row = row_of_pair < capacity
    back = jnp.minimum(row_of_pair, capacity - 1)
    out = jnp.where(has_row[..., None], out[:, 0].astype(_F32)[r_idx, back], 0.0)
    lse = jnp.where(has_row, lse[:, 0][r_idx, back], -jnp.inf)

    def unfold(x):  # [B*K, T*G*M, ...] -> [B, T, N, M, ...]
        x = x.reshape(b, kh, t, g, m, *x.shape[2:])
        return jnp.moveaxis(x, 1, 2).reshape(b, t, n, m, *x.shape[5:])

    return unfold(out), unfold(lse)
