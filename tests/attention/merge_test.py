"""``merge_attention`` against attention over the union of disjoint key sets (the oracle).

Keys are split into parts that are not contiguous (every third key, say); positions travel with
them, so each part is exact ``reference`` attention over its keys and the merge must equal
``reference`` over all keys, in outputs, log-sum-exps and gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm.attention import masks

B, T, S, N, K, H = 2, 9, 12, 4, 2, 8


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((B, S, K, H)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((B, S, K, H)), jnp.float32)
    q_pos = jnp.tile(jnp.arange(T, dtype=jnp.int32) + S - T, (B, 1))
    k_pos = jnp.tile(jnp.arange(S, dtype=jnp.int32), (B, 1))
    return q, k, v, q_pos, k_pos


def _attend(q, k, v, q_pos, k_pos, mask):
    return attention.attend(
        q, k, v, mask=mask, impl="reference", q_pos=q_pos, k_pos=k_pos, return_lse=True
    )


def _merged(q, k, v, q_pos, k_pos, mask, parts):
    outs, lses = zip(
        *(_attend(q, k[:, p], v[:, p], q_pos, k_pos[:, p], mask) for p in parts), strict=True
    )
    return attention.merge_attention(outs, lses)


PARTS = {
    "halves": [np.arange(0, 6), np.arange(6, 12)],
    "strided_three": [np.arange(0, 12, 3), np.arange(1, 12, 3), np.arange(2, 12, 3)],
    "single": [np.arange(12)],
}


@pytest.mark.parametrize("parts", PARTS.values(), ids=PARTS.keys())
@pytest.mark.parametrize("mask", [masks.Causal(), masks.SlidingWindow(2)], ids=["causal", "window"])
def test_merge_equals_attention_over_the_union(parts, mask):
    q, k, v, q_pos, k_pos = _inputs()
    ct = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, N, H)), jnp.float32)
    ct_lse = jnp.asarray(np.random.default_rng(2).standard_normal((B, T, N)), jnp.float32)

    def full(q, k, v):
        return _attend(q, k, v, q_pos, k_pos, mask)

    def merged(q, k, v):
        return _merged(q, k, v, q_pos, k_pos, mask, parts)

    @jax.jit
    def run(q, k, v):
        (want, want_lse), want_vjp = jax.vjp(full, q, k, v)
        (got, got_lse), got_vjp = jax.vjp(merged, q, k, v)
        return want, want_lse, want_vjp((ct, ct_lse)), got, got_lse, got_vjp((ct, ct_lse))

    want, want_lse, want_grads, got, got_lse, got_grads = run(q, k, v)
    # With a window of 2 some parts see nothing for some rows (lse = -inf): still exact.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_lse, want_lse, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_rows_no_part_sees_are_zero_without_nan():
    out = jnp.ones((1, 2, 1, 3))
    lse = jnp.array([[[-jnp.inf], [0.5]]])
    (merged, merged_lse), pullback = jax.vjp(
        lambda o, l: attention.merge_attention([o, o], [l, l]), out, lse
    )
    np.testing.assert_array_equal(merged[0, 0], 0.0)
    np.testing.assert_allclose(merged[0, 1], 1.0)
    assert np.isneginf(merged_lse[0, 0, 0])
    np.testing.assert_allclose(merged_lse[0, 1, 0], 0.5 + np.log(2.0))
    grads = pullback((jnp.ones_like(merged), jnp.ones_like(merged_lse)))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_mismatched_parts_raise():
    with pytest.raises(ValueError, match="need matching non-empty outs and lses; got 1 and 0"):
        attention.merge_attention([jnp.zeros((1, 1, 1, 1))], [])
