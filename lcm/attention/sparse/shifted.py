"""LongLoRA S²-Attn, shifted sparse attention (Chen et al. 2023, arXiv 2309.12307).

Causal attention inside groups of ``group_size`` positions; the second half of the heads uses
groups shifted by half a group. The offset block-diagonal form of LongLoRA's
``forward_flashattn``, as static position masks. See docs/attention.md#s2-attn.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from lcm.attention import blockwise, core, pallas
from lcm.attention import masks as masks_lib
from lcm.attention.sparse import kernel_slots


@dataclasses.dataclass(frozen=True)
class ShiftedChunkedCausal(masks_lib.Mask):
    """Causal within chunks of ``size`` positions whose boundaries are moved by ``-shift``:
    ``(q + shift) // size == (k + shift) // size`` and ``k <= q``."""

    size: int
    shift: int

    def __post_init__(self):
        masks_lib._check_int("ShiftedChunkedCausal.size", self.size, 1)
        masks_lib._check_int("ShiftedChunkedCausal.shift", self.shift, 0)

    def _chunked(self):
        return masks_lib.ChunkedCausal(self.size)

    def visible(self, q, k):
        return self._chunked().visible(q + self.shift, k + self.shift)

    def box(self, q_lo, q_hi, k_lo, k_hi):
        return self._chunked().box(*(x + self.shift for x in (q_lo, q_hi, k_lo, k_hi)))

    def reach(self):
        return self._chunked().reach()


def head_masks(mask: masks_lib.Mask, group_size: int) -> tuple[masks_lib.Mask, masks_lib.Mask]:
    """The masks of the unshifted and the shifted half of the heads (each ``& mask``)."""
    return (
        mask & ShiftedChunkedCausal(group_size, 0),
        mask & ShiftedChunkedCausal(group_size, group_size // 2),
    )


def _check(q, k, group_size):
    n, kh = q.shape[2], k.shape[2]
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2:
        raise ValueError(f"s2_attn group_size = {group_size!r}: must be an integer >= 2")
    if n % 2:
        raise ValueError(f"s2_attn needs an even number of query heads; got N = {n}")
    if kh % 2 and kh != 1:
        raise ValueError(f"s2_attn needs an even number of kv heads or one; got K = {kh}")


def _describe(*, group_size, **options) -> dict:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2:
        raise core.OptionError("group_size", group_size, "must be >= 2")
    return kernel_slots.describe_tiles(**options)


@core.register(
    "s2_attn",
    core.Capabilities(
        custom_logits=True,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=True,
    ),
    config_keys={
        "group_size": "sparse_block",
        "kernel": "sparse_kernel",
        "block_q": "block_q",
        "block_kv": "block_kv",
    },
    describe=_describe,
)
def s2_attention(
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
    group_size: int,
    block_q: int = 128,
    block_kv: int = 128,
    kernel: str = "blockwise",
    interpret=None,
):
    """``attend(..., impl="s2_attn", group_size=, kernel=)``: tiled attention per half of the
    heads, ``blockwise`` or ``pallas`` (which takes ``interpret`` and cannot run a hook).

    A positional ``logits_fn`` hook is applied per half (it sees that half's heads).
    """
    _check(q, k, group_size)
    n, kh = q.shape[2], k.shape[2]
    outs, lses = [], []
    for half, half_mask in enumerate(head_masks(mask, group_size)):
        q_h = q[:, :, half * n // 2 : (half + 1) * n // 2]
        kv = (k, v) if kh == 1 else (x[:, :, half * kh // 2 : (half + 1) * kh // 2] for x in (k, v))
        common = dict(
            mask=half_mask, q_pos=q_pos, k_pos=k_pos, q_segment_ids=q_segment_ids,
            kv_segment_ids=kv_segment_ids, logits_fn=logits_fn, scale=scale, return_lse=True,
            block_q=block_q, block_kv=block_kv,
        )  # fmt: skip
        if kernel == "blockwise":
            out, lse = blockwise.blockwise_attention(q_h, *kv, **common)
        else:
            out, lse = pallas.pallas_attention(q_h, *kv, interpret=interpret, **common)
        outs.append(out)
        lses.append(lse)
    lse = jnp.concatenate(lses, 2) if return_lse else None
    return jnp.concatenate(outs, 2), lse
