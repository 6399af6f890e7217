"""LongLoRA S²-Attn and sink + window against dense masks written from the papers' rules."""

import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm.attention import tiles
from lcm.attention.sparse import shifted

BLOCKS = {"block_q": 4, "block_kv": 4}


def _s2_visible(t, n, group):
    """LongLoRA ``forward_flashattn``: heads [0, N/2) in groups [iG, (i+1)G); heads [N/2, N) in
    groups cut at G/2 + iG (half-size first and last groups, no wrap-around); causal."""
    i = np.arange(t)
    plain = (i[:, None] // group == i[None, :] // group) & (i[None, :] <= i[:, None])
    cuts = np.searchsorted(np.arange(group // 2, t, group), i, side="right")
    shifted_ = (cuts[:, None] == cuts[None, :]) & (i[None, :] <= i[:, None])
    return np.stack([plain] * (n // 2) + [shifted_] * (n // 2))[None]


@pytest.mark.parametrize(
    "b, t, n, kh, group", [(2, 22, 4, 2, 8), pytest.param(1, 16, 4, 1, 4, marks=pytest.mark.slow)]
)
def test_s2_attn_matches_dense(b, t, n, kh, group, inputs, dense, assert_grads_match):
    q, k, v, pos = inputs(b, t, n, kh, 8)
    visible = jnp.asarray(np.broadcast_to(_s2_visible(t, n, group), (b, n, t, t)))
    assert_grads_match(
        lambda q, k, v: attention.attend(
            q,
            k,
            v,
            mask=attention.Causal(),
            impl="s2_attn",
            q_pos=pos,
            k_pos=pos,
            group_size=group,
            **BLOCKS,
        ),
        lambda q, k, v: dense(q, k, v, visible),
        q,
        k,
        v,
    )


def test_s2_attn_does_not_wrap_around():
    visible = _s2_visible(16, 2, 8)[0, 1]
    assert not visible[15, :4].any()  # the roll form would join tokens 12..15 with 0..3
    mask = shifted.ShiftedChunkedCausal(8, 4)
    np.testing.assert_array_equal(mask.dense(np.arange(16), np.arange(16)), visible)


def test_s2_attn_rejects_odd_kv_heads(inputs):
    q, k, v, pos = inputs(1, 8, 6, 3, 4)
    with pytest.raises(ValueError, match="K = 3"):
        attention.attend(
            q, k, v, mask=attention.Causal(), impl="s2_attn", q_pos=pos, k_pos=pos, group_size=4
        )


@pytest.mark.parametrize(
    "b, t, n, kh, sink, window",
    [(2, 29, 4, 2, 2, 6), pytest.param(1, 16, 2, 1, 4, 3, marks=pytest.mark.slow)],
)
def test_sink_window_matches_dense(b, t, n, kh, sink, window, inputs, dense, assert_grads_match):
    q, k, v, pos = inputs(b, t, n, kh, 8)
    i = np.arange(t)
    rule = ((i[None, :] < sink) | (i[:, None] - i[None, :] < window)) & (i[None, :] <= i[:, None])
    visible = jnp.asarray(np.broadcast_to(rule, (b, n, t, t)))
    assert_grads_match(
        lambda q, k, v: attention.attend(
            q,
            k,
            v,
            mask=attention.Causal(),
            impl="sink_window",
            q_pos=pos,
            k_pos=pos,
            sink=sink,
            window=window,
            **BLOCKS,
        ),
        lambda q, k, v: dense(q, k, v, visible),
        q,
        k,
        v,
    )


def test_sink_window_skips_tiles():
    from lcm.attention.sparse import streaming

    pos = jnp.arange(64)[None]
    seg = jnp.ones_like(pos)
    ranges = tiles.block_ranges(pos, seg, 4)
    mask = streaming.sink_window_mask(attention.Causal(), sink=4, window=8)
    visits = tiles.visit_lists(tiles.classify_tiles(mask, ranges, ranges))
    counts = np.asarray(visits.full_count + visits.partial_count)
    assert counts.max() == 4  # sink block + at most 3 window blocks, instead of up to 16
