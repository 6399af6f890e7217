"""MoBA against its dense transcription of ``moba_attn_varlen_naive`` and hand-made selections."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm.attention import masks
from lcm.attention.sparse import moba


@pytest.mark.parametrize(
    "b, t, n, kh, block, top_k, tile",
    [
        (2, 45, 4, 2, 8, 3, 16),  # GQA, batch 2, trailing partial block, several tiles
        pytest.param(1, 20, 2, 2, 5, 2, 8, marks=pytest.mark.slow),  # MHA, T % block == 0
        pytest.param(1, 17, 4, 1, 4, 8, 32, marks=pytest.mark.slow),  # MQA, top_k > blocks
        pytest.param(2, 12, 2, 1, 3, 1, 5, marks=pytest.mark.slow),  # top_k 1: own block
    ],
)
def test_matches_naive_reference(b, t, n, kh, block, top_k, tile, inputs, assert_grads_match):
    q, k, v, pos = inputs(b, t, n, kh, 8)
    kw = dict(block_size=block, top_k=top_k, q_pos=pos, k_pos=pos)
    assert_grads_match(
        lambda q, k, v: moba.moba_attention(q, k, v, query_tile=tile, chunk=4, **kw),
        lambda q, k, v: moba.moba_reference(q, k, v, **kw),
        q,
        k,
        v,
    )


def test_segments_and_padding_match_reference(inputs, assert_grads_match):
    q, k, v, pos = inputs(2, 19, 4, 2, 8, seed=3)
    seg = jnp.array([[1] * 19, [1] * 9 + [2] * 7 + [0] * 3], jnp.int32)
    restart = jnp.where(jnp.arange(19) < 9, jnp.arange(19), jnp.arange(19) - 9)
    pos = jnp.stack([jnp.arange(19), restart]).astype(jnp.int32)
    kw = dict(block_size=4, top_k=3, q_pos=pos, k_pos=pos, q_segment_ids=seg, kv_segment_ids=seg)
    assert_grads_match(
        lambda q, k, v: moba.moba_attention(q, k, v, query_tile=8, chunk=4, **kw),
        lambda q, k, v: moba.moba_reference(q, k, v, **kw),
        q,
        k,
        v,
    )


def _hand_case(means, t):
    """q = e0 everywhere; key block j (2 tokens) has first coordinate mean ``means[j]``."""
    q = jnp.zeros((1, t, 1, 2)).at[..., 0].set(1.0)
    first = jnp.repeat(jnp.asarray(means, jnp.float32), 2)[:t]
    k = jnp.stack([first, jnp.arange(t) * 0.1], -1)[None, :, None, :]
    return q, k


def test_hand_computed_selection():
    q, k = _hand_case([3.0, 1.0, 2.0, 0.0], 8)
    ids, valid = moba.moba_selection(q, k, block_size=2, top_k=2)
    ids, valid = np.asarray(ids[0, :, 0]), np.asarray(valid[0, :, 0])
    # Own block first, then the best earlier block; block 0 has no earlier block.
    np.testing.assert_array_equal(ids[:, 0], [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(valid[:, 1], [0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(ids[2:, 1], [0, 0, 0, 0, 0, 0])
    ids3, _ = moba.moba_selection(q, k, block_size=2, top_k=3)
    np.testing.assert_array_equal(ids3[0, 6:, 0, 1:], [[0, 2], [0, 2]])  # 3 > 2 > 1


def test_ties_go_to_the_lower_block():
    q, k = _hand_case([1.0, 1.0, 1.0, 5.0], 8)
    ids, _ = moba.moba_selection(q, k, block_size=2, top_k=2)
    np.testing.assert_array_equal(ids[0, 4:, 0, 1], [0, 0, 0, 0])
    ids3, _ = moba.moba_selection(q, k, block_size=2, top_k=3)
    np.testing.assert_array_equal(ids3[0, 6:, 0, 1:], [[0, 1], [0, 1]])


@dataclasses.dataclass(frozen=True)
class _Listed(masks.Mask):
    """Query position ``i`` sees exactly the key positions ``keys[i]`` (reference's dense path)."""

    keys: tuple[tuple[int, ...], ...]

    def visible(self, q, k):
        table = np.zeros((len(self.keys), len(self.keys)), bool)
        for i, ks in enumerate(self.keys):
            table[i, list(ks)] = True
        return jnp.asarray(table)[q, k]


def test_hand_computed_output_and_trailing_partial_block(assert_close):
    # T = 7: block 3 holds only token 6; its mean (over that one token) is huge but it is later
    # than every other query, so only token 6 (its own block) ever reads it.
    q, k = _hand_case([3.0, 1.0, 2.0, 100.0], 7)
    v = jax.random.normal(jax.random.PRNGKey(1), (1, 7, 1, 2))
    pos = jnp.arange(7)[None]
    fn = jax.jit(lambda q, k, v: moba.moba_attention(q, k, v, block_size=2, top_k=2, q_pos=pos,
                                                     k_pos=pos))  # fmt: skip
    out = fn(q, k, v)
    keys = ((0,), (0, 1), (0, 1, 2), (0, 1, 2, 3), (0, 1, 4), (0, 1, 4, 5), (0, 1, 6))
    want = attention.attend(q, k, v, mask=_Listed(keys), impl="reference", q_pos=pos, k_pos=pos)
    assert_close(out, want)


def test_selection_is_deterministic(inputs):
    q, k, v, pos = inputs(2, 40, 4, 2, 8, seed=5)
    fn = jax.jit(lambda q, k, v: moba.moba_attention(q, k, v, block_size=4, top_k=3, q_pos=pos,
                                                     k_pos=pos, query_tile=8))  # fmt: skip
    np.testing.assert_array_equal(fn(q, k, v), fn(q, k, v))
    sel = jax.jit(lambda q, k: moba.moba_selection(q, k, block_size=4, top_k=3))
    for a, b in zip(sel(q, k), sel(q, k), strict=True):
        np.testing.assert_array_equal(a, b)


def test_front_door(inputs, assert_close):
    q, k, v, pos = inputs(1, 16, 2, 1, 8)
    got = attention.attend(
        q, k, v, mask=attention.Causal(), impl="moba", q_pos=pos, k_pos=pos, block_size=4, top_k=2
    )
    want = moba.moba_reference(q, k, v, block_size=4, top_k=2, q_pos=pos, k_pos=pos)
    assert_close(got, want)
    # numpy positions closed over by a jitted call (as in a notebook) work like jax arrays
    np_pos = np.asarray(pos)

    @jax.jit
    def jitted(q, k, v):
        kw = dict(mask=attention.Causal(), impl="moba", block_size=4, top_k=2)
        return attention.attend(q, k, v, q_pos=np_pos, k_pos=np_pos, **kw)

    assert_close(jitted(q, k, v), want)
    with pytest.raises(ValueError, match=r"moba. cannot serve .* lacks any_mask"):
        attention.attend(q, k, v, mask=attention.Full(), impl="moba", q_pos=pos, k_pos=pos)
    with pytest.raises(ValueError, match="moba top_k = 0"):
        attention.attend(
            q, k, v, mask=attention.Causal(), impl="moba", q_pos=pos, k_pos=pos, top_k=0
        )
