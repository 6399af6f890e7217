"""Dataset decomposition: binary decomposition, one bucket per step, constant tokens per step."""

import itertools

import numpy as np
import pytest

from lcm.data.recipes import decomposition


def test_binary_decomposition_exact():
    rng = np.random.default_rng(0)
    got = decomposition.decompose(np.array([100, 9, 8, 40]), min_log=3, max_log=6, rng=rng)
    # 100: r-1 = 99 -> k=6 (65 tokens at 0), r-1 = 35 -> k=5 (33 at 64), r-1 = 3 < 8: stop.
    # 9: r-1 = 8 -> k=3 (all 9 tokens). 8: r-1 = 7 < 8: dropped. 40: k=5 at 0, then 7 < 8.
    assert got == [(0, 0, 6), (0, 64, 5), (1, 0, 3), (3, 0, 5)]


def test_long_documents_spread_tokens_evenly_over_buckets():
    pieces = decomposition.decompose(
        np.array([200_001]), min_log=3, max_log=6, rng=np.random.default_rng(0)
    )
    tokens = np.bincount([k for *_, k in pieces], weights=[2.0**k for *_, k in pieces])[3:]
    # P(k) ~ 2^(max - k): every bucket gets about a quarter of the tokens.
    np.testing.assert_allclose(tokens / tokens.sum(), 0.25, atol=0.02)
    starts = [s for _, s, _ in pieces]
    assert starts == sorted(starts) and all(  # consecutive: each shares one token with the next
        b[1] == a[1] + 2 ** a[2] for a, b in itertools.pairwise(pieces)
    )


def test_epoch_steps_full_buckets_constant_tokens():
    buckets = np.array([3] * 10 + [4] * 5 + [5] * 1)
    steps = decomposition.epoch_steps(buckets, step_tokens=32, rng=np.random.default_rng(0))
    counts = {k: sum(1 for s in steps if s[0] == k) for k in (3, 4, 5)}
    assert counts == {3: 2, 4: 2, 5: 1}  # 10 // 4, 5 // 2, 1 // 1 full steps of 32 tokens
    for k, members in steps:
        assert len(members) * 2**k == 32 and (buckets[members] == k).all()
    used = np.concatenate([m for _, m in steps])
    assert len(set(used.tolist())) == len(used)  # no sequence twice in an epoch


def test_batches_one_bucket_per_step_sequences_from_one_document(repo_store):
    ds = decomposition.batches(
        repo_store, np.arange(len(repo_store)), min_length=4, max_length=16, step_tokens=16,
        seed=0, process_index=0, process_count=1,
    )  # fmt: skip
    it = iter(ds)
    shapes = []
    for _ in range(12):
        b = next(it)
        rows, length = b["inputs"].shape
        shapes.append((rows, length))
        assert rows * length == 16 and length in (4, 8, 16)
        for row, tgt in zip(b["inputs"], b["targets"], strict=True):
            assert len(set(row.tolist() + tgt.tolist())) == 1  # one file: one letter
        np.testing.assert_array_equal(b["loss_mask"], 1)
        np.testing.assert_array_equal(b["segment_ids"], 1)
        np.testing.assert_array_equal(
            b["positions"], np.broadcast_to(np.arange(length), (rows, length))
        )
    # Buckets 16, 8, 4 hold 4, 3 and 5 sequences (see the decomposition of REPO_FILES): full
    # steps of 16 tokens are 4 x [1, 16], 1 x [2, 8], 1 x [4, 4] per epoch, in shuffled order.
    for epoch in (shapes[:6], shapes[6:]):
        assert sorted(epoch) == [(1, 16)] * 4 + [(2, 8), (4, 4)]
    assert shapes[:6] != shapes[6:] or shapes[:6] != sorted(shapes[:6])
    with pytest.raises(ValueError, match=r"config\.data\.decomposition_min = 6: must be a power"):
        decomposition.batches(
            repo_store, np.arange(8), min_length=6, max_length=16, step_tokens=32, seed=0,
            process_index=0, process_count=1,
        )  # fmt: skip
