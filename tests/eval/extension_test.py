"""Training-free extension by config override: frequencies and logits really change, the
parameter tree does not, and a plain-RoPE checkpoint loads under the override."""

import grain
import jax
import numpy as np
import pytest

from lcm import model as model_lib
from lcm.eval import runner
from lcm.train import checkpoint, optimizer
from lcm.train import state as state_lib

from .conftest import init_params, tiny_config

RS = "model__positional__rope_scaling__"
OVERRIDES = {
    "linear": {RS + "rope_type": "linear", RS + "factor": 4.0},
    "yarn": {
        RS + "rope_type": "yarn",
        RS + "factor": 4.0,
        RS + "original_max_position_embeddings": 64,
    },
    "self_extend": {
        "model__positional__name": "self_extend",
        "model__positional__self_extend_window": 8,
        "model__positional__self_extend_group": 4,
    },
    "lm_infinite": {
        "model__positional__name": "lm_infinite",
        "model__positional__lm_infinite_local": 8,
        "model__positional__lm_infinite_global": 2,
    },
}


def _model(**overrides):
    # The dense reference implementation compiles fastest and runs every logits hook.
    config = tiny_config(model__attention__impl="reference", **overrides)
    return config, model_lib.Transformer(model_lib.build_spec(config))


def _logits(model, params, length=48):
    tokens = np.random.default_rng(0).integers(0, 256, (1, length)).astype(np.int32)
    positions = np.arange(length, dtype=np.int32)[None]
    return np.asarray(jax.jit(model.apply)({"params": params}, tokens, positions))


@pytest.fixture(scope="module")
def base_logits(tiny):
    return _logits(_model()[1], tiny[2])


def test_linear_override_divides_the_frequencies_the_model_uses():
    config, _ = _model(**OVERRIDES["linear"])
    spec = model_lib.build_spec(config)
    scheme = spec.layers[0].scheme
    h = config.model.head_dim
    plain = 1.0 / config.model.positional.base ** (np.arange(0, h, 2) / h)  # closed form
    np.testing.assert_allclose(scheme.frequencies().inv_freq, plain / 4.0, rtol=1e-6)
    yarn_config, _ = _model(**OVERRIDES["yarn"])
    yarn_spec = model_lib.build_spec(yarn_config)
    yarn = yarn_spec.layers[0].scheme.frequencies()
    assert not np.allclose(yarn.inv_freq, plain) and yarn.attention_factor > 1.0


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_override_keeps_parameter_tree_and_changes_logits(tiny, base_logits, name):
    _, _, params = tiny
    _, model = _model(**OVERRIDES[name])
    shapes = jax.eval_shape(lambda: init_params(model))
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, params)
    base, extended = base_logits, _logits(model, params)
    assert np.abs(base - extended).max() > 1e-3, f"{name} override had no effect on logits"


def test_plain_rope_checkpoint_loads_under_yarn_override(tmp_path, tiny):
    config, _, params = tiny
    tx = optimizer.make_optimizer(config.train)
    state = state_lib.TrainState(step=np.int32(5), params=params, opt_state=tx.init(params))
    data = iter(grain.MapDataset.range(4).to_iter_dataset())
    ckpt = checkpoint.Checkpointer(tmp_path, every=1, max_to_keep=2)
    ckpt.save(5, state, data, force=True)
    ckpt.close()
    yarn_config, yarn_model = _model(**OVERRIDES["yarn"])
    loaded, step = runner.load_params(yarn_config, str(tmp_path), yarn_model)
    assert step == 5
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    with pytest.raises(ValueError, match="no readable checkpoint"):
        runner.load_params(yarn_config, str(tmp_path / "empty"), yarn_model)
