"""A tiny random model shared by the eval tests."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from lcm import config as config_lib
from lcm import model as model_lib

TINY = str(config_lib.REPO_ROOT / "configs" / "tiny.py")


def tiny_config(**overrides):
    """``configs/tiny.py`` with ``a__b=value`` overrides (unlocked copy)."""
    config = config_lib.load_config(TINY)
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
    return config


def init_params(model, seed=0, length=16):
    tokens = np.zeros((1, length), np.int32)
    positions = np.arange(length, dtype=np.int32)[None]
    init = jax.jit(model.init)
    return nn.unbox(init(jax.random.key(seed), tokens, positions, np.ones_like(tokens))["params"])


@pytest.fixture(scope="module")
def tiny():
    """``(config, model, params)``: tiny config, blockwise attention, random float32 params."""
    config = tiny_config()
    model = model_lib.Transformer(model_lib.build_spec(config))
    return config, model, jax.tree.map(np.asarray, init_params(model))
