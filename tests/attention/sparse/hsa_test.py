"""HSA against a dense reference with one masked softmax per retrieved chunk, and the weights'
closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm.attention.sparse import hsa


@pytest.mark.parametrize(
    "b, t, n, kh, chunk, top_k, tile, weighting",
    [
        (2, 45, 4, 2, 8, 3, 16, "softmax"),  # GQA, batch 2, trailing partial chunk, tiles
        pytest.param(1, 16, 2, 1, 4, 8, 16, "stick_breaking", marks=pytest.mark.slow),  # MQA
    ],
)
def test_matches_dense_reference(
    b, t, n, kh, chunk, top_k, tile, weighting, inputs, assert_grads_match
):
    q, k, v, pos = inputs(b, t, n, kh, 8, seed=2)
    kw = dict(chunk_size=chunk, top_k=top_k, q_pos=pos, k_pos=pos, weighting=weighting)
    assert_grads_match(
        lambda q, k, v: hsa.hsa_attention(q, k, v, query_tile=tile, chunk=4, **kw),
        lambda q, k, v: hsa.hsa_reference(q, k, v, **kw),
        q,
        k,
        v,
    )


@pytest.mark.slow
def test_segments_match_reference(inputs, assert_grads_match):
    q, k, v, pos = inputs(2, 20, 2, 2, 8, seed=4)
    seg = jnp.array([[1] * 20, [1] * 11 + [2] * 6 + [0] * 3], jnp.int32)
    kw = dict(chunk_size=4, top_k=2, q_pos=pos, k_pos=pos, q_segment_ids=seg, kv_segment_ids=seg)
    kw["weighting"] = "stick_breaking"
    assert_grads_match(
        lambda q, k, v: hsa.hsa_attention(q, k, v, query_tile=8, chunk=4, **kw),
        lambda q, k, v: hsa.hsa_reference(q, k, v, **kw),
        q,
        k,
        v,
    )


def test_weights_closed_forms():
    s = jnp.array([2.0, 0.5, -1.0])
    valid = jnp.array([True, True, False])
    soft = hsa.retrieval_weights(s, valid, "softmax")
    np.testing.assert_allclose(
        soft, [np.exp(1.5) / (np.exp(1.5) + 1), 1 / (np.exp(1.5) + 1), 0], rtol=1e-6
    )
    sp = np.log1p(np.exp([2.0, 0.5]))
    stick = hsa.retrieval_weights(s, valid, "stick_breaking")
    # w_i = sigmoid(s_i) * prod_{j<i} (1 - sigmoid(s_j)).
    np.testing.assert_allclose(
        stick, [np.exp(2.0 - sp[0]), np.exp(0.5 - sp[0] - sp[1]), 0.0], rtol=1e-6
    )
    sig = 1 / (1 + np.exp([-2.0, -0.5]))
    np.testing.assert_allclose(stick[:2], [sig[0], sig[1] * (1 - sig[0])], rtol=1e-6)


def test_retrieval_scores_get_gradients(inputs):
    # Only the retrieval weights depend on the landmarks' direction if v is constant per chunk.
    q, k, v, pos = inputs(1, 16, 1, 1, 4, seed=6)

    def total(q):
        out = hsa.hsa_attention(q, k, v, chunk_size=4, top_k=2, q_pos=pos, k_pos=pos)
        return out.sum(), out

    (_, out), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(q)
    assert np.abs(np.asarray(grad[:, 8:])).max() > 0  # tokens with two earlier chunks
    np.testing.assert_array_equal(out[:, :4], 0.0)  # the first chunk has no earlier chunk


def test_front_door(inputs, assert_close):
    q, k, v, pos = inputs(1, 16, 2, 1, 8)
    got = attention.attend(
        q, k, v, mask=attention.Causal(), impl="hsa", q_pos=pos, k_pos=pos, chunk_size=4, top_k=2
    )
    assert_close(got, hsa.hsa_reference(q, k, v, chunk_size=4, top_k=2, q_pos=pos, k_pos=pos))
    with pytest.raises(ValueError, match="hsa weighting = 'max'"):
        attention.attend(
            q, k, v, mask=attention.Causal(), impl="hsa", q_pos=pos, k_pos=pos, weighting="max"
        )
