"""Host-side (numpy) and device-side block-list builders against brute-force tile masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.block_sparse import (
    block_lists_from_ids,
    block_lists_from_kinds,
    block_lists_from_mask,
    dense_tile_kinds,
    mask_tile_kinds,
)
from kernels_pallas.mask import EMPTY, FULL, PARTIAL, PositionalMask

MASKS = [
    PositionalMask(causal=True),
    PositionalMask(causal=True, window_left=200),
    PositionalMask(causal=True, chunk=256),
    PositionalMask(causal=True, window_left=100, sink=64),
    PositionalMask(window_left=130, window_right=130),
    PositionalMask(),
]


def _brute_force_kinds(mask, t, s, bq, bk, q_offset=0, kv_offset=0):
    q = q_offset + np.arange(t)
    k = kv_offset + np.arange(s)
    dense = np.asarray(mask.allows(q[:, None], k[None]))
    tiles = dense.reshape(t // bq, bq, s // bk, bk)
    return np.where(tiles.all(axis=(1, 3)), FULL, np.where(tiles.any(axis=(1, 3)), PARTIAL, EMPTY))


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("offsets", [(0, 0), (512, 256)])
def test_lists_from_mask_encode_the_exact_tile_kinds(mask, offsets):
    t, s, bq, bk = 1024, 768, 64, 128
    lists = block_lists_from_mask(mask, t, s, bq, bk, q_offset=offsets[0], kv_offset=offsets[1])
    expected = _brute_force_kinds(mask, t, s, bq, bk, *offsets)
    np.testing.assert_array_equal(np.asarray(dense_tile_kinds(lists))[0, 0], expected)
    # Forward lists: ascending ids, padding after the count, width = busiest row.
    counts = np.asarray(lists.kv_counts)[0, 0]
    np.testing.assert_array_equal(counts, (expected != EMPTY).sum(1))
    assert lists.kv_ids.shape[-1] == max(counts.max(), 1)
    for row, n in enumerate(counts):
        ids = np.asarray(lists.kv_ids)[0, 0, row, :n]
        np.testing.assert_array_equal(ids, np.nonzero(expected[row])[0])
        np.testing.assert_array_equal(np.asarray(lists.kv_kinds)[0, 0, row, :n], expected[row, ids])
        assert (np.asarray(lists.kv_kinds)[0, 0, row, n:] == EMPTY).all()
    # Transposed lists hold the same tiles, seen from the kv side.
    t_counts = np.asarray(lists.q_counts)[0, 0]
    np.testing.assert_array_equal(t_counts, (expected != EMPTY).sum(0))
    for col, n in enumerate(t_counts):
        ids = np.asarray(lists.q_ids)[0, 0, col, :n]
        np.testing.assert_array_equal(ids, np.nonzero(expected[:, col])[0])
        np.testing.assert_array_equal(np.asarray(lists.q_kinds)[0, 0, col, :n], expected[ids, col])


def test_mask_tile_kinds_matches_brute_force_for_causal_window():
    mask = PositionalMask(causal=True, window_left=255)
    np.testing.assert_array_equal(
        mask_tile_kinds(mask, 1024, 1024, 128, 128), _brute_force_kinds(mask, 1024, 1024, 128, 128)
    )


def test_sliding_window_visits_a_band():
    lists = block_lists_from_mask(
        PositionalMask(causal=True, window_left=127), 1024, 1024, 128, 128
    )
    # Each q block sees itself (partial) and the previous block (partial): 2 of 8.
    assert np.asarray(lists.kv_counts).tolist() == [[[1] + [2] * 7]]
    assert lists.kv_ids.shape[-1] == 2


def test_lists_from_ids_round_trip_and_transpose():
    rng = np.random.default_rng(0)
    bl, kl, nq, nk, w = 2, 3, 5, 7, 3
    ids = rng.integers(0, nk, (bl, kl, nq, w))
    kinds = rng.integers(PARTIAL, FULL + 1, (bl, kl, nq, w))
    counts = rng.integers(0, w + 1, (bl, kl, nq))
    lists = jax.jit(block_lists_from_ids, static_argnums=(3, 4, 5))(
        jnp.asarray(ids), jnp.asarray(kinds), jnp.asarray(counts), nk, 64, 128
    )
    expected = np.zeros((bl, kl, nq, nk), int)
    for idx in np.ndindex(bl, kl, nq):
        for e in range(counts[idx]):
            expected[idx][ids[idx][e]] = max(expected[idx][ids[idx][e]], kinds[idx][e])
    np.testing.assert_array_equal(np.asarray(dense_tile_kinds(lists)), expected)
    assert lists.q_ids.shape == (bl, kl, nk, nq)
    t_kinds = np.zeros_like(expected)
    for idx in np.ndindex(bl, kl, nk):
        for e in range(int(lists.q_counts[idx])):
            t_kinds[(*idx[:2], int(lists.q_ids[idx][e]), idx[2])] = int(lists.q_kinds[idx][e])
    np.testing.assert_array_equal(t_kinds, expected)


def test_bad_block_sizes():
    with pytest.raises(ValueError, match="block_kv = 100 must divide the length 256"):
        block_lists_from_mask(PositionalMask(causal=True), 256, 256, 64, 100)


def test_lists_from_device_kinds_round_trip_and_truncate_past_the_width():
    rng = np.random.default_rng(4)
    kinds = rng.choice([EMPTY, EMPTY, PARTIAL, FULL], (2, 1, 6, 5)).astype(np.int32)
    widest = int((kinds != EMPTY).sum(-1).max())
    widest_t = int((kinds != EMPTY).sum(-2).max())
    lists = jax.jit(block_lists_from_kinds, static_argnums=(1, 2, 3, 4))(
        jnp.asarray(kinds), 8, 128, widest, widest_t
    )
    np.testing.assert_array_equal(dense_tile_kinds(lists), kinds)
    np.testing.assert_array_equal(lists.q_counts, (kinds != EMPTY).sum(-2))
    narrow = block_lists_from_kinds(jnp.asarray(kinds), 8, 128, widest - 1, widest_t)
    assert narrow.kv_ids.shape[-1] == widest - 1  # the caller's bound is the width, as documented
