"""Cache helpers: attention weights (policy statistics) against ``attend``'s reference output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention, positional
from lcm.inference import cache as cache_lib
from lcm.inference import decoding
from lcm.model import kv_cache
from tests.inference.conftest import init_params, make_config


@pytest.mark.parametrize("hook", [None, "alibi"])
def test_weights_times_values_equal_reference_attention(hook):
    b, t, s, n, kh, h = 2, 3, 9, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, n, h))
    k = jax.random.normal(keys[1], (b, s, kh, h))
    v = jax.random.normal(keys[2], (b, s, kh, h))
    q_pos = jnp.asarray([[6, 7, 0]] * b, jnp.int32)  # the last query is padding
    q_seg = jnp.asarray([[1, 1, 0]] * b, jnp.int32)
    k_pos = jnp.asarray([[*range(8), 0]] * b, jnp.int32)  # the last slot is empty
    k_seg = jnp.asarray([[1] * 8 + [0]] * b, jnp.int32)
    logits_fn = None
    if hook:
        config = make_config(model__positional__name=hook)
        logits_fn = positional.build(config.model.positional, num_heads=n, head_dim=h).logits_fn
    mask = attention.SlidingWindow(4)
    kwargs = dict(q_pos=q_pos, k_pos=k_pos, logits_fn=logits_fn)
    want = attention.attend(q, k, v, mask=mask, impl="reference", q_segment_ids=q_seg,
                            kv_segment_ids=k_seg, **kwargs)  # fmt: skip
    w = kv_cache.attention_weights(q, k, mask=mask, q_seg=q_seg, kv_seg=k_seg, scale=h**-0.5,
                                   **kwargs)  # fmt: skip
    got = jnp.einsum("bkgts,bskh->btkgh", w.reshape(b, kh, n // kh, t, s), v).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.sum(-1)[:, :, :2], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(w[:, :, 2], 0.0)  # padding query
    np.testing.assert_array_equal(w[..., 8], 0.0)  # empty slot


def test_init_cache_mirrors_attention_modules():
    config = make_config(model__num_layers=3)
    params = decoding.unscan_params(init_params(config))
    spec = decoding.decode_spec(config)
    cache = cache_lib.init_cache(params, spec, batch=3, capacity=10, score=True)
    paths = [path for path, _ in cache_lib.layers(cache)]
    assert paths == [(f"layers_{r}", "block0", "attn") for r in range(3)]
    _, layer = next(cache_lib.layers(cache))
    assert layer["k"].shape == (3, 10, 2, 16) and layer["score"].shape == (3, 2, 10)
    per_layer = 2 * 3 * 10 * 2 * 16 * 4 + 2 * 3 * 10 * 4 + 4 + 3 * 2 * 10 * 4
    assert cache_lib.num_bytes(cache) == 3 * per_layer
