"""The transformer: causality, document isolation, impl parity, schedules, build checks."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm import config as config_lib
from lcm import model as model_lib
from lcm.model import layers, transformer


def _config(**model):
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.model.update_from_flattened_dict({k.replace("__", "."): v for k, v in model.items()})
    return config


def _init(config, impl=None, t=64, seed=0):
    spec = model_lib.build_spec(config, attention_impl=impl)
    model = model_lib.Transformer(spec)
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, 256, (2, t)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
    params = nn.unbox(model.init(jax.random.key(seed), tokens, positions)["params"])
    return model, params, tokens, positions


def test_logits_shape_and_causality():
    model, params, tokens, positions = _init(_config())
    logits = model.apply({"params": params}, tokens, positions)
    assert logits.shape == (2, 64, 256) and logits.dtype == jnp.float32
    changed = tokens.at[:, 40:].set((tokens[:, 40:] + 1) % 256)
    other = model.apply({"params": params}, changed, positions)
    np.testing.assert_array_equal(logits[:, :40], other[:, :40])
    assert not np.allclose(logits[:, 40:], other[:, 40:])


def test_packed_documents_never_attend_across_boundaries():
    """A packed row equals the two documents run separately (positions restart per document)."""
    model, params, tokens, _ = _init(_config())
    row = tokens[:1]
    segment_ids = jnp.asarray([[1] * 24 + [2] * 30 + [0] * 10], jnp.int32)
    positions = jnp.asarray([list(range(24)) + list(range(30)) + list(range(10))], jnp.int32)
    packed = model.apply({"params": params}, row, positions, segment_ids)
    first = model.apply({"params": params}, row[:, :24], positions[:, :24])
    second = model.apply({"params": params}, row[:, 24:54], positions[:, 24:54])
    np.testing.assert_allclose(packed[:, :24], first, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[:, 24:54], second, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"positional__name": "alibi"},
        # rnope_swa alone: cohere2_block below runs the same schedule among other changes.
        pytest.param(
            {"positional__schedule": "rnope_swa", "positional__swa_window": 8, "num_layers": 4},
            marks=pytest.mark.slow,
        ),
        {"qk_norm": True, "tie_embeddings": False},
        # slow: unrolled layers compile once per layer (tests/hf runs unscanned layers fast)
        pytest.param(
            {"qk_norm": True, "tie_embeddings": False, "scan_layers": False},
            marks=pytest.mark.slow,
        ),
        {
            "norm": "layernorm",
            "parallel_block": True,
            "logit_scale": 0.25,
            "positional__layout": "interleaved",
            "positional__schedule": "rnope_swa",
            "positional__swa_window": 8,
            "num_layers": 4,
        },
    ],
    ids=["rope", "alibi", "rnope_swa", "qknorm_untied", "qknorm_untied_unrolled", "cohere2_block"],
)
def test_blockwise_matches_reference_logits_and_grads(overrides):
    config = _config(**overrides)
    model, params, tokens, positions = _init(config)
    reference = model_lib.Transformer(model_lib.build_spec(config, attention_impl="reference"))

    def loss(m):
        return lambda p: jnp.mean(jax.nn.log_softmax(m.apply({"params": p}, tokens, positions)))

    value, grads = jax.value_and_grad(loss(model))(params)
    want_value, want_grads = jax.value_and_grad(loss(reference))(params)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_layernorm_matches_closed_form():
    """Bias-free LayerNorm against numpy in float64."""
    x = np.random.default_rng(0).normal(size=(2, 3, 16)) * 3.0 + 1.5
    scale = np.random.default_rng(1).normal(size=16)
    y = layers.LayerNorm(eps=1e-5).apply({"params": {"scale": scale}}, jnp.asarray(x))
    centered = x - x.mean(-1, keepdims=True)
    want = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_parallel_block_and_logit_scale_params_and_logits():
    """A parallel block has one norm per layer; logit_scale multiplies the logits exactly."""
    config = _config(parallel_block=True)
    model, params, tokens, positions = _init(config)
    assert set(params["layers"]["block0"]) == {"attn_norm", "attn", "mlp"}
    config.model.logit_scale = 0.25
    scaled = model_lib.Transformer(model_lib.build_spec(config))
    np.testing.assert_allclose(
        scaled.apply({"params": params}, tokens, positions),
        0.25 * model.apply({"params": params}, tokens, positions),
        rtol=1e-6,
    )


def test_rnope_swa_groups_layers_by_period():
    config = _config(positional__schedule="rnope_swa", positional__swa_window=8, num_layers=8)
    spec = model_lib.build_spec(config)
    ((name, period, repeats),) = spec.stacks()
    window = attention.SlidingWindow(8)
    assert (name, repeats) == ("layers", 2)
    assert [(type(x.scheme).__name__, x.mask) for x in period] == [
        ("RoPE", window),
        ("RoPE", window),
        ("RoPE", window),
        ("NoPE", attention.Causal()),
    ]
    _, params, _, _ = _init(config)
    # Two scanned repetitions of a 4-block group.
    assert params["layers"]["block3"]["attn"]["wq"].shape == (2, 32, 2, 16)


def test_incompatible_scheme_and_impl_fail_at_build():
    with pytest.raises(ValueError) as err:
        model_lib.build_spec(_config(positional__name="alibi"), attention_impl="xla")
    message = str(err.value)
    assert "attention impl 'xla'" in message and "positional scheme 'alibi'" in message
    assert "custom_logits" in message


@pytest.mark.parametrize(
    "path",
    sorted(pathlib.Path(config_lib.REPO_ROOT, "configs").glob("**/*.py")),
    ids=lambda p: p.name,
)
def test_every_config_builds(path):
    config = config_lib.load_config(str(path))
    spec = model_lib.build_spec(config)
    model = model_lib.Transformer(spec)
    t = config.seq_len
    shapes = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, t), jnp.int32),
        jax.ShapeDtypeStruct((1, t), jnp.int32),
    )
    assert shapes["params"]


def test_pallas_model_matches_blockwise():
    config = _config(attention__block_q=64, attention__block_kv=64)
    model, params, tokens, positions = _init(config)
    pallas = model_lib.Transformer(model_lib.build_spec(config, attention_impl="pallas"))
    np.testing.assert_allclose(
        pallas.apply({"params": params}, tokens, positions),
        model.apply({"params": params}, tokens, positions),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "policy",
    [  # jax's own dots_* policies are slow; full and lcm's attention policies run by default
        pytest.param(p, marks=pytest.mark.slow) if p.startswith("dots") else p
        for p in sorted(set(transformer.REMAT_POLICIES) - {"none"})
    ],
)
def test_remat_policies_keep_the_gradients(policy):
    """Remat changes what the backward pass recomputes, never the numbers (blockwise: the flash
    residuals carry the names ``save_attention`` and ``offload_attention`` keep)."""

    def grads(remat_policy):
        model, params, tokens, positions = _init(
            _config(remat_policy=remat_policy, attention__impl="blockwise")
        )
        loss = lambda p: jnp.sum(model.apply({"params": p}, tokens, positions) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    (want_loss, want), (got_loss, got) = grads("none"), grads(policy)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_layer_plans_are_built_once_and_traces_build_nothing(monkeypatch):
    from lcm.positional.rope import RoPE

    built = []
    original = RoPE.from_config.__func__
    monkeypatch.setattr(
        RoPE,
        "from_config",
        classmethod(lambda cls, *a, **k: built.append(1) or original(cls, *a, **k)),
    )
    config = _config(num_layers=4, scan_layers=False)
    spec = model_lib.build_spec(config)
    assert len(built) == 4 and all(isinstance(p.scheme, RoPE) for p in spec.layers)
    model = model_lib.Transformer(spec)
    tokens = jnp.zeros((1, 16), jnp.int32)
    positions = jnp.arange(16, dtype=jnp.int32)[None]
    params = model.init(jax.random.key(0), tokens, positions)
    jax.jit(model.apply).lower(params, tokens, positions)
    assert len(built) == 4  # init and tracing read the plans; nothing rebuilds a scheme
    assert hash(spec) == hash(model_lib.build_spec(config))  # frozen and hashable: a jit key
