"""flash_attention vs the dense reference (outputs, lse and gradients), tile skipping, races.

jax's Pallas test pattern: ``TestFlash`` runs compiled (``interpret=False``) and skips without a
TPU; ``TestFlashInterpret`` runs the same tests in Pallas TPU interpret mode on CPU (with the tile
probe and the race detector); ``TestFlashDefault`` runs the numerical tests with the default
``interpret=None`` (jax's generic Pallas interpreter off TPU, compiled Mosaic on TPU). Compile
time dominates in interpret mode (~3 s per configuration), so shapes are tiny and the grid small.
"""

import functools

import hypothesis.strategies as hst
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas import engine
from kernels_pallas.flash import BlockSizes, flash_attention, flash_attention_bwd, mha_reference
from kernels_pallas.flash.kernel import flash_schedules
from kernels_pallas.flash.reference import token_visibility
from kernels_pallas.mask import EMPTY, PositionalMask

TOL = {jnp.float32: dict(out=1e-5, grad=5e-5), jnp.bfloat16: dict(out=3e-2, grad=8e-2)}


def _inputs(b, n, kh, t, s, h, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(keys[0], (b, n, t, h), dtype)
    k = jax.random.normal(keys[1], (b, kh, s, h), dtype)
    v = jax.random.normal(keys[2], (b, kh, s, h), dtype)
    d_out = jax.random.normal(keys[3], (b, n, t, h), jnp.float32)
    d_lse = jax.random.normal(keys[4], (b, n, t), jnp.float32)
    return q, k, v, d_out, d_lse


def _packed_segments(b, length, lengths):
    """Documents of the given lengths packed back to back, then padding (id 0)."""
    row = np.zeros(length, np.int32)
    start = 0
    for i, n in enumerate(lengths):
        row[start : start + n] = i + 1
        start += n
    return jnp.asarray(np.broadcast_to(row, (b, length)))


def _vjp(fn, q, k, v, d_out, d_lse):
    """Outputs and (dq, dk, dv) of ``fn(q, k, v) -> (out, lse)`` for the given cotangents."""
    (out, lse), pullback = jax.vjp(fn, q, k, v)
    # Rows that see nothing have lse = -inf; their lse cotangent must not matter.
    grads = pullback((d_out.astype(out.dtype), jnp.where(jnp.isfinite(lse), d_lse, 0.0)))
    return out, lse, grads


def _assert_close(actual, expected, tol):
    np.testing.assert_allclose(
        np.asarray(actual, np.float32), np.asarray(expected, np.float32), atol=tol, rtol=tol
    )


class TestFlash:
    INTERPRET = False  # True: Pallas TPU interpret mode (tile probe, race detector)
    DEFAULT = False  # True: interpret=None, the default (generic interpreter off TPU)

    @pytest.fixture(autouse=True)
    def _needs_backend(self):
        if not (self.INTERPRET or self.DEFAULT) and jax.default_backend() != "tpu":
            pytest.skip("compiled Mosaic TPU kernels need a TPU")

    def interpret(self, **params):
        if self.DEFAULT:
            return None
        return pltpu.InterpretParams(**params) if self.INTERPRET else False

    def check(
        self,
        b,
        n,
        kh,
        t,
        s,
        h,
        *,
        causal,
        blocks,
        seg=None,
        pos=None,
        dtype=jnp.float32,
        probe=None,
    ):
        q, k, v, d_out, d_lse = _inputs(b, n, kh, t, s, h, dtype)
        q_seg, kv_seg = seg if seg is not None else (None, None)
        q_pos, kv_pos = pos if pos is not None else (None, None)
        kw = dict(causal=causal, scale=0.3, return_lse=True)
        kernel = functools.partial(
            flash_attention, block_sizes=blocks, interpret=self.interpret(), tile_probe=probe, **kw
        )
        ref = functools.partial(mha_reference, **kw)
        args = (q_seg, kv_seg, q_pos, kv_pos)
        out, lse, grads = _vjp(lambda *x: kernel(*x, *args), q, k, v, d_out, d_lse)
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]
        r_out, r_lse, r_grads = _vjp(lambda *x: ref(*x, *args), *f32, d_out, d_lse)
        tol = TOL[dtype]
        assert out.dtype == dtype and lse.dtype == jnp.float32
        _assert_close(out, r_out, tol["out"])
        np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(r_lse))
        _assert_close(
            jnp.where(jnp.isfinite(lse), lse, 0),
            jnp.where(jnp.isfinite(r_lse), r_lse, 0),
            tol["out"],
        )
        for name, g, r in zip("qkv", grads, r_grads, strict=True):
            assert g.dtype == dtype, name
            assert np.isfinite(np.asarray(g, np.float32)).all(), name
            _assert_close(g, r, tol["grad"])
        return out, lse, grads

    @pytest.mark.parametrize("causal", [False, True])
    def test_matches_reference(self, causal):
        # Two q blocks of 64 and two kv blocks of 128: skipped, partial and full tiles.
        self.check(1, 2, 1, 128, 256, 32, causal=causal, blocks=BlockSizes(64, 128))

    def test_gqa_causal_segments_with_padding(self):
        # N=4 query heads on K=2 kv heads; two packed documents then padding, so the last q
        # and kv blocks are all padding and some rows see nothing (zero output, -inf lse,
        # zero and finite gradients). The tile probe checks that exactly the non-empty tiles
        # are computed, in each of the three kernels.
        b, n, t, block = 2, 4, 384, 128
        seg = _packed_segments(b, t, [100, 90])
        seen = []
        probe = lambda kernel, *ids: seen.append((kernel, *map(int, ids)))  # noqa: E731
        out, lse, (dq, _, _) = self.check(
            b, n, 2, t, t, 32, causal=True, blocks=BlockSizes(block, block), seg=(seg, seg),
            probe=probe if self.INTERPRET else None,
        )  # fmt: skip
        pad = np.asarray(seg[0]) == 0
        assert np.all(np.asarray(out)[:, :, pad] == 0)
        assert np.all(np.isneginf(np.asarray(lse)[:, :, pad]))
        assert np.all(np.asarray(dq)[:, :, pad] == 0)
        if not self.INTERPRET:
            return
        pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        visible = np.asarray(token_visibility(PositionalMask(causal=True), pos, pos, seg, seg))
        nb = t // block
        tiles = visible[:, 0].reshape(b, nb, block, nb, block).any(axis=(2, 4))
        expected = sorted(
            (bi, ni, i, j) for bi, i, j in zip(*np.nonzero(tiles), strict=True) for ni in range(n)
        )
        assert 0 < len(expected) < b * n * nb * nb
        for kernel in ("fwd", "dq", "dkv"):
            assert sorted(tuple(ids) for name, *ids in seen if name == kernel) == expected, kernel

    @pytest.mark.slow
    def test_positions_for_a_ring_shard(self):
        # A zigzag shard: queries hold chunks 0 and 3 of 4, keys chunks 1 and 2; causality
        # follows positions, not indices.
        c = 128
        q_pos = jnp.concatenate([jnp.arange(0, c), jnp.arange(3 * c, 4 * c)])[None]
        kv_pos = jnp.arange(c, 3 * c)[None]
        self.check(
            1, 2, 2, 2 * c, 2 * c, 32, causal=True, blocks=BlockSizes(c, c), pos=(q_pos, kv_pos)
        )

    def test_ring_shards_merge_and_backward_with_global_residuals(self):
        # Ring attention's use: keys in two shards, per-shard (out, lse) merged by lse, and the
        # backward run per shard with the merged out / lse gives the full gradients.
        b, n, t, h, c = 1, 2, 256, 32, 128
        q, k, v, d_out, _ = _inputs(b, n, 1, t, t, h)
        pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        kw = dict(causal=True, block_sizes=BlockSizes(c, c), interpret=self.interpret())
        shards = [(k[:, :, i : i + c], v[:, :, i : i + c], pos[:, i : i + c]) for i in (0, c)]
        parts = [
            flash_attention(q, ks, vs, None, None, pos, ps, return_lse=True, **kw)
            for ks, vs, ps in shards
        ]
        lse = jnp.logaddexp(parts[0][1], parts[1][1])
        out = sum(jnp.exp(l - lse)[..., None] * o for o, l in parts)
        r_out, r_lse, r_grads = _vjp(
            functools.partial(mha_reference, causal=True, return_lse=True), q, k, v, d_out, 0 * lse
        )
        _assert_close(out, r_out, TOL[jnp.float32]["out"])
        _assert_close(lse, r_lse, TOL[jnp.float32]["out"])
        grads = [
            flash_attention_bwd(q, ks, vs, out, lse, d_out, None, None, pos, ps, **kw)
            for ks, vs, ps in shards
        ]
        _assert_close(grads[0][0] + grads[1][0], r_grads[0], TOL[jnp.float32]["grad"])
        _assert_close(
            jnp.concatenate([g[1] for g in grads], 2), r_grads[1], TOL[jnp.float32]["grad"]
        )
        _assert_close(
            jnp.concatenate([g[2] for g in grads], 2), r_grads[2], TOL[jnp.float32]["grad"]
        )

    @pytest.mark.slow
    def test_bfloat16(self):
        self.check(
            1, 2, 1, 256, 256, 64, causal=True, blocks=BlockSizes(128, 128), dtype=jnp.bfloat16
        )

    @pytest.mark.slow
    def test_backward_blocks_differ_from_forward(self):
        blocks = BlockSizes(
            128, 256, block_q_dq=64, block_kv_dq=128, block_q_dkv=256, block_kv_dkv=128
        )
        self.check(1, 2, 1, 256, 256, 32, causal=True, blocks=blocks)

    # The subclasses (interpret modes) run this method from different instances, by design.
    @settings(max_examples=5, suppress_health_check=[HealthCheck.differing_executors])
    @given(
        nq=hst.integers(1, 3),
        nk=hst.integers(1, 2),
        groups=hst.sampled_from([1, 2]),
        causal=hst.booleans(),
        h=hst.sampled_from([16, 64]),
    )
    @pytest.mark.slow
    def test_fuzz_shapes(self, nq, nk, groups, causal, h):
        self.check(
            1, 2 * groups, 2, 64 * nq, 128 * nk, h, causal=causal, blocks=BlockSizes(64, 128)
        )

    @pytest.mark.parametrize("backward", [False, pytest.param(True, marks=pytest.mark.slow)])
    def test_no_races(self, backward):
        # Two simulated cores split the parallel grid dims; the detector watches every access.
        if not self.INTERPRET:
            pytest.skip("race detection is an interpret-mode feature")
        params = self.interpret(detect_races=True, num_cores_or_threads=2)
        q, k, v, d_out, _ = _inputs(1, 2, 1, 64, 128, 16)
        fn = functools.partial(
            flash_attention, causal=True, block_sizes=BlockSizes(32, 128), interpret=params
        )
        out, pullback = jax.vjp(fn, q, k, v)
        jax.block_until_ready(out)
        assert not tpu_interpret.races.races_found
        if backward:
            jax.block_until_ready(pullback(d_out))  # dq, then dkv: the last one is checked
            assert not tpu_interpret.races.races_found

    def test_race_detector_catches_a_racy_kernel(self):
        # Control for test_no_races: two cores write the same output block.
        if not self.INTERPRET:
            pytest.skip("race detection is an interpret-mode feature")

        def racy(x_ref, o_ref):
            o_ref[...] = x_ref[...] + pl.program_id(0).astype(jnp.float32)

        call = pl.pallas_call(
            racy,
            grid=(2,),
            in_specs=[pl.BlockSpec((8, 128), lambda i: (0, 0))],
            out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)),
            out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
            interpret=self.interpret(detect_races=True, num_cores_or_threads=2),
        )
        jax.block_until_ready(call(jnp.zeros((8, 128))))
        assert tpu_interpret.races.races_found


class TestFlashInterpret(TestFlash):
    INTERPRET = True


class TestFlashDefault(TestFlash):
    DEFAULT = True


def _wasted_fetches(sched, prefetch, b, rows, nq, nk, transpose=False):
    """Simulates the pipeline of one batch entry and head: DMAs (block index changes) whose
    block no computed tile uses before the next DMA. Also returns the tiles computed."""
    refs = [np.asarray(x) for x in prefetch]
    wasted, computed, current, used = [], set(), None, True
    for r in range(rows):
        for j in range(sched.width):
            blk = int(sched.block(b, 0, r, j, *refs[: len(sched.prefetch)]))
            if blk != current:
                if not used:
                    wasted.append((r, current))
                current, used = blk, False
            q_blk, kv_blk = (blk, r) if transpose else (r, blk)
            kind, seg_kind = engine._tile_kinds(sched, refs, b, 0, r, j, q_blk, kv_blk, nq, nk)
            if kind != EMPTY and seg_kind != EMPTY:
                used = True
                computed.add((q_blk, kv_blk))
    return wasted + ([] if used else [(rows, current)]), computed


@pytest.mark.parametrize("t,block,lengths", [(512, 128, None), (768, 128, [300, 200])])
def test_dma_only_fetches_nonempty_tiles(t, block, lengths):
    """Skipped tiles name an already resident (or next needed) block: every DMA is used, and
    exactly the non-empty tiles are computed."""
    b = 2
    seg = None if lengths is None else _packed_segments(b, t, lengths)
    tokens = engine.make_tokens(b, t, t, seg, seg, None, None)
    mask = PositionalMask(causal=True)
    rows, cols = flash_schedules(mask, tokens, block, block)
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    visible = np.asarray(token_visibility(mask, pos, pos, seg, seg))[:, 0]
    nb = t // block
    tiles = visible.reshape(b, nb, block, nb, block).any(axis=(2, 4))  # [B, q blk, kv blk]
    seg_refs = [] if seg is None else [engine.segment_summary(seg, block)] * 2
    for bi in range(b):
        expected = set(zip(*np.nonzero(tiles[bi]), strict=True))
        assert 0 < len(expected) < nb * nb
        for sched, transpose in ((rows, False), (cols, True)):
            prefetch = [*sched.prefetch, *seg_refs]
            wasted, computed = _wasted_fetches(sched, prefetch, bi, nb, nb, nb, transpose)
            assert wasted == []
            assert computed == expected


@pytest.mark.parametrize(
    "blocks,match",
    [
        (BlockSizes(96, 128), "block_q = 96 must divide q length T = 256"),
        (BlockSizes(128, 64), "block_kv = 64: must be a multiple of 128"),
        (BlockSizes(60, 128), "block_q = 60 must divide"),
        (BlockSizes(128, 128, block_q_dkv=12), "block_q_dkv = 12"),
    ],
)
def test_bad_block_sizes_name_the_dimension(blocks, match):
    q, k, v, _, _ = _inputs(1, 1, 1, 256, 256, 16)
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, block_sizes=blocks)


def test_bad_inputs():
    q, k, v, _, _ = _inputs(1, 3, 2, 256, 256, 16)
    with pytest.raises(ValueError, match="N = 3 query heads must be a multiple of K = 2"):
        flash_attention(q, k, v)
    q, k, v, _, _ = _inputs(1, 2, 1, 256, 256, 16)
    seg = jnp.ones((1, 256), jnp.int32)
    with pytest.raises(ValueError, match="pass both or neither"):
        flash_attention(q, k, v, seg)
    with pytest.raises(ValueError, match=r"q_positions: expected shape \[B, T\]"):
        flash_attention(q, k, v, q_positions=jnp.zeros((1, 100), jnp.int32))
    with pytest.raises(ValueError, match="interpret = 'yes'"):
        flash_attention(q, k, v, interpret="yes")
    for interpret in (None, False):
        with pytest.raises(ValueError, match="tile_probe needs an explicit interpret mode"):
            flash_attention(q, k, v, interpret=interpret, tile_probe=print)


def test_default_block_sizes():
    assert BlockSizes() == BlockSizes(512, 512)
    assert BlockSizes.for_shape(4096, 1024) == BlockSizes(512, 512)
    assert BlockSizes.for_shape(768, 384) == BlockSizes(256, 128)
    assert BlockSizes.for_shape(64, 1000) == BlockSizes(64, 1000)
