"""Sparse attention selected from config as the model's attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import config as config_lib
from lcm import model as model_lib


def _logits(impl, t=32, **attention):
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.model.attention.impl = impl
    for key, value in attention.items():
        config.model.attention[key] = value
    config_lib.validate(config)
    model = model_lib.Transformer(model_lib.build_spec(config))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, t)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
    params = nn.unbox(model.init(jax.random.key(0), tokens, positions)["params"])
    return model.apply({"params": params}, tokens, positions)


@pytest.mark.parametrize(
    "impl, attention",
    [
        ("moba", dict(sparse_block=8, sparse_top_k=4)),  # every earlier block: dense causal
        ("sink_window", dict(sink=2, recent=32)),  # the window covers the sequence
    ],
)
def test_config_selects_sparse_impl_equal_to_causal_when_it_covers_everything(impl, attention):
    np.testing.assert_allclose(
        _logits(impl, **attention), _logits("blockwise"), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "impl, attention",
    [
        ("moba", dict(sparse_block=8, sparse_top_k=2)),
        ("hsa", dict(sparse_block=8, sparse_top_k=2, hsa_weighting="stick_breaking")),
        ("s2_attn", dict(sparse_block=8)),
        ("sink_window", dict(sink=2, recent=8)),
    ],
)
def test_sparse_impls_run_in_the_model_and_differ_from_causal(impl, attention):
    logits = _logits(impl, **attention)
    assert logits.shape == (2, 32, 256) and np.isfinite(logits).all()
    assert not np.allclose(logits, _logits("blockwise"), atol=1e-3)
