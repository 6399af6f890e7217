"""Cached decoding equals one full forward pass, for every positional scheme and chunk size.

Oracle: the training-path forward (``reference`` attention) over the whole sequence; for
length-dependent RoPE (dynamic NTK) the forward over each prefix, since its frequencies depend
on the current length.
"""

import numpy as np
import pytest

from lcm.inference import decoding
from tests.inference.conftest import full_logits, init_params, make_config

TOL = dict(rtol=2e-5, atol=2e-5)
LENGTH, PROMPT = 22, 13

SCHEMES = {
    "rope": {},
    "rope_yarn": dict(
        model__positional__rope_scaling__rope_type="yarn",
        model__positional__rope_scaling__factor=2.0,
        model__positional__rope_scaling__original_max_position_embeddings=8,
    ),
    "rope_interleaved_partial": dict(
        model__positional__layout="interleaved", model__positional__partial_rotary_factor=0.5
    ),
    "nope": dict(model__positional__name="nope"),
    "nope_head_scale": dict(model__positional__name="nope_head_scale"),
    "alibi": dict(model__positional__name="alibi"),
    "tapa": dict(model__positional__name="tapa"),
    "self_extend": dict(
        model__positional__name="self_extend",
        model__positional__self_extend_group=3,
        model__positional__self_extend_window=5,
    ),
    "lm_infinite": dict(
        model__positional__name="lm_infinite",
        model__positional__lm_infinite_global=2,
        model__positional__lm_infinite_local=6,
    ),
    "rnope_swa": dict(
        model__num_layers=4,
        model__positional__schedule="rnope_swa",
        model__positional__nope_every=2,
        model__positional__swa_window=5,
    ),
    "qk_norm_bias_untied": dict(
        model__qk_norm=True, model__qkv_bias=True, model__tie_embeddings=False
    ),
}


def _decode_all(config, params, tokens, chunk):
    """Prefill ``tokens[:, :PROMPT]`` then feed the rest one by one; logits ``[B, L, V]``."""
    config.inference.prefill_chunk = chunk
    decoder = decoding.make_decoder(config)
    params = decoding.unscan_params(params)
    b, length = tokens.shape
    cache = decoder.new_cache(params, batch=b, prompt_len=PROMPT, max_new_tokens=length - PROMPT)
    logits, cache = decoder.prefill(params, cache, tokens[:, :PROMPT])
    rows = [np.asarray(logits)]
    for t in range(PROMPT, length):
        pos = np.full((b, 1), t, np.int32)
        step, cache = decoder.step(params, cache, tokens[:, t : t + 1], pos, np.ones_like(pos))
        rows.append(np.asarray(step))
    return np.concatenate(rows, axis=1), cache


FAST = ("rope", "self_extend", "rnope_swa")  # the rest are @slow (compiles dominate on CPU)


@pytest.mark.parametrize(
    "scheme",
    [s if s in FAST else pytest.param(s, marks=pytest.mark.slow) for s in sorted(SCHEMES)],
)
def test_decode_matches_full_forward(scheme, rng):
    config = make_config(**SCHEMES[scheme])
    params = init_params(config)
    tokens = rng.integers(0, 256, (2, LENGTH)).astype(np.int32)
    want = np.asarray(full_logits(config, params, tokens))
    got, cache = _decode_all(config, params, tokens, chunk=4)
    np.testing.assert_allclose(got, want, **TOL)
    layer = cache["layers_0"]["block0"]["attn"]
    assert int(layer["length"]) == LENGTH


@pytest.mark.parametrize(
    "chunk",
    [pytest.param(1, marks=pytest.mark.slow), 3, pytest.param(8, marks=pytest.mark.slow), 64],
)
def test_chunked_prefill_matches_full_forward(chunk, rng):
    config = make_config(**SCHEMES["lm_infinite"])
    params = init_params(config)
    tokens = rng.integers(0, 256, (1, LENGTH)).astype(np.int32)
    want = np.asarray(full_logits(config, params, tokens))
    got, _ = _decode_all(config, params, tokens, chunk=chunk)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize(
    "chunk", [pytest.param(1, marks=pytest.mark.slow), 5, pytest.param(64, marks=pytest.mark.slow)]
)
def test_dynamic_ntk_rerotates_the_cache(chunk, rng):
    """Each step equals the forward over its prefix (frequencies of the current length).

    One layer: its K and V are projections of the embeddings, so re-rotating the stored
    un-rotated K is all a step needs. In deeper layers the cached K/V of earlier tokens were
    computed with the frequencies of earlier lengths (true of any KV cache).
    """
    config = make_config(
        model__num_layers=1,
        model__positional__rope_scaling__rope_type="dynamic",
        model__positional__rope_scaling__factor=4.0,
        model__positional__rope_scaling__original_max_position_embeddings=6,
    )
    params = init_params(config)
    tokens = rng.integers(0, 256, (1, LENGTH)).astype(np.int32)
    got, _ = _decode_all(config, params, tokens, chunk=chunk)
    for t in (PROMPT - 1, PROMPT + 3, LENGTH - 1):  # prompt end, decode steps
        want = np.asarray(full_logits(config, params, tokens[:, : t + 1]))[:, -1]
        np.testing.assert_allclose(got[:, t], want, **TOL)
    # Frequencies really change with length: the full-length pass differs at the prompt's end.
    full = np.asarray(full_logits(config, params, tokens))
    assert not np.allclose(got[:, PROMPT - 1], full[:, PROMPT - 1], **TOL)


@pytest.mark.slow
def test_xla_decode_matches_reference(rng):
    config = make_config()
    params = init_params(config)
    tokens = rng.integers(0, 256, (1, LENGTH)).astype(np.int32)
    want = np.asarray(full_logits(config, params, tokens))
    config.inference.attention_impl = "xla"
    got, _ = _decode_all(config, params, tokens, chunk=4)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.slow
def test_unscanned_model_params(rng):
    config = make_config(model__scan_layers=False)
    params = init_params(config)
    tokens = rng.integers(0, 256, (1, LENGTH)).astype(np.int32)
    want = np.asarray(full_logits(config, params, tokens))
    got, _ = _decode_all(config, params, tokens, chunk=4)
    np.testing.assert_allclose(got, want, **TOL)
