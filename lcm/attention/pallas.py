"""``pallas``: the ``kernels_pallas`` flash kernel behind the ``attend`` front door.

The adapter owns what the kernels leave to callers: the layout transposes (``[B,T,N,H]`` here,
``[B,N,T,H]`` in the kernels), block sizes from config, padding lengths to whole blocks (padding
gets segment id 0, which the kernel never attends), and the mapping from ``lcm`` masks to the
kernel's causal flag. On TPU the kernel is compiled by Mosaic; elsewhere it runs in Pallas TPU
interpret mode (chosen by the kernel from the backend), which is slow and meant for tests.

Masks: ``Causal()`` and ``Full()`` (flash kernel, masking on explicit positions). Windowed,
chunked and sink masks lower to ``kernels_pallas.block_sparse`` through ``lcm.attention.sparse``;
asking this implementation for them is an error naming the supported masks. Positional logits
hooks cannot run inside the kernel (capability ``custom_logits=False``), so schemes such as
ALiBi or SelfExtend are refused at model build time.
"""

from __future__ import annotations

from kernels_pallas.flash import BlockSizes, flash_attention, flash_attention_bwd
from lcm.attention import core
from lcm.attention import masks as masks_lib

SUPPORTED_MASKS = ("Causal()", "Full()")


def _causal(mask: masks_lib.Mask) -> bool:
    if mask == masks_lib.Causal():
        return True
    if mask == masks_lib.Full():
        return False
    raise ValueError(
        f"attention impl 'pallas' supports masks {', '.join(SUPPORTED_MASKS)}; got {mask!r} "
        "(use impl 'blockwise', or the block-sparse path of lcm.attention.sparse)"
    )


@core.register(
    "pallas",
    core.Capabilities(
        custom_logits=False,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=True,
    ),
)
def pallas_attention(
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
    block_q: int = 512,
    block_kv: int = 512,
    interpret=None,
):
    """Flash attention through the Pallas kernel; returns ``(out, lse or None)``.

    ``block_q`` / ``block_kv`` shrink to the (padded) lengths when those are shorter; otherwise
    the kernel's rules apply (``block_kv`` a multiple of 128, ``block_q`` of 8) and its errors
    name the offending dimension. ``interpret`` is passed to the kernel (None = automatic).
    """
    del logits_fn  # refused by the capability check before we get here
    causal = _causal(mask)
    t, s = q.shape[1], k.shape[1]
    cq, ck = min(block_q, t), min(block_kv, s)
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    q, q_pos, q_seg = (core.pad_to_multiple(x, cq) for x in (q, q_pos, q_seg))
    k, v, k_pos, kv_seg = (core.pad_to_multiple(x, ck) for x in (k, v, k_pos, kv_seg))
    out, lse = flash_attention(
        q.transpose(0, 2, 1, 3),
        k.transpose(0, 2, 1, 3),
        v.transpose(0, 2, 1, 3),
        q_seg,
        kv_seg,
        q_pos,
        k_pos,
        causal=causal,
        scale=scale,
        block_sizes=BlockSizes(block_q=cq, block_kv=ck),
        return_lse=True,
        interpret=interpret,
    )
    out = out.transpose(0, 2, 1, 3)[:, :t]
    return out, (lse.transpose(0, 2, 1)[:, :t] if return_lse else None)


def ring_tiles(*, mask, logits_fn, scale, block_q: int = 512, block_kv: int = 512):
    """Tile functions for ``lcm.attention.ring`` on the flash kernel (same contract as
    ``blockwise.ring_tiles``): the forward returns the shard's ``(out, lse)``, the backward runs
    the dq/dkv kernels with the merged ``out``/``lse``, which gives the shard's exact share."""
    del logits_fn  # refused by ring_impl
    causal = _causal(mask)

    def kernel_args(q, k, v, q_pos, k_pos, q_seg, k_seg):
        t, s = q.shape[1], k.shape[1]
        blocks = BlockSizes(block_q=min(block_q, t), block_kv=min(block_kv, s))
        arrays = (q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
        return arrays, (q_seg, k_seg, q_pos, k_pos), blocks

    def fwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg):
        arrays, rows, blocks = kernel_args(q, k, v, q_pos, k_pos, q_seg, k_seg)
        out, lse = flash_attention(
            *arrays, *rows, causal=causal, scale=scale, block_sizes=blocks, return_lse=True
        )
        return out.transpose(0, 2, 1, 3), lse.transpose(0, 2, 1)

    def bwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, d_out, d_lse):
        arrays, rows, blocks = kernel_args(q, k, v, q_pos, k_pos, q_seg, k_seg)
        dq, dk, dv = flash_attention_bwd(
            *arrays,
            out.astype(q.dtype).transpose(0, 2, 1, 3),
            lse.transpose(0, 2, 1),
            d_out.astype(q.dtype).transpose(0, 2, 1, 3),
            *rows,
            d_lse=d_lse.transpose(0, 2, 1),
            causal=causal,
            scale=scale,
            block_sizes=blocks,
        )
        return dq.transpose(0, 2, 1, 3), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)

    return fwd_tile, bwd_tile
