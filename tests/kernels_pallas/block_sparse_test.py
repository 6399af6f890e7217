"""block_sparse_attention vs dense references (outputs, lse, gradients); tiles and DMAs visited.

Same pattern as flash_test: ``TestBlockSparse`` is compiled and needs a TPU,
``TestBlockSparseInterpret`` runs it in Pallas TPU interpret mode on CPU (with the tile probe),
``TestBlockSparseDefault`` with the default ``interpret=None`` (jax's generic Pallas interpreter
off TPU).
"""

import functools

import hypothesis.strategies as hst
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas import engine
from kernels_pallas.block_sparse import (
    block_lists_from_ids,
    block_lists_from_mask,
    block_sparse_attention,
    block_sparse_attention_bwd,
    block_sparse_reference,
)
from kernels_pallas.block_sparse.kernel import list_schedule
from kernels_pallas.flash.reference import attention_reference, token_visibility
from kernels_pallas.mask import EMPTY, FULL, PARTIAL, PositionalMask, segment_tile_kind

ATOL = dict(out=1e-5, grad=5e-5)


def _inputs(b, n, kh, t, s, h, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(keys[0], (b, n, t, h))
    k = jax.random.normal(keys[1], (b, kh, s, h))
    v = jax.random.normal(keys[2], (b, kh, s, h))
    return q, k, v, jax.random.normal(keys[3], (b, n, t, h)), jax.random.normal(keys[4], (b, n, t))


def _vjp(fn, q, k, v, d_out, d_lse):
    (out, lse), pullback = jax.vjp(fn, q, k, v)
    return out, lse, pullback((d_out, jnp.where(jnp.isfinite(lse), d_lse, 0.0)))


def _compare(got, want):
    out, lse, grads = got
    r_out, r_lse, r_grads = want
    np.testing.assert_allclose(out, r_out, atol=ATOL["out"], rtol=ATOL["out"])
    np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(r_lse))
    finite = np.isfinite(r_lse)
    np.testing.assert_allclose(lse[finite], r_lse[finite], atol=ATOL["out"], rtol=ATOL["out"])
    for g, r in zip(grads, r_grads, strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, r, atol=ATOL["grad"], rtol=ATOL["grad"])


def _random_lists(rng, bl, kl, nq, nk, width, block_q, block_kv):
    """Random selections: distinct kv blocks per row, random PARTIAL / FULL, random counts."""
    ids = np.stack([rng.permutation(nk)[:width] for _ in range(bl * kl * nq)])
    ids = ids.reshape(bl, kl, nq, width)
    kinds = rng.integers(PARTIAL, FULL + 1, ids.shape)
    counts = rng.integers(0, width + 1, (bl, kl, nq))
    return block_lists_from_ids(
        jnp.asarray(ids), jnp.asarray(kinds), jnp.asarray(counts), nk, block_q, block_kv
    )


class TestBlockSparse:
    INTERPRET = False  # True: Pallas TPU interpret mode (tile probe)
    DEFAULT = False  # True: interpret=None, the default (generic interpreter off TPU)

    @pytest.fixture(autouse=True)
    def _needs_backend(self):
        if not (self.INTERPRET or self.DEFAULT) and jax.default_backend() != "tpu":
            pytest.skip("compiled Mosaic TPU kernels need a TPU")

    def interpret(self):
        if self.DEFAULT:
            return None
        return pltpu.InterpretParams() if self.INTERPRET else False

    def kernel(self, **kw):
        return functools.partial(
            block_sparse_attention, return_lse=True, interpret=self.interpret(), **kw
        )

    def test_sliding_window_with_sinks_gqa(self):
        # Lists from a static mask must reproduce plain masked attention: an oracle that knows
        # nothing about blocks.
        b, n, kh, t, h = 1, 4, 2, 512, 32
        mask = PositionalMask(causal=True, window_left=150, sink=16)
        lists = block_lists_from_mask(mask, t, t, 128, 128)
        assert (np.asarray(lists.kv_counts) < 4).any()  # some tiles really are skipped
        q, k, v, d_out, d_lse = _inputs(b, n, kh, t, t, h)
        got = _vjp(lambda *x: self.kernel(mask=mask, scale=0.2)(*x, lists), q, k, v, d_out, d_lse)
        pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        visible = token_visibility(mask, pos, pos)
        want = _vjp(lambda *x: attention_reference(*x, visible, scale=0.2), q, k, v, d_out, d_lse)
        _compare(got, want)

    def test_random_lists_per_head_with_segments_and_tile_count(self):
        # Data-dependent lists differing per batch entry and kv head, partial tiles masked
        # causally, packed documents with padding. The probe checks that each kernel computes
        # exactly the listed tiles.
        b, n, kh, t, s, h, bq, bk = 2, 4, 2, 256, 512, 16, 64, 128
        rng = np.random.default_rng(1)
        lists = _random_lists(rng, b, kh, t // bq, s // bk, 3, bq, bk)
        q_seg = jnp.asarray(np.repeat(rng.integers(0, 3, (b, t // 32)), 32, axis=1))
        kv_seg = jnp.asarray(np.repeat(rng.integers(0, 3, (b, s // 32)), 32, axis=1))
        q_pos = jnp.broadcast_to(jnp.arange(t) + s - t, (b, t))  # queries are the last t keys
        mask = PositionalMask(causal=True)
        seen = []
        probe = lambda kernel, *ids: seen.append((kernel, *map(int, ids)))  # noqa: E731
        kernel = self.kernel(mask=mask, tile_probe=probe if self.INTERPRET else None)
        args = (lists, q_seg, kv_seg, q_pos)
        q, k, v, d_out, d_lse = _inputs(b, n, kh, t, s, h)
        got = _vjp(lambda *x: kernel(*x, *args), q, k, v, d_out, d_lse)
        ref = functools.partial(block_sparse_reference, mask=mask, return_lse=True)
        _compare(got, _vjp(lambda *x: ref(*x, *args), q, k, v, d_out, d_lse))
        if not self.INTERPRET:
            return
        # Expected tiles: listed, and not ruled out by the segment summaries (which the kernel
        # also uses to skip).
        q_sum = np.asarray(engine.segment_summary(q_seg, bq)).reshape(b, -1, 3)
        kv_sum = np.asarray(engine.segment_summary(kv_seg, bk)).reshape(b, -1, 3)
        expected = []
        ids, counts = np.asarray(lists.kv_ids), np.asarray(lists.kv_counts)
        for bi, ni, i in np.ndindex(b, n, t // bq):
            row = (bi, ni // (n // kh), i)
            for e in range(counts[row]):
                j = ids[row][e]
                if segment_tile_kind(*q_sum[bi, i], *kv_sum[bi, j]) != EMPTY:
                    expected.append((bi, ni, i, j))
        assert len(expected) > 0
        for name in ("fwd", "dq", "dkv"):
            assert sorted(tuple(x) for kernel, *x in seen if kernel == name) == sorted(expected)

    @pytest.mark.slow
    def test_chunked_attention_on_a_shard(self):
        # Chunked causal attention of a ring shard: positions start at an offset.
        b, n, kh, t, h = 1, 2, 1, 512, 32
        mask = PositionalMask(causal=True, chunk=192)
        lists = block_lists_from_mask(mask, t, t, 128, 128, q_offset=1000, kv_offset=1000)
        pos = jnp.broadcast_to(1000 + jnp.arange(t), (b, t))
        q, k, v, d_out, d_lse = _inputs(b, n, kh, t, t, h)
        kernel = self.kernel(mask=mask)
        got = _vjp(lambda *x: kernel(*x, lists, None, None, pos, pos), q, k, v, d_out, d_lse)
        visible = token_visibility(mask, pos, pos)
        want = _vjp(
            lambda *x: attention_reference(*x, visible, scale=h**-0.5), q, k, v, d_out, d_lse
        )
        _compare(got, want)

    # The subclasses (interpret modes) run this method from different instances, by design.
    @settings(max_examples=5, suppress_health_check=[HealthCheck.differing_executors])
    @given(
        nq=hst.integers(1, 3),
        nk=hst.integers(1, 3),
        width=hst.integers(1, 3),
        seed=hst.integers(0, 99),
    )
    @pytest.mark.slow
    def test_fuzz_random_lists(self, nq, nk, width, seed):
        width = min(width, nk)
        rng = np.random.default_rng(seed)
        lists = _random_lists(rng, 1, 1, nq, nk, width, 64, 128)
        q, k, v, d_out, d_lse = _inputs(1, 2, 1, 64 * nq, 128 * nk, 32, seed)
        mask = PositionalMask(causal=True, window_left=100)
        got = _vjp(lambda *x: self.kernel(mask=mask)(*x, lists), q, k, v, d_out, d_lse)
        ref = functools.partial(block_sparse_reference, mask=mask, return_lse=True)
        _compare(got, _vjp(lambda *x: ref(*x, lists), q, k, v, d_out, d_lse))

    def test_backward_alone_gives_each_kv_shard_its_share(self):
        # Ring attention's backward: with the out / lse of attention over ALL keys, the backward
        # of each kv shard gives dk, dv of that shard and a dq share; the shares sum to the
        # dense gradients.
        b, n, kh, t, h = 1, 2, 1, 256, 32
        mask = PositionalMask(causal=True, window_left=100, sink=8)
        q, k, v, d_out, d_lse = _inputs(b, n, kh, t, t, h, seed=5)
        pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        visible = token_visibility(mask, pos, pos)
        out, lse, (dq, dk, dv) = _vjp(
            lambda *x: attention_reference(*x, visible, scale=0.3), q, k, v, d_out, d_lse
        )
        got_dq = jnp.zeros_like(dq)
        for lo in (0, 128):
            lists = block_lists_from_mask(mask, t, 128, 64, 128, kv_offset=lo)
            shard = slice(lo, lo + 128)
            dq_s, dk_s, dv_s = block_sparse_attention_bwd(
                q, k[:, :, shard], v[:, :, shard], out, lse, d_out, lists, None, None, pos,
                pos[:, shard], d_lse=d_lse, mask=mask, scale=0.3, interpret=self.interpret(),
            )  # fmt: skip
            got_dq = got_dq + dq_s
            np.testing.assert_allclose(dk_s, dk[:, :, shard], atol=ATOL["grad"])
            np.testing.assert_allclose(dv_s, dv[:, :, shard], atol=ATOL["grad"])
        np.testing.assert_allclose(got_dq, dq, atol=ATOL["grad"])


class TestBlockSparseInterpret(TestBlockSparse):
    INTERPRET = True


class TestBlockSparseDefault(TestBlockSparse):
    DEFAULT = True


def test_padding_steps_reuse_the_resident_block():
    """A row's padding steps name its last listed block, so they cost no DMA and no compute."""
    rng = np.random.default_rng(0)
    lists = _random_lists(rng, 1, 1, 6, 8, 4, 64, 128)
    for sched, rows in (
        (list_schedule(lists.kv_ids, lists.kv_kinds, lists.kv_counts), 6),
        (list_schedule(lists.q_ids, lists.q_kinds, lists.q_counts), 8),
    ):
        refs = [np.asarray(x) for x in sched.prefetch]
        for r in range(rows):
            steps = [
                (int(sched.block(0, 0, r, j, *refs)), int(sched.kind(0, 0, r, j, *refs)))
                for j in range(sched.width)
            ]
            count = sum(kind != EMPTY for _, kind in steps)
            assert all(kind != EMPTY for _, kind in steps[:count])
            if count:
                assert all(blk == steps[count - 1][0] for blk, _ in steps[count:])


def test_bad_lists():
    q, k, v, _, _ = _inputs(1, 2, 1, 256, 256, 16)
    mask = PositionalMask(causal=True)
    lists = block_lists_from_mask(mask, 256, 256, 128, 128)
    with pytest.raises(ValueError, match=r"lists\.block_kv = 128 must divide kv length S = 320"):
        k3 = jnp.zeros((1, 1, 320, 16))
        block_sparse_attention(q, k3, k3, lists, mask=mask)
    other = block_lists_from_mask(mask, 256, 512, 128, 128)
    with pytest.raises(ValueError, match=r"lists.q_ids: shape \(1, 1, 4, 2\) must be"):
        block_sparse_attention(q, k, v, other, mask=mask)
    with pytest.raises(ValueError, match="mask = 'causal'"):
        block_sparse_attention(q, k, v, lists, mask="causal")
    for interpret in (None, False):
        with pytest.raises(ValueError, match="tile_probe needs an explicit interpret mode"):
            block_sparse_attention(q, k, v, lists, mask=mask, interpret=interpret, tile_probe=print)
