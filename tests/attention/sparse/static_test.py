"""LongLoRA S²-Attn's group masks against the paper's rule, argument checks, and the tiles sink +
window skips. Both methods are compared with ``reference`` on these masks in
tests/attention/conformance_test.py."""

import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm.attention import masks, tiles
from lcm.attention.sparse import shifted


def _s2_visible(t, n, group):
    """LongLoRA ``forward_flashattn``: heads [0, N/2) in groups [iG, (i+1)G); heads [N/2, N) in
    groups cut at G/2 + iG (half-size first and last groups, no wrap-around); causal."""
    i = np.arange(t)
    plain = (i[:, None] // group == i[None, :] // group) & (i[None, :] <= i[:, None])
    cuts = np.searchsorted(np.arange(group // 2, t, group), i, side="right")
    shifted_ = (cuts[:, None] == cuts[None, :]) & (i[None, :] <= i[:, None])
    return np.stack([plain] * (n // 2) + [shifted_] * (n // 2))[None]


@pytest.mark.parametrize("t, group", [(16, 8), (20, 8), (22, 8), (16, 4)])
def test_s2_attn_head_masks_are_longloras_groups(t, group):
    """The masks the conformance test's s2_attn entry uses, and those ``s2_attn`` runs."""
    pos = np.arange(t)
    want = _s2_visible(t, 2, group)[0]
    ours = (masks.ChunkedCausal(group), shifted.ShiftedChunkedCausal(group, group // 2))
    for half in range(2):
        np.testing.assert_array_equal(ours[half].dense(pos, pos), want[half])
        used = shifted.head_masks(attention.Causal(), group)[half]
        np.testing.assert_array_equal(used.dense(pos, pos), want[half])


def test_s2_attn_does_not_wrap_around():
    visible = _s2_visible(16, 2, 8)[0, 1]
    assert not visible[15, :4].any()  # the roll form would join tokens 12..15 with 0..3


def test_s2_attn_rejects_odd_kv_heads(inputs):
    q, k, v, pos = inputs(1, 8, 6, 3, 4)
    with pytest.raises(ValueError, match="K = 3"):
        attention.attend(
            q, k, v, mask=attention.Causal(), impl="s2_attn", q_pos=pos, k_pos=pos, group_size=4
        )


@pytest.mark.parametrize("sink, window", [(2, 6), (4, 3), (0, 1)])
def test_sink_window_mask_is_streaming_llms_rule(sink, window):
    """The mask the conformance test's sink_window entry spells out: the first ``sink`` keys
    and the last ``window`` keys up to the query (itself included)."""
    i = np.arange(29)
    rule = ((i[None, :] < sink) | (i[:, None] - i[None, :] < window)) & (i[None, :] <= i[:, None])
    ours = (masks.SlidingWindow(window - 1) | masks.Sink(sink)) & masks.Causal()
    np.testing.assert_array_equal(ours.dense(i, i), rule)


def test_sink_window_skips_tiles():
    from lcm.attention.sparse import streaming

    pos = jnp.arange(64)[None]
    seg = jnp.ones_like(pos)
    ranges = tiles.block_ranges(pos, seg, 4)
    mask = streaming.sink_window_mask(attention.Causal(), sink=4, window=8)
    visits = tiles.visit_lists(tiles.classify_tiles(mask, ranges, ranges))
    counts = np.asarray(visits.full_count + visits.partial_count)
    assert counts.max() == 4  # sink block + at most 3 window blocks, instead of up to 16
