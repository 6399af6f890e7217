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
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens, positions)["params"])
    return jax.jit(model.apply)({"params": params}, tokens, positions)


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
        pytest.param(
            "hsa",
            dict(sparse_block=8, sparse_top_k=2, hsa_weighting="stick_breaking"),
            marks=pytest.mark.slow,
        ),
        ("s2_attn", dict(sparse_block=8)),
        pytest.param("sink_window", dict(sink=2, recent=8), marks=pytest.mark.slow),
        pytest.param(
            "nsa",
            dict(nsa_cmp_block=4, nsa_cmp_stride=2, nsa_slc_block=4, nsa_top_n=2),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_sparse_impls_run_in_the_model_and_differ_from_causal(impl, attention):
    logits = _logits(impl, **attention)
    assert logits.shape == (2, 32, 256) and np.isfinite(logits).all()
    assert not np.allclose(logits, _logits("blockwise"), atol=1e-3)


@pytest.mark.slow
def test_nsa_model_has_its_parameters_and_trains():
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.model.attention.impl = "nsa"
    config.model.attention.nsa_window = 8
    model = model_lib.Transformer(model_lib.build_spec(config))
    tokens = jnp.zeros((1, 32), jnp.int32)
    positions = jnp.arange(32, dtype=jnp.int32)[None]
    params = nn.unbox(model.init(jax.random.key(0), tokens, positions)["params"])
    nsa_params = params["layers"]["block0"]["attn"]["nsa"]
    assert set(nsa_params) == {"cmp_wk", "cmp_wv", "gate_w", "gate_b"}
    grads = jax.grad(lambda p: model.apply({"params": p}, tokens, positions).mean())(params)
    gate = grads["layers"]["block0"]["attn"]["nsa"]["gate_b"]
    assert np.isfinite(gate).all() and np.abs(gate).max() > 0


def test_nsa_rejects_a_logits_hook_scheme():
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.model.attention.impl = "nsa"
    config.model.positional.name = "alibi"
    with pytest.raises(ValueError, match="attention impl 'nsa' cannot serve"):
        model_lib.build_spec(config)


def test_last_layers_dense_per_config():
    """MoBA's recipe: sparse layers, then the last ones full; top_k 1 (own block only) makes
    the sparse layers differ from causal, and the dense tail has its own parameters."""
    kw = dict(sparse_block=8, sparse_top_k=1, sparse_dense_last=1)
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.model.num_layers = 2
    config.model.attention.impl = "moba"
    for key, value in kw.items():
        config.model.attention[key] = value
    config_lib.validate(config)
    spec = model_lib.build_spec(config)
    assert [plan.attention.name for plan in spec.layers] == ["moba", "blockwise"]
    assert [name for name, _, _ in spec.stacks()] == ["layers", "dense_layers"]
    model = model_lib.Transformer(spec)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 32)), jnp.int32)
    positions = jnp.arange(32, dtype=jnp.int32)[None]
    params = nn.unbox(model.init(jax.random.key(0), tokens, positions)["params"])
    assert "dense_layers" in params and "layers" in params
    # The same parameters with blockwise in the sparse stack too: equal on the first block
    # (where own-block attention is causal attention), different after it.
    dense = model_lib.Transformer(model_lib.build_spec(config, attention_impl="blockwise"))
    got = model.apply({"params": params}, tokens, positions)
    want = dense.apply({"params": params}, tokens, positions)
    np.testing.assert_allclose(got[:, :8], want[:, :8], rtol=1e-5, atol=1e-5)  # first block
    assert not np.allclose(got[:, 8:], want[:, 8:], atol=1e-3)
    with pytest.raises(ValueError, match="sparse_dense_last = 2"):
        config.model.attention.sparse_dense_last = 2
        model_lib.build_spec(config)


def _config(**attention):
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    for key, value in attention.items():
        config.model.attention[key] = value
    return config


@pytest.mark.parametrize("impl", ["moba", "hsa", "sink_window", "nsa"])
def test_sparse_kernel_reaches_each_method(impl):
    config = _config(
        impl=impl, sparse_kernel="pallas", sparse_block=128, nsa_slc_block=128, block_kv=128
    )
    config.seq_len = 256
    config_lib.validate(config)
    assert model_lib.build_spec(config).attention.option("kernel") == "pallas"


@pytest.mark.parametrize(
    "attention, message",
    [
        (dict(sparse_kernel="triton"), "sparse_kernel = 'triton': allowed: 'blockwise', 'pallas'"),
        (
            dict(impl="moba", sparse_kernel="pallas", sparse_block=64),
            "sparse_block = 64: must be a multiple of 128 (or >= seq_len) for the Pallas kernel "
            "of model.attention.impl = 'moba'",
        ),
        (
            dict(impl="nsa", sparse_kernel="pallas"),
            "nsa_slc_block = 64: must be a multiple of 128",
        ),
        (
            dict(impl="sink_window", sparse_kernel="pallas", block_kv=64),
            "block_kv = 64: must be a multiple of 128 (or >= seq_len) for the Pallas kernel",
        ),
    ],
)
def test_sparse_kernel_is_validated(attention, message):
    config = _config(**attention)
    config.seq_len = 1024
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_lib.validate(config)


@pytest.mark.slow
def test_moba_on_the_kernel_in_the_model_equals_blockwise():
    """TPU interpret mode (the default off TPU) through the whole model; three 128-blocks."""
    kw = dict(t=384, sparse_block=128, sparse_top_k=2)
    np.testing.assert_allclose(
        _logits("moba", sparse_kernel="pallas", **kw), _logits("moba", **kw), rtol=1e-5, atol=1e-5
    )
