"""Decoding and chunked prefill (``T != S``): a few queries against a longer key row (a KV
cache laid out by position, unwritten slots with segment id 0) must equal the matching rows of
self-attention over the whole sequence, outputs and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm.attention.sparse import moba

T, CACHE = 45, 48  # sequence length written so far, cache length (3 unwritten slots)


def _cache(k, v, pos):
    """The sequence's keys in a cache of CACHE slots: positions arange, segment 0 past T."""
    pad = [(0, 0), (0, CACHE - T), (0, 0), (0, 0)]
    k_pos = jnp.broadcast_to(jnp.arange(CACHE, dtype=jnp.int32), (pos.shape[0], CACHE))
    kv_seg = (k_pos < T).astype(jnp.int32)
    return jnp.pad(k, pad), jnp.pad(v, pad), k_pos, kv_seg


def _assert_rows_match(decode, full, rows, q, k, v, assert_grads_match):
    """``decode(q[:, rows], k, v)`` vs ``full(q, k, v)[:, rows]``, gradients w.r.t. the query
    rows, k and v (other query rows do not affect these outputs)."""
    assert_grads_match(
        lambda qd, k, v: decode(qd, k, v),
        lambda qd, k, v: full(q.at[:, rows].set(qd), k, v)[:, rows],
        q[:, rows],
        k,
        v,
    )


@pytest.mark.parametrize(
    "rows",
    [slice(37, 45), pytest.param(slice(20, 21), marks=pytest.mark.slow)],
    ids=["prefill_chunk", "token"],
)
def test_moba_decode_equals_full_rows(rows, inputs, assert_grads_match):
    q, k, v, pos = inputs(2, T, 4, 2, 8, seed=5)
    kw = dict(block_size=8, top_k=3)

    def decode(qd, k, v):
        kc, vc, k_pos, kv_seg = _cache(k, v, pos)
        q_seg = jnp.ones(qd.shape[:2], jnp.int32)
        return moba.moba_attention(
            qd, kc, vc, q_pos=pos[:, rows], k_pos=k_pos, q_segment_ids=q_seg,
            kv_segment_ids=kv_seg, query_tile=4, chunk=4, **kw,
        )  # fmt: skip

    def full(q, k, v):
        return moba.moba_reference(q, k, v, q_pos=pos, k_pos=pos, **kw)

    _assert_rows_match(decode, full, rows, q, k, v, assert_grads_match)


def test_moba_reference_decode_equals_full_rows(inputs, assert_close):
    """The reference's own ``T != S`` rule (query index = position) against itself on T == S."""
    q, k, v, pos = inputs(1, T, 2, 1, 8, seed=6)
    kc, vc, k_pos, kv_seg = _cache(k, v, pos)
    ref = jax.jit(functools.partial(moba.moba_reference, block_size=8, top_k=2))
    got = ref(
        q[:, 30:40], kc, vc, q_pos=pos[:, 30:40], k_pos=k_pos,
        q_segment_ids=jnp.ones((1, 10), jnp.int32), kv_segment_ids=kv_seg,
    )  # fmt: skip
    want = ref(q, k, v, q_pos=pos, k_pos=pos)[:, 30:40]
    assert_close(got, want)


def test_moba_selection_of_decode_queries_uses_their_positions(inputs):
    q, k, _, pos = inputs(1, T, 2, 1, 8, seed=7)
    ids, valid = moba.moba_selection(q, k, block_size=8, top_k=3)
    ids_d, valid_d = moba.moba_selection(q[:, 40:], k, block_size=8, top_k=3, q_pos=pos[:, 40:])
    np.testing.assert_array_equal(np.where(valid_d, ids_d, -1), np.where(valid, ids, -1)[:, 40:])
    assert (np.asarray(ids_d[..., 0]) == 5).all()  # own block of positions 40..44


@pytest.mark.parametrize(
    "rows",
    [slice(37, 45), pytest.param(slice(44, 45), marks=pytest.mark.slow)],
    ids=["prefill_chunk", "token"],
)
def test_sink_window_decode_equals_full_rows(rows, inputs, assert_grads_match):
    q, k, v, pos = inputs(2, T, 4, 2, 8, seed=8)
    kw = dict(mask=attention.Causal(), impl="sink_window", sink=2, window=6, block_q=4)

    def decode(qd, k, v):
        kc, vc, k_pos, kv_seg = _cache(k, v, pos)
        q_seg = jnp.ones(qd.shape[:2], jnp.int32)
        return attention.attend(
            qd, kc, vc, q_pos=pos[:, rows], k_pos=k_pos, q_segment_ids=q_seg,
            kv_segment_ids=kv_seg, block_kv=8, **kw,
        )  # fmt: skip

    def full(q, k, v):
        return attention.attend(q, k, v, q_pos=pos, k_pos=pos, block_kv=4, **kw)

    _assert_rows_match(decode, full, rows, q, k, v, assert_grads_match)
