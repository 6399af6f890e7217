"""Dense oracle for ``block_sparse_attention``, in the kernel layout ``[B,N,T,H]``."""

from __future__ import annotations

import jax.numpy as jnp

from kernels_pallas.block_sparse.block_lists import BlockLists, dense_tile_kinds
from kernels_pallas.flash.reference import attention_reference, token_visibility
from kernels_pallas.mask import FULL, PARTIAL, PositionalMask


def block_sparse_reference(
    q,
    k,
    v,
    lists: BlockLists,
    q_segment_ids=None,
    kv_segment_ids=None,
    q_positions=None,
    kv_positions=None,
    *,
    mask: PositionalMask,
    scale=None,
    return_lse=False,
):
    """Same arguments and outputs as ``block_sparse_attention``, computed densely."""
    b, n, t, h = q.shape
    kh, s = k.shape[1], k.shape[2]
    q_pos = jnp.broadcast_to(jnp.arange(t), (b, t)) if q_positions is None else q_positions
    kv_pos = jnp.broadcast_to(jnp.arange(s), (b, s)) if kv_positions is None else kv_positions
    # Tile kinds -> token level [Bl, Kl, T, S], then each query head takes its kv head's row.
    kinds = dense_tile_kinds(lists)
    kinds = jnp.repeat(jnp.repeat(kinds, lists.block_q, axis=-2), lists.block_kv, axis=-1)
    kinds = jnp.broadcast_to(kinds, (b, kh, t, s))
    kinds = jnp.repeat(kinds, n // kh, axis=1)  # [B, N, T, S]
    positional = token_visibility(mask, q_pos, kv_pos)  # [B, 1, T, S]
    visible = (kinds == FULL) | ((kinds == PARTIAL) & positional)
    if q_segment_ids is not None:
        visible = visible & token_visibility(
            PositionalMask(), q_pos, kv_pos, q_segment_ids, kv_segment_ids
        )
    out, lse = attention_reference(q, k, v, visible, scale=h**-0.5 if scale is None else scale)
    return (out, lse) if return_lse else out
