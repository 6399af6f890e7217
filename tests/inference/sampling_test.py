"""Sampling: nucleus sets worked out by hand, greedy limits, empirical frequencies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm.inference import sampling


def test_nucleus_mask_by_hand():
    probs = jnp.asarray([[0.15, 0.5, 0.05, 0.3]])
    # Sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 0), 0.05 (id 2); the crossing token is kept.
    cases = {0.5: [1], 0.51: [1, 3], 0.8: [1, 3], 0.81: [1, 3, 0], 1.0: [1, 3, 0, 2]}
    for top_p, ids in cases.items():
        mask = np.asarray(sampling.nucleus_mask(probs, top_p))[0]
        assert sorted(np.flatnonzero(mask).tolist()) == sorted(ids), top_p


def test_greedy_and_tiny_top_p_are_argmax():
    logits = jax.random.normal(jax.random.key(0), (5, 11))
    want = np.argmax(logits, axis=-1)
    key = jax.random.key(1)
    np.testing.assert_array_equal(sampling.sample(logits, key, temperature=0, top_p=1), want)
    tiny = sampling.sample(logits, key, temperature=1.0, top_p=1e-6)
    np.testing.assert_array_equal(tiny, want)


def test_top_p_sampling_frequencies():
    logits = jnp.log(jnp.asarray([[0.15, 0.5, 0.05, 0.3]]))
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.vmap(lambda k: sampling.sample(logits, k, temperature=1.0, top_p=0.8))(keys)
    counts = np.bincount(np.asarray(draws).ravel(), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0, 0.5 / 0.8, 0, 0.3 / 0.8], atol=0.03)
    # Temperature 2 flattens: p ∝ p0 ** 0.5 over all tokens.
    draws = jax.vmap(lambda k: sampling.sample(logits, k, temperature=2.0, top_p=1.0))(keys)
    counts = np.bincount(np.asarray(draws).ravel(), minlength=4) / 4000
    flat = np.sqrt([0.15, 0.5, 0.05, 0.3])
    np.testing.assert_allclose(counts, flat / flat.sum(), atol=0.03)


@pytest.mark.parametrize(
    "temperature, top_p, match",
    [(-0.5, 1.0, "temperature = -0.5"), (1.0, 0.0, "top_p = 0.0"), (1.0, 1.5, "top_p = 1.5")],
)
def test_bad_sampling_arguments(temperature, top_p, match):
    with pytest.raises(ValueError, match=match):
        sampling.check(temperature, top_p)
