"""Attention sinks + sliding window (StreamingLLM, Xiao et al. 2023, arXiv 2309.17453).

Every query sees the first ``sink`` positions and the last ``window`` positions up to itself:
``mask & (SlidingWindow(window - 1) | Sink(sink))``, with ``mask = Causal()`` the StreamingLLM
training mask (``mit-han-lab/streaming-llm`` keeps ``start_size = 4`` and ``recent_size``
tokens). The mask is static and lowered to tile visit lists by ``blockwise`` (``kernel=
"blockwise"``) or to the block-sparse Pallas kernel's block lists by ``pallas`` (``kernel=
"pallas"``), so tiles outside the sinks and the window are never computed. Masks read positions,
so decoding and chunked prefill (``T != S``) need nothing special.
"""

from __future__ import annotations

from lcm.attention import blockwise, core, pallas
from lcm.attention import masks as masks_lib
from lcm.attention.sparse import kernel_slots


def sink_window_mask(mask: masks_lib.Mask, *, sink: int, window: int) -> masks_lib.Mask:
    """``mask & (SlidingWindow(window - 1) | Sink(sink))``: ``window`` keys including the query."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"sink_window window = {window!r}: must be a positive integer")
    if not isinstance(sink, int) or isinstance(sink, bool) or sink < 0:
        raise ValueError(f"sink_window sink = {sink!r}: must be an integer >= 0")
    return mask & (masks_lib.SlidingWindow(window - 1) | masks_lib.Sink(sink))


@core.register(
    "sink_window",
    core.Capabilities(
        custom_logits=True,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=True,
    ),
    config_keys={
        "sink": "sink",
        "window": "recent",
        "kernel": "sparse_kernel",
        "block_q": "block_q",
        "block_kv": "block_kv",
    },
    describe=kernel_slots.describe_tiles,
)
def sink_window_attention(
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
    sink: int = 4,
    window: int = 2048,
    kernel: str = "blockwise",
    block_q: int = 128,
    block_kv: int = 128,
    interpret=None,
):
    """``attend(..., impl="sink_window", sink=, window=, kernel=)``: ``blockwise`` or ``pallas``
    (which takes ``interpret`` too and cannot run a ``logits_fn`` hook) with the combined mask."""
    mask = sink_window_mask(mask, sink=sink, window=window)
    common = dict(
        mask=mask, q_pos=q_pos, k_pos=k_pos, q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids, logits_fn=logits_fn, scale=scale, return_lse=return_lse,
        block_q=block_q, block_kv=block_kv,
    )  # fmt: skip
    if kernel == "blockwise":
        return blockwise.blockwise_attention(q, k, v, **common)
    return pallas.pallas_attention(q, k, v, interpret=interpret, **common)
