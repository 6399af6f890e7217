"""NSA against a dense reference (every branch a masked softmax), its settings and selection."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm.attention.sparse import nsa

TINY = dict(cmp_block=4, cmp_stride=2, slc_block=4, slc_top_n=3, window=6, query_tile=16, chunk=4)


def _setup(b, t, n, kh, h=8, d=12, seed=0, **settings):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(ks[0], (b, t, n, h))
    k = jax.random.normal(ks[1], (b, t, kh, h))
    v = jax.random.normal(ks[2], (b, t, kh, h))
    x = jax.random.normal(ks[3], (b, t, d))
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    st = nsa.NSASettings(**{**TINY, **settings})
    params = nsa.NSA(st, n).init(ks[4], x, q, k, v, pos, pos)["params"]
    # Non-zero gate biases, so every branch matters with a different weight.
    params = dict(params, gate_b=jax.random.normal(ks[4], params["gate_b"].shape))
    return st, params, x, q, k, v, pos


@pytest.mark.parametrize(
    "b, t, n, kh, settings",
    [
        (2, 45, 4, 2, {}),  # GQA (selection shared by a group), batch 2, trailing partial block
        pytest.param(
            1, 24, 2, 1, dict(slc_top_n=8, local_blocks=1, init_blocks=0), marks=pytest.mark.slow
        ),  # top-n above the block count, no initial block
    ],
)
def test_matches_dense_reference(b, t, n, kh, settings, assert_close):
    st, params, x, q, k, v, pos = _setup(b, t, n, kh, **settings)
    kw = dict(settings=st, q_pos=pos, k_pos=pos)

    ct = jax.random.normal(jax.random.PRNGKey(9), q.shape)

    def out_and_grads(fn, *args):
        out, vjp = jax.vjp(lambda *a: fn(*a, **kw), *args)
        return out, vjp(ct)

    args = (params, x, q, k, v)
    # Each side as one program rather than op-by-op dispatch.
    got = jax.jit(functools.partial(out_and_grads, nsa.nsa_attention))(*args)
    want = jax.jit(functools.partial(out_and_grads, nsa.nsa_reference))(*args)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(g, w)


@pytest.mark.slow
def test_segments_match_reference(assert_close):
    st, params, x, q, k, v, pos = _setup(2, 20, 2, 2, seed=3)
    seg = jnp.array([[1] * 20, [1] * 11 + [2] * 6 + [0] * 3], jnp.int32)
    kw = dict(settings=st, q_pos=pos, k_pos=pos, q_segment_ids=seg, kv_segment_ids=seg)
    assert_close(
        nsa.nsa_attention(params, x, q, k, v, **kw), nsa.nsa_reference(params, x, q, k, v, **kw)
    )


def test_selection_forces_initial_and_local_blocks_and_is_shared_by_the_group():
    st = nsa.NSASettings(**{**TINY, "slc_top_n": 3})
    # All compression probability on compressed block 5 (tokens 10..13), which overlaps the
    # selection blocks 2 (tokens 8..11) and 3 (12..15) equally; 24 tokens = 6 selection blocks.
    p_cmp = jnp.zeros((1, 1, 4, 11)).at[:, :, :2, 5].set(1.0)  # heads 0, 1 (kv head 0) only
    ids, valid = nsa._select(p_cmp, 20, 1, st, ns=6, kh=2)  # query 20: own block 5
    got = np.asarray(ids[0, 0])
    np.testing.assert_array_equal(np.sort(got[0]), [0, 4, 5])  # initial + 2 local blocks
    np.testing.assert_array_equal(got[0], got[1])  # heads 0 and 1 share kv head 0
    wide = nsa.NSASettings(**{**TINY, "slc_top_n": 4})
    ids, valid = nsa._select(p_cmp, 20, 1, wide, ns=6, kh=2)
    got = np.asarray(ids[0, 0])
    np.testing.assert_array_equal(np.sort(got[0]), [0, 2, 4, 5])  # tie 2 vs 3: lower index
    np.testing.assert_array_equal(np.sort(got[2]), [0, 1, 4, 5])  # kv head 1: all scores 0
    assert valid.all()


def test_bad_settings():
    with pytest.raises(ValueError, match="multiples of cmp_stride"):
        nsa.NSASettings(cmp_block=30, cmp_stride=16)
    with pytest.raises(ValueError, match="nsa window = 0"):
        nsa.NSASettings(window=0)
