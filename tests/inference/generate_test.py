"""``generate`` and budgeted caches: greedy oracle, full-budget equality, bounded memory.

Oracles: greedy decoding by re-running the full forward pass (argmax of its last row); with a
budget at least the sequence length every policy equals the full cache; StreamingLLM decoding
one token at a time equals a full forward with a sink + sliding-window mask.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import inference
from lcm import model as model_lib
from lcm.inference import cache as cache_lib
from lcm.inference import decoding
from lcm.positional.schedule import LayerSpec
from tests.inference.conftest import full_logits, init_params, make_config

TOL = dict(rtol=2e-5, atol=2e-5)


def test_greedy_generate_matches_full_forward_argmax(rng):
    config = make_config()
    config.inference.prefill_chunk = 4
    params = init_params(config)
    prompt = rng.integers(0, 256, (2, 9)).astype(np.int32)
    got = inference.generate(params, config, prompt, max_new_tokens=6)
    # Oracle: causal, so one padded length-15 forward pass reads every prefix's last row.
    tokens = np.zeros((2, 15), np.int32)
    tokens[:, :9] = prompt
    forward = jax.jit(lambda t: full_logits(config, params, t))
    for t in range(9, 15):
        tokens[:, t] = np.argmax(np.asarray(forward(tokens))[:, t - 1], axis=-1)
    np.testing.assert_array_equal(got, tokens[:, 9:])
    # A 1-D prompt, and a stop token: the row ends with it.
    first = {int(x): i for i, x in reversed(list(enumerate(got[0])))}
    stop, at = max(first.items(), key=lambda item: item[1])
    row = inference.generate(params, config, prompt[0], max_new_tokens=6, stop_id=stop)
    np.testing.assert_array_equal(row, got[0, : at + 1])


def _run(decoder, params, tokens, prompt):
    """Logits ``[B, L, V]`` of prefill then one-by-one decoding; per-layer cache facts per step.

    Facts are read at once: the step donates the previous cache's buffers.
    """
    b, length = tokens.shape

    def facts(cache):
        layers = [
            (int(x["length"]), int(np.sum(x["seg"])), x["k"].shape[1])
            for _, x in cache_lib.layers(cache)
        ]
        return layers, cache_lib.num_bytes(cache)

    cache = decoder.new_cache(params, batch=b, prompt_len=prompt, max_new_tokens=length - prompt)
    logits, cache = decoder.prefill(params, cache, tokens[:, :prompt])
    rows, seen = [np.asarray(logits)], [facts(cache)]
    for t in range(prompt, length):
        pos = np.full((b, 1), t, np.int32)
        step, cache = decoder.step(params, cache, tokens[:, t : t + 1], pos, np.ones_like(pos))
        rows.append(np.asarray(step))
        seen.append(facts(cache))
    return np.concatenate(rows, axis=1), seen


@pytest.mark.parametrize(
    "policy",
    ["streaming_llm", pytest.param("h2o", marks=pytest.mark.slow),
     pytest.param("snapkv", marks=pytest.mark.slow), "caote"],
)  # fmt: skip
def test_budget_at_least_length_equals_full_cache(policy, rng):
    config = make_config(
        model__num_layers=1, inference__recent=4, inference__snapkv_window=4, inference__sink=2
    )
    config.inference.prefill_chunk = 5
    params = decoding.unscan_params(init_params(config))
    tokens = rng.integers(0, 256, (1, 16)).astype(np.int32)
    want = np.asarray(full_logits(config, init_params(config), tokens))
    decoder = decoding.make_decoder(config, cache_policy=policy, budget=16)
    got, _ = _run(decoder, params, tokens, prompt=11)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("policy", ["streaming_llm", "caote"])
def test_cache_memory_bounded_by_budget(policy, rng):
    config = make_config(inference__recent=2, inference__sink=2)
    config.inference.prefill_chunk = 4
    params = decoding.unscan_params(init_params(config))
    budget = 6
    decoder = decoding.make_decoder(config, cache_policy=policy, budget=budget)
    sizes = set()
    for length in (14, 20):
        tokens = rng.integers(0, 256, (1, length)).astype(np.int32)
        _, seen = _run(decoder, params, tokens, prompt=length - 3)
        for layers, size in seen:
            assert layers == [(budget, budget, budget + 4)] * config.model.num_layers
            sizes.add(size)
    per_slot = 2 * 2 * 16 * 4 + 4 + 4 + (2 * 4 if policy == "caote" else 0)  # k, v, pos, seg
    layers = config.model.num_layers
    assert sizes == {layers * ((budget + 4) * per_slot + 4)}


def test_streaming_llm_decoding_equals_sink_window_mask(rng):
    """Token by token with budget B and s sinks, every query sees sinks + the last B - s."""
    config = make_config(inference__sink=2)
    config.inference.prefill_chunk = 1
    init = init_params(config)
    budget, length = 7, 18
    tokens = rng.integers(0, 256, (1, length)).astype(np.int32)
    decoder = decoding.make_decoder(config, cache_policy="streaming_llm", budget=budget)
    got, _ = _run(decoder, decoding.unscan_params(init), tokens, prompt=9)
    spec = model_lib.build_spec(config, attention_impl="reference")
    window = model_lib.mask_for(LayerSpec("rope", "sliding_window", window=budget - 2, sink=2))
    layers = tuple(dataclasses.replace(plan, mask=window) for plan in spec.layers)
    oracle = model_lib.Transformer(dataclasses.replace(spec, layers=layers))
    positions = jnp.arange(length, dtype=jnp.int32)[None]
    want = np.asarray(oracle.apply({"params": init}, jnp.asarray(tokens), positions))
    np.testing.assert_allclose(got, want, **TOL)
    assert not np.allclose(got, np.asarray(full_logits(config, init, tokens)), **TOL)


@pytest.mark.parametrize(
    "overrides, kwargs, match",
    [
        ({}, dict(budget=8), "budget = 8: needs a cache_policy; allowed: caote, h2o"),
        ({}, dict(cache_policy="lru", budget=8), "cache_policy = 'lru'; allowed"),
        ({}, dict(cache_policy="h2o", budget=3), "budget = 3: h2o needs budget >= recent"),
        (
            dict(model__positional__name="alibi", inference__attention_impl="xla"),
            {},
            "attention impl 'xla' cannot serve positional scheme 'alibi'",
        ),
        (dict(inference__attention_impl="blockwise"), {}, "attention_impl = 'blockwise'"),
        (dict(model__attention__impl="nsa"), {}, "config.model.attention.impl = 'nsa'"),
        (dict(inference__temperature=-1.0), {}, "temperature = -1.0: must be >= 0"),
        (dict(inference__top_p=0.0), {}, r"top_p = 0.0: must be in \(0, 1\]"),
    ],
)
def test_bad_arguments_raise_before_work(overrides, kwargs, match):
    config = make_config(**overrides)
    with pytest.raises(ValueError, match=match):
        inference.generate({}, config, np.zeros(4, np.int32), max_new_tokens=2, **kwargs)


def test_max_new_tokens_and_prompt_checked():
    config = make_config()
    with pytest.raises(ValueError, match="max_new_tokens = 0: must be an integer >= 1"):
        inference.generate({}, config, np.zeros(4, np.int32), max_new_tokens=0)
    with pytest.raises(ValueError, match=r"prompt_tokens must be \[P\] or \[B, P\]"):
        inference.generate({}, config, np.zeros((1, 1, 4), np.int32), max_new_tokens=1)
