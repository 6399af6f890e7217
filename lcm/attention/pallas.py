"""``pallas``: the ``kernels_pallas`` kernels behind the ``attend`` front door.

Owns the layout transposes (``[B,T,N,H]`` here, ``[B,N,T,H]`` in the kernels), block sizes,
padding to whole blocks (segment id 0) and the mask mapping: ``Causal()`` / ``Full()`` run the
flash kernel, every other mask the block-sparse kernel on lists classified on device. Under a
mesh the kernels run per chip (``per_chip``). No positional logits hooks. See
docs/attention.md#pallas-adapter.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from jax import lax
from jax.sharding import PartitionSpec as P

from kernels_pallas.block_sparse import (
    block_lists_from_kinds,
    block_sparse_attention,
    block_sparse_attention_bwd,
)
from kernels_pallas.common import NUM_LANES, NUM_SUBLANES
from kernels_pallas.flash import BlockSizes, flash_attention, flash_attention_bwd
from lcm.attention import core, tiles
from lcm.attention import masks as masks_lib
from lcm.parallel import sharding

# Logical names of the attention arrays' dimensions: q [B,T,N,H], k/v [B,S,K,H], rows [B,T].
Q_NAMES = ("batch", None, "heads", None)
KV_NAMES = ("batch", None, "kv_heads", None)
ROW_NAMES = ("batch", None)


def per_chip(fn, args, names, out_names):
    """``fn(*args)`` run per chip under the mesh in context (directly without one).

    ``names[i]`` gives one logical name (``"batch"``, ``"heads"``, ``"kv_heads"``) or None per
    dimension of ``args[i]``; ``out_names`` likewise for the outputs (a tuple of arrays).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(*args)
    free = [a for a in mesh.axis_names if a not in mesh.manual_axes]

    def usable(logical, group):
        axes = sharding.mesh_axes(logical)
        size = math.prod(mesh.shape[a] for a in axes)
        dims = [x.shape[d] for x, n in zip(args, names, strict=True)
                for d, name in enumerate(n) if name in group]  # fmt: skip
        ok = axes and all(a in free for a in axes) and all(d % size == 0 for d in dims)
        return axes if ok else None

    batch = usable("batch", ("batch",))
    heads = usable("heads", ("heads", "kv_heads"))
    if sharding.mesh_axes("kv_heads") != heads:  # a GQA group must stay on one chip
        heads = None
    axes = {"batch": batch, "heads": heads, "kv_heads": heads, None: None}
    if batch is None and heads is None:
        return fn(*args)

    def spec(n):
        return P(*(axes[name] for name in n))

    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=tuple(spec(n) for n in names),
        out_specs=tuple(spec(n) for n in out_names),
        check_vma=False,  # pallas_call carries no varying-axes types
    )(*args)


@dataclasses.dataclass(frozen=True)
class KernelMask:
    """An ``lcm`` mask in the kernels' mask protocol (``allows``, ``is_full``); hashable."""

    mask: masks_lib.Mask

    def allows(self, q_pos, k_pos):
        return self.mask.visible(q_pos, k_pos)

    @property
    def is_full(self) -> bool:
        return self.mask == masks_lib.Full()


def _flash_causal(mask: masks_lib.Mask) -> bool | None:
    """True / False when the flash kernel serves ``mask`` (causal or not); None otherwise."""
    if mask == masks_lib.Causal():
        return True
    if mask == masks_lib.Full():
        return False
    return None


def _cover(span: int, block: int) -> int:
    """Most blocks of ``block`` consecutive positions that ``span`` consecutive positions meet."""
    return 0 if span <= 0 else -(-(span - 1) // block) + 1


def _reach(mask: masks_lib.Mask, length: int, block: int, keys: bool) -> int | None:
    """Most blocks (of ``block`` contiguous positions) on one side that ``length`` contiguous
    positions on the other side see: kv blocks seen by queries (``keys``) or q blocks that see
    keys. None when unbounded."""
    if isinstance(mask, masks_lib.SlidingWindow):
        return _cover(length + mask.left + mask.right, block)
    if isinstance(mask, masks_lib.ChunkedCausal):
        return _cover(length + mask.size - 1, block)
    if isinstance(mask, masks_lib.Sink):
        # Keys below n: with positions >= 0 and blocks in order they fill the first
        # ceil(n / block) kv blocks. Every query sees them.
        return -(-mask.n // block) if keys else (0 if mask.n == 0 else None)
    if isinstance(mask, masks_lib.And | masks_lib.Or):
        a, b = (_reach(x, length, block, keys) for x in (mask.a, mask.b))
        if isinstance(mask, masks_lib.And):
            return b if a is None else a if b is None else min(a, b)
        return None if a is None or b is None else a + b
    return None  # Causal, Full and masks this adapter knows nothing about


def list_widths(mask: masks_lib.Mask, nq: int, nk: int, block_q: int, block_kv: int):
    """Static widths ``(kv blocks per q block, q blocks per kv block)`` for contiguous
    positions, capped at ``(nk, nq)``."""
    w = _reach(mask, block_q, block_kv, keys=True)
    wt = _reach(mask, block_kv, block_q, keys=False)
    return min(nk if w is None else w, nk), min(nq if wt is None else wt, nq)


def with_lists(mask, q_pos, k_pos, q_seg, kv_seg, block_q, block_kv, fn):
    """``fn(lists)`` with block lists of ``mask`` on these (padded) positions and segments.

    Runs ``fn`` on lists of the static widths of ``list_widths`` when every row fits, else on
    full-width lists (``lax.cond``; both are traced).
    """
    q_ranges = tiles.block_ranges(q_pos, q_seg, block_q)
    kv_ranges = tiles.block_ranges(k_pos, kv_seg, block_kv)
    kinds = tiles.classify_tiles(mask, q_ranges, kv_ranges)[:, None]  # [B, 1, nq, nk]
    nq, nk = kinds.shape[-2:]
    w, wt = list_widths(mask, nq, nk, block_q, block_kv)

    def run(widths):
        return fn(block_lists_from_kinds(kinds, block_q, block_kv, *widths))

    if (w, wt) == (nk, nq):
        return run((nk, nq))
    listed = kinds != masks_lib.EMPTY
    fits = (listed.sum(-1).max() <= w) & (listed.sum(-2).max() <= wt)
    return lax.cond(fits, lambda: run((w, wt)), lambda: run((nk, nq)))


def _to_kernel(*xs):
    return tuple(x.transpose(0, 2, 1, 3) for x in xs)


def _forward(arrays, rows, *, mask, scale, cq, ck, interpret=None):
    """``(out, lse)`` in the kernels' layout: the flash kernel for ``Causal`` / ``Full``, else the
    block-sparse kernel on ``mask``'s block lists. ``arrays`` = kernel-layout ``(q, k, v)``,
    ``rows`` = ``(q_seg, kv_seg, q_pos, k_pos)``, blocks ``cq`` x ``ck``."""
    causal = _flash_causal(mask)
    if causal is not None:
        return flash_attention(
            *arrays, *rows, causal=causal, scale=scale, block_sizes=BlockSizes(cq, ck),
            return_lse=True, interpret=interpret,
        )  # fmt: skip
    q_seg, kv_seg, q_pos, k_pos = rows
    return with_lists(
        mask, q_pos, k_pos, q_seg, kv_seg, cq, ck,
        lambda lists: block_sparse_attention(
            *arrays, lists, *rows, mask=KernelMask(mask), scale=scale, return_lse=True,
            interpret=interpret,
        ),
    )  # fmt: skip


def describe_tiles(*, block_q: int, block_kv: int, **_) -> dict:
    """``Implementation`` fields of tiles on these kernels: their TPU tiling wants kv blocks of
    whole 128-lane vregs and q blocks of 8 sublanes (unless a block covers the sequence)."""
    return dict(
        core.tiled(block_q=block_q, block_kv=block_kv),
        block_multiples=(("block_q", NUM_SUBLANES), ("block_kv", NUM_LANES)),
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
    config_keys={"block_q": "block_q", "block_kv": "block_kv"},
    describe=describe_tiles,
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
    """Pallas attention (flash or block-sparse kernel by mask); returns ``(out, lse or None)``.

    ``block_q`` / ``block_kv`` shrink to the (padded) lengths when those are shorter; otherwise
    the kernels' rules apply (``block_kv`` a multiple of 128, ``block_q`` of 8) and their errors
    name the offending dimension. ``T != S`` (decoding, chunked prefill) needs nothing special:
    masks read positions. ``interpret`` is passed to the kernels (None = automatic).
    """
    del logits_fn  # refused by the capability check before we get here
    t, s = q.shape[1], k.shape[1]
    cq, ck = min(block_q, t), min(block_kv, s)
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)

    def local(q, k, v, q_pos, k_pos, q_seg, kv_seg):
        q, q_pos, q_seg = (core.pad_to_multiple(x, cq) for x in (q, q_pos, q_seg))
        k, v, k_pos, kv_seg = (core.pad_to_multiple(x, ck) for x in (k, v, k_pos, kv_seg))
        out, lse = _forward(
            _to_kernel(q, k, v), (q_seg, kv_seg, q_pos, k_pos), mask=mask, scale=scale,
            cq=cq, ck=ck, interpret=interpret,
        )  # fmt: skip
        return out.transpose(0, 2, 1, 3)[:, :t], lse.transpose(0, 2, 1)[:, :t]

    rows = (ROW_NAMES,) * 4
    out, lse = per_chip(
        local, (q, k, v, q_pos, k_pos, q_seg, kv_seg), (Q_NAMES, KV_NAMES, KV_NAMES, *rows),
        (Q_NAMES, ("batch", None, "heads")),
    )  # fmt: skip
    return out, (lse if return_lse else None)


def ring_tiles(*, mask, logits_fn, scale, block_q: int = 512, block_kv: int = 512):
    """Tile functions for ``lcm.attention.ring`` on the Pallas kernels (same contract as
    ``blockwise.ring_tiles``): the forward returns the shard's ``(out, lse)``, the backward runs
    the dq/dkv kernels with the merged ``out``/``lse``, which gives the shard's exact share.
    Any mask ``pallas_attention`` takes; shard lengths must be multiples of the blocks (or
    shorter than them)."""
    del logits_fn  # refused by ring_impl
    causal = _flash_causal(mask)

    def sizes(q, k):
        return min(block_q, q.shape[1]), min(block_kv, k.shape[1])

    def fwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg):
        cq, ck = sizes(q, k)
        rows = (q_seg, k_seg, q_pos, k_pos)
        out, lse = _forward(_to_kernel(q, k, v), rows, mask=mask, scale=scale, cq=cq, ck=ck)
        return out.transpose(0, 2, 1, 3), lse.transpose(0, 2, 1)

    def bwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, d_out, d_lse):
        cq, ck = sizes(q, k)
        arrays, rows = _to_kernel(q, k, v), (q_seg, k_seg, q_pos, k_pos)
        out, d_out = _to_kernel(out.astype(q.dtype), d_out.astype(q.dtype))
        lse, d_lse = lse.transpose(0, 2, 1), d_lse.transpose(0, 2, 1)
        if causal is not None:
            grads = flash_attention_bwd(
                *arrays, out, lse, d_out, *rows, d_lse=d_lse, causal=causal, scale=scale,
                block_sizes=BlockSizes(cq, ck),
            )  # fmt: skip
        else:
            grads = with_lists(
                mask, q_pos, k_pos, q_seg, k_seg, cq, ck,
                lambda lists: block_sparse_attention_bwd(
                    *arrays, out, lse, d_out, lists, *rows, d_lse=d_lse, mask=KernelMask(mask),
                    scale=scale,
                ),
            )  # fmt: skip
        return tuple(g.transpose(0, 2, 1, 3) for g in grads)

    return fwd_tile, bwd_tile
