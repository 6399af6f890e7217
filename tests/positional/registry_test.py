"""The POSITIONAL registry: every scheme is registered and builds from the base config."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import config as config_lib
from lcm.positional import POSITIONAL, build
from lcm.positional.schedule import layer_specs

NAMES = ["alibi", "lm_infinite", "nope", "nope_head_scale", "rope", "self_extend", "tapa"]


def test_every_scheme_is_registered():
    assert POSITIONAL.names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_scheme_builds_from_the_base_config_and_runs(name):
    config = config_lib.base_config()
    scheme = build(config.model.positional, num_heads=4, head_dim=32, name=name)
    q = jnp.ones((1, 3, 4, 32))
    k = jnp.ones((1, 3, 2, 32))
    pos = jnp.arange(3, dtype=jnp.int32)[None]
    for param in getattr(scheme, "params", ()):  # a learned scheme: filled as the model does
        value = param.init(jax.random.key(0), param.shape, param.dtype)
        scheme = dataclasses.replace(scheme, **{param.name: value})
    q2, k2 = scheme.rotate(q, k, pos, pos)
    assert q2.shape == q.shape and k2.shape == k.shape
    if scheme.logits_fn is not None:
        logits = scheme.logits_fn(q2, k2, pos, pos, scale=32**-0.5)
        assert logits.shape == (1, 4, 3, 3) and bool(jnp.all(jnp.isfinite(logits)))


def test_rope_from_config_reads_only_the_keys_of_its_type():
    config = config_lib.base_config()
    config.unlock()
    rs = config.model.positional.rope_scaling
    rs.rope_type, rs.factor, rs.original_max_position_embeddings = "yarn", 4.0, 64
    scheme = build(config.model.positional, num_heads=4, head_dim=32)
    assert dict(scheme.rope_scaling) == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    np.testing.assert_allclose(scheme.frequencies().attention_factor, 0.1 * np.log(4) + 1)


def test_every_layer_of_a_schedule_builds():
    config = config_lib.base_config()
    config.unlock()
    config.model.num_layers = 4
    config.model.positional.schedule = "rnope_swa"
    specs = layer_specs(config.model)
    built = [
        build(config.model.positional, num_heads=4, head_dim=32, name=s.positional) for s in specs
    ]
    assert [type(s).__name__ for s in built] == ["RoPE", "RoPE", "RoPE", "NoPE"]
