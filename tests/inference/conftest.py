"""Shared helpers for the inference tests: a tiny float32 model and its full forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import config as config_lib
from lcm import model as model_lib


def make_config(**fields):
    """configs/tiny.py (4 heads, 2 kv heads) with ``a__b=value`` overrides of config.*."""
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in fields.items()})
    return config


def init_params(config, seed=0):
    spec = model_lib.build_spec(config)
    model = model_lib.Transformer(spec)
    tokens = jnp.zeros((1, 8), jnp.int32)
    positions = jnp.arange(8, dtype=jnp.int32)[None]
    return nn.unbox(model.init(jax.random.key(seed), tokens, positions)["params"])


def full_logits(config, params, tokens):
    """Logits ``[B, L, V]`` of one forward pass (the training path) over ``tokens [B, L]``."""
    model = model_lib.Transformer(model_lib.build_spec(config, attention_impl="reference"))
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return model.apply({"params": params}, jnp.asarray(tokens), positions)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
