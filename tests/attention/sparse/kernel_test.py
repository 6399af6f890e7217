"""Sparse methods on the Pallas block-sparse kernel (``sparse_kernel = "pallas"``) against their
dense references (``reference`` with the method's mask where it is one masked softmax) and
against the plain-JAX ``gathered.slot_attention``, outputs and gradients.

The kernels run in jax's generic Pallas interpreter here (``interpret=True``), which compiles
about twice as fast as TPU interpret mode; tests/kernels_pallas run the kernel itself in TPU
interpret mode. Kernel tiling needs key blocks of 128, hence the longer rows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm.attention.sparse import gathered, hsa, kernel_slots, moba, nsa, shifted

GENERIC = dict(kernel="pallas", interpret=True)


def _packed(b, t):
    """Row 0: one document; row 1: two documents (positions restart) and 5 padding tokens."""
    cut = t // 3
    seg = np.ones((b, t), np.int32)
    pos = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    seg[1, cut:] = 2
    pos[1, cut:] -= cut
    seg[1, -5:] = 0
    return jnp.asarray(seg), jnp.asarray(pos)


def test_moba_on_the_kernel_matches_naive_reference(inputs, assert_grads_match):
    """GQA, batch 2, packed documents and padding, a trailing partial block (T = 200)."""
    q, k, v, _ = inputs(2, 200, 4, 2, 8, seed=11)
    seg, pos = _packed(2, 200)
    kw = dict(block_size=128, top_k=2, q_pos=pos, k_pos=pos, q_segment_ids=seg, kv_segment_ids=seg)
    assert_grads_match(
        jax.jit(lambda q, k, v: moba.moba_attention(q, k, v, chunk=16, **kw, **GENERIC)),
        lambda q, k, v: moba.moba_reference(q, k, v, **kw),
        q,
        k,
        v,
    )


@pytest.mark.slow
def test_slot_attention_kernel_matches_gathered_including_lse():
    """Random per-token slots (some invalid) over three key blocks; the lse gets a cotangent."""
    b, t, n, kh, h, m, block = 2, 300, 4, 2, 8, 2, 128
    rng = np.random.default_rng(0)
    q, k, v = (
        jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
        for shape in ((b, t, n, h), (b, t, kh, h), (b, t, kh, h))
    )
    ids = jnp.asarray(np.argsort(rng.random((b, t, n, 3)), -1)[..., :m], jnp.int32)
    valid = jnp.asarray(rng.random((b, t, n, m)) < 0.8)
    seg, pos = _packed(b, t)
    kw = dict(block=block, q_pos=pos, k_pos=pos, q_seg=seg, kv_seg=seg, scale=0.3, chunk=16)

    def run(fn):
        def f(q, k, v):
            out, lse = fn(q, k, v, ids, valid, **kw)
            return out, jnp.where(jnp.isfinite(lse), lse, 0.0)

        return f

    fast = jax.jit(run(functools.partial(kernel_slots.slot_attention, interpret=True)))
    (out, lse), vjp = jax.vjp(fast, q, k, v)
    (want_out, want_lse), want_vjp = jax.vjp(run(gathered.slot_attention), q, k, v)
    np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=0)
    np.testing.assert_allclose(lse, want_lse, atol=1e-5, rtol=0)
    cts = (jnp.asarray(rng.standard_normal(out.shape), jnp.float32),
           jnp.asarray(rng.standard_normal(lse.shape), jnp.float32))  # fmt: skip
    for got, want in zip(vjp(cts), want_vjp(cts), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


@pytest.mark.slow
def test_moba_decode_on_the_kernel_equals_full_rows(inputs, assert_grads_match):
    q, k, v, pos = inputs(1, 256, 2, 1, 8, seed=12)
    rows = slice(240, 248)
    kw = dict(block_size=128, top_k=2)

    def decode(qd, k, v):
        return moba.moba_attention(
            qd, k, v, q_pos=pos[:, rows], k_pos=pos, chunk=8, **kw, **GENERIC
        )

    assert_grads_match(
        jax.jit(decode),
        lambda qd, k, v: moba.moba_reference(
            q.at[:, rows].set(qd), k, v, q_pos=pos, k_pos=pos, **kw
        )[:, rows],
        q[:, rows],
        k,
        v,
    )


@pytest.mark.slow
def test_hsa_on_the_kernel_matches_reference(inputs, assert_grads_match):
    q, k, v, pos = inputs(1, 384, 2, 1, 8, seed=13)
    kw = dict(chunk_size=128, top_k=2, q_pos=pos, k_pos=pos, weighting="stick_breaking")
    assert_grads_match(
        jax.jit(lambda q, k, v: hsa.hsa_attention(q, k, v, chunk=16, **kw, **GENERIC)),
        lambda q, k, v: hsa.hsa_reference(q, k, v, **kw),
        q,
        k,
        v,
    )


@pytest.mark.slow
def test_nsa_on_the_kernels_matches_reference(assert_close):
    """Selection branch on ``kernel_slots``, window branch on the block-sparse adapter."""
    b, t, n, kh, h, d = 1, 384, 4, 2, 8, 16
    settings = nsa.NSASettings(
        cmp_block=32, cmp_stride=16, slc_block=128, slc_top_n=2, local_blocks=1, window=100,
        query_tile=64, chunk=16, **GENERIC,
    )  # fmt: skip
    ks = jax.random.split(jax.random.PRNGKey(14), 5)
    x = jax.random.normal(ks[0], (b, t, d))
    q = jax.random.normal(ks[1], (b, t, n, h))
    k, v = (jax.random.normal(key, (b, t, kh, h)) for key in ks[2:4])
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    params = nsa.NSA(settings, n).init(ks[4], x, q, k, v, pos, pos)["params"]
    kw = dict(settings=settings, q_pos=pos, k_pos=pos)

    def fast(q, k, v):
        return nsa.nsa_attention(params, x, q, k, v, **kw)

    out, vjp = jax.vjp(jax.jit(fast), q, k, v)
    want, want_vjp = jax.vjp(lambda q, k, v: nsa.nsa_reference(params, x, q, k, v, **kw), q, k, v)
    assert_close(out, want)
    ct = jax.random.normal(ks[0], out.shape)
    for got, exp in zip(vjp(ct), want_vjp(ct), strict=True):
        assert_close(got, exp)


def test_sink_window_on_the_kernel_through_the_front_door(inputs, assert_grads_match):
    """``impl="sink_window", kernel="pallas"``: the block-sparse adapter with the combined mask;
    8 decoding queries at the end of a 300-key row. The oracle is reference with StreamingLLM's
    mask (the first ``sink`` keys and the last ``window`` up to the query)."""
    q, k, v, pos = inputs(2, 300, 4, 2, 8, seed=15)
    rows, sink, window = slice(292, 300), 3, 50
    common = dict(q_pos=pos[:, rows], k_pos=pos)

    def fast(qd, k, v):
        return attention.attend(
            qd, k, v, mask=attention.Causal(), impl="sink_window", sink=sink, window=window,
            block_q=8, block_kv=128, **common, **GENERIC,
        )  # fmt: skip

    def want(qd, k, v):
        mask = (attention.SlidingWindow(window - 1) | attention.Sink(sink)) & attention.Causal()
        return attention.attend(qd, k, v, mask=mask, impl="reference", **common)

    assert_grads_match(jax.jit(fast), want, q[:, rows], k, v)


def test_s2_attn_on_the_kernel_through_the_front_door(inputs, assert_grads_match):
    """``impl="s2_attn", kernel="pallas"``: each half of the heads on the block-sparse adapter
    with its (shifted) group mask; the oracle is reference per half of the heads with LongLoRA's
    groups (causal groups, then groups shifted by half a group; see static_test.py)."""
    t, group = 256, 128  # kv blocks of 128 (the kernel's TPU tiling): one group per kv block
    q, k, v, pos = inputs(1, t, 4, 2, 8, seed=16)

    def fast(q, k, v):
        return attention.attend(
            q, k, v, mask=attention.Causal(), impl="s2_attn", q_pos=pos, k_pos=pos,
            group_size=group, block_q=64, block_kv=128, **GENERIC,
        )  # fmt: skip

    def want(q, k, v):
        halves = (attention.ChunkedCausal(group), shifted.ShiftedChunkedCausal(group, group // 2))
        outs = []
        for i, mask in enumerate(halves):  # query heads 2i, 2i + 1 read kv head i
            q_i, k_i, v_i = q[:, :, 2 * i : 2 * i + 2], k[:, :, i : i + 1], v[:, :, i : i + 1]
            outs.append(
                attention.attend(q_i, k_i, v_i, mask=mask, impl="reference", q_pos=pos, k_pos=pos)
            )
        return jnp.concatenate(outs, axis=2)

    assert_grads_match(jax.jit(fast), want, q, k, v)


def test_kernel_choice_is_validated(inputs):
    q, k, v, pos = inputs(1, 8, 2, 1, 8)
    with pytest.raises(ValueError, match="moba kernel = 'triton'; allowed: blockwise, pallas"):
        moba.moba_attention(q, k, v, block_size=4, top_k=2, q_pos=pos, k_pos=pos, kernel="triton")
    with pytest.raises(ValueError, match="nsa kernel = 'x'"):
        nsa.NSASettings(kernel="x")
    with pytest.raises(ValueError, match=r"kernel=.pallas. cannot serve .* lacks custom_logits"):
        attention.attend(
            q, k, v, mask=attention.Causal(), impl="sink_window", q_pos=pos, k_pos=pos,
            logits_fn=_Hook(), kernel="pallas",
        )  # fmt: skip


class _Hook:
    """A hashable logits hook that must never run."""

    def __hash__(self):
        return 0

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        raise AssertionError("never called")
