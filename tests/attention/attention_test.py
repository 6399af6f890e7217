"""``blockwise`` beyond the conformance grid (tests/attention/conformance_test.py): any tile
shape, larger shapes, arbitrary positions and segment ids, and which tiles it computes.

``reference`` (dense, float32, HIGHEST precision) is the oracle; inputs, cases and the hook come
from the conformance test, the tolerance table from tests/conftest.py.
"""

import dataclasses

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from lcm import attention
from lcm.attention import masks
from tests.attention.conformance_test import CASES, Case, SoftCapAlibi, attention_fn, inputs, vjp
from tests.conftest import ATTENTION_TOL, assert_close

BLOCKS = {"block_q": 8, "block_kv": 4}  # tiny tiles, so every case spans several
MASKS = [case.mask for case in CASES[:8]]  # the conformance grid's mask cases


def _run(impl, case, q, k, v, ct, q_pos, k_pos, seg, **options):
    """Jitted (out, dq, dk, dv) with positions and segment ids as traced arguments."""
    fn = attention_fn(impl, case.mask, case, **options)
    out, _, *grads = vjp(fn, q, k, v, ct, q_pos, k_pos, seg)
    return out, *grads


def _check(got, want):
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert_close(g, w, ATTENTION_TOL[jnp.float32], name)


@pytest.mark.parametrize("block_q, block_kv", [(1, 1), (5, 7), (19, 19), (64, 3)])
def test_blockwise_any_block_size(block_q, block_kv):
    case = Case("packed_window_mqa", masks.SlidingWindow(3), t=19, s=19, k=1, segments="packed")
    q, k, v, ct, q_pos, k_pos, seg = inputs(case)
    want = _run("reference", case, q, k, v, ct, q_pos, k_pos, seg)
    got = _run(
        "blockwise", case, q, k, v, ct, q_pos, k_pos, seg, block_q=block_q, block_kv=block_kv
    )
    _check(got, want)


@pytest.mark.slow
def test_blockwise_larger_shapes():
    case = Case("big", masks.SlidingWindow(100) | masks.Sink(4), t=700, s=700, n=8, k=2)
    q, k, v, ct, q_pos, k_pos, seg = inputs(case, batch=1)
    want = _run("reference", case, q, k, v, ct, q_pos, k_pos, seg)
    got = _run("blockwise", case, q, k, v, ct, q_pos, k_pos, seg, block_q=128, block_kv=64)
    _check(got, want)


@settings(max_examples=4)
@given(seed=st.integers(0, 2**31), mask=st.sampled_from(MASKS))
def test_blockwise_random_positions_and_segments(seed, mask):
    # Arbitrary positions (duplicates, gaps, any order) and segment ids with padding: tiles are
    # classified from loose position boxes, which must stay safe.
    rng = np.random.default_rng(seed)
    case = Case("random", mask, t=13, s=17, k=2)
    q, k, v, ct, _, _, _ = inputs(case)
    q_pos, k_pos = (jnp.asarray(rng.integers(0, 40, (2, n)), jnp.int32) for n in (13, 17))
    seg = tuple(jnp.asarray(rng.integers(0, 3, (2, n)), jnp.int32) for n in (13, 17))
    want = _run("reference", case, q, k, v, ct, q_pos, k_pos, seg)
    got = _run("blockwise", case, q, k, v, ct, q_pos, k_pos, seg, **BLOCKS)
    _check(got, want)


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
