"""Eviction policies on hand-made caches and attention patterns, and their argument checks.

Oracles: the tokens each paper's rule keeps, worked out by hand for the pattern; CAOTE's error
``α/(1−α)·‖X − v‖`` computed in numpy.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from lcm.inference import policies

C, K, H = 12, 2, 4


def _layer(held=10, score=None, v=None):
    """A cache of capacity C with ``held`` tokens at positions 0..held-1."""
    seg = np.zeros((1, C), np.int32)
    seg[0, :held] = 1
    pos = np.where(seg, np.arange(C), 0).astype(np.int32)
    rng = np.random.default_rng(1)
    layer = {
        "k": jnp.asarray(rng.normal(size=(1, C, K, H)), jnp.float32),
        "v": jnp.asarray(rng.normal(size=(1, C, K, H)) if v is None else v, jnp.float32),
        "pos": jnp.asarray(pos),
        "seg": jnp.asarray(seg),
        "length": jnp.asarray(held, jnp.int32),
        "score": jnp.zeros((1, K, C)) if score is None else jnp.asarray(score, jnp.float32),
    }
    return layer


def _weights(rows):
    """Attention ``[1, N=4, T, C]``: query row t puts all its weight on key ``rows[t]``."""
    w = np.zeros((1, 4, len(rows), C), np.float32)
    for t, j in enumerate(rows):
        w[0, :, t, j] = 1.0
    return jnp.asarray(w)


def _kept(layer, budget):
    n = int(layer["length"])
    assert n == min(budget, n) and int(np.sum(layer["seg"])) == n
    return sorted(np.asarray(layer["pos"][0, :n]).tolist())


def _queries(t, newest):
    q_pos = jnp.asarray([np.arange(newest - t + 1, newest + 1)], jnp.int32)
    return q_pos, jnp.ones_like(q_pos)


def test_streaming_llm_keeps_sinks_and_recent():
    out = policies.evict(_layer(), policies.StreamingLLM(sink=2), budget=6)
    assert _kept(out, 6) == [0, 1, 6, 7, 8, 9]
    assert out["k"].shape == (1, C, K, H)  # capacity unchanged, slots 6.. empty
    np.testing.assert_array_equal(out["seg"][0, 6:], 0)


def test_h2o_accumulates_attention_and_keeps_heavy_hitters():
    policy = policies.H2O(recent=2)
    layer = _layer()
    q_pos, q_seg = _queries(3, 9)
    # Two steps; each hit counts once per query head of the kv head (G = 2).
    layer = policy.observe(layer, _weights([3, 3, 1]), None, q_pos, q_seg)
    layer = policy.observe(layer, _weights([5, 5, 3]), None, q_pos, q_seg)
    np.testing.assert_allclose(layer["score"][0, 0, [1, 3, 5]], [1 * 2, 3 * 2, 2 * 2])
    out = policies.evict(layer, policy, budget=4)
    assert _kept(out, 4) == [3, 5, 8, 9]
    np.testing.assert_allclose(out["score"][0, 0, :2], [6, 4])  # scores travel with tokens
    # Three more hits on key 1 overtake key 5.
    layer = policy.observe(layer, _weights([1, 1, 1]), None, q_pos, q_seg)
    assert _kept(policies.evict(layer, policy, budget=4), 4) == [1, 3, 8, 9]


def test_snapkv_votes_of_the_window_pooled():
    layer = _layer()
    q_pos, q_seg = _queries(4, 9)
    # Rows 0-1 (outside a window of 2) look at key 1; the window's rows look at key 4.
    weights = _weights([1, 1, 4, 4])
    plain = policies.SnapKV(window=2, kernel=1)
    out = policies.evict(plain.observe(layer, weights, None, q_pos, q_seg), plain, budget=3)
    assert _kept(out, 3) == [4, 8, 9]
    pooled = policies.SnapKV(window=2, kernel=3)  # votes spread to keys 3 and 5
    observed = pooled.observe(layer, weights, None, q_pos, q_seg)
    np.testing.assert_allclose(observed["score"][0, 0, 2:7], [0, 4, 4, 4, 0])
    assert _kept(policies.evict(observed, pooled, budget=5), 5) == [3, 4, 5, 8, 9]


def test_snapkv_ignores_padding_queries():
    layer = _layer()
    q_pos = jnp.asarray([[8, 9, 0, 0]], jnp.int32)
    q_seg = jnp.asarray([[1, 1, 0, 0]], jnp.int32)
    policy = policies.SnapKV(window=2, kernel=1)
    observed = policy.observe(layer, _weights([2, 6, 0, 0]), None, q_pos, q_seg)
    assert _kept(policies.evict(observed, policy, budget=4), 4) == [2, 6, 8, 9]


def test_caote_evicts_the_smallest_output_error():
    """Token 0 has the top H2O score but its value equals the output: CAOTE evicts it."""
    score = np.zeros((1, K, C), np.float32)
    score[0, :, :6] = [2.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    alpha = score[0, 0, :6] / score[0, 0, :6].sum()
    rng = np.random.default_rng(3)
    v = np.zeros((1, C, K, H), np.float32)
    v[0, 1:6] = rng.normal(size=(5, K, H)) * np.array([1, 2, 3, 4, 5])[:, None, None]
    # v_0 = X = Σ_j α_j v_j has the solution v_0 = Σ_{j>0} α_j v_j / (1 − α_0).
    v[0, 0] = np.einsum("j,jkh->kh", alpha[1:], v[0, 1:6]) / (1 - alpha[0])
    layer = _layer(held=6, score=score, v=v)
    x = np.einsum("j,jkh->kh", alpha, v[0, :6])
    error = alpha[:, None] / (1 - alpha[:, None]) * np.linalg.norm(x[None] - v[0, :6], axis=-1)
    np.testing.assert_allclose(policies.output_error(layer)[0, :6], error.sum(1), atol=1e-5)
    assert error[0].sum() < 1e-5
    policy = policies.CAOTE(policies.H2O(recent=1))
    out = policies.evict(layer, policy, budget=3)
    best = np.argsort(-error[1:5].sum(1))[:2] + 1  # token 5 is the recent one (forced)
    assert _kept(out, 3) == sorted([*best.tolist(), 5])
    assert _kept(policies.evict(layer, policy.base, budget=3), 3) == [0, 1, 5]  # H2O alone


@pytest.mark.parametrize(
    "name, budget, options, match",
    [
        ("lru", 8, {}, "cache_policy = 'lru'; allowed: caote, h2o, snapkv, streaming_llm"),
        ("h2o", 0, {}, "budget = 0: must be an integer >= 1"),
        ("h2o", 8, {"recent": 9}, r"budget = 8: h2o needs budget >= recent = 9"),
        ("streaming_llm", 4, {"sink": 4}, r"budget >= sink \+ 1 = 5"),
        ("snapkv", 4, {"window": 8}, r"budget >= window = 8"),
        ("snapkv", 64, {"kernel": 4}, "snapkv kernel = 4: must be an odd integer"),
        ("caote", 8, {"caote_base": "streaming_llm"}, "caote_base = 'streaming_llm'; allowed"),
    ],
)
def test_bad_arguments_raise(name, budget, options, match):
    with pytest.raises(ValueError, match=match):
        policies.make_policy(name, budget=budget, **options)
