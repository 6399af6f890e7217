"""Every attention implementation against ``reference``: outputs and ``jax.vjp`` gradients.

``reference`` (dense, float32, HIGHEST precision) is the oracle. The grid covers each mask and
combinations, segment ids with padding, GQA ratios 1 / 2 / N, T != S, lengths that are not
multiples of the block size, permuted positions, rows that see no key, bfloat16 inputs and
custom ``logits_fn`` hooks. Positions are passed as traced ``jit`` arguments, as in the model.
"""

import dataclasses
import zlib

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from lcm import attention
from lcm.attention import masks

# Tolerance per input dtype, relative to max(largest reference magnitude, 1) per compared array.
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}
IMPLS = ("xla", "blockwise")
BLOCKS = {"block_q": 8, "block_kv": 4}  # tiny tiles, so every case spans several


@dataclasses.dataclass(frozen=True)
class SoftCapAlibi:
    """Test-only logits hook: ALiBi-like distance bias (Press et al. 2021) and a tanh soft cap.

    The cap makes logits a non-linear function of q.k, so the backward's per-tile ``jax.vjp`` of
    the hook is really exercised.
    """

    slope: float = 0.5
    cap: float = 0.0  # 0 = no cap

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        b, t, n, h = q.shape
        kh = k.shape[2]
        dots = jnp.einsum(
            "btkgh,bskh->bkgts",
            q.reshape(b, t, kh, n // kh, h),
            k,
            preferred_element_type=jnp.float32,
        ).reshape(b, n, t, k.shape[1])
        logits = scale * dots
        if self.cap:
            logits = self.cap * jnp.tanh(logits / self.cap)
        slopes = self.slope ** (1.0 + jnp.arange(n, dtype=jnp.float32))
        distance = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)
        return logits - slopes[None, :, None, None] * distance[:, None]


CAUSAL = masks.Causal()


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    mask: masks.Mask = CAUSAL
    t: int = 19
    s: int = 19
    n: int = 4
    k: int = 2
    dtype: object = jnp.float32
    positions: str = "arange"  # arange | permuted
    segments: str = "none"  # none | packed | unmatched
    logits_fn: object = None


CASES = [
    Case("causal"),
    Case("full", masks.Full()),
    Case("window", masks.SlidingWindow(5)),
    Case("window_bidirectional", masks.SlidingWindow(3, 6)),
    Case("chunked", masks.ChunkedCausal(6)),
    Case("sink", masks.Sink(3)),
    Case("streaming", (masks.SlidingWindow(4) | masks.Sink(2)) & masks.Causal()),
    Case("chunked_or_window", masks.ChunkedCausal(8) | masks.SlidingWindow(2)),
    Case("mha", k=4),
    Case("mqa", k=1),
    Case("decode", t=1, s=23),
    Case("chunked_prefill", t=7, s=23),
    Case("longer_queries", masks.Full(), t=23, s=9),
    Case("permuted", positions="permuted"),
    Case("packed", segments="packed"),
    Case("packed_full", masks.Full(), segments="packed"),
    Case("packed_window_mqa", masks.SlidingWindow(3), k=1, segments="packed"),
    Case("unmatched_rows", segments="unmatched"),
    Case("bf16", dtype=jnp.bfloat16, segments="packed"),
    Case("logits_fn", logits_fn=SoftCapAlibi()),
    Case("logits_fn_capped_gqa", masks.Full(), t=11, s=17, logits_fn=SoftCapAlibi(0.7, 2.0)),
]


def _inputs(case: Case, batch: int = 2):
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    h = 8
    q = rng.standard_normal((batch, case.t, case.n, h))
    k = rng.standard_normal((batch, case.s, case.k, h))
    v = rng.standard_normal((batch, case.s, case.k, h))
    ct = rng.standard_normal((batch, case.t, case.n, h))
    q, k, v, ct = (jnp.asarray(x, case.dtype) for x in (q, k, v, ct))
    # Queries are the last t of the s positions (decode and chunked prefill), or the first s.
    k_pos = np.tile(np.arange(case.s), (batch, 1))
    q_pos = np.tile(np.arange(case.t) + max(case.s - case.t, 0), (batch, 1))
    if case.positions == "permuted":  # a load-balanced token order: same tokens, shuffled
        order = np.stack([rng.permutation(case.s) for _ in range(batch)])
        q_pos = k_pos = np.take_along_axis(k_pos, order, 1)
    seg = None
    if case.segments == "packed":  # documents of lengths 7, 8, then padding; positions restart
        ids = np.array([1] * 7 + [2] * 8 + [0] * (case.s - 15))
        seg = (np.tile(ids, (batch, 1)), np.tile(ids, (batch, 1)))
        q_pos = k_pos = np.tile(np.r_[np.arange(7), np.arange(case.s - 7)], (batch, 1))
    elif case.segments == "unmatched":  # query ids 3 and 0 never meet a key of their segment
        q_ids = np.array([1] * 8 + [3] * 4 + [0] * 3 + [2] * (case.t - 15))
        k_ids = np.array([1] * 9 + [2] * (case.s - 9))
        seg = (np.tile(q_ids, (batch, 1)), np.tile(k_ids, (batch, 1)))
    as_int = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    seg = None if seg is None else tuple(as_int(x) for x in seg)
    return q, k, v, ct, as_int(q_pos), as_int(k_pos), seg


def _run(impl, case, q, k, v, ct, q_pos, k_pos, seg, **options):
    """Jitted (out, dq, dk, dv) with positions and segment ids as traced arguments."""

    @jax.jit
    def run(q, k, v, ct, q_pos, k_pos, seg):
        def fwd(q, k, v):
            return attention.attend(
                q,
                k,
                v,
                mask=case.mask,
                impl=impl,
                q_pos=q_pos,
                k_pos=k_pos,
                q_segment_ids=None if seg is None else seg[0],
                kv_segment_ids=None if seg is None else seg[1],
                logits_fn=case.logits_fn,
                **options,
            )

        out, pullback = jax.vjp(fwd, q, k, v)
        return (out, *pullback(ct))

    return run(q, k, v, ct, q_pos, k_pos, seg)


def _assert_close(got, want, tol, what):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    # Inputs are unit normal, so 1 is the size of the terms that cancel in a near-zero result
    # (a row that sees one key has dq = 0 up to rounding of O(1) products).
    scale = max(np.abs(want).max(), 1.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_reference(case):
    q, k, v, ct, q_pos, k_pos, seg = _inputs(case)
    # The oracle sees the very same (possibly bf16-rounded) values, computed in float32.
    want = _run(
        "reference", case, *(x.astype(jnp.float32) for x in (q, k, v, ct)), q_pos, k_pos, seg
    )
    impls = [i for i in IMPLS if case.logits_fn is None or i != "xla"]
    for impl in impls:
        options = BLOCKS if impl == "blockwise" else {}
        got = _run(impl, case, q, k, v, ct, q_pos, k_pos, seg, **options)
        for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
            assert g.dtype == case.dtype, f"{impl} {name} dtype {g.dtype}"
            _assert_close(g, w, TOL[case.dtype], f"{impl} {case.name} {name}")


def test_rows_without_keys_are_zero_with_zero_gradients():
    case = Case("unmatched_rows", segments="unmatched")
    q, k, v, ct, q_pos, k_pos, seg = _inputs(case)
    for impl in ("reference", *IMPLS):
        out, dq, _, _ = _run(impl, case, q, k, v, ct, q_pos, k_pos, seg)
        # Query rows 8..14 (segment 3, then padding) see no key.
        np.testing.assert_array_equal(np.asarray(out[:, 8:15]), 0.0, err_msg=impl)
        np.testing.assert_array_equal(np.asarray(dq[:, 8:15]), 0.0, err_msg=impl)


LSE_CASES = [c for c in CASES if c.name in ("causal", "permuted", "unmatched_rows", "logits_fn")]


@pytest.mark.parametrize("case", LSE_CASES, ids=lambda c: c.name)
def test_lse_and_its_gradient_match_reference(case):
    q, k, v, ct, q_pos, k_pos, seg = _inputs(case)
    ct_lse = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape[:3]), jnp.float32)

    def run(impl, **options):
        def fwd(q, k, v):
            return attention.attend(
                q,
                k,
                v,
                mask=case.mask,
                impl=impl,
                q_pos=q_pos,
                k_pos=k_pos,
                q_segment_ids=None if seg is None else seg[0],
                kv_segment_ids=None if seg is None else seg[1],
                logits_fn=case.logits_fn,
                return_lse=True,
                **options,
            )

        (out, lse), pullback = jax.vjp(fwd, q, k, v)
        return (out, lse, *pullback((ct, ct_lse)))

    want = jax.jit(lambda: run("reference"))()
    got = jax.jit(lambda: run("blockwise", **BLOCKS))()
    lse_got, lse_want = np.asarray(got[1]), np.asarray(want[1])
    np.testing.assert_array_equal(np.isneginf(lse_got), np.isneginf(lse_want))
    seen = np.isfinite(lse_want)
    _assert_close(lse_got[seen], lse_want[seen], 1e-5, "lse")
    for name, g, w in zip(
        ("out", "dq", "dk", "dv"), got[:1] + got[2:], want[:1] + want[2:], strict=True
    ):
        _assert_close(g, w, 1e-5, name)


@pytest.mark.parametrize("block_q, block_kv", [(1, 1), (5, 7), (19, 19), (64, 3)])
def test_blockwise_any_block_size(block_q, block_kv):
    case = Case("packed_window_mqa", masks.SlidingWindow(3), k=1, segments="packed")
    q, k, v, ct, q_pos, k_pos, seg = _inputs(case)
    want = _run("reference", case, q, k, v, ct, q_pos, k_pos, seg)
    got = _run(
        "blockwise", case, q, k, v, ct, q_pos, k_pos, seg, block_q=block_q, block_kv=block_kv
    )
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        _assert_close(g, w, 1e-5, name)


@pytest.mark.slow
def test_blockwise_larger_shapes():
    case = Case("big", masks.SlidingWindow(100) | masks.Sink(4), t=700, s=700, n=8, k=2)
    q, k, v, ct, q_pos, k_pos, seg = _inputs(case, batch=1)
    want = _run("reference", case, q, k, v, ct, q_pos, k_pos, seg)
    got = _run("blockwise", case, q, k, v, ct, q_pos, k_pos, seg, block_q=128, block_kv=64)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        _assert_close(g, w, 1e-5, name)


@settings(max_examples=4)
@given(seed=st.integers(0, 2**31), mask=st.sampled_from(CASES[:8]).map(lambda c: c.mask))
def test_blockwise_random_positions_and_segments(seed, mask):
    # Arbitrary positions (duplicates, gaps, any order) and segment ids with padding: tiles are
    # classified from loose position boxes, which must stay safe.
    rng = np.random.default_rng(seed)
    case = Case("random", mask, t=13, s=17)
    q, k, v, ct, _, _, _ = _inputs(case)
    q_pos, k_pos = (jnp.asarray(rng.integers(0, 40, (2, n)), jnp.int32) for n in (13, 17))
    seg = tuple(jnp.asarray(rng.integers(0, 3, (2, n)), jnp.int32) for n in (13, 17))
    want = _run("reference", case, q, k, v, ct, q_pos, k_pos, seg)
    got = _run("blockwise", case, q, k, v, ct, q_pos, k_pos, seg, **BLOCKS)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        _assert_close(g, w, 1e-5, name)


_VISITS = []  # (first query position, first key position, what) per executed tile


def _record(what):
    def callback(q_pos, k_pos):
        _VISITS.append((int(q_pos[0, 0]), int(k_pos[0, 0]), what))

    return callback


@dataclasses.dataclass(frozen=True)
class CountingLogits(SoftCapAlibi):
    """Plain logits (slope 0) that record every tile they are computed for."""

    slope: float = 0.0

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        jax.debug.callback(_record("logits"), q_pos, k_pos)
        return super().__call__(q, k, q_pos, k_pos, scale=scale)


@dataclasses.dataclass(frozen=True)
class CountingCausal(masks.Causal):
    """Causal mask that records every dense evaluation."""

    def visible(self, q, k):
        jax.debug.callback(_record("mask"), q[..., 0], k[..., 0, :])
        return super().visible(q, k)


def test_blockwise_skips_empty_tiles_and_full_tiles_skip_the_mask():
    # 4 query blocks x 4 key blocks of 8, causal: 6 full tiles below the diagonal, 4 partial
    # on it, 6 empty above it.
    pos = jnp.arange(32, dtype=jnp.int32)[None]
    q = k = v = jnp.ones((1, 32, 1, 4))
    _VISITS.clear()
    out = attention.attend(
        q,
        k,
        v,
        mask=CountingCausal(),
        impl="blockwise",
        q_pos=pos,
        k_pos=pos,
        logits_fn=CountingLogits(),
        block_q=8,
        block_kv=8,
    )
    jax.block_until_ready(out)
    jax.effects_barrier()
    logits = sorted((q0, k0) for q0, k0, what in _VISITS if what == "logits")
    masked = sorted((q0, k0) for q0, k0, what in _VISITS if what == "mask")
    assert logits == [(i, j) for i in range(0, 32, 8) for j in range(0, i + 1, 8)]
    assert masked == [(i, i) for i in range(0, 32, 8)]
