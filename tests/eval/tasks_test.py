"""Cached greedy decoding and answer log-likelihood against unpadded forwards; the task grid."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from lcm import model as model_lib
from lcm.data import ByteTokenizer
from lcm.eval import perplexity, tasks

from .conftest import tiny_config


def _reference_model():
    config = tiny_config(model__attention__impl="reference")
    return model_lib.Transformer(model_lib.build_spec(config))


def test_greedy_and_target_nll_match_unpadded_forwards(tiny):
    config, _, params = tiny
    model = _reference_model()
    nll_fn = perplexity.make_nll_fn(model)
    decode_fn = tasks.make_decode_fn(params, config)
    prompt = np.random.default_rng(0).integers(1, 256, 10).astype(np.int32)
    out = decode_fn(prompt, length=32, max_new_tokens=3)

    apply = jax.jit(model.apply)

    def unpadded(tokens):  # a forward of exactly these tokens, no padding
        t = jnp.asarray(tokens[None])
        pos = jnp.arange(len(tokens), dtype=jnp.int32)[None]
        return jax.nn.log_softmax(apply({"params": params}, t, pos)[0], -1)

    seq = list(prompt)
    for _ in range(3):
        seq.append(int(jnp.argmax(unpadded(np.asarray(seq, np.int32))[-1])))
    assert out == seq[10:]
    target = np.array([7, 200, 31], np.int32)
    full = np.asarray(unpadded(np.concatenate([prompt, target])))
    expected = -np.mean([full[9 + i, target[i]] for i in range(3)])
    got = tasks.target_nll(nll_fn, params, prompt, target, length=32)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The decode budget never runs past the length; the stop token ends the answer.
    assert len(decode_fn(prompt, length=12, max_new_tokens=8)) == 2
    for stop in seq[10:]:
        before = seq[10 : seq.index(stop, 10)]
        assert decode_fn(prompt, length=32, max_new_tokens=3, stop_id=stop) == before


def _greedy(logprob_fn):
    """A decode_fn without a cache: argmax of the full forward at each step (for fakes)."""

    def decode(prompt, *, length, max_new_tokens, stop_id=None):
        tokens = np.zeros((1, length), np.int32)
        tokens[0, : len(prompt)] = prompt
        out = []
        for pos in range(len(prompt), min(len(prompt) + max_new_tokens, length)):
            next_id = int(np.argmax(logprob_fn(None, tokens)[pos - 1]))
            if next_id == stop_id:
                break
            tokens[0, pos] = next_id
            out.append(next_id)
        return out

    return decode


def _perfect_passkey_model(params, tokens):
    """Log-probs of a 'model' that reads the pass key from the prompt and answers it."""
    tokens = np.asarray(tokens[0])
    logp = np.full((len(tokens), 256), -1e9, np.float32)
    for p in range(len(tokens)):
        text = bytes(tokens[: p + 1].tolist()).decode()
        if not text.split("\n")[-1].startswith("What is the pass key? The pass key is"):
            continue
        key = re.search(r"The pass key is (\d+)\. Remember", text).group(1)
        generated = text.rsplit("The pass key is", 1)[1]
        answer = f" {key}\n"
        logp[p, ord(answer[min(len(generated), len(answer) - 1)])] = 0.0
    return logp


def _nll_of(logprob_fn):
    """The ``(params, inputs, targets, mask) -> (nll_sum, tokens)`` of a log-prob fake."""

    def nll(params, inputs, targets, mask):
        logp = logprob_fn(params, inputs)
        picked = np.take_along_axis(logp, np.asarray(targets[0])[:, None], -1)[:, 0]
        return -(picked * mask[0]).sum(), mask.sum()

    return nll


def test_run_task_scores_a_perfect_reader_100():
    record = tasks.run_task(
        "passkey",
        _nll_of(_perfect_passkey_model),
        _greedy(_perfect_passkey_model),
        None,
        ByteTokenizer(),
        lengths=(64, 300),
        depths=(0.0, 1.0),
        samples_per_cell=2,
        seed=0,
    )
    cells = {(c["length"], c["depth"]): c for c in record["cells"]}
    assert cells[64, 0.0]["score"] is None and "does not fit" in cells[64, 0.0]["skipped"]
    for depth in (0.0, 1.0):
        cell = cells[300, depth]
        assert cell["samples"] == 2 and cell["score"] == 100.0
        assert cell["example"]["prediction"] == " " + cell["example"]["references"][0]
        assert cell["target_nll"] == 0.0
    assert record["metric"] == "passkey" and record["depths"] == [0.0, 1.0]
