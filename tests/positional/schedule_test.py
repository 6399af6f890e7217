"""Per-layer schedules: uniform, RNoPE-SWA (Cohere2 layer pattern), explicit lists, LM-Infinite."""

import jax.numpy as jnp
import numpy as np
import pytest

from lcm import config as config_lib
from lcm.positional.remap import LMInfinite
from lcm.positional.rope import RoPE
from lcm.positional.schedule import LayerSpec, layer_spec, layer_specs, parse_layer


def _model(**positional):
    config = config_lib.base_config()
    config.unlock()
    for key, value in positional.items():
        if key in ("num_layers",):
            config.model[key] = value
        elif key.startswith("attention_"):
            config.model.attention[key.removeprefix("attention_")] = value
        else:
            config.model.positional[key] = value
    return config.model


def test_uniform_uses_name_and_attention_mask():
    model = _model(num_layers=3, attention_mask="sliding_window", attention_window=64)
    assert layer_specs(model) == (LayerSpec("rope", "sliding_window", 64),) * 3
    assert layer_spec(_model(), 0) == LayerSpec("rope", "causal", 0)


def test_rnope_swa_matches_cohere2_layer_pattern():
    # Cohere2: 40 layers, full (NoPE) iff (i + 1) % 4 == 0 -> layers 3, 7, ..., 39.
    model = _model(num_layers=40, schedule="rnope_swa", nope_every=4, swa_window=4095)
    specs = layer_specs(model)
    nope_layers = [i for i, spec in enumerate(specs) if spec.positional == "nope"]
    assert nope_layers == list(range(3, 40, 4))
    assert all(specs[i] == LayerSpec("nope", "causal") for i in nope_layers)
    assert all(
        spec == LayerSpec("rope", "sliding_window", 4095)
        for i, spec in enumerate(specs)
        if i not in nope_layers
    )
    # Ratio and window are configurable.
    model = _model(num_layers=6, schedule="rnope_swa", nope_every=2, swa_window=16)
    assert [s.positional for s in layer_specs(model)] == ["rope", "nope"] * 3
    assert layer_spec(model, 0).window == 16


def test_explicit_list_and_cyclic_pattern():
    layers = ("rope:sliding_window:128", "alibi:causal", "nope:full", "rope:chunked_causal")
    model = _model(num_layers=4, schedule="explicit", layers=layers, attention_window=32)
    assert layer_specs(model) == (
        LayerSpec("rope", "sliding_window", 128),
        LayerSpec("alibi", "causal"),
        LayerSpec("nope", "full"),
        LayerSpec("rope", "chunked_causal", 32),
    )
    model = _model(num_layers=5, schedule="explicit", layers=("rope:causal", "nope:causal"))
    assert [s.positional for s in layer_specs(model)] == ["rope", "nope", "rope", "nope", "rope"]


def test_lm_infinite_layers_get_the_lambda_mask():
    model = _model(name="lm_infinite", lm_infinite_global=3, lm_infinite_local=5)
    spec = layer_spec(model, 0)
    assert spec == LayerSpec("lm_infinite", "sliding_window", window=4, sink=3)
    # The description equals the dense Λ mask of the scheme, position by position.
    i, j = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    described = ((i - j >= 0) & (i - j <= spec.window)) | ((j < spec.sink) & (j <= i))
    scheme = LMInfinite(RoPE(head_dim=8), n_global=3, n_local=5)
    pos = jnp.arange(20)[None]
    np.testing.assert_array_equal(scheme.visible(pos, pos)[0], described)


@pytest.mark.parametrize(
    "entry, message",
    [
        ("rope", "must be 'scheme:mask' or 'scheme:mask:window'"),
        ("rope:diagonal", "mask 'diagonal'; allowed: causal, sliding_window"),
        ("rope:sliding_window:x", "window must be a non-negative integer"),
        ("rope:sliding_window", "mask 'sliding_window' needs a window >= 1"),
    ],
)
def test_parse_layer_rejects_bad_entries(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_layer(entry, 0)


def test_layer_index_is_checked():
    with pytest.raises(ValueError, match=r"layer = 2: must be in \[0, 2\)"):
        layer_spec(_model(), 2)
