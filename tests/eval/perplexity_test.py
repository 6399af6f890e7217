"""Both perplexity protocols against a brute-force per-token NLL (dense reference model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import model as model_lib
from lcm.data import EvalDocument
from lcm.eval import perplexity

PAD = 48  # oracle forwards run at one padded length (causal: later tokens change nothing)


def _token_nll(model, params, tokens):
    """NLL of tokens[1:] given tokens[:-1]: one full forward of the whole sequence."""
    n = len(tokens) - 1
    inputs = np.zeros((1, PAD), np.int32)
    inputs[0, :n] = tokens[:-1]
    logp = _log_softmax(model, params, inputs)
    return -logp[np.arange(n), tokens[1:]]


_JITTED = {}


def _log_softmax(model, params, inputs):
    if model not in _JITTED:

        def fn(params, inputs):
            positions = jnp.arange(inputs.shape[1], dtype=jnp.int32)[None]
            logits = model.apply({"params": params}, inputs, positions, jnp.ones_like(inputs))
            return jax.nn.log_softmax(logits[0].astype(jnp.float32), -1)

        _JITTED[model] = jax.jit(fn)
    return np.asarray(_JITTED[model](params, inputs))


def _docs(n_docs, n_tokens, seed=0):
    rng = np.random.default_rng(seed)
    return [
        EvalDocument(f"d{i}", rng.integers(0, 256, n_tokens).astype(np.int32))
        for i in range(n_docs)
    ]


@pytest.fixture(scope="module")
def oracle(tiny):
    config, _, params = tiny
    return model_lib.Transformer(model_lib.build_spec(config, attention_impl="reference")), params


def test_truncate_matches_one_full_forward(tiny, oracle):
    _, model, params = tiny
    docs = _docs(3, 50)
    records = perplexity.perplexity_vs_length(
        perplexity.make_nll_fn(model), params, docs, lengths=(12, 40), protocol="truncate",
        batch_size=2,
    )  # fmt: skip
    for record, length in zip(records, (12, 40), strict=True):
        # A causal model's prefix logits equal the full forward's: sum the first L by hand.
        nll = [_token_nll(oracle[0], oracle[1], d.tokens[:41])[:length] for d in docs]
        expected = np.concatenate(nll).mean()
        assert record["tokens_scored"] == 3 * length and record["windows"] == 3
        np.testing.assert_allclose(record["nll"], expected, rtol=1e-5)
        np.testing.assert_allclose(record["perplexity"], np.exp(expected), rtol=1e-5)


def test_sliding_windows_schedule_by_hand():
    tokens = np.arange(20, dtype=np.int32)
    inputs, targets, mask = perplexity.windows(
        tokens, length=8, protocol="sliding", stride=3, span=12
    )
    # Windows start at 0, 3, then min(6, 12 - 8) = 4; they score targets [0,8), [8,11), [11,12).
    np.testing.assert_array_equal(inputs[:, 0], [0, 3, 4])
    np.testing.assert_array_equal(targets, inputs + 1)
    scored = [list(inputs[w][mask[w] > 0]) for w in range(3)]
    assert scored == [list(range(8)), [8, 9, 10], [11]]


def test_sliding_matches_brute_force_per_token_contexts(tiny, oracle):
    _, model, params = tiny
    docs = _docs(2, 30, seed=1)
    span, length, stride = 20, 8, 3
    record, _ = perplexity.perplexity_vs_length(
        perplexity.make_nll_fn(model), params, docs, lengths=(length, span), protocol="sliding",
        stride=stride,
    )  # fmt: skip
    # By hand: windows start at 0, 3, 6, 9, 12 (= span - length); target t (predicting token
    # t + 1) is scored in the first window whose end passes t, with that window's context.
    starts = [0, 3, 6, 9, 12]
    total, count = 0.0, 0
    for d in docs:
        for t in range(span):
            b = next(s for s in starts if s + length > t)
            total += _token_nll(oracle[0], oracle[1], d.tokens[b : t + 2])[-1]
            count += 1
    assert record["tokens_scored"] == count == 2 * span and record["stride"] == stride
    np.testing.assert_allclose(record["nll"], total / count, rtol=1e-5)
    # At length == span one window covers everything: sliding equals truncate.
    slide, trunc = (
        perplexity.perplexity_vs_length(
            perplexity.make_nll_fn(model), params, docs, lengths=(span,), protocol=p, stride=5
        )[0]
        for p in ("sliding", "truncate")
    )
    np.testing.assert_allclose(slide["nll"], trunc["nll"], rtol=1e-6)
    assert slide["tokens_scored"] == trunc["tokens_scored"] == 2 * span


def test_windows_reject_bad_input():
    with pytest.raises(ValueError, match="protocol = 'rolling'; allowed: truncate, sliding"):
        perplexity.windows(np.zeros(9, np.int32), length=4, protocol="rolling", stride=1, span=8)
    with pytest.raises(ValueError, match="truncate needs 9"):
        perplexity.windows(np.zeros(8, np.int32), length=8, protocol="truncate", stride=1, span=8)
    with pytest.raises(ValueError, match="sliding needs 1 <= stride"):
        perplexity.windows(np.zeros(20, np.int32), length=4, protocol="sliding", stride=5, span=8)


def test_select_documents_by_length_then_name():
    docs = [EvalDocument(n, np.zeros(k, np.int32)) for n, k in (("c", 9), ("a", 9), ("b", 3))]
    assert [d.name for d in perplexity.select_documents(docs, min_tokens=9, count=5)] == ["a", "c"]
    assert [d.name for d in perplexity.select_documents(docs, min_tokens=1, count=2)] == ["a", "b"]
