"""lcm.hf against transformers (the reference): logits, gradients, save round trips.

Tiny random models of every supported family are built with transformers (CPU torch, float32),
saved with ``save_pretrained`` and loaded by ``lcm.hf.load``; logits on the same tokens
must agree to 1e-4 relative, including every ``rope_scaling`` type at lengths past
``original_max_position_embeddings`` and past every sliding window (Cohere2's RoPE-SWA / NoPE
layers too). ``save`` -> ``from_pretrained`` must give the same logits.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import config as config_lib
from lcm import hf
from lcm import model as model_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

T = 24  # past every original length used below (16)
_SMALL = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def _rope(rope_type="default", theta=10_000.0, **keys):
    return {"rope_type": rope_type, "rope_theta": theta, **keys}


_LONG = dict(short_factor=[1.0, 1.5, 2.0, 3.0], long_factor=[2.0, 4.0, 8.0, 16.0])
CASES = {
    "llama": ("Llama", dict(rope_parameters=_rope(theta=500.0))),
    "llama_tied": ("Llama", dict(tie_word_embeddings=True, num_key_value_heads=1)),
    "llama_linear": ("Llama", dict(rope_parameters=_rope("linear", factor=3.0))),
    "llama_dynamic": (
        "Llama",
        dict(max_position_embeddings=16, rope_parameters=_rope("dynamic", factor=2.0)),
    ),
    "llama_yarn": (
        "Llama",
        dict(
            max_position_embeddings=64,
            rope_parameters=_rope("yarn", factor=4.0, original_max_position_embeddings=16),
        ),
    ),
    "llama_llama3": (
        "Llama",
        dict(
            max_position_embeddings=64,
            rope_parameters=_rope(
                "llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "mistral_swa": ("Mistral", dict(sliding_window=5, head_dim=16)),
    "qwen2_mixed_swa": (
        "Qwen2",
        dict(use_sliding_window=True, sliding_window=6, max_window_layers=1),
    ),
    "phi3_longrope": (
        "Phi3",
        dict(
            pad_token_id=0,
            hidden_size=64,  # head_dim 16, 8 rotary channels, 4 LongRoPE factors
            max_position_embeddings=64,
            original_max_position_embeddings=16,
            rope_parameters=_rope("longrope", partial_rotary_factor=0.5, **_LONG),
        ),
    ),
    # 3 RoPE sliding-window layers : 1 NoPE global (transformers' default pattern): rnope_swa.
    "cohere2": (
        "Cohere2",
        dict(num_hidden_layers=4, sliding_window=5, logit_scale=0.5, rope_parameters=_rope()),
    ),
    # An irregular pattern (explicit schedule), untied output, YaRN past its original length.
    "cohere2_yarn_untied": (
        "Cohere2",
        dict(
            num_hidden_layers=3,
            layer_types=["full_attention", "sliding_attention", "full_attention"],
            sliding_window=7,
            tie_word_embeddings=False,
            max_position_embeddings=64,
            rope_parameters=_rope("yarn", factor=4.0, original_max_position_embeddings=16),
        ),
    ),
}


def _hf_model(case, seed=0):
    family, overrides = CASES[case]
    config = getattr(transformers, f"{family}Config")(**{**_SMALL, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    with torch.no_grad():  # O(1) weights and non-trivial norm scales, so every path matters
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model


def _tokens(t=T, seed=1):
    return np.random.default_rng(seed).integers(0, _SMALL["vocab_size"], (2, t))


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


def _lcm_logits(config, params, tokens):
    spec = model_lib.build_spec(config, attention_impl="xla")
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return np.asarray(
        model_lib.Transformer(spec).apply({"params": params}, jnp.asarray(tokens), positions)
    )


def _assert_close(actual, expected, tol=1e-4):
    err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    assert err <= tol, f"max relative error {err:.2e} > {tol}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_matches_transformers_logits(case, tmp_path):
    model = _hf_model(case)
    model.save_pretrained(tmp_path)
    config, params = hf.load(tmp_path)
    config.model.attention.impl = "xla"
    config_lib.validate(config)
    tokens = _tokens()
    _assert_close(_lcm_logits(config, params, tokens), _hf_logits(model, tokens))
    short = tokens[:, :12]  # LongRoPE/dynamic switch back below the original length
    _assert_close(_lcm_logits(config, params, short), _hf_logits(model, short))


@pytest.mark.parametrize(
    "case", ["llama_yarn", "mistral_swa", "qwen2_mixed_swa", "phi3_longrope", "cohere2",
             "cohere2_yarn_untied"]
)  # fmt: skip
def test_save_round_trip_through_transformers(case, tmp_path):
    model = _hf_model(case)
    model.save_pretrained(tmp_path / "hf")
    config, params = hf.load(tmp_path / "hf")
    hf.save(params, config, tmp_path / "lcm")
    assert json.loads((tmp_path / "lcm" / "config.json").read_text())["model_type"] == (
        model.config.model_type
    )
    again = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "lcm", attn_implementation="eager"
    ).eval()
    tokens = _tokens()
    _assert_close(_hf_logits(again, tokens), _hf_logits(model, tokens), tol=1e-6)
    config2, params2 = hf.load(tmp_path / "lcm")
    assert config2.model.to_dict() | {"hf_path": None} == config.model.to_dict() | {"hf_path": None}
    jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("case", ["llama", "qwen2_mixed_swa", "phi3_longrope", "cohere2"])
def test_gradients_match_transformers(case, tmp_path):
    """Cross-entropy gradients w.r.t. the first layer's q/k/v weights and input norm scale
    (and Qwen2 biases)."""
    model = _hf_model(case)
    model.save_pretrained(tmp_path)
    config, params = hf.load(tmp_path)
    tokens = _tokens()
    out = model(torch.tensor(tokens), labels=torch.tensor(tokens))
    out.loss.backward()

    spec = model_lib.build_spec(config, attention_impl="xla")
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), tokens.shape)

    def loss(p):  # transformers' shifted mean cross-entropy
        logits = model_lib.Transformer(spec).apply({"params": p}, jnp.asarray(tokens), positions)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(tokens)[:, 1:, None], -1))

    np.testing.assert_allclose(float(loss(params)), out.loss.item(), rtol=1e-5)
    grads = jax.grad(loss)(params)
    attn = jax.tree.map(lambda g: np.asarray(g[0]), grads["layers"]["block0"]["attn"])
    m = config.model
    d, n, k, h = m.d_model, m.num_heads, m.num_kv_heads, m.head_dim
    layer = model.model.layers[0].self_attn
    if case == "phi3_longrope":
        g = layer.qkv_proj.weight.grad.numpy()
        wq, wk, wv = np.split(g, [n * h, (n + k) * h])
    else:
        wq, wk, wv = (getattr(layer, f"{x}_proj").weight.grad.numpy() for x in "qkv")
    for ours, theirs, heads in ((attn["wq"], wq, n), (attn["wk"], wk, k), (attn["wv"], wv, k)):
        _assert_close(ours, theirs.T.reshape(d, heads, h))
    if case.startswith("qwen2"):
        _assert_close(attn["bk"], layer.k_proj.bias.grad.numpy().reshape(k, h))
    norm_grad = np.asarray(grads["layers"]["block0"]["attn_norm"]["scale"][0])
    _assert_close(norm_grad, model.model.layers[0].input_layernorm.weight.grad.numpy())


def test_sharded_checkpoint_and_unscanned_layers(tmp_path):
    model = _hf_model("llama")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    config, params = hf.load(tmp_path)
    tokens = _tokens()
    expected = _hf_logits(model, tokens)
    _assert_close(_lcm_logits(config, params, tokens), expected)
    config.model.scan_layers = False  # save reads the unscanned layers_{r} tree too
    unscanned = {k: v for k, v in params.items() if k != "layers"}
    for r in range(2):
        unscanned[f"layers_{r}"] = jax.tree.map(lambda x, r=r: x[r], params["layers"])
    _assert_close(_lcm_logits(config, unscanned, tokens), expected)
    hf.save(unscanned, config, tmp_path / "saved")
    _, again = hf.load(tmp_path / "saved")
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_legacy_config_format(tmp_path):
    """transformers<5 files: rope_theta, rope_scaling with 'type', top-level partial factor."""
    model = _hf_model("phi3_longrope")
    model.save_pretrained(tmp_path)
    file = tmp_path / "config.json"
    hf_config = json.loads(file.read_text())
    params = hf_config.pop("rope_parameters")
    hf_config["rope_theta"] = params.pop("rope_theta")
    hf_config["partial_rotary_factor"] = params.pop("partial_rotary_factor")
    params.pop("original_max_position_embeddings", None)
    hf_config["rope_scaling"] = {
        "type": "su",
        **{k: v for k, v in params.items() if k != "rope_type"},
    }
    file.write_text(json.dumps(hf_config))
    config, params = hf.load(tmp_path)
    tokens = _tokens()
    _assert_close(_lcm_logits(config, params, tokens), _hf_logits(model, tokens))


def _write_config(path, **fields):
    path.mkdir(exist_ok=True)
    base = dict(model_type="llama", **_SMALL)
    (path / "config.json").write_text(json.dumps({**base, **fields}))
    return path


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"model_type": "cohere"}, "model_type 'cohere' is not supported: Cohere (v1)"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported; allowed: llama, mistral"),
        (
            {"quantization_config": {}, "foo": 1},
            "config keys lcm does not read: ['foo', 'quantization_config']",
        ),
        ({"attention_bias": True}, "attention_bias = True"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' (allowed: 'silu')"),
        ({"rope_scaling": {"rope_type": "mrope"}}, "rope_type 'mrope'"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2, "beta": 1}}, "keys ['beta']"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5 (only phi3"),
        ({"model_type": "mistral", "layer_types": ["x", "y"]}, "layer_types ['x', 'y']"),
        ({"model_type": "cohere2", "attention_bias": True}, "attention_bias = True"),
        ({"model_type": "cohere2", "rotary_pct": 0.5}, "rotary_pct 0.5 (transformers' Cohere2"),
        (
            {"model_type": "cohere2", "position_embedding_type": "rope"},
            "position_embedding_type 'rope' (transformers' Cohere2 assumes 'rope_gptj')",
        ),
        ({"model_type": "cohere2", "use_qk_norm": True}, "use_qk_norm True"),
        ({"model_type": "cohere2", "use_parallel_block": False}, "use_parallel_block False"),
        ({"model_type": "cohere2", "use_embedding_sharing": False}, "use_embedding_sharing"),
        ({"model_type": "cohere2", "head_dim": 4}, "head_dim 4 (Cohere2 uses hidden_size"),
        ({"model_type": "cohere2", "rms_norm_eps": 1e-6}, "keys lcm does not read: ['rms_norm_"),
    ],
)
def test_unsupported_configs_are_refused(fields, message, tmp_path):
    with pytest.raises(ValueError) as err:
        hf.load(_write_config(tmp_path, **fields))
    assert message in str(err.value)


def test_missing_and_unused_tensors_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = _hf_model("llama")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    hf_config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf_config, "intermediate_size": 40}))
    with pytest.raises(ValueError, match="do not match the model"):
        hf.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    save_file({**weights, "extra.bias": np.zeros(3, np.float32)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"tensors lcm does not use: \['extra.bias'\]"):
        hf.load(tmp_path)
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=re.escape("missing tensor model.layers.1.mlp.up_proj")):
        hf.load(tmp_path)


@pytest.mark.parametrize(
    "model_overrides, message",
    [
        ({"scale_tied_logits": True, "tie_embeddings": True}, "scale_tied_logits"),
        ({"qk_norm": True}, "qk_norm"),
        ({"positional__name": "alibi"}, "every layer must use positional 'rope'"),
        ({"positional__rope_scaling__rope_type": "resonance"}, "rope_type 'resonance' has no"),
        ({"logit_scale": 0.5}, "Cohere2 needs norm 'layernorm' and parallel_block True"),
        (
            {"norm": "layernorm", "parallel_block": True, "positional__layout": "interleaved"},
            "Cohere2 layers are rope:sliding_window",  # base: RoPE on a causal layer
        ),
    ],
)
def test_save_refuses_what_no_family_has(model_overrides, message, tmp_path):
    config = config_lib.base_config()
    config.model.scale_tied_logits = False
    config.model.update_from_flattened_dict(
        {k.replace("__", "."): v for k, v in model_overrides.items()}
    )
    with pytest.raises(ValueError, match=message):
        hf.hf_config(config)


def test_save_ntk_as_default_rope_with_larger_base():
    config = config_lib.base_config()
    config.model.scale_tied_logits = False
    config.model.positional.rope_scaling.rope_type = "ntk"
    config.model.positional.rope_scaling.factor = 4.0
    saved = hf.hf_config(config)
    assert saved["model_type"] == "llama" and "rope_scaling" not in saved
    assert saved["rope_theta"] == pytest.approx(10_000.0 * 4.0 ** (32 / 30))


def test_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    _hf_model("llama").save_pretrained(tmp_path)
    config, _ = hf.load(tmp_path)
    assert config.data.tokenizer == str(tmp_path / "tokenizer.json")
    np.testing.assert_array_equal(hf.load_tokenizer(tmp_path).encode("hello world x"), [1, 2, 0])


def test_with_checkpoint_keeps_set_fields_and_refuses_clashes(tmp_path):
    _hf_model("mistral_swa").save_pretrained(tmp_path)
    config = config_lib.base_config()
    config.model.hf_path = str(tmp_path)
    config.model.attention.impl = "xla"  # set: kept
    config.model.positional.rope_scaling.rope_type = "linear"  # set: kept
    config.model.positional.rope_scaling.factor = 2.0
    merged, params = hf.with_checkpoint(config)
    m = merged.model
    assert (m.d_model, m.num_heads, m.head_dim, m.attention.window) == (32, 4, 16, 4)
    assert (m.attention.impl, m.positional.rope_scaling.rope_type) == ("xla", "linear")
    assert params["embed"]["embedding"].shape == (256, 32)
    config.model.d_model = 64
    with pytest.raises(ValueError, match=r"config.model.d_model = 64 \(checkpoint: 32\)"):
        hf.with_checkpoint(config)


@pytest.mark.slow
def test_train_starts_from_checkpoint(tmp_path):
    from lcm.train import loop

    model = _hf_model("llama")
    model.save_pretrained(tmp_path / "hf")
    config = config_lib.base_config()
    config.model.hf_path = str(tmp_path / "hf")
    config.seq_len = 32
    config.model.attention.block_q = config.model.attention.block_kv = 32
    config.train.update(num_steps=1, learning_rate=1e-9, warmup_steps=0, eval_every=0)
    config.train.update(log_every=1, checkpoint_every=1)
    lines = []
    out = loop.train(config, str(tmp_path / "work"), log=lines.append)
    assert any(f"starting from {tmp_path / 'hf'}" in line for line in lines)
    # O(1) random weights: a loss far from ln(256) = 5.5 shows the weights were used.
    assert np.isfinite(out["loss"]) and abs(out["loss"] - np.log(256)) > 1.0


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    model = _hf_model("qwen2_mixed_swa")
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    config, params = hf.load(tmp_path)
    assert params["embed"]["embedding"].dtype == np.float32
    tokens = _tokens()
    reference = transformers.AutoModelForCausalLM.from_pretrained(  # bf16 weights in float32
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    _assert_close(_lcm_logits(config, params, tokens), _hf_logits(reference, tokens))


def test_cohere2_legacy_config_matches_transformers(tmp_path):
    """An original-release style config.json: legacy keys with transformers' hard-coded values,
    the pattern from sliding_window_pattern (every 2nd layer global here), and the Cohere2
    defaults (tied embeddings, logit_scale 0.0625, eps 1e-5) where keys are absent."""
    _hf_model("cohere2").save_pretrained(tmp_path)
    file = tmp_path / "config.json"
    hf_config = json.loads(file.read_text())
    for key in ("layer_types", "tie_word_embeddings", "logit_scale", "layer_norm_eps"):
        del hf_config[key]
    hf_config.update(
        sliding_window_pattern=2, order_of_interleaved_layers="local_attn_first",
        position_embedding_type="rope_gptj", rotary_pct=1.0, use_gated_activation=True,
        use_parallel_block=True, use_qk_norm=False, use_embedding_sharing=True,
        use_parallel_embedding=True, layer_switch=2, cache_implementation="hybrid",
    )  # fmt: skip
    file.write_text(json.dumps(hf_config))
    config, params = hf.load(tmp_path)
    m, p = config.model, config.model.positional
    assert (p.schedule, p.nope_every, p.swa_window, p.layout) == ("rnope_swa", 2, 4, "interleaved")
    assert (m.tie_embeddings, m.logit_scale, m.norm_eps) == (True, 0.0625, 1e-5)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    assert reference.config.layer_types == ["sliding_attention", "full_attention"] * 2
    tokens = _tokens()
    _assert_close(_lcm_logits(config, params, tokens), _hf_logits(reference, tokens))


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
def test_cohere2_attention_impls_match_transformers(impl, tmp_path):
    """Sliding-window RoPE + global NoPE layers with GQA through the other attention
    implementations (``xla`` is above; blockwise with tiles smaller than the sequence, so tiles
    outside the window are skipped). ``pallas`` serves only causal/full masks (by design)."""
    model = _hf_model("cohere2")
    model.save_pretrained(tmp_path)
    config, params = hf.load(tmp_path)
    config.model.attention.block_q = config.model.attention.block_kv = 8
    tokens = _tokens()
    spec = model_lib.build_spec(config, attention_impl=impl)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), tokens.shape)
    logits = model_lib.Transformer(spec).apply({"params": params}, jnp.asarray(tokens), positions)
    _assert_close(np.asarray(logits), _hf_logits(model, tokens))


def test_with_checkpoint_cohere2_takes_block_options(tmp_path):
    _hf_model("cohere2").save_pretrained(tmp_path)
    config = config_lib.base_config()
    config.model.hf_path = str(tmp_path)
    config.model.positional.swa_window = 2  # set: kept (a shorter window on the RoPE layers)
    merged, _ = hf.with_checkpoint(config)
    m = merged.model
    assert (m.norm, m.parallel_block, m.logit_scale) == ("layernorm", True, 0.5)
    assert (m.positional.schedule, m.positional.layout, m.positional.swa_window) == (
        "rnope_swa", "interleaved", 2
    )  # fmt: skip
    config.model.logit_scale = 2.0
    with pytest.raises(ValueError, match=r"config.model.logit_scale = 2.0 \(checkpoint: 0.5\)"):
        hf.with_checkpoint(config)
